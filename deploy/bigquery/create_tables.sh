#!/usr/bin/env bash
# Creates the BigQuery dataset and the predictions table:
#   bash deploy/bigquery/create_tables.sh PROJECT_ID [DATASET] [LOCATION]
# The table has deploy/bigquery/predictions_schema.json, is partitioned by
# game_date and clustered by system_id and player_lookup. The worker writes
# it with the Storage Write API (one pending stream per chunk), so no staging
# table is needed.
set -euo pipefail
project="${1:?project id}"
dataset="${2:-nba_predictions}"
location="${3:-US}" # the dataset's location: keep it with the service's region
schema="$(dirname "$0")/predictions_schema.json"
bq --project_id="$project" --location="$location" mk --dataset --description="predworker predictions" "${project}:${dataset}" || true
for table in predictions; do
  bq --project_id="$project" mk --table --time_partitioning_field=game_date --time_partitioning_type=DAY \
    --clustering_fields=system_id,player_lookup "${project}:${dataset}.${table}" "$schema" || true
done
