package bigquery_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	bq "github.com/predworker/predworker/systems/bigquery"

	"github.com/predworker/predworker/systems"
)

// fakeBQ is a BigQuery REST endpoint that checks what the Go client sends.
type fakeBQ struct {
	t        *testing.T
	mu       sync.Mutex
	queries  []map[string]any // bodies of POST /projects/p/queries
	paths    []string
	fail503  int  // answer this many queries with 503 first
	hang     bool // never answer (until the test ends)
	stop     chan struct{}
	rows     [][]any
	pageSize int
}

func (f *fakeBQ) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.paths = append(f.paths, r.Method+" "+r.URL.Path)
	f.mu.Unlock()
	if f.hang {
		select {
		case <-r.Context().Done():
		case <-f.stop:
		}
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.Method == "POST" && r.URL.Path == "/projects/run-proj/queries":
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			f.t.Errorf("query body: %v", err)
		}
		f.mu.Lock()
		f.queries = append(f.queries, body)
		fail := f.fail503 > 0
		if fail {
			f.fail503--
		}
		f.mu.Unlock()
		if fail {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprint(w, `{"error": {"code": 503, "message": "backend down", "errors": [{"reason": "backendError"}]}}`)
			return
		}
		// Not complete yet: the client must poll.
		_, _ = fmt.Fprint(w, `{"kind": "bigquery#queryResponse", "jobComplete": false,
			"jobReference": {"projectId": "run-proj", "jobId": "job-1", "location": "US"}}`)
	case r.Method == "GET" && r.URL.Path == "/projects/run-proj/queries/job-1":
		resp := map[string]any{"kind": "bigquery#getQueryResultsResponse", "jobComplete": true,
			"jobReference": map[string]any{"projectId": "run-proj", "jobId": "job-1", "location": "US"},
			"schema":       schema(), "totalRows": fmt.Sprint(len(f.rows))}
		if r.URL.Query().Get("maxResults") != "0" {
			start := 0
			if tok := r.URL.Query().Get("pageToken"); tok != "" {
				_, _ = fmt.Sscanf(tok, "page-%d", &start)
			}
			end := min(start+f.pageSize, len(f.rows))
			var rows []any
			for _, row := range f.rows[start:end] {
				rows = append(rows, encodeRow(row))
			}
			resp["rows"] = rows
			if end < len(f.rows) {
				resp["pageToken"] = fmt.Sprintf("page-%d", end)
			}
		}
		_ = json.NewEncoder(w).Encode(resp)
	default:
		f.t.Errorf("unexpected request %s %s", r.Method, r.URL)
		w.WriteHeader(http.StatusNotFound)
	}
}

var fieldNames = []string{"player_lookup", "game_id", "team", "opponent", "points_avg_last_5", "points_avg_last_10",
	"points_avg_season", "points_std_last_10", "games_played", "games_in_last_7_days", "fatigue_score",
	"paint_share", "mid_share", "three_share", "ft_share", "shot_zone_mismatch", "opponent_def_rating",
	"opponent_tier", "pace", "pace_adjustment", "usage_rate", "usage_spike", "home", "back_to_back", "rest_days",
	"form", "line", "quality", "recent_games"}

func fieldType(name string) string {
	switch name {
	case "player_lookup", "game_id", "team", "opponent", "form":
		return "STRING"
	case "games_played", "games_in_last_7_days", "opponent_tier", "rest_days":
		return "INTEGER"
	case "home", "back_to_back":
		return "BOOLEAN"
	case "recent_games":
		return "RECORD"
	}
	return "FLOAT"
}

func schema() map[string]any {
	var fields []any
	for _, n := range fieldNames {
		f := map[string]any{"name": n, "type": fieldType(n), "mode": "NULLABLE"}
		if n == "recent_games" {
			f["mode"] = "REPEATED"
			f["fields"] = []any{
				map[string]any{"name": "date", "type": "DATE"}, map[string]any{"name": "opp_tier", "type": "INTEGER"},
				map[string]any{"name": "rest_days", "type": "INTEGER"}, map[string]any{"name": "home", "type": "BOOLEAN"},
				map[string]any{"name": "form", "type": "STRING"}, map[string]any{"name": "points", "type": "FLOAT"},
			}
		}
		fields = append(fields, f)
	}
	return map[string]any{"fields": fields}
}

