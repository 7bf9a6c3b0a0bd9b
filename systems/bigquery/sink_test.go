package bigquery_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"google.golang.org/api/option"

	"github.com/predworker/predworker/state"
	statesqlite "github.com/predworker/predworker/state/sqlite"
	"github.com/predworker/predworker/systems"
	bq "github.com/predworker/predworker/systems/bigquery"
	"github.com/predworker/predworker/systems/league"
	"github.com/predworker/predworker/systems/movingavg"
	"github.com/predworker/predworker/systems/zonematchup"
	"github.com/predworker/predworker/worker"
)

// fakeTables emulates the two tables: insertAll appends to staging (its
// best-effort de-duplication is switched off, the worst case), and the MERGE
// is applied with the semantics the statement states: one staging row per
// key, inserted into final when final lacks the key.
type fakeTables struct {
	t         *testing.T
	mu        sync.Mutex
	staging   []map[string]any
	insertIDs []string
	final     map[string]map[string]any
	merges    []map[string]any
}

func key(r map[string]any) string {
	return fmt.Sprint(r["game_date"], "|", r["batch_id"], "|", r["player_lookup"], "|", r["system_id"])
}

var mergeOn = regexp.MustCompile(`(?s)ON (.*?)\nWHEN`)

func (f *fakeTables) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	var body map[string]any
	_ = json.NewDecoder(r.Body).Decode(&body)
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.Method == "POST" && r.URL.Path == "/projects/pred-proj/datasets/nba/tables/predictions_staging/insertAll":
		rows, _ := body["rows"].([]any)
		for _, x := range rows {
			row := x.(map[string]any)
			f.insertIDs = append(f.insertIDs, row["insertId"].(string))
			f.staging = append(f.staging, row["json"].(map[string]any))
		}
		_, _ = fmt.Fprint(w, `{"kind": "bigquery#tableDataInsertAllResponse"}`)
	case r.Method == "POST" && r.URL.Path == "/projects/pred-proj/queries":
		f.merges = append(f.merges, body)
		sql, _ := body["query"].(string)
		if !strings.HasPrefix(sql, "MERGE ") {
			f.t.Errorf("unexpected query %q", sql)
		}
		params := map[string]string{}
		raw, _ := json.Marshal(body["queryParameters"])
		var ps []struct {
			Name  string `json:"name"`
			Value struct {
				Value string `json:"value"`
			} `json:"parameterValue"`
		}
		_ = json.Unmarshal(raw, &ps)
		for _, p := range ps {
			params[p.Name] = p.Value.Value
		}
		seen := map[string]bool{}
		for _, row := range f.staging {
			if row["batch_id"] != params["batch_id"] || row["game_date"] != params["game_date"] || seen[key(row)] {
				continue
			}
			seen[key(row)] = true
			if _, ok := f.final[key(row)]; !ok {
				f.final[key(row)] = row
			}
		}
		_, _ = fmt.Fprint(w, `{"kind": "bigquery#queryResponse", "jobComplete": true, "totalRows": "0",
			"jobReference": {"projectId": "pred-proj", "jobId": "merge-1", "location": "US"}, "schema": {"fields": []}}`)
	default:
		f.t.Errorf("unexpected request %s %s", r.Method, r.URL.Path)
		w.WriteHeader(http.StatusNotFound)
	}
}

