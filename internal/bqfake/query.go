package bqfake

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/bigquery"
	"google.golang.org/api/option"
)

// Request is one query a client sent: its SQL text and its parameters by
// name (a scalar as its text, an array as []string).
type Request struct {
	SQL    string
	Params map[string]any
}

// Tag is the query's tag: the word after "-- predworker:" on its first
// line ("" when it has none). The adapters tag every query so a double
// can route it.
func (r Request) Tag() string {
	first, _, _ := strings.Cut(r.SQL, "\n")
	_, tag, ok := strings.Cut(first, "-- predworker:")
	if !ok {
		return ""
	}
	return strings.TrimSpace(tag)
}

// Str returns a scalar parameter.
func (r Request) Str(name string) string { s, _ := r.Params[name].(string); return s }

// List returns an array parameter.
func (r Request) List(name string) []string { l, _ := r.Params[name].([]string); return l }

// Field is a column of a result.
type Field struct{ Name, Type, Mode string }

// Result is what a query answers: rows of values in Fields order (nil,
// string, float64, int, int64, bool, time.Time, []int64, []string), or the
// rows a DML statement changed.
type Result struct {
	Fields   []Field
	Rows     [][]any
	Affected int64
}

// Error is a failure a handler answers with (an HTTP status and reason).
type Error struct {
	Code    int
	Reason  string
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s: %s", e.Code, e.Reason, e.Message) }

// Query is a BigQuery REST endpoint answering jobs.query with Handle, and
// tables.get from Tables.
type Query struct {
	t      TB
	Handle func(Request) (*Result, error)
	// Tables are the schemas tables.get answers, by "project.dataset.table"
	// (set before the first request); any other table is 404.
	Tables   map[string][]Field
	mu       sync.Mutex
	requests []Request
}

// ServeQuery serves q on a loopback port until the test ends and returns
// its URL.
func ServeQuery(t TB, handle func(Request) (*Result, error), tables ...map[string][]Field) (*Query, string) {
	t.Helper()
	q := &Query{t: t, Handle: handle}
	if len(tables) > 0 {
		q.Tables = tables[0]
	}
	srv := httptest.NewServer(q)
	t.Cleanup(srv.Close)
	return q, srv.URL
}

// QueryClient returns a BigQuery client of project run-proj talking to url.
func QueryClient(t TB, url string) *bigquery.Client {
	t.Helper()
	c, err := bigquery.NewClient(t.Context(), "run-proj", option.WithEndpoint(url), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Requests returns the queries received so far.
func (q *Query) Requests() []Request {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]Request(nil), q.requests...)
}

type param struct {
	Name  string `json:"name"`
	Value struct {
		Value       *string `json:"value"`
		ArrayValues []struct {
			Value string `json:"value"`
		} `json:"arrayValues"`
	} `json:"parameterValue"`
	Type struct {
		Type string `json:"type"`
	} `json:"parameterType"`
}

func (q *Query) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/"); r.Method == http.MethodGet && len(parts) == 6 &&
		parts[0] == "projects" && parts[2] == "datasets" && parts[4] == "tables" {
		q.table(w, parts[1], parts[3], parts[5])
		return
	}
	if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/queries") {
		q.t.Errorf("bqfake: unexpected request %s %s", r.Method, r.URL)
		w.WriteHeader(http.StatusNotFound)
		_, _ = fmt.Fprint(w, `{"error": {"code": 404, "message": "not served by this double"}}`)
		return
	}
	var body struct {
		Query           string  `json:"query"`
		UseLegacySQL    *bool   `json:"useLegacySql"`
		QueryParameters []param `json:"queryParameters"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		q.t.Errorf("bqfake: query body: %v", err)
	}
	req := Request{SQL: body.Query, Params: map[string]any{}}
	for _, p := range body.QueryParameters {
		if p.Type.Type == "ARRAY" {
			l := []string{}
			for _, v := range p.Value.ArrayValues {
				l = append(l, v.Value)
			}
			req.Params[p.Name] = l
		} else if p.Value.Value != nil {
			req.Params[p.Name] = *p.Value.Value
		}
	}
	q.mu.Lock()
	q.requests = append(q.requests, req)
	job := fmt.Sprintf("job-%d", len(q.requests))
	q.mu.Unlock()
	res, err := q.Handle(req)
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			e = &Error{Code: http.StatusBadRequest, Reason: "invalidQuery", Message: err.Error()}
		}
		w.WriteHeader(e.Code)
		_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"code": e.Code, "message": e.Message,
			"errors": []any{map[string]any{"reason": e.Reason, "message": e.Message}}}})
		return
	}
	fields := schemaFields(res.Fields)
	rows := []any{}
	for _, row := range res.Rows {
		cells := []any{}
		for _, v := range row {
			cells = append(cells, map[string]any{"v": cell(v)})
		}
		rows = append(rows, map[string]any{"f": cells})
	}
	out := map[string]any{"kind": "bigquery#queryResponse", "jobComplete": true,
		"jobReference": map[string]any{"projectId": "run-proj", "jobId": job, "location": "US"},
		"schema":       map[string]any{"fields": fields}, "totalRows": strconv.Itoa(len(res.Rows)), "rows": rows}
	if res.Affected > 0 || len(res.Fields) == 0 {
		out["numDmlAffectedRows"] = strconv.FormatInt(res.Affected, 10)
	}
	_ = json.NewEncoder(w).Encode(out)
}

// table answers tables.get.
func (q *Query) table(w http.ResponseWriter, project, dataset, table string) {
	fields, ok := q.Tables[project+"."+dataset+"."+table]
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"code": 404, "message": "Not found: Table " + table,
			"errors": []any{map[string]any{"reason": "notFound"}}}})
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"kind": "bigquery#table",
		"tableReference": map[string]any{"projectId": project, "datasetId": dataset, "tableId": table},
		"schema":         map[string]any{"fields": schemaFields(fields)}})
}

func schemaFields(fs []Field) []any {
	out := []any{}
	for _, f := range fs {
		mode := f.Mode
		if mode == "" {
			mode = "NULLABLE"
		}
		out = append(out, map[string]any{"name": f.Name, "type": f.Type, "mode": mode})
	}
	return out
}

// cell encodes a value as the REST API's row cells do.
func cell(v any) any {
	switch x := v.(type) {
	case nil:
		return nil
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	case time.Time: // TIMESTAMP: seconds since the epoch
		return strconv.FormatFloat(float64(x.UnixMicro())/1e6, 'f', 6, 64)
	case []int64:
		items := []any{}
		for _, e := range x {
			items = append(items, map[string]any{"v": strconv.FormatInt(e, 10)})
		}
		return items
	case []string:
		items := []any{}
		for _, e := range x {
			items = append(items, map[string]any{"v": e})
		}
		return items
	}
	return fmt.Sprint(v)
}
