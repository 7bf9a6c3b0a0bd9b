package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/predworker/predworker/events"
	"github.com/predworker/predworker/logging"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/league"
	"github.com/predworker/predworker/systems/movingavg"
)

// outage is a switch: nil while the dependency is up, the error it answers
// with while it is down.
type outage struct{ err atomic.Pointer[error] }

func (o *outage) set(err error) {
	if err == nil {
		o.err.Store(nil)
		return
	}
	o.err.Store(&err)
}

func (o *outage) get() error {
	if p := o.err.Load(); p != nil {
		return *p
	}
	return nil
}

// outageSource is a feature source that can be switched down.
type outageSource struct {
	systems.FeatureSource
	outage
}

func (s *outageSource) Slate(ctx context.Context, date string) ([]string, error) {
	if err := s.get(); err != nil {
		return nil, err
	}
	return s.FeatureSource.Slate(ctx, date)
}

func (s *outageSource) Features(ctx context.Context, date string, players []string) (map[string]*systems.Features, error) {
	if err := s.get(); err != nil {
		return nil, err
	}
	return s.FeatureSource.Features(ctx, date, players)
}

// outageStore is a state store that can be switched down.
type outageStore struct {
	state.Store
	outage
}

func (s *outageStore) Create(ctx context.Context, b state.Batch) (state.Batch, bool, error) {
	if err := s.get(); err != nil {
		return state.Batch{}, false, err
	}
	return s.Store.Create(ctx, b)
}

func (s *outageStore) Get(ctx context.Context, id string) (state.Batch, error) {
	if err := s.get(); err != nil {
		return state.Batch{}, err
	}
	return s.Store.Get(ctx, id)
}

func (s *outageStore) List(ctx context.Context, f state.ListFilter) ([]state.Batch, error) {
	if err := s.get(); err != nil {
		return nil, err
	}
	return s.Store.List(ctx, f)
}

func (s *outageStore) Claim(ctx context.Context, id, owner string, ttl time.Duration, o state.ClaimOptions) (state.Batch, error) {
	if err := s.get(); err != nil {
		return state.Batch{}, err
	}
	return s.Store.Claim(ctx, id, owner, ttl, o)
}

func (s *outageStore) Orphans(ctx context.Context, limit int) ([]state.Batch, error) {
	if err := s.get(); err != nil {
		return nil, err
	}
	return s.Store.Orphans(ctx, limit)
}

func (s *outageStore) Ping(ctx context.Context) error {
	if err := s.get(); err != nil {
		return err
	}
	return s.Store.Ping(ctx)
}

// outageDeadLetters is a dead-letter store that can be switched down.
type outageDeadLetters struct {
	events.DeadLetters
	outage
}

func (d *outageDeadLetters) Put(ctx context.Context, dl events.DeadLetter) (bool, error) {
	if err := d.get(); err != nil {
		return false, err
	}
	return d.DeadLetters.Put(ctx, dl)
}

func (d *outageDeadLetters) List(ctx context.Context, limit int) ([]events.DeadLetter, error) {
	if err := d.get(); err != nil {
		return nil, err
	}
	return d.DeadLetters.List(ctx, limit)
}

func (d *outageDeadLetters) Get(ctx context.Context, id string) (events.DeadLetter, error) {
	if err := d.get(); err != nil {
		return events.DeadLetter{}, err
	}
	return d.DeadLetters.Get(ctx, id)
}

func (d *outageDeadLetters) Attempt(ctx context.Context, messageID string) (int, error) {
	if err := d.get(); err != nil {
		return 0, err
	}
	return d.DeadLetters.Attempt(ctx, messageID)
}

