package bigquery

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"cloud.google.com/go/bigquery"

	"github.com/predworker/predworker/systems"
)

// SinkOptions configures the BigQuery prediction sink.
type SinkOptions struct {
	Project string // the tables' project
	Dataset string
	// Staging receives each chunk's rows by streaming insert; Final is the
	// table readers use, filled by one MERGE when the batch completes. Both
	// have the schema in deploy/bigquery/predictions_schema.json.
	Staging, Final string
	CallTimeout    time.Duration // per call (default 30 s)
}

// Sink implements systems.Sink and systems.Finalizer.
//
// Exactly once, in three steps:
//  1. Write streams a chunk's rows into the staging table with insert ids
//     derived from (batch, player, system), so a replayed chunk usually adds
//     nothing; when BigQuery's best-effort de-duplication misses, staging
//     holds a duplicate, never a loss.
//  2. The chunk's checkpoint is committed only after Write returned.
//  3. Finalize runs one MERGE from staging into the final table, keeping one
//     staging row per key and inserting only keys the final table lacks. A
//     crash or a replay before or after the MERGE runs it again with no
//     effect. The final table never receives streamed rows, so the rule that
//     rows in the streaming buffer cannot be MERGEd does not apply to it.
//
// A stale owner's late streamed rows can only land in staging; once the
// MERGE ran they are never read again for that key.
type Sink struct {
	client   *bigquery.Client
	staging  *bigquery.Inserter
	mergeSQL string
	timeout  time.Duration
}

var (
	_ systems.Sink      = (*Sink)(nil)
	_ systems.Finalizer = (*Sink)(nil)
)

// MergeKey is the documented key of a prediction row, in MERGE ON order.
var MergeKey = []string{"game_date", "batch_id", "player_lookup", "system_id"}

// NewSink returns the sink on client.
func NewSink(client *bigquery.Client, o SinkOptions) (*Sink, error) {
	for name, v := range map[string]string{"staging table": o.Staging, "final table": o.Final} {
		if !tableRe.MatchString(v) {
			return nil, fmt.Errorf("BigQuery %s %q is not a table id", name, v)
		}
	}
	if err := (Options{TableProject: o.Project, Dataset: o.Dataset, Table: o.Final}).ValidateIdentifiers(); err != nil {
		return nil, err
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = 30 * time.Second
	}
	staging := fmt.Sprintf("`%s.%s.%s`", o.Project, o.Dataset, o.Staging)
	final := fmt.Sprintf("`%s.%s.%s`", o.Project, o.Dataset, o.Final)
	ins := client.DatasetInProject(o.Project, o.Dataset).Table(o.Staging).Inserter()
	return &Sink{client: client, staging: ins, timeout: o.CallTimeout, mergeSQL: "MERGE " + final + " T\n" +
		"USING (\n" +
		"  SELECT * EXCEPT (rn) FROM (\n" +
		"    SELECT *, ROW_NUMBER() OVER (PARTITION BY game_date, batch_id, player_lookup, system_id\n" +
		"                                 ORDER BY written_at, epoch) AS rn\n" +
		"    FROM " + staging + "\n" +
		"    WHERE batch_id = @batch_id AND game_date = @game_date)\n" +
		"  WHERE rn = 1) S\n" +
		"ON T.game_date = @game_date AND T.game_date = S.game_date AND T.batch_id = S.batch_id\n" +
		"   AND T.player_lookup = S.player_lookup AND T.system_id = S.system_id\n" +
		"WHEN NOT MATCHED THEN INSERT ROW"}, nil
}

// MergeSQL is the statement Finalize runs (for review and tests).
func (s *Sink) MergeSQL() string { return s.mergeSQL }

// InsertID is the deterministic streaming insert id of a row's key.
func InsertID(batchID, player, system string) string {
	sum := sha256.Sum256([]byte(batchID + "\x00" + player + "\x00" + system))
	return hex.EncodeToString(sum[:16])
}

// predictionRow is the tables' row.
type predictionRow struct {
	BatchID         string               `bigquery:"batch_id"`
	GameDate        string               `bigquery:"game_date"`
	GameID          string               `bigquery:"game_id"`
	PlayerLookup    string               `bigquery:"player_lookup"`
	SystemID        string               `bigquery:"system_id"`
	PredictedPoints float64              `bigquery:"predicted_points"`
	Confidence      float64              `bigquery:"confidence"`
	Recommendation  string               `bigquery:"recommendation"`
	Line            bigquery.NullFloat64 `bigquery:"line"`
	Fallback        bool                 `bigquery:"fallback"`
	FallbackFrom    string               `bigquery:"fallback_from"`
	FallbackReason  string               `bigquery:"fallback_reason"`
	ProducedBy      string               `bigquery:"produced_by"`
	Failed          bool                 `bigquery:"failed"`
	FailureReason   string               `bigquery:"failure_reason"`
	ModelVersion    string               `bigquery:"model_version"`
	CreatedAt       time.Time            `bigquery:"created_at"`
	Epoch           int64                `bigquery:"epoch"`
	WrittenAt       time.Time            `bigquery:"written_at"`
}

// Write implements systems.Sink: one streaming insert of the chunk's rows,
// under a deadline (Inserter.Put retries forever without one).
func (s *Sink) Write(ctx context.Context, batchID string, epoch int64, rows []systems.Prediction) error {
	if len(rows) == 0 {
		return nil
	}
	now := time.Now().UTC()
	savers := make([]*bigquery.StructSaver, len(rows))
	for i := range rows {
		r := &rows[i]
		if r.BatchID != batchID {
			return fmt.Errorf("row for batch %q in a write for %q", r.BatchID, batchID)
		}
		pr := &predictionRow{BatchID: r.BatchID, GameDate: r.GameDate, GameID: r.GameID, PlayerLookup: r.PlayerLookup,
			SystemID: r.SystemID, PredictedPoints: r.PredictedPoints, Confidence: r.Confidence,
			Recommendation: string(r.Recommendation), Fallback: r.Fallback, FallbackFrom: r.FallbackFrom,
			FallbackReason: r.FallbackReason, ProducedBy: r.ProducedBy, Failed: r.Failed, FailureReason: r.FailureReason,
			ModelVersion: r.ModelVersion, CreatedAt: r.CreatedAt, Epoch: epoch, WrittenAt: now}
		if r.Line != nil {
			pr.Line = bigquery.NullFloat64{Float64: *r.Line, Valid: true}
		}
		savers[i] = &bigquery.StructSaver{Struct: pr, InsertID: InsertID(r.BatchID, r.PlayerLookup, r.SystemID)}
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.staging.Put(ctx, savers); err != nil {
		return classify(ctx, fmt.Sprintf("stream %d rows of %s", len(rows), batchID), err)
	}
	return nil
}

// Finalize implements systems.Finalizer: the idempotent MERGE of the batch's
// staging rows into the final table.
func (s *Sink) Finalize(ctx context.Context, batchID, gameDate string) error {
	p, err := dateParam(gameDate)
	if err != nil {
		return err
	}
	return runQuery(ctx, s.client, s.timeout, "merge predictions of "+batchID, s.mergeSQL,
		[]bigquery.QueryParameter{{Name: "batch_id", Value: batchID}, p}, nil)
}
