package api_test

import (
	"bufio"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/predworker/predworker/api"
	"github.com/predworker/predworker/events"
	eventssqlite "github.com/predworker/predworker/events/sqlite"
	"github.com/predworker/predworker/state"
	statesqlite "github.com/predworker/predworker/state/sqlite"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/league"
	"github.com/predworker/predworker/systems/movingavg"
	sinksqlite "github.com/predworker/predworker/systems/sqlite"
	"github.com/predworker/predworker/systems/zonematchup"
	"github.com/predworker/predworker/worker"
)

type fixture struct {
	srv    *httptest.Server
	store  *statesqlite.Store
	sink   *sinksqlite.Sink
	dead   *eventssqlite.Store
	runner *worker.Runner
}

// fixtureOpts varies the fixture: nil fields take the embedded defaults.
type fixtureOpts struct {
	features    systems.FeatureSource
	register    func(*systems.Registry)
	deadLetters events.DeadLetters
	engine      worker.Config
	pushBudget  time.Duration
	auth        api.Auth
	continuer   api.Continuer
	noReader    bool // a sink that cannot be read back (BigQuery)
	// wrapStore, when set, puts a wrapper around the state store (an
	// outage switch, say).
	wrapStore       func(state.Store) state.Store
	wrapDeadLetters func(events.DeadLetters) events.DeadLetters
	log             *slog.Logger // nil: discard
	checks          []api.Check
}

func setup(t *testing.T) *fixture { return setupWith(t, fixtureOpts{}) }

