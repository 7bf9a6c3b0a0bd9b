package phase5bq

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/bigquery/storage/managedwriter"
	"cloud.google.com/go/civil"
	"google.golang.org/api/iterator"

	"github.com/predworker/predworker/profile/phase5/contract"
	"github.com/predworker/predworker/systems"
	bq "github.com/predworker/predworker/systems/bigquery"
)

func done(err error) error {
	if errors.Is(err, iterator.Done) {
		return nil
	}
	return err
}

// OutputTable is the stage's output table, in nba_predictions.
const OutputTable = "player_prop_predictions"

// OutputSchema is what the sink writes of player_prop_predictions (ORIGIN.md
// §4): the REQUIRED columns, the line, status, provenance, quality,
// derived and completeness columns the stage's worker wrote, and batch_id,
// which the stage's table lacks (one ALTER TABLE adds it; see
// docs/migrating.md): the exactly-once path verifies a chunk by it.
var OutputSchema = bigquery.Schema{
	{Name: "prediction_id", Type: bigquery.StringFieldType, Required: true},
	{Name: "system_id", Type: bigquery.StringFieldType, Required: true},
	{Name: "player_lookup", Type: bigquery.StringFieldType, Required: true},
	{Name: "game_date", Type: bigquery.DateFieldType, Required: true},
	{Name: "game_id", Type: bigquery.StringFieldType, Required: true},
	{Name: "prediction_version", Type: bigquery.IntegerFieldType, Required: true},
	{Name: "predicted_points", Type: bigquery.NumericFieldType, Required: true},
	{Name: "confidence_score", Type: bigquery.NumericFieldType, Required: true},
	{Name: "recommendation", Type: bigquery.StringFieldType, Required: true},
	{Name: "is_active", Type: bigquery.BooleanFieldType, Required: true},
	{Name: "created_at", Type: bigquery.TimestampFieldType, Required: true},
	{Name: "universal_player_id", Type: bigquery.StringFieldType},
	{Name: "has_prop_line", Type: bigquery.BooleanFieldType},
	{Name: "current_points_line", Type: bigquery.NumericFieldType},
	{Name: "line_margin", Type: bigquery.NumericFieldType},
	{Name: "line_source", Type: bigquery.StringFieldType},
	{Name: "line_source_api", Type: bigquery.StringFieldType},
	{Name: "sportsbook", Type: bigquery.StringFieldType},
	{Name: "was_line_fallback", Type: bigquery.BooleanFieldType},
	{Name: "line_minutes_before_game", Type: bigquery.IntegerFieldType},
	{Name: "updated_at", Type: bigquery.TimestampFieldType},
	{Name: "is_actionable", Type: bigquery.BooleanFieldType},
	{Name: "filter_reason", Type: bigquery.StringFieldType},
	{Name: "build_commit_sha", Type: bigquery.StringFieldType},
	{Name: "deployment_revision", Type: bigquery.StringFieldType},
	{Name: "predicted_at", Type: bigquery.TimestampFieldType},
	{Name: "prediction_run_mode", Type: bigquery.StringFieldType},
	{Name: "features_snapshot", Type: bigquery.JSONFieldType},
	{Name: "feature_quality_score", Type: bigquery.FloatFieldType},
	{Name: "low_quality_flag", Type: bigquery.BooleanFieldType},
	{Name: "matchup_data_status", Type: bigquery.StringFieldType},
	{Name: "is_quality_ready", Type: bigquery.BooleanFieldType},
	{Name: "quality_alert_level", Type: bigquery.StringFieldType},
	{Name: "matchup_quality_pct", Type: bigquery.FloatFieldType},
	{Name: "default_feature_count", Type: bigquery.IntegerFieldType},
	{Name: "default_feature_indices", Type: bigquery.IntegerFieldType, Repeated: true},
	{Name: "prediction_made_before_game", Type: bigquery.BooleanFieldType},
	{Name: "scoring_tier", Type: bigquery.StringFieldType},
	{Name: "tier_adjustment", Type: bigquery.FloatFieldType},
	{Name: "model_version", Type: bigquery.StringFieldType},
	{Name: "expected_games_count", Type: bigquery.IntegerFieldType},
	{Name: "actual_games_count", Type: bigquery.IntegerFieldType},
	{Name: "missing_games_count", Type: bigquery.IntegerFieldType},
	{Name: "completeness_percentage", Type: bigquery.FloatFieldType},
	{Name: "is_production_ready", Type: bigquery.BooleanFieldType},
	{Name: "backfill_bootstrap_mode", Type: bigquery.BooleanFieldType},
	{Name: "processing_decision_reason", Type: bigquery.StringFieldType},
	{Name: "batch_id", Type: bigquery.StringFieldType},
}

