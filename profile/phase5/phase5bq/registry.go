package phase5bq

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"cloud.google.com/go/bigquery"

	"github.com/predworker/predworker/profile/phase5/contract"
	"github.com/predworker/predworker/systems"
	bq "github.com/predworker/predworker/systems/bigquery"
)

// Registry reads the fleet from model_registry (ORIGIN.md §6.2).
type Registry struct {
	client  *bigquery.Client
	table   string
	timeout time.Duration
}

// NewRegistry returns the reader of project's nba_predictions.model_registry.
func NewRegistry(client *bigquery.Client, project string, timeout time.Duration) (*Registry, error) {
	t, err := tableName(project, "", "nba_predictions", "model_registry")
	if err != nil || !bq.ValidProject(project) {
		return nil, fmt.Errorf("GCP_PROJECT_ID %q is not a project id", project)
	}
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	return &Registry{client: client, table: t, timeout: timeout}, nil
}

// registrySQL selects the fleet: enabled, not the champion, in a serving
// status; each row as JSON, so columns a registry lacks (sha256_hash is
// not in every one) read as absent instead of failing the query.
const registrySQL = "-- predworker:registry\nSELECT TO_JSON_STRING(r) AS row FROM %s AS r " +
	"WHERE r.enabled = TRUE AND r.is_production = FALSE AND r.status IN ('active', 'shadow', 'blocked') " +
	"ORDER BY r.model_family, r.training_end_date DESC, r.model_id"

type registryRow struct {
	contract.ModelEntry
	FeaturesJSON json.RawMessage `json:"features_json"`
	FeatureCount json.Number     `json:"feature_count"`
}

// Models implements the fleet's registry: the rows of the fleet, in order.
func (r *Registry) Models(ctx context.Context) ([]contract.ModelEntry, error) {
	var out []contract.ModelEntry
	err := bq.RunQuery(ctx, r.client, r.timeout, "model registry", fmt.Sprintf(registrySQL, r.table), nil,
		func(it *bigquery.RowIterator) error {
			for {
				var row struct {
					Row string `bigquery:"row"`
				}
				if err := it.Next(&row); err != nil {
					return done(err)
				}
				e, err := parseRegistryRow(row.Row)
				if err != nil {
					return err
				}
				out = append(out, e)
			}
		})
	return out, err
}

// parseRegistryRow reads one registry row's JSON; features_json may be a
// JSON array or a string holding one.
func parseRegistryRow(raw string) (contract.ModelEntry, error) {
	var row registryRow
	if err := json.Unmarshal([]byte(raw), &row); err != nil {
		return contract.ModelEntry{}, fmt.Errorf("model_registry row %.80s: %w: %w", raw, err, systems.ErrPermanent)
	}
	e := row.ModelEntry
	if n, err := row.FeatureCount.Int64(); err == nil {
		e.FeatureCount = int(n)
	}
	if len(row.FeaturesJSON) > 0 && string(row.FeaturesJSON) != "null" {
		var text string
		src := []byte(row.FeaturesJSON)
		if json.Unmarshal(src, &text) == nil {
			src = []byte(text)
		}
		if err := json.Unmarshal(src, &e.Features); err != nil {
			return e, fmt.Errorf("model %s: features_json is not a list of names: %w: %w", e.ModelID, err, systems.ErrPermanent)
		}
	}
	return e, nil
}
