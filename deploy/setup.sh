#!/usr/bin/env bash
# One-time setup of a predworker deployment, in an order that works on the
# first run: APIs, Artifact Registry, service accounts and their (scoped)
# roles, Firestore database, indexes, exemptions and TTL policies, the
# BigQuery dataset and table, Pub/Sub topics and subscriptions (none ever
# expires; every dead-letter topic has one), the Cloud Run service (its URL
# is computed before it exists, so the first revision already has the right
# audiences), the Cloud Scheduler sweep job, and the alert policies.
# Re-running it is safe: "already exists" is fine.
#
#   PROJECT_ID=my-project REGION=us-central1 \
#   OPERATOR_EMAILS=oncall@example.com bash deploy/setup.sh
#
# Optional: IMAGE (an image already pushed; by default Cloud Build builds one
# from this checkout), DATASET (nba_predictions), FIRESTORE_PREFIX (""),
# SERVICE (predworker), ALERT_EMAIL (a notification channel for the alerts).
set -euo pipefail
: "${PROJECT_ID:?set PROJECT_ID}" "${REGION:?set REGION}"
IMAGE="${IMAGE:-}"
OPERATOR_EMAILS="${OPERATOR_EMAILS:-}"
DATASET="${DATASET:-nba_predictions}"
FIRESTORE_PREFIX="${FIRESTORE_PREFIX:-}"
SERVICE="${SERVICE:-predworker}"
ALERT_EMAIL="${ALERT_EMAIL:-}"
cd "$(dirname "$0")/.."

gcloud config set project "$PROJECT_ID"
gcloud services enable run.googleapis.com pubsub.googleapis.com firestore.googleapis.com \
  bigquery.googleapis.com bigquerystorage.googleapis.com cloudscheduler.googleapis.com \
  artifactregistry.googleapis.com cloudbuild.googleapis.com monitoring.googleapis.com \
  cloudtrace.googleapis.com telemetry.googleapis.com iamcredentials.googleapis.com
PROJECT_NUMBER="$(gcloud projects describe "$PROJECT_ID" --format='value(projectNumber)')"
# Cloud Run's URL is deterministic: the first revision gets its audiences
# right instead of refusing to start without them.
SERVICE_URL="https://${SERVICE}-${PROJECT_NUMBER}.${REGION}.run.app"

# Artifact Registry for the images cloudbuild.yaml pushes.
gcloud artifacts repositories create predworker --repository-format=docker --location="$REGION" \
  --description="predworker images" || true

# Service accounts: the service, Pub/Sub's push identity, the scheduler, and
# the operator identity people impersonate to call the API.
RUN_SA="predworker-run@${PROJECT_ID}.iam.gserviceaccount.com"
PUSH_SA="predworker-push@${PROJECT_ID}.iam.gserviceaccount.com"
SCHED_SA="predworker-scheduler@${PROJECT_ID}.iam.gserviceaccount.com"
OPS_SA="predworker-operator@${PROJECT_ID}.iam.gserviceaccount.com"
BUILD_SA="${PROJECT_NUMBER}@cloudbuild.gserviceaccount.com"
gcloud iam service-accounts create predworker-run --display-name="predworker service" || true
gcloud iam service-accounts create predworker-push --display-name="predworker Pub/Sub push" || true
gcloud iam service-accounts create predworker-scheduler --display-name="predworker sweep scheduler" || true
gcloud iam service-accounts create predworker-operator --display-name="predworker operators" || true
# The sweep job and the operator identity call the operator API.
for sa in "$SCHED_SA" "$OPS_SA"; do
  case ",${OPERATOR_EMAILS}," in *",${sa},"*) ;; *) OPERATOR_EMAILS="${OPERATOR_EMAILS:+${OPERATOR_EMAILS},}${sa}" ;; esac
done

# Project-level roles only where nothing finer exists: Firestore, BigQuery
# jobs (queries run in the project), spans to the Telemetry API (TRACES=
# cloudtrace) and Monitoring writes (the metrics sidecar).
for role in roles/datastore.user roles/bigquery.jobUser roles/telemetry.tracesWriter roles/monitoring.metricWriter; do
  gcloud projects add-iam-policy-binding "$PROJECT_ID" --member="serviceAccount:${RUN_SA}" --role="$role" --condition=None