// passThrough are the columns a row takes from its player's attributes
// unchanged (the source put them there).
var passThrough = []string{"universal_player_id", "has_prop_line", "line_source", "line_source_api", "sportsbook",
	"was_line_fallback", "line_minutes_before_game", "prediction_run_mode", "features_snapshot",
	"feature_quality_score", "low_quality_flag", "matchup_data_status", "is_quality_ready", "quality_alert_level",
	"matchup_quality_pct", "default_feature_count", "default_feature_indices", "scoring_tier", "tier_adjustment",
	"expected_games_count", "actual_games_count", "missing_games_count", "completeness_percentage",
	"is_production_ready", "backfill_bootstrap_mode", "processing_decision_reason"}

// SinkOptions configures the output sink.
type SinkOptions struct {
	Project     string        // holds nba_predictions (with the request's dataset_prefix)
	CallTimeout time.Duration // per call (default 30 s)
	// BuildCommit and Revision are written to build_commit_sha and
	// deployment_revision (BUILD_COMMIT, K_REVISION).
	BuildCommit, Revision string
}

// Sink writes player_prop_predictions exactly once through the Storage
// Write path of systems/bigquery (one pending stream per chunk, committed
// after the checkpoint), one table per dataset_prefix, and applies the
// is_active rule when a batch finishes. Failure records (no features, no
// system answered) are not rows of this table: the stage wrote none either.
type Sink struct {
	writer *managedwriter.Client
	query  *bigquery.Client
	o      SinkOptions
	mu     sync.Mutex
	sinks  map[string]*bq.Sink // by dataset_prefix
}

var (
	_ systems.Stager   = (*Sink)(nil)
	_ systems.Finisher = (*Sink)(nil)
)

// NewSink returns the sink.
func NewSink(writer *managedwriter.Client, query *bigquery.Client, o SinkOptions) (*Sink, error) {
	if !bq.ValidProject(o.Project) {
		return nil, fmt.Errorf("GCP_PROJECT_ID %q is not a project id", o.Project)
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = 30 * time.Second
	}
	s := &Sink{writer: writer, query: query, o: o, sinks: map[string]*bq.Sink{}}
	if _, err := s.inner(context.Background()); err != nil {
		return nil, err
	}
	return s, nil
}