func newSink(t *testing.T) (*bq.Sink, *fakeTables) {
	t.Helper()
	fake := &fakeTables{t: t, final: map[string]map[string]any{}}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	client, err := bigquery.NewClient(t.Context(), "pred-proj", option.WithEndpoint(srv.URL), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	s, err := bq.NewSink(client, bq.SinkOptions{Project: "pred-proj", Dataset: "nba", Staging: "predictions_staging",
		Final: "predictions", CallTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return s, fake
}

// crashAfterWrite cancels the run when a given chunk is about to be
// checkpointed: its rows are in the sink, its checkpoint is not, as after a
// kill -9 at that instant.
type crashAfterWrite struct {
	state.Store
	chunk  int
	cancel context.CancelFunc
	once   sync.Once
}

func (c *crashAfterWrite) Checkpoint(ctx context.Context, id string, l state.Lease, p state.Progress, ttl time.Duration) (state.Lease, error) {
	if p.DoneChunks-1 == c.chunk {
		crashed := false
		c.once.Do(func() { c.cancel(); crashed = true })
		if crashed {
			return l, context.Canceled
		}
	}
	return c.Store.Checkpoint(ctx, id, l, p, ttl)
}

func TestSinkExactlyOnceAcrossCrashAndReplay(t *testing.T) {
	t.Parallel()
	sink, fake := newSink(t)
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
	runCtx, cancel := context.WithCancel(t.Context())
	crash := &crashAfterWrite{Store: st, chunk: 1, cancel: cancel}
	e1, err := worker.New(worker.Config{Owner: "first"}, worker.Deps{Store: crash, Features: league.Default(), Sink: sink, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := e1.Submit(t.Context(), "bq-batch", state.Request{GameDate: "2025-01-15", Players: players, ChunkSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e1.Run(runCtx, b.ID, worker.RunOptions{}); err == nil {
		t.Fatal("the crashed run reported success")
	}
	mid, err := st.Get(t.Context(), b.ID)
	if err != nil || mid.DoneChunks != 1 {
		t.Fatalf("after the crash: done %d (%v), want 1 (chunk 1 written, not checkpointed)", mid.DoneChunks, err)
	}
	// Resume (another owner): chunk 1 is written again, then the rest, then the MERGE.
	e2, err := worker.New(worker.Config{Owner: "second"}, worker.Deps{Store: st, Features: league.Default(), Sink: sink, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	done, err := e2.Run(t.Context(), b.ID, worker.RunOptions{Claim: state.ClaimOptions{Force: true}})
	if err != nil || done.Status != state.StatusCompleted {
		t.Fatalf("resume: %s %v", done.Status, err)
	}
	// A replayed completion (crash between MERGE and Finish) merges again: no effect.
	if err := sink.Finalize(t.Context(), b.ID, "2025-01-15"); err != nil {
		t.Fatal(err)
	}

	want := len(players) * 2
	if len(fake.staging) <= want {
		t.Fatalf("staging has %d rows; the replayed chunk should have duplicated some (de-duplication off)", len(fake.staging))
	}
	if len(fake.final) != want {
		t.Fatalf("final table has %d rows, want exactly one per key: %d", len(fake.final), want)
	}
	// Insert ids are deterministic: the replayed rows carried the same ids.
	ids := map[string]int{}
	for _, id := range fake.insertIDs {
		ids[id]++
	}
	if len(ids) != want {
		t.Fatalf("%d distinct insert ids for %d keys", len(ids), want)
	}
	if id := bq.InsertID("bq-batch", players[0], movingavg.ID); ids[id] == 0 {
		t.Fatalf("insert id of (%s, %s) not the documented hash", players[0], movingavg.ID)
	}
	// The MERGE's key is exactly the documented key; values only as parameters.
	if len(fake.merges) != 2 {
		t.Fatalf("%d MERGE statements, want 2", len(fake.merges))
	}
	sql := fake.merges[0]["query"].(string)
	on := mergeOn.FindStringSubmatch(sql)
	if on == nil {
		t.Fatalf("no ON clause in %s", sql)
	}
	var cols []string
	for _, m := range regexp.MustCompile(`T\.(\w+) = S\.(\w+)`).FindAllStringSubmatch(on[1], -1) {
		if m[1] != m[2] {
			t.Errorf("ON compares T.%s with S.%s", m[1], m[2])
		}
		cols = append(cols, m[1])
	}
	if strings.Join(cols, ",") != strings.Join(bq.MergeKey, ",") {
		t.Errorf("MERGE key = %v, want %v", cols, bq.MergeKey)
	}
	if !strings.Contains(sql, "PARTITION BY game_date, batch_id, player_lookup, system_id") {
		t.Errorf("staging rows are not reduced by the same key: %s", sql)
	}
	for _, leaked := range []string{"bq-batch", "2025-01-15", players[0]} {
		if strings.Contains(sql, leaked) {
			t.Errorf("MERGE text contains the value %q", leaked)
		}
	}
}
