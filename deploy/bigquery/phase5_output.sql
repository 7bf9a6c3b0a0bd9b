-- PROFILE=phase5: the one column predworker adds to the stage's output table
-- (nullable; no reader of the table is affected). The exactly-once write path
-- verifies a chunk whose pending stream BigQuery no longer knows by it.
-- Run once per dataset (and per {prefix}_nba_predictions test dataset):
--   bq query --use_legacy_sql=false < deploy/bigquery/phase5_output.sql
ALTER TABLE `nba-props-platform.nba_predictions.player_prop_predictions`
  ADD COLUMN IF NOT EXISTS batch_id STRING;
