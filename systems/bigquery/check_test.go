package bigquery_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"google.golang.org/api/option"

	"github.com/predworker/predworker/internal/bqfake"
	"github.com/predworker/predworker/systems"
	bq "github.com/predworker/predworker/systems/bigquery"
)

// tablesBQ answers tables.get from a set of table schemas (the fields as
// the API's JSON has them); an unknown table is a 404 like BigQuery's.
type tablesBQ struct {
	t      *testing.T
	mu     sync.Mutex
	tables map[string][]map[string]string // "P/D/T" → fields
}

func (f *tablesBQ) set(key string, fields []map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tables[key] = fields
}

func (f *tablesBQ) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var p, d, tbl string
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")
	if r.Method != http.MethodGet || len(parts) != 6 || parts[0] != "projects" || parts[2] != "datasets" || parts[4] != "tables" {
		f.t.Errorf("unexpected request %s %s", r.Method, r.URL)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	p, d, tbl = parts[1], parts[3], parts[5]
	f.mu.Lock()
	fields, ok := f.tables[p+"/"+d+"/"+tbl]
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"code": 404,
			"message": "Not found: Table " + p + ":" + d + "." + tbl, "errors": []any{map[string]any{"reason": "notFound"}}}})
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"kind": "bigquery#table",
		"tableReference": map[string]any{"projectId": p, "datasetId": d, "tableId": tbl},
		"schema":         map[string]any{"fields": fields}})
}

func newTablesBQ(t *testing.T) (*tablesBQ, *bigquery.Client) {
	t.Helper()
	f := &tablesBQ{t: t, tables: map[string][]map[string]string{}}
	return f, restClient(t, f)
}

// restClient is a BigQuery client of project run-proj whose REST calls h
// answers; both are closed when the test ends.
func restClient(t *testing.T, h http.Handler) *bigquery.Client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	client, err := bigquery.NewClient(t.Context(), "run-proj", option.WithEndpoint(srv.URL), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// schemaFile reads deploy/bigquery/predictions_schema.json: the table
// create_tables.sh makes.
func schemaFile(t *testing.T) []map[string]string {
	t.Helper()
	raw, err := os.ReadFile("../../deploy/bigquery/predictions_schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var fields []map[string]string
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatal(err)
	}
	return fields
}

// The predictions table create_tables.sh makes passes the sink's check (its
// Standard SQL type names included); a missing table, a retyped column, a
// dropped column, and a REQUIRED column the sink never writes each fail it,
// naming the table and the column.
func TestSinkCheckFindsASchemaThatWouldRefuseRows(t *testing.T) {
	t.Parallel()
	f, client := newTablesBQ(t)
	_, addr := bqfake.ServeWrite(t)
	s, err := bq.NewSink(bqfake.WriteClient(t, addr), client, bq.SinkOptions{Project: "pred-proj", Dataset: "nba",
		Table: "predictions", CallTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	const key = "pred-proj/nba/predictions"

	err = s.Check(t.Context())
	if err == nil || !errors.Is(err, systems.ErrPermanent) || !strings.Contains(err.Error(), "pred-proj.nba.predictions") {
		t.Fatalf("missing table: %v", err)
	}

	f.set(key, schemaFile(t))
	if err := s.Check(t.Context()); err != nil {
		t.Fatalf("the shipped schema: %v", err)
	}

	for name, edit := range map[string]struct {
		change func([]map[string]string) []map[string]string
		want   string
	}{
		"retyped": {func(fs []map[string]string) []map[string]string {
			fs[5]["type"] = "STRING" // predicted_points
			return fs
		}, "predicted_points is STRING, not FLOAT"},
		"dropped": {func(fs []map[string]string) []map[string]string { return fs[1:] }, "batch_id missing"},
		"required extra": {func(fs []map[string]string) []map[string]string {
			return append(fs, map[string]string{"name": "region", "type": "STRING", "mode": "REQUIRED"})
		}, "region is REQUIRED but never written"},
		"nullable made required": {func(fs []map[string]string) []map[string]string {
			fs[8]["mode"] = "REQUIRED" // line
			return fs
		}, "line is REQUIRED but may be null"},
	} {
		f.set(key, edit.change(schemaFile(t)))
		err := s.Check(t.Context())
		if err == nil || !strings.Contains(err.Error(), edit.want) || !errors.Is(err, systems.ErrPermanent) {
			t.Errorf("%s: got %v, want it to say %q", name, err, edit.want)
		}
	}
}

// The feature table passes the source's check with every column the query
// reads, and fails it naming each missing one.
func TestSourceCheckNamesMissingColumns(t *testing.T) {
	t.Parallel()
	f, client := newTablesBQ(t)
	src, err := bq.New(client, bq.Options{TableProject: "feat-proj", Dataset: "nba", Table: "player_features",
		CallTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Check(t.Context()); err == nil || !strings.Contains(err.Error(), "feat-proj.nba.player_features") {
		t.Fatalf("missing table: %v", err)
	}
	var fields []map[string]string
	for _, c := range bq.FeatureColumns() {
		fields = append(fields, map[string]string{"name": c, "type": "STRING"})
	}
	f.set("feat-proj/nba/player_features", fields)
	if err := src.Check(t.Context()); err != nil {
		t.Fatalf("every column: %v", err)
	}
	var without []map[string]string
	for _, fl := range fields {
		if fl["name"] != "line" && fl["name"] != "pace" {
			without = append(without, fl)
		}
	}
	f.set("feat-proj/nba/player_features", without)
	if err := src.Check(t.Context()); err == nil || !strings.Contains(err.Error(), "lacks columns pace, line") {
		t.Fatalf("two columns missing: %v", err)
	}
}
