package bigquery_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"

	"github.com/predworker/predworker/internal/bqfake"
	"github.com/predworker/predworker/state"
	statesqlite "github.com/predworker/predworker/state/sqlite"
	"github.com/predworker/predworker/systems"
	bq "github.com/predworker/predworker/systems/bigquery"
	"github.com/predworker/predworker/systems/league"
	"github.com/predworker/predworker/systems/movingavg"
	"github.com/predworker/predworker/systems/zonematchup"
	"github.com/predworker/predworker/worker"
)

// countBQ answers the sink's verification query (COUNT of a chunk's rows)
// with n, and checks its parameters.
type countBQ struct {
	t       *testing.T
	n       atomic.Int64
	queries atomic.Int64
}

func (c *countBQ) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != "POST" || r.URL.Path != "/projects/run-proj/queries" {
		c.t.Errorf("unexpected request %s %s", r.Method, r.URL)
		w.WriteHeader(http.StatusNotFound)
		return
	}
	var body struct {
		Query           string           `json:"query"`
		QueryParameters []map[string]any `json:"queryParameters"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		c.t.Errorf("query body: %v", err)
	}
	c.queries.Add(1)
	if !strings.Contains(body.Query, "@batch_id") || !strings.Contains(body.Query, "UNNEST(@players)") || len(body.QueryParameters) != 2 {
		c.t.Errorf("verification query %q with %d parameters", body.Query, len(body.QueryParameters))
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"kind": "bigquery#queryResponse", "jobComplete": true,
		"jobReference": map[string]any{"projectId": "run-proj", "jobId": "count-1", "location": "US"},
		"schema":       map[string]any{"fields": []any{map[string]any{"name": "n", "type": "INTEGER"}}},
		"totalRows":    "1", "rows": []any{map[string]any{"f": []any{map[string]any{"v": fmt.Sprint(c.n.Load())}}}}})
}

func newWriteSink(t *testing.T, timeout time.Duration) (*bq.Sink, *bqfake.Write, *countBQ) {
	t.Helper()
	fw, addr := bqfake.ServeWrite(t)
	writer := bqfake.WriteClient(t, addr)
	cb := &countBQ{t: t}
	query := restClient(t, cb)
	s, err := bq.NewSink(writer, query, bq.SinkOptions{Project: "pred-proj", Dataset: "nba", Table: "predictions", CallTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	return s, fw, cb
}

func predictionRows(batch string, players ...string) []systems.Prediction {
	var out []systems.Prediction
	line := 20.5
	for _, p := range players {
		for _, sys := range []string{"a", "b"} {
			out = append(out, systems.Prediction{BatchID: batch, GameDate: "2025-01-15", GameID: "g1", PlayerLookup: p,
				SystemID: sys, PredictedPoints: 21, Confidence: 60, Recommendation: systems.Over, Line: &line,
				CreatedAt: time.Unix(1_736_900_000, 0)})
		}
	}
	return out
}

// Staged rows are invisible until committed; a second commit is success and
// adds nothing; every column arrives as written.
func TestStagedRowsAppearOnlyOnCommit(t *testing.T) {
	t.Parallel()
	s, fw, _ := newWriteSink(t, 10*time.Second)
	rows := predictionRows("b1", "x", "y")
	token, err := s.Stage(t.Context(), "b1", 3, rows)
	if err != nil || token == "" {
		t.Fatalf("stage = %q, %v", token, err)
	}
	if n := len(fw.Rows()); n != 0 {
		t.Fatalf("%d rows visible before the commit", n)
	}
	for range 2 {
		if err := s.Commit(t.Context(), "b1", token, []string{"x", "y"}, len(rows)); err != nil {
			t.Fatal(err)
		}
	}
	got := fw.Rows()
	if len(got) != 4 {
		t.Fatalf("%d rows after two commits, want 4", len(got))
	}
	r := got[0]
	if r["batch_id"] != "b1" || r["player_lookup"] != "x" || r["system_id"] != "a" || r["epoch"] != int64(3) ||
		r["line"] != 20.5 || r["recommendation"] != "OVER" || r["game_date"] != int32(20103) || r["fallback"] != false ||
		r["created_at"] != int64(1_736_900_000_000_000) {
		t.Fatalf("row as stored: %v", r)
	}
}

// A column the table no longer has (schema drift) is a permanent error that
// names it, never retried forever.
func TestRowErrorsArePermanentAndNameTheColumn(t *testing.T) {
	t.Parallel()
	s, fw, _ := newWriteSink(t, 10*time.Second)
	fw.Fault(bqfake.Faults{RefuseRows: "fallback_reason"})
	_, err := s.Stage(t.Context(), "b1", 1, predictionRows("b1", "x"))
	if !errors.Is(err, systems.ErrPermanent) || !strings.Contains(err.Error(), "fallback_reason") ||
		worker.Classify(err) != worker.ClassDependency {
		t.Fatalf("stage into a drifted table = %v (%s), want a permanent error naming fallback_reason", err, worker.Classify(err))
	}
}

// A checkpointed stream BigQuery no longer knows: the table says whether
// its rows were committed (success) or lost (ErrStagedRowsLost), never a
// second copy.
func TestForgottenStreamIsVerifiedAgainstTheTable(t *testing.T) {
	t.Parallel()
	s, fw, cb := newWriteSink(t, 10*time.Second)
	rows := predictionRows("b1", "x", "y")
	token, err := s.Stage(t.Context(), "b1", 1, rows)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(t.Context(), "b1", token, []string{"x", "y"}, 4); err != nil {
		t.Fatal(err)
	}
	fw.Forget(token) // garbage collected since
	cb.n.Store(4)
	if err := s.Commit(t.Context(), "b1", token, []string{"x", "y"}, 4); err != nil {
		t.Fatalf("commit of a committed, forgotten stream = %v", err)
	}
	lost, err := s.Stage(t.Context(), "b1", 1, predictionRows("b1", "z"))
	if err != nil {
		t.Fatal(err)
	}
	fw.Forget(lost) // expired before anyone committed it
	cb.n.Store(0)
	if err := s.Commit(t.Context(), "b1", lost, []string{"z"}, 2); !errors.Is(err, systems.ErrStagedRowsLost) ||
		!worker.Classify(err).Permanent() {
		t.Fatalf("commit of a lost stream = %v, want ErrStagedRowsLost", err)
	}
	if n := len(fw.Rows()); n != 4 || cb.queries.Load() != 2 {
		t.Fatalf("%d rows and %d verification queries, want 4 and 2", n, cb.queries.Load())
	}
}

// chaos injects the failures the engine must survive into the state store
// and the sink: a crash between staging and checkpoint, and one between
// checkpoint and commit.
type chaos struct {
	state.Store
	sink           *bq.Sink
	crashCheckpt   int // chunk whose checkpoint the run never reaches
	crashCommit    int // chunk whose commit the run never reaches
	cancel         context.CancelFunc
	cpOnce, cmOnce sync.Once
}

func (c *chaos) Checkpoint(ctx context.Context, id string, l state.Lease, p state.Progress, ttl time.Duration) (state.Lease, error) {
	crashed := false
	if p.DoneChunks-1 == c.crashCheckpt {
		c.cpOnce.Do(func() { c.cancel(); crashed = true })
	}
	if crashed {
		return l, context.Canceled
	}
	return c.Store.Checkpoint(ctx, id, l, p, ttl)
}

type chaosSink struct{ *chaos }

func (c chaosSink) Write(ctx context.Context, batchID string, epoch int64, rows []systems.Prediction) error {
	return c.sink.Write(ctx, batchID, epoch, rows)
}

func (c chaosSink) Stage(ctx context.Context, batchID string, epoch int64, rows []systems.Prediction) (string, error) {
	return c.sink.Stage(ctx, batchID, epoch, rows)
}

func (c chaosSink) Commit(ctx context.Context, batchID, token string, players []string, rows int) error {
	crashed := false
	if len(players) > 0 && players[0] == c.firstOfChunk(c.crashCommit) {
		c.cmOnce.Do(func() { c.cancel(); crashed = true })
	}
	if crashed {
		return context.Canceled
	}
	return c.sink.Commit(ctx, batchID, token, players, rows)
}

var chunkFirst sync.Map // chunk index → first player, set by the test

func (c *chaos) firstOfChunk(i int) string {
	v, _ := chunkFirst.Load(i)
	s, _ := v.(string)
	return s
}

// The engine with the Storage Write API sink, through everything that used
// to duplicate rows: an append that lands but whose answer is lost (the
// retry stages another stream), a crash between staging and checkpoint, a
// crash between checkpoint and commit, and a stale owner that stages after
// it was taken over. The table ends with exactly one row per (player,
// system), and the status counters equal it.
func TestSinkExactlyOnceAcrossCrashesAndTakeover(t *testing.T) {
	t.Parallel()
	sink, fw, _ := newWriteSink(t, 2*time.Second)
	fw.Fault(bqfake.Faults{DropAcks: 1}) // the first append lands, its answer never comes
	st, err := statesqlite.New(t.Context(), filepath.Join(t.TempDir(), "state.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	reg := systems.NewRegistry()
	reg.Register(movingavg.New(), "")
	reg.Register(zonematchup.New(), movingavg.ID)
	slate, err := league.Default().Slate(t.Context(), "2025-01-15")
	if err != nil {
		t.Fatal(err)
	}
	players := slate[:11] // 3 chunks of 4
	for i := range 3 {
		chunkFirst.Store(i, players[i*4])
	}
	engine := func(owner string, store state.Store, s systems.Sink) *worker.Engine {
		e, err := worker.New(worker.Config{Owner: owner, RetryMaxInterval: 50 * time.Millisecond},
			worker.Deps{Store: store, Features: league.Default(), Sink: s, Registry: reg})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	// First owner: chunk 0 (through the lost answer), then a crash before
	// chunk 1's checkpoint.
	ctx1, cancel1 := context.WithCancel(t.Context())
	c1 := &chaos{Store: st, sink: sink, crashCheckpt: 1, crashCommit: -1, cancel: cancel1}
	e1 := engine("first", c1, chaosSink{c1})
	b, _, err := e1.Submit(t.Context(), "bq-batch", state.Request{GameDate: "2025-01-15", Players: players, ChunkSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e1.Run(ctx1, b.ID, worker.RunOptions{}); err == nil {
		t.Fatal("the first run survived its crash")
	}
	// Second owner: re-runs chunk 1, crashes between its checkpoint and its
	// commit.
	ctx2, cancel2 := context.WithCancel(t.Context())
	c2 := &chaos{Store: st, sink: sink, crashCheckpt: -1, crashCommit: 1, cancel: cancel2}
	if _, err := engine("second", c2, chaosSink{c2}).Run(ctx2, b.ID, worker.RunOptions{Claim: state.ClaimOptions{Force: true}}); err == nil {
		t.Fatal("the second run survived its crash")
	}
	mid, err := st.Get(t.Context(), b.ID)
	if err != nil || mid.DoneChunks != 2 || mid.SinkToken == "" {
		t.Fatalf("after the second crash: %d chunks, token %q, %v", mid.DoneChunks, mid.SinkToken, err)
	}
	// A stale owner (the first, paused with its old lease) stages chunk 2:
	// its checkpoint is fenced, so it never commits.
	stale := mid.Lease
	stale.Owner, stale.Epoch = "first", 1
	if _, err := sink.Stage(t.Context(), b.ID, 1, predictionRows(b.ID, "stale-player")); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Checkpoint(t.Context(), b.ID, stale, state.Progress{DoneChunks: 3}, time.Minute); !errors.Is(err, state.ErrLeaseLost) {
		t.Fatalf("stale checkpoint = %v", err)
	}
	// Third owner: commits chunk 1's stream again, runs chunk 2, completes.
	done, err := engine("third", st, sink).Run(t.Context(), b.ID, worker.RunOptions{Claim: state.ClaimOptions{Force: true}})
	if err != nil || done.Status != state.StatusCompleted {
		t.Fatalf("third run: %s, %v", done.Status, err)
	}
	seen := map[string]int{}
	var stored state.Progress
	for _, r := range fw.Rows() {
		seen[fmt.Sprint(r["player_lookup"], "/", r["system_id"])]++
		switch {
		case r["failed"] == true:
			stored.FailedItems++
		case r["fallback"] == true:
			stored.Fallbacks++
			stored.Predictions++
		default:
			stored.Predictions++
		}
	}
	for _, p := range players {
		for _, sys := range []string{movingavg.ID, zonematchup.ID} {
			if n := seen[p+"/"+sys]; n != 1 {
				t.Errorf("%s/%s: %d rows, want exactly 1", p, sys, n)
			}
		}
	}
	if len(seen) != 22 {
		t.Errorf("%d keys in the table, want 22 (the stale owner's must not be there)", len(seen))
	}
	created, committed := fw.StreamCounts()
	t.Logf("%d pending streams created, %d committed", created, committed)
	// chunk 0 twice (the lost answer), chunk 1 by the first and the second
	// owner, the stale owner's, chunk 2: 6 staged; one per chunk committed.
	if created != 6 || committed != 3 {
		t.Errorf("%d streams staged and %d committed, want 6 and 3", created, committed)
	}
	if stored.Predictions != done.Predictions || stored.Fallbacks != done.Fallbacks || stored.FailedItems != done.FailedItems {
		t.Errorf("status counts %d/%d/%d, the table holds %d/%d/%d", done.Predictions, done.Fallbacks, done.FailedItems,
			stored.Predictions, stored.Fallbacks, stored.FailedItems)
	}
}

// The schema in Go and the deployed table's schema file are the same.
func TestSchemaFileMatchesTheSink(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../deploy/bigquery/predictions_schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var file []struct{ Name, Type, Mode string }
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	if len(file) != len(bq.PredictionSchema) {
		t.Fatalf("%d columns in the file, %d in the sink", len(file), len(bq.PredictionSchema))
	}
	types := map[bigquery.FieldType]string{bigquery.StringFieldType: "STRING", bigquery.DateFieldType: "DATE",
		bigquery.FloatFieldType: "FLOAT64", bigquery.BooleanFieldType: "BOOL", bigquery.TimestampFieldType: "TIMESTAMP",
		bigquery.IntegerFieldType: "INT64"}
	for i, f := range bq.PredictionSchema {
		mode := "NULLABLE"
		if f.Required {
			mode = "REQUIRED"
		}
		if file[i].Name != f.Name || file[i].Type != types[f.Type] || file[i].Mode != mode {
			t.Errorf("column %d: file %+v, sink %s %s %s", i, file[i], f.Name, types[f.Type], mode)
		}
	}
}