func setupWith(t *testing.T, o fixtureOpts) *fixture {
	t.Helper()
	dir := t.TempDir()
	st, err := statesqlite.New(t.Context(), filepath.Join(dir, "state.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	sk, err := sinksqlite.New(t.Context(), filepath.Join(dir, "predictions.db"))
	if err != nil {
		t.Fatal(err)
	}
	dead, err := eventssqlite.New(t.Context(), filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	reg := systems.NewRegistry()
	if o.register != nil {
		o.register(reg)
	} else {
		reg.Register(movingavg.New(), "")
		reg.Register(zonematchup.New(), movingavg.ID)
	}
	if o.features == nil {
		o.features = league.Default()
	}
	var dl events.DeadLetters = dead
	if o.deadLetters != nil {
		dl = o.deadLetters
	}
	if o.wrapDeadLetters != nil {
		dl = o.wrapDeadLetters(dl)
	}
	var store state.Store = st
	if o.wrapStore != nil {
		store = o.wrapStore(st)
	}
	if o.log == nil {
		o.log = nil2discard()
	}
	promReg := prometheus.NewRegistry()
	e, err := worker.New(o.engine, worker.Deps{Store: store, Features: o.features, Sink: sk,
		Registry: reg, Metrics: worker.NewMetrics(promReg, st), Logger: o.log})
	if err != nil {
		t.Fatal(err)
	}
	r := worker.NewRunner(e)
	var reader systems.PredictionReader = sk
	if o.noReader {
		reader = nil
	}
	srv := httptest.NewServer(api.New(api.Options{Runner: r, Store: store, Predictions: reader,
		Metrics: promhttp.HandlerFor(promReg, promhttp.HandlerOpts{}), Logger: o.log,
		DeadLetters: dl, PushBudget: o.pushBudget, Auth: o.auth, Continuer: o.continuer, Checks: o.checks}).Handler())
	t.Cleanup(func() {
		srv.Close()
		r.Drain(5 * time.Second)
		_ = st.Close()
		_ = sk.Close()
		_ = dead.Close()
	})
	return &fixture{srv: srv, store: st, sink: sk, dead: dead, runner: r}
}

func do(t *testing.T, method, url, contentType, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

type errBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field"`
	} `json:"error"`
}

func waitCompleted(t *testing.T, f *fixture, id string) api.Status {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, body := do(t, "GET", f.srv.URL+"/v1/batches/"+id, "", "")
		var st api.Status
		if err := json.Unmarshal(body, &st); err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET status: %d %s", resp.StatusCode, body)
		}
		if st.State == state.StatusCompleted {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("batch %s still %s", id, st.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCreateRunAndRead(t *testing.T) {
	t.Parallel()
	f := setup(t)
	body := `{"batch_id": "jan15", "game_date": "2025-01-15", "chunk_size": 100, "correlation_id": "c-1"}`
	resp, raw := do(t, "POST", f.srv.URL+"/v1/batches", "application/json", body)
	if resp.StatusCode != http.StatusAccepted || resp.Header.Get("Location") != "/v1/batches/jan15" {
		t.Fatalf("create = %d %s (Location %q)", resp.StatusCode, raw, resp.Header.Get("Location"))
	}
	st := waitCompleted(t, f, "jan15")
	if st.TotalItems < 400 || st.DoneItems != st.TotalItems || st.Predictions != 2*st.TotalItems ||
		st.CompletedAt == nil || st.CorrelationID != "c-1" || st.TotalChunks != st.DoneChunks {
		t.Fatalf("status = %+v", st)
	}
	// Same id and request again: the existing status, no second run.
	resp, raw = do(t, "POST", f.srv.URL+"/v1/batches", "application/json", body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(raw), `"completed"`) {
		t.Fatalf("duplicate create = %d %s", resp.StatusCode, raw)
	}
	// Same id, different request: 409.
	resp, raw = do(t, "POST", f.srv.URL+"/v1/batches", "application/json", `{"batch_id": "jan15", "game_date": "2025-01-16"}`)
	if resp.StatusCode != http.StatusConflict || !strings.Contains(string(raw), `"already_exists"`) {
		t.Fatalf("conflicting create = %d %s", resp.StatusCode, raw)
	}
	// Predictions as NDJSON, one line per (player, system), no duplicate key.
	resp, raw = do(t, "GET", f.srv.URL+"/v1/batches/jan15/predictions", "", "")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("predictions = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	seen := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	for sc.Scan() {
		var p systems.Prediction
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		key := p.PlayerLookup + "/" + p.SystemID
		if seen[key] {
			t.Fatalf("duplicate row %s", key)
		}
		seen[key] = true
	}
	if len(seen) != st.Predictions {
		t.Fatalf("%d rows streamed, status says %d", len(seen), st.Predictions)
	}
	// Resume of a completed batch is a 200 no-op.
	resp, raw = do(t, "POST", f.srv.URL+"/v1/batches/jan15/resume", "", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("resume completed = %d %s", resp.StatusCode, raw)
	}
	// List, filtered.
	resp, raw = do(t, "GET", f.srv.URL+"/v1/batches?state=completed&limit=10", "", "")
	if resp.StatusCode != 200 || !strings.Contains(string(raw), `"jan15"`) {
		t.Fatalf("list = %d %s", resp.StatusCode, raw)
	}
	resp, raw = do(t, "GET", f.srv.URL+"/v1/batches?state=running", "", "")
	if resp.StatusCode != 200 || strings.Contains(string(raw), `"jan15"`) {
		t.Fatalf("list running = %d %s", resp.StatusCode, raw)
	}
	// Metrics show the work.
	resp, raw = do(t, "GET", f.srv.URL+"/metrics", "", "")
	for _, want := range []string{`predworker_predictions_total{outcome="ok",system="moving_average"}`,
		`predworker_batches{state="completed"} 1`, "predworker_chunk_duration_seconds_bucket",
		"predworker_checkpoint_duration_seconds_count"} {
		if resp.StatusCode != 200 || !strings.Contains(string(raw), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestResumeLeaseHeldAndForce(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := t.Context()
	if _, _, err := f.store.Create(ctx, state.Batch{ID: "held", Request: state.Request{GameDate: "2025-01-15",
		ChunkSize: 2, Systems: []string{movingavg.ID}}, Items: []string{"x", "y"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Claim(ctx, "held", "elsewhere", time.Hour, state.ClaimOptions{}); err != nil {
		t.Fatal(err)
	}
	resp, raw := do(t, "POST", f.srv.URL+"/v1/batches/held/resume", "", "")
	if resp.StatusCode != http.StatusConflict || !strings.Contains(string(raw), `"lease_held"`) || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("resume of a held batch = %d %s", resp.StatusCode, raw)
	}
	resp, raw = do(t, "POST", f.srv.URL+"/v1/batches/held/resume?force=true", "", "")
	if resp.StatusCode != http.StatusAccepted || !strings.Contains(string(raw), `"epoch":2`) {
		t.Fatalf("forced resume = %d %s", resp.StatusCode, raw)
	}
	st := waitCompleted(t, f, "held")
	if st.FailedItems != 2 { // x and y are not players: explicit failure records
		t.Fatalf("status = %+v", st)
	}
	// Sweep endpoint answers with what it resumed.
	resp, raw = do(t, "POST", f.srv.URL+"/v1/sweep", "", "")
	if resp.StatusCode != 200 || !strings.Contains(string(raw), `"resumed":[]`) {
		t.Fatalf("sweep = %d %s", resp.StatusCode, raw)
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	f := setup(t)
	huge := `{"game_date": "2025-01-15", "correlation_id": "` + strings.Repeat("a", api.MaxBodyBytes) + `"}`
	cases := []struct {
		name, method, path, ctype, body string
		status                          int
		code, field                     string
	}{
		{"malformed json", "POST", "/v1/batches", "application/json", `{"game_date": `, 400, "invalid_argument", ""},
		{"not an object", "POST", "/v1/batches", "application/json", `[1,2]`, 400, "invalid_argument", ""},
		{"empty body", "POST", "/v1/batches", "application/json", ``, 400, "invalid_argument", ""},
		{"trailing data", "POST", "/v1/batches", "application/json", `{"game_date": "2025-01-15"} {}`, 400, "invalid_argument", ""},
		{"wrong type", "POST", "/v1/batches", "application/json", `{"game_date": 20250115}`, 400, "invalid_argument", "game_date"},
		{"wrong type in list", "POST", "/v1/batches", "application/json", `{"game_date": "2025-01-15", "players": [1]}`, 400, "invalid_argument", "players"},
		{"unknown field", "POST", "/v1/batches", "application/json", `{"game_date": "2025-01-15", "gamedate": "x"}`, 400, "invalid_argument", "gamedate"},
		{"bad date", "POST", "/v1/batches", "application/json", `{"game_date": "2025-02-30"}`, 400, "invalid_argument", "game_date"},
		{"no date", "POST", "/v1/batches", "application/json", `{}`, 400, "invalid_argument", "game_date"},
		{"date without games", "POST", "/v1/batches", "application/json", `{"game_date": "2025-02-16"}`, 400, "invalid_argument", "game_date"},
		{"date outside the season, with players", "POST", "/v1/batches", "application/json", `{"game_date": "1999-01-01", "players": ["aaronadams"]}`, 400, "invalid_argument", "game_date"},
		{"date without games, with players", "POST", "/v1/batches", "application/json", `{"game_date": "2025-02-16", "players": ["aaronadams"]}`, 400, "invalid_argument", "game_date"},
		{"duplicate key", "POST", "/v1/batches", "application/json", `{"game_date": "2025-01-15", "game_date": "2025-01-16"}`, 400, "invalid_argument", "game_date"},
		{"case-variant key", "POST", "/v1/batches", "application/json", `{"GAME_DATE": "2025-01-15"}`, 400, "invalid_argument", "GAME_DATE"},
		{"case-variant duplicate", "POST", "/v1/batches", "application/json", `{"game_date": "2025-01-15", "Game_Date": "2025-01-16"}`, 400, "invalid_argument", "Game_Date"},
		{"sql in batch id", "POST", "/v1/batches", "application/json", `{"batch_id": "a'; DROP TABLE batches; --", "game_date": "2025-01-15"}`, 400, "invalid_argument", "batch_id"},
		{"path trick in batch id", "POST", "/v1/batches", "application/json", `{"batch_id": "../../etc/passwd", "game_date": "2025-01-15"}`, 400, "invalid_argument", "batch_id"},
		{"long batch id", "POST", "/v1/batches", "application/json", `{"batch_id": "` + strings.Repeat("x", 129) + `", "game_date": "2025-01-15"}`, 400, "invalid_argument", "batch_id"},
		{"unicode player", "POST", "/v1/batches", "application/json", `{"game_date": "2025-01-15", "players": ["` + strings.Repeat("\u202e\U0001F3C0", 500) + `"]}`, 400, "invalid_argument", "players"},
		{"sql player", "POST", "/v1/batches", "application/json", `{"game_date": "2025-01-15", "players": ["x' OR '1'='1"]}`, 400, "invalid_argument", "players"},
		{"unknown system", "POST", "/v1/batches", "application/json", `{"game_date": "2025-01-15", "systems": ["gpt"]}`, 400, "invalid_argument", "systems"},
		{"chunk size", "POST", "/v1/batches", "application/json", `{"game_date": "2025-01-15", "chunk_size": 100000}`, 400, "invalid_argument", "chunk_size"},
		{"oversize body", "POST", "/v1/batches", "application/json", huge, 413, "payload_too_large", ""},
		{"wrong media type", "POST", "/v1/batches", "text/plain", `{"game_date": "2025-01-15"}`, 415, "unsupported_media_type", ""},
		{"unknown batch", "GET", "/v1/batches/nope", "", "", 404, "not_found", ""},
		{"bad id in path", "GET", "/v1/batches/a%27%3B--", "", "", 400, "invalid_argument", "batch_id"},
		{"unknown batch predictions", "GET", "/v1/batches/nope/predictions", "", "", 404, "not_found", ""},
		{"resume unknown", "POST", "/v1/batches/nope/resume", "", "", 404, "not_found", ""},
		{"bad force", "POST", "/v1/batches/nope/resume?force=maybe", "", "", 400, "invalid_argument", "force"},
		{"bad state filter", "GET", "/v1/batches?state=done", "", "", 400, "invalid_argument", "state"},
		{"bad limit", "GET", "/v1/batches?limit=0", "", "", 400, "invalid_argument", "limit"},
		{"wrong method", "DELETE", "/v1/batches", "", "", 405, "method_not_allowed", ""},
		{"unknown path", "GET", "/v1/nothing", "", "", 404, "not_found", ""},
	}
	for _, c := range cases {
		resp, raw := do(t, c.method, f.srv.URL+c.path, c.ctype, c.body)
		var eb errBody
		if err := json.Unmarshal(raw, &eb); err != nil {
			t.Errorf("%s: body %q is not a JSON error: %v", c.name, raw, err)
			continue
		}
		if resp.StatusCode != c.status || eb.Error.Code != c.code || eb.Error.Field != c.field || eb.Error.Message == "" {
			t.Errorf("%s: %d %+v, want %d %s field %q", c.name, resp.StatusCode, eb.Error, c.status, c.code, c.field)
		}
	}
	if list, err := f.store.List(t.Context(), state.ListFilter{}); err != nil || len(list) != 0 {
		t.Fatalf("bad input created %d batches (%v)", len(list), err)
	}
}

func TestProbes(t *testing.T) {
	t.Parallel()
	f := setup(t)
	for _, p := range []string{"/health", "/ready"} {
		if resp, raw := do(t, "GET", f.srv.URL+p, "", ""); resp.StatusCode != 200 {
			t.Errorf("%s = %d %s", p, resp.StatusCode, raw)
		}
	}
	resp, _ := do(t, "GET", f.srv.URL+"/health", "", "")
	if resp.Header.Get("X-Request-Id") == "" {
		t.Error("no X-Request-Id on the response")
	}
	f.runner.Drain(time.Second)
	if resp, _ := do(t, "GET", f.srv.URL+"/ready", "", ""); resp.StatusCode != 503 {
		t.Errorf("/ready while draining = %d, want 503", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", f.srv.URL+"/health", "", ""); resp.StatusCode != 200 {
		t.Errorf("/health while draining = %d, want 200", resp.StatusCode)
	}
	resp, raw := do(t, "POST", f.srv.URL+"/v1/batches", "application/json", `{"game_date": "2025-01-16"}`)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("create while draining = %d %s", resp.StatusCode, raw)
	}
	_ = f.store.Close()
	if resp, _ := do(t, "GET", f.srv.URL+"/ready", "", ""); resp.StatusCode != 503 {
		t.Errorf("/ready with a closed store = %d, want 503", resp.StatusCode)
	}
}

func nil2discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }

func TestPredictionsOfAnUnreadableSink(t *testing.T) {
	t.Parallel()
	f := setupWith(t, fixtureOpts{noReader: true})
	if _, _, err := f.store.Create(t.Context(), state.Batch{ID: "b", Request: state.Request{GameDate: "2025-01-15", ChunkSize: 1}}); err != nil {
		t.Fatal(err)
	}
	resp, raw := do(t, "GET", f.srv.URL+"/v1/batches/b/predictions", "", "")
	if resp.StatusCode != http.StatusNotImplemented || !strings.Contains(string(raw), `"not_readable"`) {
		t.Fatalf("predictions without a reader = %d %s", resp.StatusCode, raw)
	}
}
