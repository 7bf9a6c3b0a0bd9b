#!/usr/bin/env bash
# One-time setup of a predworker deployment: APIs, service accounts, IAM,
# Pub/Sub topics and the push subscription, Firestore indexes and TTL
# policies, BigQuery dataset and tables, the Cloud Run service, and the Cloud
# Scheduler sweep job. Idempotent enough to re-run: "already exists" is fine.
#
#   PROJECT_ID=my-project REGION=us-central1 IMAGE=REGION-docker.pkg.dev/... \
#   OPERATOR_EMAILS=oncall@example.com bash deploy/setup.sh
set -euo pipefail
: "${PROJECT_ID:?set PROJECT_ID}" "${REGION:?set REGION}" "${IMAGE:?set IMAGE}"
OPERATOR_EMAILS="${OPERATOR_EMAILS:-}"
DATASET="${DATASET:-nba_predictions}"
cd "$(dirname "$0")/.."

gcloud config set project "$PROJECT_ID"
gcloud services enable run.googleapis.com pubsub.googleapis.com firestore.googleapis.com \
  bigquery.googleapis.com cloudscheduler.googleapis.com artifactregistry.googleapis.com

# Service accounts: the service itself, Pub/Sub's push identity, the scheduler.
export RUN_SA="predworker-run@${PROJECT_ID}.iam.gserviceaccount.com"
export PUSH_SA="predworker-push@${PROJECT_ID}.iam.gserviceaccount.com"
SCHED_SA="predworker-scheduler@${PROJECT_ID}.iam.gserviceaccount.com"
gcloud iam service-accounts create predworker-run --display-name="predworker service" || true
gcloud iam service-accounts create predworker-push --display-name="predworker Pub/Sub push" || true
gcloud iam service-accounts create predworker-scheduler --display-name="predworker sweep scheduler" || true
for role in roles/datastore.user roles/bigquery.dataEditor roles/bigquery.jobUser roles/pubsub.publisher; do
  gcloud projects add-iam-policy-binding "$PROJECT_ID" --member="serviceAccount:${RUN_SA}" --role="$role"
done

# Firestore: database, composite indexes, TTL policies (firestore.indexes.json).
gcloud firestore databases create --location="$REGION" || true
gcloud firestore indexes composite create --collection-group=batches --query-scope=collection \
  --field-config=field-path=status,order=ascending --field-config=field-path=lease_expires,order=ascending || true
gcloud firestore indexes composite create --collection-group=batches --query-scope=collection \
  --field-config=field-path=status,order=ascending --field-config=field-path=created_at,order=descending \
  --field-config=field-path=batch_id,order=ascending || true
gcloud firestore indexes composite create --collection-group=outbox --query-scope=collection \
  --field-config=field-path=sent,order=ascending --field-config=field-path=created_at,order=ascending || true
for group in batches chunks outbox; do
  gcloud firestore fields ttls update expire_at --collection-group="$group" --enable-ttl --async || true
done

# BigQuery: dataset and the predictions table (partitioned by game_date,
# clustered by system_id and player_lookup), written through the Storage
# Write API.
bash deploy/bigquery/create_tables.sh "$PROJECT_ID" "$DATASET"

# Pub/Sub: requests, completion events, dead letters (ours), and the
# subscription's own dead-letter topic for deliveries that never got an answer.
for topic in predworker-requests predworker-completions predworker-dead-letters predworker-push-dlq; do
  gcloud pubsub topics create "$topic" || true
done

# Cloud Run: deploy, then learn the URL for the audiences.
export PROJECT_ID IMAGE OPERATOR_EMAILS SERVICE_URL=""
envsubst < deploy/service.yaml > /tmp/predworker-service.yaml
gcloud run services replace /tmp/predworker-service.yaml --region="$REGION"
SERVICE_URL="$(gcloud run services describe predworker --region="$REGION" --format='value(status.url)')"
export SERVICE_URL
envsubst < deploy/service.yaml > /tmp/predworker-service.yaml
gcloud run services replace /tmp/predworker-service.yaml --region="$REGION"
gcloud run services add-iam-policy-binding predworker --region="$REGION" \
  --member="serviceAccount:${PUSH_SA}" --role=roles/run.invoker
gcloud run services add-iam-policy-binding predworker --region="$REGION" \
  --member="serviceAccount:${SCHED_SA}" --role=roles/run.invoker

# The push subscription: OIDC token from PUSH_SA for the push audience, ack
# deadline 600 s (the longest a push may run), retries with backoff, and
# Pub/Sub's dead-letter policy after 10 attempts (our own classification
# dead-letters poison messages far earlier; this catches the rest).
PROJECT_NUMBER="$(gcloud projects describe "$PROJECT_ID" --format='value(projectNumber)')"
gcloud pubsub subscriptions create predworker-push --topic=predworker-requests \
  --push-endpoint="${SERVICE_URL}/pubsub/push" --push-auth-service-account="$PUSH_SA" \
  --push-auth-token-audience="${SERVICE_URL}/pubsub/push" --ack-deadline=600 \
  --min-retry-delay=10s --max-retry-delay=600s \
  --dead-letter-topic=predworker-push-dlq --max-delivery-attempts=10 || true
gcloud pubsub topics add-iam-policy-binding predworker-push-dlq \
  --member="serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com" --role=roles/pubsub.publisher
gcloud pubsub subscriptions add-iam-policy-binding predworker-push \
  --member="serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com" --role=roles/pubsub.subscriber
gcloud pubsub subscriptions create predworker-dead-letters-audit --topic=predworker-dead-letters || true

# Cloud Scheduler: sweep orphaned batches every minute even when no instance is busy.
gcloud scheduler jobs create http predworker-sweep --location="$REGION" --schedule="* * * * *" \
  --uri="${SERVICE_URL}/v1/sweep" --http-method=POST \
  --oidc-service-account-email="$SCHED_SA" --oidc-token-audience="${SERVICE_URL}" \
  --attempt-deadline=60s || true
echo "predworker deployed at ${SERVICE_URL}; add ${SCHED_SA} to OPERATOR_EMAILS so the sweep job may call /v1/sweep"