done
# Cloud Build deploys the service as RUN_SA and pushes images.
for role in roles/run.admin roles/artifactregistry.writer; do
  gcloud projects add-iam-policy-binding "$PROJECT_ID" --member="serviceAccount:${BUILD_SA}" --role="$role" --condition=None
done
gcloud iam service-accounts add-iam-policy-binding "$RUN_SA" \
  --member="serviceAccount:${BUILD_SA}" --role=roles/iam.serviceAccountUser
# The first image, unless one is given: Cloud Build builds the Dockerfile of
# this checkout into the repository made above (no Docker needed here).
# Later images come from cloudbuild.yaml.
if [ -z "$IMAGE" ]; then
  IMAGE="${REGION}-docker.pkg.dev/${PROJECT_ID}/predworker/worker:setup-$(date -u +%Y%m%d%H%M%S)"
  gcloud builds submit --tag="$IMAGE" .
fi
# Operators impersonate OPS_SA to get ID tokens for the service's audience.
for who in $(echo "$OPERATOR_EMAILS" | tr ',' ' '); do
  case "$who" in *.gserviceaccount.com) continue ;; esac
  gcloud iam service-accounts add-iam-policy-binding "$OPS_SA" \
    --member="user:${who}" --role=roles/iam.serviceAccountTokenCreator
done

# Firestore: database, the composite indexes and exemptions of
# firestore.indexes.json, and TTL policies, with FIRESTORE_PREFIX applied to
# the collection names (chunks is a subcollection, never prefixed).
gcloud firestore databases create --location="$REGION" || true
P="$FIRESTORE_PREFIX"
gcloud firestore indexes composite create --collection-group="${P}batches" --query-scope=collection \
  --field-config=field-path=status,order=ascending --field-config=field-path=lease_expires,order=ascending || true
gcloud firestore indexes composite create --collection-group="${P}batches" --query-scope=collection \
  --field-config=field-path=status,order=ascending --field-config=field-path=created_at,order=descending \
  --field-config=field-path=batch_id,order=ascending || true
gcloud firestore indexes composite create --collection-group="${P}batches" --query-scope=collection \
  --field-config=field-path=created_at,order=descending --field-config=field-path=batch_id,order=ascending || true
gcloud firestore indexes composite create --collection-group="${P}outbox" --query-scope=collection \
  --field-config=field-path=sent,order=ascending --field-config=field-path=created_at,order=ascending || true
# A batch's item list holds thousands of names: never indexed.
gcloud firestore indexes fields update items --collection-group="${P}batches" --disable-indexes --quiet || true
for group in "${P}batches" chunks "${P}outbox" "${P}dead_letters" "${P}push_attempts"; do
  gcloud firestore fields ttls update expire_at --collection-group="$group" --enable-ttl --async --quiet || true
done

# BigQuery: dataset (in REGION) and the predictions table. The service may
# read the dataset (features) and write the predictions table, nothing else.
bash deploy/bigquery/create_tables.sh "$PROJECT_ID" "$DATASET" "$REGION"
bq --project_id="$PROJECT_ID" add-iam-policy-binding --dataset --member="serviceAccount:${RUN_SA}" \
  --role=roles/bigquery.dataViewer "${PROJECT_ID}:${DATASET}"
bq --project_id="$PROJECT_ID" add-iam-policy-binding --member="serviceAccount:${RUN_SA}" \
  --role=roles/bigquery.dataEditor "${PROJECT_ID}:${DATASET}.predictions"

# Pub/Sub: batch requests, completion events, dead letters (ours), and the
# push subscription's own dead-letter topic. The service publishes to the
# first three (continuations, events, dead letters); every topic that
# receives dead letters has a subscription, and no subscription expires.
for topic in predworker-requests predworker-completions predworker-dead-letters predworker-push-dlq; do
  gcloud pubsub topics create "$topic" || true
done
for topic in predworker-requests predworker-completions predworker-dead-letters; do
  gcloud pubsub topics add-iam-policy-binding "$topic" \
    --member="serviceAccount:${RUN_SA}" --role=roles/pubsub.publisher