// Any dependency being unavailable (the state store, the feature source, the
// dead-letter store) answers 503 with Retry-After on every entry point that
// needs it: never a 500, never an ack.
func TestEveryEntryPointAnswers503ForADependencyOutage(t *testing.T) {
	t.Parallel()
	src := &outageSource{FeatureSource: league.Default()}
	var store *outageStore
	var dead *outageDeadLetters
	f := setupWith(t, fixtureOpts{features: src,
		wrapStore:       func(s state.Store) state.Store { store = &outageStore{Store: s}; return store },
		wrapDeadLetters: func(d events.DeadLetters) events.DeadLetters { dead = &outageDeadLetters{DeadLetters: d}; return dead }})

	// A dead letter to re-drive: an unclassified failure on the last attempt.
	src.set(errors.New("a bug in the slate query"))
	if resp, raw := push(t, f, envelope("dl-1", `{"batch_id": "redrive", "game_date": "2025-01-15"}`, 5, nil)); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("push on its last attempt = %d %s, want 204 (dead-lettered)", resp.StatusCode, raw)
	}
	dl := deadLetters(t, f)
	if len(dl) != 1 {
		t.Fatalf("dead letters = %+v", dl)
	}
	// A batch to read and resume.
	src.set(nil)
	if resp, raw := do(t, "POST", f.srv.URL+"/v1/batches", "application/json", `{"batch_id": "known", "game_date": "2025-01-15", "players": ["x"]}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("create = %d %s", resp.StatusCode, raw)
	}
	waitCompleted(t, f, "known")

	type call struct{ method, path, body string }
	check := func(what string, calls []call) {
		t.Helper()
		for _, c := range calls {
			var resp *http.Response
			var raw []byte
			if c.path == "/pubsub/push" {
				resp, raw = push(t, f, c.body)
			} else {
				ct := ""
				if c.body != "" {
					ct = "application/json"
				}
				resp, raw = do(t, c.method, f.srv.URL+c.path, ct, c.body)
			}
			var eb errBody
			_ = json.Unmarshal(raw, &eb)
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || eb.Error.Code != "unavailable" {
				t.Errorf("%s: %s %s = %d (Retry-After %q) %s; want 503 unavailable with Retry-After",
					what, c.method, c.path, resp.StatusCode, resp.Header.Get("Retry-After"), raw)
			}
		}
	}

	src.set(fmt.Errorf("bigquery: %w", systems.ErrUnavailable))
	check("feature source down", []call{
		{"POST", "/v1/batches", `{"batch_id": "fs", "game_date": "2025-01-16"}`},
		{"POST", "/v1/dead-letters/" + dl[0].ID + "/retry", ""},
		{"POST", "/pubsub/push", envelope("fs-1", `{"batch_id": "fs-push", "game_date": "2025-01-16"}`, 1, nil)},
	})
	src.set(nil)

	store.set(fmt.Errorf("firestore: %w", state.ErrUnavailable))
	check("state store down", []call{
		{"POST", "/v1/batches", `{"batch_id": "st", "game_date": "2025-01-16"}`},
		{"GET", "/v1/batches/known", ""},
		{"GET", "/v1/batches", ""},
		{"GET", "/v1/batches/known/predictions", ""},
		{"POST", "/v1/batches/known/resume", ""},
		{"POST", "/v1/sweep", ""},
		{"POST", "/v1/dead-letters/" + dl[0].ID + "/retry", ""},
		{"POST", "/pubsub/push", envelope("st-1", `{"batch_id": "st-push", "game_date": "2025-01-16"}`, 1, nil)},
	})
	store.set(nil)

	dead.set(fmt.Errorf("firestore: %w", events.ErrUnavailable))
	check("dead-letter store down", []call{
		{"GET", "/v1/dead-letters", ""},
		{"POST", "/v1/dead-letters/" + dl[0].ID + "/retry", ""},
		{"POST", "/pubsub/push", envelope("dd-1", `{"batch_id": "dd-push", "game_date": "2025-01-16"}`, 0, nil)},
	})
	dead.set(nil)

	if got := deadLetters(t, f); len(got) != 1 {
		t.Fatalf("an outage was dead-lettered: %+v", got)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(s.b.Bytes()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line is not JSON: %s", sc.Bytes())
		}
		out = append(out, m)
	}
	return out
}

// onceDown fails the first Features call of a batch with a transient error.
type onceDown struct {
	systems.FeatureSource
	failed sync.Map
}

func (o *onceDown) Features(ctx context.Context, date string, players []string) (map[string]*systems.Features, error) {
	if _, done := o.failed.LoadOrStore(date, true); !done {
		return nil, fmt.Errorf("bigquery: %w", systems.ErrUnavailable)
	}
	return o.FeatureSource.Features(ctx, date, players)
}

// The engine's lines for a batch carry the request that started it (request
// id and trace, for a push run here and for an API run in the background),
// and always batch_id, game_date, epoch (and chunk inside the chunk loop);
// every error line carries error_class, ERROR lines a stack trace; durations
// are in milliseconds.
func TestEngineLinesCarryTheRequest(t *testing.T) {
	t.Parallel()
	slate, err := league.Default().Slate(t.Context(), "2025-01-15")
	if err != nil {
		t.Fatal(err)
	}
	var buf syncBuffer
	log, err := logging.New(&buf, slog.LevelDebug, "json")
	if err != nil {
		t.Fatal(err)
	}
	f := setupWith(t, fixtureOpts{log: log, features: &onceDown{FeatureSource: league.Default()},
		register: func(r *systems.Registry) {
			r.Register(movingavg.New(), "")
			r.Register(panicky{victim: slate[3]}, movingavg.ID)
		}})
	send := func(method, path, body, requestID string) *http.Response {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, f.srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Request-Id", requestID)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp
	}
	players := `["` + strings.Join(slate[:6], `","`) + `"]`
	if resp := send("POST", "/pubsub/push", envelope("log-1", `{"batch_id": "pushed", "game_date": "2025-01-15", "chunk_size": 2, "players": `+players+`}`, 0, nil), "push-req-1"); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("push = %d", resp.StatusCode)
	}
	if resp := send("POST", "/v1/batches", `{"batch_id": "background", "game_date": "2025-01-16", "chunk_size": 50}`, "create-req-1"); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("create = %d", resp.StatusCode)
	}
	waitCompleted(t, f, "background")

	want := map[string]string{"pushed": "push-req-1", "background": "create-req-1"}
	batchEvents := map[string]bool{logging.EventBatchClaimed: true, logging.EventBatchResumed: true, logging.EventChunkStarted: true,
		logging.EventChunkCommitted: true, logging.EventBatchCompleted: true, logging.EventFallbackUsed: true}
	seen := map[string]int{}
	retries := 0
	for _, l := range buf.lines(t) {
		id, _ := l["batch_id"].(string)
		ev, _ := l["event"].(string)
		if l["message"] == "transient error; retrying" {
			retries++
			if id == "" || l["game_date"] == nil || l["chunk"] == nil || l["error_class"] != "unavailable" || l["retry_in_ms"] == nil {
				t.Errorf("retry line lacks batch_id, game_date, chunk, error_class or retry_in_ms: %v", l)
			}
		}
		if _, ok := l["error"]; ok && l["error_class"] == nil {
			t.Errorf("error line without error_class: %v", l)
		}
		if l["severity"] == "ERROR" && l["stack_trace"] == nil {
			t.Errorf("ERROR line without stack_trace: %v", l)
		}
		if _, ok := l["duration"]; ok {
			t.Errorf("raw duration (nanoseconds) logged: %v", l)
		}
		if !batchEvents[ev] || want[id] == "" {
			continue
		}
		seen[id]++
		if l["request_id"] != want[id] || l["game_date"] == nil || l["epoch"] == nil {
			t.Errorf("%s line of %s lacks the request (%v, want %s), game_date or epoch: %v", ev, id, l["request_id"], want[id], l)
		}
		if strings.HasPrefix(ev, "chunk_") && l["chunk"] == nil {
			t.Errorf("%s line without chunk: %v", ev, l)
		}
	}
	if seen["pushed"] < 8 || seen["background"] < 5 || retries < 2 {
		t.Fatalf("saw %v batch lines and %d retry lines; want every chunk of both batches and a retry each", seen, retries)
	}
}
