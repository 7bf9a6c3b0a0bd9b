package phase5_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/predworker/predworker/api"
	"github.com/predworker/predworker/profile/phase5"
	"github.com/predworker/predworker/state"
	statesqlite "github.com/predworker/predworker/state/sqlite"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/league"
	"github.com/predworker/predworker/systems/movingavg"
	sinksqlite "github.com/predworker/predworker/systems/sqlite"
	"github.com/predworker/predworker/worker"
)

const token = "operator-token-0123456789"

type fixture struct {
	srv   *httptest.Server
	store *statesqlite.Store
}

// setup serves the trigger the way the service does: behind the operator
// authentication, on the embedded stack and the synthetic league, with the
// clock at now.
func setup(t *testing.T, now time.Time) *fixture {
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
	reg := systems.NewRegistry()
	reg.Register(movingavg.New(), "")
	e, err := worker.New(worker.Config{}, worker.Deps{Store: st, Features: league.Default(), Sink: sk, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	r := worker.NewRunner(e)
	tr := &phase5.Trigger{Runner: r, Store: st, Features: league.Default(), Now: func() time.Time { return now }}
	srv := httptest.NewServer(api.New(api.Options{Runner: r, Store: st, Auth: api.Auth{OperatorTokens: []string{token}},
		Routes: []api.Route{{Method: "POST", Path: "/start", Handler: tr.Start}, {Method: "GET", Path: "/status", Handler: tr.Status}}}).Handler())
	t.Cleanup(func() {
		srv.Close()
		r.Drain(5 * time.Second)
		_ = st.Close()
		_ = sk.Close()
	})
	return &fixture{srv: srv, store: st}
}

func (f *fixture) call(t *testing.T, method, path, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, _ := io.ReadAll(resp.Body)
	var v map[string]any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	return resp.StatusCode, v
}

// TODAY and TOMORROW are dates in America/New_York: at 03:00 UTC on
// 2025-01-16 it is still the 15th there. Lower case is not a keyword.
func TestResolveDate(t *testing.T) {
	now := time.Date(2025, 1, 16, 3, 0, 0, 0, time.UTC)
	for in, want := range map[string]string{"": "2025-01-15", "TODAY": "2025-01-15", "TOMORROW": "2025-01-16", "2024-12-25": "2024-12-25"} {
		if got, err := phase5.ResolveDate(in, now); err != nil || got != want {
			t.Errorf("%q: %q %v, want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"today", "2025-13-01", "15/01/2025"} {
		if _, err := phase5.ResolveDate(bad, now); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// POST /start with a scheduler's body (fields /start ignores included)
// starts one batch for the date, answering 202 with the stage's fields; the
// run mode is stored with the batch; the monitor shows it; without force a
// second /start for the date answers 409 with the open batch, with force it
// starts another; a body that is not JSON reads as {} (today in New York).
func TestStart(t *testing.T) {
	now := time.Date(2025, 1, 15, 17, 0, 0, 0, time.UTC)
	f := setup(t, now)
	// An open batch of another date does not block.
	if _, _, err := f.store.Create(t.Context(), state.Batch{ID: "other", Request: state.Request{GameDate: "2025-01-14", ChunkSize: 50},
		Items: []string{"aaronadams"}}); err != nil {
		t.Fatal(err)
	}
	code, v := f.call(t, "POST", "/start", `{"game_date": "TODAY", "prediction_run_mode": "FIRST", "force": true,
		"correlation_id": "corr0001", "trigger_source": "phase4_orchestrator", "reason": "r", "backfill_date": "x"}`)
	id := fmt.Sprintf("batch_2025-01-15_%d", now.Unix())
	summary, _ := v["summary"].(map[string]any)
	if code != 202 || v["status"] != "started" || v["batch_id"] != id || v["game_date"] != "2025-01-15" ||
		v["total_requests"] != 425.0 || v["published"] != 425.0 || v["monitor_url"] != "/status?batch_id="+id ||
		summary["total_players"] != 425.0 || summary["total_games"] == 0.0 {
		t.Fatalf("start: %d %v", code, v)
	}
	b, err := f.store.Get(t.Context(), id)
	if err != nil || b.Request.RunMode != "FIRST" || b.Request.CorrelationID != "corr0001" {
		t.Fatalf("stored batch %+v, %v", b.Request, err)
	}
	if code, v := f.call(t, "GET", "/status?batch_id="+id, ""); code != 200 || v["batch_id"] != id || v["prediction_run_mode"] != "FIRST" {
		t.Fatalf("status: %d %v", code, v)
	}

	if _, _, err := f.store.Create(t.Context(), state.Batch{ID: "open", Request: state.Request{GameDate: "2025-01-16", ChunkSize: 50},
		Items: []string{"aaronadams", "aaronbarnes"}}); err != nil {
		t.Fatal(err)
	}
	code, v = f.call(t, "POST", "/start", `{"game_date": "2025-01-16"}`)
	if progress, _ := v["progress"].(map[string]any); code != 409 || v["status"] != "already_running" || v["batch_id"] != "open" ||
		progress["expected"] != 2.0 {
		t.Fatalf("a second start without force: %d %v", code, v)
	}
	if code, v = f.call(t, "POST", "/start", `{"game_date": "2025-01-16", "force": true}`); code != 202 {
		t.Fatalf("with force: %d %v", code, v)
	}

	later := setup(t, time.Date(2025, 1, 22, 15, 0, 0, 0, time.UTC))
	code, v = later.call(t, "POST", "/start", `not json`)
	if code != 202 || v["game_date"] != "2025-01-22" {
		t.Fatalf("an unparsable body: %d %v", code, v)
	}
	if b, err = later.store.Get(t.Context(), v["batch_id"].(string)); err != nil || b.Request.RunMode != phase5.DefaultRunMode {
		t.Fatalf("default run mode %q (%v)", b.Request.RunMode, err)
	}
}

// The other answers of §1: no games (200), a bad date (400, where the
// stage answered 500), no credentials (401).
func TestStartAnswers(t *testing.T) {
	f := setup(t, time.Date(2025, 1, 15, 17, 0, 0, 0, time.UTC))
	noGames := ""
	for d := time.Date(2024, 10, 22, 0, 0, 0, 0, time.UTC); noGames == ""; d = d.AddDate(0, 0, 1) {
		if _, err := league.Default().Slate(context.Background(), d.Format(time.DateOnly)); errors.Is(err, systems.ErrNoGames) {
			noGames = d.Format(time.DateOnly)
		}
	}
	if code, v := f.call(t, "POST", "/start", `{"game_date": "`+noGames+`"}`); code != 200 || v["status"] != "no_games_scheduled" || v["game_date"] != noGames {
		t.Fatalf("no games on %s: %d %v", noGames, code, v)
	}
	if code, v := f.call(t, "POST", "/start", `{"game_date": "tomorrow"}`); code != 400 || v["status"] != "error" {
		t.Fatalf("a bad date: %d %v", code, v)
	}
	resp, err := http.Post(f.srv.URL+"/start", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("without credentials: %d", resp.StatusCode)
	}
}