done

# Cloud Run: the service definition is the source of truth (cloudbuild.yaml
# applies it too). Only PUSH_SA, SCHED_SA and OPERATOR_EMAILS may invoke.
export PROJECT_ID IMAGE RUN_SA PUSH_SA OPERATOR_EMAILS SERVICE_URL SERVICE
SERVICE_FILE="$(mktemp)"
trap 'rm -f "$SERVICE_FILE"' EXIT
envsubst < deploy/service.yaml > "$SERVICE_FILE"
gcloud run services replace "$SERVICE_FILE" --region="$REGION"
for who in "serviceAccount:${PUSH_SA}" "serviceAccount:${SCHED_SA}" "serviceAccount:${OPS_SA}"; do
  gcloud run services add-iam-policy-binding "$SERVICE" --region="$REGION" --member="$who" --role=roles/run.invoker
done
for who in $(echo "$OPERATOR_EMAILS" | tr ',' ' '); do
  case "$who" in *.gserviceaccount.com) member="serviceAccount:${who}" ;; *) member="user:${who}" ;; esac
  gcloud run services add-iam-policy-binding "$SERVICE" --region="$REGION" --member="$member" --role=roles/run.invoker
done

# The push subscription: OIDC token from PUSH_SA for the push audience, ack
# deadline 600 s (the longest a push may run), retries with backoff, Pub/Sub's
# dead-letter policy after 10 attempts (our own classification dead-letters
# poison messages far earlier; this catches the rest). Never expires.
gcloud pubsub subscriptions create predworker-push --topic=predworker-requests \
  --push-endpoint="${SERVICE_URL}/pubsub/push" --push-auth-service-account="$PUSH_SA" \
  --push-auth-token-audience="${SERVICE_URL}/pubsub/push" --ack-deadline=600 \
  --min-retry-delay=10s --max-retry-delay=600s --expiration-period=never \
  --dead-letter-topic=predworker-push-dlq --max-delivery-attempts=10 || true
gcloud pubsub topics add-iam-policy-binding predworker-push-dlq \
  --member="serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com" --role=roles/pubsub.publisher
gcloud pubsub subscriptions add-iam-policy-binding predworker-push \
  --member="serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com" --role=roles/pubsub.subscriber
# Pull subscriptions that keep what would otherwise be lost, for people and
# the alert on undelivered messages: Pub/Sub's dead letters, ours, and the
# completion events.
gcloud pubsub subscriptions create predworker-push-dlq-sub --topic=predworker-push-dlq \
  --expiration-period=never --message-retention-duration=7d || true
gcloud pubsub subscriptions create predworker-dead-letters-audit --topic=predworker-dead-letters \
  --expiration-period=never --message-retention-duration=7d || true
gcloud pubsub subscriptions create predworker-completions-audit --topic=predworker-completions \
  --expiration-period=never --message-retention-duration=7d || true

# Cloud Scheduler: sweep orphaned batches every minute even when no instance
# is busy. SCHED_SA is in OPERATOR_EMAILS, so the service lets it in.
gcloud scheduler jobs create http predworker-sweep --location="$REGION" --schedule="* * * * *" \
  --uri="${SERVICE_URL}/v1/sweep" --http-method=POST \
  --oidc-service-account-email="$SCHED_SA" --oidc-token-audience="${SERVICE_URL}" \
  --attempt-deadline=60s || true

# Alert policies (deploy/alerts/*.json), with an e-mail channel when given.
CHANNEL=""
if [ -n "$ALERT_EMAIL" ]; then
  CHANNEL="$(gcloud beta monitoring channels create --display-name="predworker on-call" --type=email \
    --channel-labels="email_address=${ALERT_EMAIL}" --format='value(name)')"
fi
for policy in deploy/alerts/*.json; do
  gcloud alpha monitoring policies create --policy-from-file="$policy" ${CHANNEL:+--notification-channels="$CHANNEL"}
done
echo "predworker deployed at ${SERVICE_URL} (image ${IMAGE})"
echo "for cloudbuild.yaml and docs/operations.md: export OPERATOR_EMAILS='${OPERATOR_EMAILS}'"