// encodeRow turns Go values into BigQuery's {"f": [{"v": …}]} row format.
func encodeRow(vals []any) map[string]any {
	var cells []any
	for _, v := range vals {
		switch x := v.(type) {
		case nil:
			cells = append(cells, map[string]any{"v": nil})
		case []any: // repeated record
			var items []any
			for _, rec := range x {
				items = append(items, map[string]any{"v": encodeRow(rec.([]any))})
			}
			cells = append(cells, map[string]any{"v": items})
		default:
			cells = append(cells, map[string]any{"v": fmt.Sprint(x)})
		}
	}
	return map[string]any{"f": cells}
}

func row(player string, line any) []any {
	return []any{player, "0022400001", "BOS", "NYK", 20.5, 19.0, 18.2, 5.1, 30, 3, 44.0, 0.4, 0.1, 0.3, 0.2, 1.2,
		112.3, 2, 99.5, 0.5, 24.0, 0.8, true, false, 1, "neutral", line, 88.0,
		[]any{[]any{"2025-01-13", 1, 2, true, "hot", 24.0}, []any{"2025-01-11", 3, 1, false, "neutral", 15.0}}}
}

func setup(t *testing.T, f *fakeBQ, timeout time.Duration) *bq.Source {
	t.Helper()
	f.t = t
	f.stop = make(chan struct{})
	client := restClient(t, f)
	t.Cleanup(func() { close(f.stop) }) // runs first: frees a hung handler so the server can close
	s, err := bq.New(client, bq.Options{TableProject: "feat-proj", Dataset: "nba", Table: "player_features", CallTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const hostile = "o'neil\"; DROP TABLE x; -- \u202e\U0001F3C0"

func TestFeaturesQueryIsParameterizedAndPaged(t *testing.T) {
	t.Parallel()
	fake := &fakeBQ{pageSize: 2, rows: [][]any{row("a", 21.5), row("b", nil), row("c", 17.5)}}
	s := setup(t, fake, 10*time.Second)
	players := []string{"a", "b", "c", hostile}
	got, err := s.Features(t.Context(), "2025-01-15", players)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("%d feature rows over 2 pages, want 3", len(got))
	}
	a, b := got["a"], got["b"]
	if a.PointsAvgL5 != 20.5 || a.GamesPlayed != 30 || !a.Home || a.OppTier != 2 || !a.HasLine || a.Line != 21.5 ||
		len(a.RecentGames) != 2 || a.RecentGames[0].Date != "2025-01-13" || a.RecentGames[1].Points != 15 || a.GameDate != "2025-01-15" {
		t.Errorf("decoded row = %+v", a)
	}
	if b.HasLine {
		t.Errorf("a NULL line decoded as a line: %+v", b)
	}
	if len(fake.queries) != 1 {
		t.Fatalf("%d queries for one chunk, want 1", len(fake.queries))
	}
	q := fake.queries[0]
	sql, _ := q["query"].(string)
	if !strings.Contains(sql, "@game_date") || !strings.Contains(sql, "UNNEST(@players)") ||
		!strings.Contains(sql, "`feat-proj.nba.player_features`") {
		t.Errorf("SQL = %q", sql)
	}
	for _, leaked := range []string{"2025-01-15", "o'neil", "DROP", "\u202e", `"a"`} {
		if strings.Contains(sql, leaked) {
			t.Errorf("SQL text contains a value (%q): %s", leaked, sql)
		}
	}
	if q["useLegacySql"] != false {
		t.Errorf("useLegacySql = %v", q["useLegacySql"])
	}
	params, _ := json.Marshal(q["queryParameters"])
	var ps []struct {
		Name string `json:"name"`
		Type struct {
			Type      string `json:"type"`
			ArrayType struct {
				Type string `json:"type"`
			} `json:"arrayType"`
		} `json:"parameterType"`
		Value struct {
			Value       string `json:"value"`
			ArrayValues []struct {
				Value string `json:"value"`
			} `json:"arrayValues"`
		} `json:"parameterValue"`
	}
	if err := json.Unmarshal(params, &ps); err != nil || len(ps) != 2 {
		t.Fatalf("parameters = %s (%v)", params, err)
	}
	if ps[0].Name != "game_date" || ps[0].Type.Type != "DATE" || ps[0].Value.Value != "2025-01-15" {
		t.Errorf("game_date parameter = %+v", ps[0])
	}
	var sent []string
	for _, v := range ps[1].Value.ArrayValues {
		sent = append(sent, v.Value)
	}
	if ps[1].Name != "players" || ps[1].Type.Type != "ARRAY" || ps[1].Type.ArrayType.Type != "STRING" ||
		strings.Join(sent, "|") != strings.Join(players, "|") {
		t.Errorf("players parameter = %+v", ps[1])
	}
	t.Logf("requests: %v", fake.paths)
}

func TestTransientErrorsAreRetriedAndClassified(t *testing.T) {
	t.Parallel()
	fake := &fakeBQ{pageSize: 10, rows: [][]any{row("a", 21.5)}, fail503: 2}
	s := setup(t, fake, 20*time.Second)
	got, err := s.Features(t.Context(), "2025-01-15", []string{"a"})
	if err != nil || len(got) != 1 {
		t.Fatalf("after two 503s: %d rows, %v", len(got), err)
	}
	if len(fake.queries) != 3 {
		t.Fatalf("%d attempts, want 3 (two 503s retried)", len(fake.queries))
	}
}

func TestHungServerHitsTheDeadline(t *testing.T) {
	t.Parallel()
	s := setup(t, &fakeBQ{hang: true}, 300*time.Millisecond)
	start := time.Now()
	_, err := s.Features(t.Context(), "2025-01-15", []string{"a"})
	took := time.Since(start)
	if !errors.Is(err, systems.ErrUnavailable) {
		t.Fatalf("hung server: %v, want ErrUnavailable (transient, never 'no features')", err)
	}
	if took > 5*time.Second {
		t.Fatalf("call returned after %v with a 300ms deadline", took)
	}
}

func TestSlate(t *testing.T) {
	t.Parallel()
	fake := &fakeBQ{pageSize: 10, rows: [][]any{row("a", 1.5), row("b", 2.5)}}
	s := setup(t, fake, 10*time.Second)
	got, err := s.Slate(t.Context(), "2025-01-15")
	if err != nil || strings.Join(got, ",") != "a,b" {
		t.Fatalf("slate = %v, %v", got, err)
	}
	empty := setup(t, &fakeBQ{pageSize: 10}, 10*time.Second)
	// No rows for the date: features not loaded yet (or no games); never a
	// permanent "no games".
	if _, err := empty.Slate(t.Context(), "2025-02-16"); !errors.Is(err, systems.ErrDataIncomplete) || errors.Is(err, systems.ErrNoGames) {
		t.Fatalf("empty slate: %v, want ErrDataIncomplete", err)
	}
	if _, err := s.Slate(t.Context(), "2025-13-45"); !errors.Is(err, systems.ErrUnknownDate) {
		t.Fatalf("bad date: %v", err)
	}
}

func TestIdentifiersAreValidated(t *testing.T) {
	t.Parallel()
	for _, o := range []bq.Options{
		{TableProject: "p; DROP", Dataset: "nba", Table: "t"},
		{TableProject: "feat-proj", Dataset: "nba`.x", Table: "t"},
		{TableProject: "feat-proj", Dataset: "nba", Table: "t` WHERE 1=1 --"},
	} {
		if _, err := bq.New(nil, o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}