// inner is the Storage Write sink of the scope's dataset.
func (s *Sink) inner(ctx context.Context) (*bq.Sink, error) {
	prefix := systems.ScopeFrom(ctx).DatasetPrefix
	if !contract.ValidPrefix(prefix) {
		return nil, fmt.Errorf("dataset_prefix %q is not letters, digits and _: %w", prefix, systems.ErrPermanent)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if in, ok := s.sinks[prefix]; ok {
		return in, nil
	}
	dataset := "nba_predictions"
	if prefix != "" {
		dataset = prefix + "_" + dataset
	}
	in, err := bq.NewSink(s.writer, s.query, bq.SinkOptions{Project: s.o.Project, Dataset: dataset, Table: OutputTable,
		CallTimeout: s.o.CallTimeout, Rows: &bq.RowFormat{Schema: OutputSchema, SchemaFile: "docs/migrating.md (the output table)", Row: s.row}})
	if err != nil {
		return nil, err
	}
	s.sinks[prefix] = in
	return in, nil
}

// row is a prediction as a row of player_prop_predictions (nil for a
// failure record).
func (s *Sink) row(p *systems.Prediction, _ int64, _ time.Time) (map[string]any, error) {
	if p.Failed {
		return nil, nil
	}
	d, err := civil.ParseDate(p.GameDate)
	if err != nil {
		return nil, fmt.Errorf("game date %q: %w", p.GameDate, err)
	}
	points := contract.Round1(systems.Clamp(p.PredictedPoints, 0, 60))
	conf := contract.Round2(systems.Clamp(p.Confidence, 0, 100))
	quality, _ := p.Attrs["feature_quality_score"].(float64)
	ready, hasReady := p.Attrs["is_quality_ready"].(bool)
	defaults, _ := p.Attrs["default_feature_count"].(int64)
	a := contract.Actionability{Predicted: points, Confidence: conf, Line: p.Line, Recommendation: string(p.Recommendation),
		Quality: quality, DefaultFeatureCount: defaults}
	if hasReady {
		a.QualityReady = &ready
	}
	actionable, reason, sane := contract.Actionable(a)
	row := map[string]any{
		"prediction_id": contract.PredictionID(p.GameID, p.PlayerLookup, p.SystemID, p.Line), "system_id": p.SystemID,
		"player_lookup": p.PlayerLookup, "game_date": d, "game_id": p.GameID, "prediction_version": int64(1),
		"predicted_points": points, "confidence_score": conf, "recommendation": string(p.Recommendation),
		"is_active": sane, "created_at": p.CreatedAt, "predicted_at": p.CreatedAt, "is_actionable": actionable,
		"model_version": p.ModelVersion, "batch_id": p.BatchID,
	}
	if reason != "" {
		row["filter_reason"] = reason
	}
	if p.Line != nil {
		row["current_points_line"] = *p.Line
		row["line_margin"] = contract.Round2(points - *p.Line)
	}
	if s.o.BuildCommit != "" {
		row["build_commit_sha"] = s.o.BuildCommit
	}
	if s.o.Revision != "" {
		row["deployment_revision"] = s.o.Revision
	}
	for _, col := range passThrough {
		if v, ok := p.Attrs[col]; ok && v != nil {
			row[col] = v
		}
	}
	mode, _ := p.Attrs["prediction_run_mode"].(string)
	row["prediction_made_before_game"] = !strings.EqualFold(mode, contract.ModeBackfill)
	if v, ok := row["tier_adjustment"].(float64); ok && math.IsNaN(v) {
		delete(row, "tier_adjustment")
	}
	return row, nil
}

// Write implements systems.Sink.
func (s *Sink) Write(ctx context.Context, batchID string, epoch int64, rows []systems.Prediction) error {
	in, err := s.inner(ctx)
	if err != nil {
		return err
	}
	return in.Write(ctx, batchID, epoch, rows)
}

// Stage implements systems.Stager.
func (s *Sink) Stage(ctx context.Context, batchID string, epoch int64, rows []systems.Prediction) (string, error) {
	in, err := s.inner(ctx)
	if err != nil {
		return "", err
	}
	return in.Stage(ctx, batchID, epoch, rows)
}

// Commit implements systems.Stager.
func (s *Sink) Commit(ctx context.Context, batchID, token string, players []string, rows int) error {
	in, err := s.inner(ctx)
	if err != nil {
		return err
	}
	return in.Commit(ctx, batchID, token, players, rows)
}

// dedupeSQL keeps one row per prediction_id for the date, the newest: a
// re-run at the same line replaces the earlier row, as the stage's MERGE
// on its key did.
const dedupeSQL = "-- predworker:dedupe\nDELETE FROM %[1]s t WHERE t.game_date = @game_date AND EXISTS (" +
	"SELECT 1 FROM %[1]s n WHERE n.game_date = @game_date AND n.prediction_id = t.prediction_id " +
	"AND (n.created_at > t.created_at OR (n.created_at = t.created_at AND IFNULL(n.batch_id, '') > IFNULL(t.batch_id, ''))))"

// activeSQL leaves one active row per (game_id, player_lookup, system_id)
// for the date, the newest active one (§4's is_active rule).
const deactivateSQL = "-- predworker:deactivate\nUPDATE %[1]s t SET is_active = FALSE, updated_at = CURRENT_TIMESTAMP() " +
	"WHERE t.game_date = @game_date AND t.is_active = TRUE AND EXISTS (" +
	"SELECT 1 FROM %[1]s n WHERE n.game_date = @game_date AND n.is_active = TRUE AND n.game_id = t.game_id " +
	"AND n.player_lookup = t.player_lookup AND n.system_id = t.system_id " +
	"AND (n.created_at > t.created_at OR (n.created_at = t.created_at AND n.prediction_id > t.prediction_id)))"

// Finish implements systems.Finisher: after a batch, one row per
// prediction id and one active row per key for its date. Both statements
// are idempotent, so a crash before the batch is marked completed runs
// them again harmlessly.
func (s *Sink) Finish(ctx context.Context, batchID, gameDate string) error {
	t, err := tableName(s.o.Project, systems.ScopeFrom(ctx).DatasetPrefix, "nba_predictions", OutputTable)
	if err != nil {
		return err
	}
	p, err := bq.DateParam(gameDate)
	if err != nil {
		return err
	}
	for _, st := range []struct{ op, sql string }{{"keep the newest row of each prediction of " + gameDate, dedupeSQL},
		{"apply is_active to " + gameDate, deactivateSQL}} {
		if err := bq.RunQuery(ctx, s.query, s.o.CallTimeout, st.op+" ("+batchID+")", fmt.Sprintf(st.sql, t),
			[]bigquery.QueryParameter{p}, nil); err != nil {
			return err
		}
	}
	return nil
}

// Check verifies that the output table has the columns the sink writes
// (for `worker doctor`).
func (s *Sink) Check(ctx context.Context) error {
	in, err := s.inner(ctx)
	if err != nil {
		return err
	}
	return in.Check(ctx)
}
