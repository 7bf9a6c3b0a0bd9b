package api_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/predworker/predworker/api"
	"github.com/predworker/predworker/events"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/league"
	"github.com/predworker/predworker/systems/movingavg"
	"github.com/predworker/predworker/worker"
)

// envelope builds a push body around data.
func envelope(msgID, data string, attempt int, attrs map[string]string) string {
	env := map[string]any{
		"message": map[string]any{
			"data":        base64.StdEncoding.EncodeToString([]byte(data)),
			"messageId":   msgID,
			"publishTime": "2025-01-15T10:00:00Z",
			"attributes":  attrs,
		},
		"subscription": "projects/p/subscriptions/predworker-push",
	}
	if attempt > 0 {
		env["deliveryAttempt"] = attempt
	}
	b, _ := json.Marshal(env)
	return string(b)
}

func push(t *testing.T, f *fixture, body string) (*http.Response, []byte) {
	t.Helper()
	return do(t, "POST", f.srv.URL+"/pubsub/push", "application/json", body)
}

func deadLetters(t *testing.T, f *fixture) []events.DeadLetter {
	t.Helper()
	list, err := f.dead.List(t.Context(), 100)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

func rowCount(t *testing.T, f *fixture, id string) (rows int, dup bool) {
	t.Helper()
	seen := map[string]bool{}
	if err := f.sink.ReadPredictions(t.Context(), id, func(p *systems.Prediction) error {
		k := p.PlayerLookup + "/" + p.SystemID
		dup = dup || seen[k]
		seen[k] = true
		rows++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return rows, dup
}

func TestPushRunsBatchAndAcks(t *testing.T) {
	t.Parallel()
	f := setup(t)
	body := envelope("m1", `{"batch_id": "p1", "game_date": "2025-01-15", "chunk_size": 100}`, 0, nil)
	resp, raw := push(t, f, body)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("push = %d %s, want 204", resp.StatusCode, raw)
	}
	b, err := f.store.Get(t.Context(), "p1")
	if err != nil || b.Status != state.StatusCompleted {
		t.Fatalf("after push: %s %v", b.Status, err)
	}
	rows, dup := rowCount(t, f, "p1")
	if rows != 2*len(b.Items) || dup {
		t.Fatalf("%d rows (dup %v), want %d", rows, dup, 2*len(b.Items))
	}
	// A duplicate delivery, and a different message for the same batch: 204,
	// no second run, no new row.
	for _, again := range []string{body, envelope("m2", `{"batch_id": "p1", "game_date": "2025-01-15", "chunk_size": 100}`, 0, nil)} {
		resp, raw = push(t, f, again)
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("redelivery = %d %s", resp.StatusCode, raw)
		}
	}
	after, _ := f.store.Get(t.Context(), "p1")
	if after.Attempt != b.Attempt {
		t.Fatalf("redelivery ran the batch again (attempt %d → %d)", b.Attempt, after.Attempt)
	}
	if n, _ := rowCount(t, f, "p1"); n != rows {
		t.Fatalf("rows %d → %d after redelivery", rows, n)
	}
	// Batch id from the attribute, then from the message id.
	resp, _ = push(t, f, envelope("m3", `{"game_date": "2025-01-16", "players": ["x"]}`, 0, map[string]string{"batch_id": "from-attr"}))
	if _, err := f.store.Get(t.Context(), "from-attr"); resp.StatusCode != 204 || err != nil {
		t.Fatalf("attribute batch id: %d %v", resp.StatusCode, err)
	}
	// No batch id anywhere: the id is derived from the request, so the same
	// trigger published again (a new message id) finds the same batch.
	trigger := `{"game_date": "2025-01-16", "players": ["y"]}`
	derived := worker.DeriveBatchID(state.Request{GameDate: "2025-01-16", Players: []string{"y"}, ChunkSize: worker.DefaultChunkSize})
	for _, msg := range []string{"m4", "m5"} {
		resp, raw = push(t, f, envelope(msg, trigger, 0, nil))
		if resp.StatusCode != 204 {
			t.Fatalf("request-derived batch id, message %s: %d %s", msg, resp.StatusCode, raw)
		}
	}
	got, err := f.store.Get(t.Context(), derived)
	if err != nil || got.Attempt != 1 {
		t.Fatalf("batch %s of the re-published trigger: attempt %d, %v; want one run", derived, got.Attempt, err)
	}
	if list, _ := f.store.List(t.Context(), state.ListFilter{}); len(list) != 3 {
		t.Fatalf("%d batches, want 3 (p1, from-attr, %s)", len(list), derived)
	}
	if dl := deadLetters(t, f); len(dl) != 0 {
		t.Fatalf("good messages dead-lettered: %+v", dl)
	}
}

func TestPushPermanentFailuresAreDeadLetteredOnce(t *testing.T) {
	t.Parallel()
	f := setup(t)
	cases := []struct {
		name, body, class string
	}{
		{"not json", `{"message": `, "validation"},
		{"no message id", `{"message": {"data": "e30="}}`, "validation"},
		{"no data", `{"message": {"messageId": "x1"}}`, "validation"},
		{"data not base64", `{"message": {"messageId": "x2", "data": "%%%"}}`, "validation"},
		{"payload not json", envelope("x3", `not json`, 0, nil), "validation"},
		{"payload unknown field", envelope("x4", `{"game_date": "2025-01-15", "gamedate": 1}`, 0, nil), "validation"},
		{"payload wrong type", envelope("x5", `{"game_date": 20250115}`, 0, nil), "validation"},
		{"bad date", envelope("x6", `{"game_date": "2025-02-30"}`, 0, nil), "validation"},
		{"date without games", envelope("x7", `{"game_date": "2025-02-16"}`, 0, nil), "validation"},
		{"hostile batch id", envelope("x8", `{"batch_id": "a'; DROP TABLE batches;--", "game_date": "2025-01-15"}`, 0, nil), "validation"},
		{"hostile player", envelope("x9", `{"game_date": "2025-01-15", "players": ["../../etc/passwd"]}`, 0, nil), "validation"},
		{"duplicate key", envelope("x10", `{"game_date": "2025-01-15", "game_date": "2025-01-16"}`, 0, nil), "validation"},
		{"case-variant key", envelope("x11", `{"Game_Date": "2025-01-15"}`, 0, nil), "validation"},
		{"date outside the season, with players", envelope("x12", `{"game_date": "1999-01-01", "players": ["aaronadams"]}`, 0, nil), "validation"},
		{"duplicate envelope key", `{"message": {"messageId": "x13", "data": "e30=", "data": "e30="}}`, "validation"},
	}
	for _, c := range cases {
		for range 3 { // redeliveries of the same poison message
			resp, raw := push(t, f, c.body)
			if resp.StatusCode != http.StatusNoContent {
				t.Errorf("%s: %d %s, want 204", c.name, resp.StatusCode, raw)
			}
		}
	}
	// Same id, different request: a conflict, dead-lettered too.
	if resp, _ := push(t, f, envelope("c1", `{"batch_id": "cx", "game_date": "2025-01-15", "players": ["a"]}`, 0, nil)); resp.StatusCode != 204 {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	if resp, _ := push(t, f, envelope("c2", `{"batch_id": "cx", "game_date": "2025-01-16", "players": ["a"]}`, 0, nil)); resp.StatusCode != 204 {
		t.Fatalf("conflict: %d", resp.StatusCode)
	}
	dl := deadLetters(t, f)
	if len(dl) != len(cases)+1 {
		t.Fatalf("%d dead letters for %d poison messages delivered 3 times each", len(dl), len(cases)+1)
	}
	for _, d := range dl {
		if d.Class == "" || d.Error == "" || len(d.Raw) == 0 {
			t.Errorf("dead letter lacks class, error or raw body: %+v", d)
		}
		if d.MessageID == "c2" && d.Class != "conflict" {
			t.Errorf("conflict dead-lettered as %s", d.Class)
		}
	}
	resp, raw := do(t, "GET", f.srv.URL+"/v1/dead-letters?limit=100", "", "")
	var listed struct {
		DeadLetters []events.DeadLetter `json:"dead_letters"`
	}
	if err := json.Unmarshal(raw, &listed); resp.StatusCode != 200 || err != nil || len(listed.DeadLetters) != len(dl) {
		t.Fatalf("GET /v1/dead-letters = %d, %d listed, %v", resp.StatusCode, len(listed.DeadLetters), err)
	}
	if list, _ := f.store.List(t.Context(), state.ListFilter{}); len(list) != 1 {
		t.Fatalf("poison messages created %d batches, want only cx", len(list))
	}
}

// flakySource fails Slate while down is set: transiently (ErrUnavailable)
// or with an unclassified error.
type flakySource struct {
	systems.FeatureSource
	down  atomic.Bool
	cause error
}

func (f *flakySource) Slate(ctx context.Context, date string) ([]string, error) {
	if f.down.Load() {
		return nil, f.cause
	}
	return f.FeatureSource.Slate(ctx, date)
}

func TestPushTransientFailureIsRetriedNotAcked(t *testing.T) {
	t.Parallel()
	src := &flakySource{FeatureSource: league.Default(), cause: fmt.Errorf("bigquery: %w", systems.ErrUnavailable)}
	src.down.Store(true)
	f := setupWith(t, fixtureOpts{features: src})
	body := envelope("t1", `{"batch_id": "t1", "game_date": "2025-01-15"}`, 0, nil)
	for i := range 8 { // far past MaxAttempts: a transient outage is never dead-lettered
		resp, _ := push(t, f, body)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("attempt %d during the outage: %d, want 503 with Retry-After", i+1, resp.StatusCode)
		}
	}
	if dl := deadLetters(t, f); len(dl) != 0 {
		t.Fatalf("transient outage dead-lettered: %+v", dl)
	}
	src.down.Store(false)
	if resp, raw := push(t, f, body); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("after the outage: %d %s", resp.StatusCode, raw)
	}
}

func TestPushInternalErrorEndsInDeadLetter(t *testing.T) {
	t.Parallel()
	src := &flakySource{FeatureSource: league.Default(), cause: errors.New("nil map write in slate query")}
	src.down.Store(true)
	f := setupWith(t, fixtureOpts{features: src})
	// Without deliveryAttempt: our own count per message id.
	body := envelope("i1", `{"batch_id": "i1", "game_date": "2025-01-15"}`, 0, nil)
	var codes []int
	for range 7 {
		resp, _ := push(t, f, body)
		codes = append(codes, resp.StatusCode)
	}
	if fmt.Sprint(codes) != "[503 503 503 503 204 204 204]" {
		t.Fatalf("answers to a repeating internal error: %v, want 4 × 503 then 204 (dead letter)", codes)
	}
	// With deliveryAttempt: Pub/Sub's count.
	resp, _ := push(t, f, envelope("i2", `{"batch_id": "i2", "game_date": "2025-01-15"}`, 2, nil))
	if resp.StatusCode != 503 {
		t.Fatalf("attempt 2: %d", resp.StatusCode)
	}
	resp, _ = push(t, f, envelope("i2", `{"batch_id": "i2", "game_date": "2025-01-15"}`, 5, nil))
	if resp.StatusCode != 204 {
		t.Fatalf("attempt 5: %d", resp.StatusCode)
	}
	dl := deadLetters(t, f)
	if len(dl) != 2 || dl[0].Class != "internal" {
		t.Fatalf("dead letters = %+v", dl)
	}
	// The bug is fixed: an operator re-drives the dead letter.
	src.down.Store(false)
	var i1 events.DeadLetter
	for _, d := range dl {
		if d.MessageID == "i1" {
			i1 = d
		}
	}
	resp, raw := do(t, "POST", f.srv.URL+"/v1/dead-letters/"+i1.ID+"/retry", "", "")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("re-drive = %d %s", resp.StatusCode, raw)
	}
	waitCompleted(t, f, "i1")
	got, err := f.dead.Get(t.Context(), i1.ID)
	if err != nil || got.Retries != 1 || got.RetriedAt == nil {
		t.Fatalf("dead letter after re-drive: %+v %v", got, err)
	}
	if resp, _ := do(t, "POST", f.srv.URL+"/v1/dead-letters/nope/retry", "", ""); resp.StatusCode != 404 {
		t.Fatalf("re-drive of unknown = %d", resp.StatusCode)
	}
}

func TestPushLeaseHeldAndDrain(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := t.Context()
	if _, _, err := f.store.Create(ctx, state.Batch{ID: "held", Request: state.Request{GameDate: "2025-01-15",
		ChunkSize: 50, Systems: []string{movingavg.ID, "zone_matchup_v1"}}, Fingerprint: (state.Request{GameDate: "2025-01-15", ChunkSize: 50}).Fingerprint(),
		Items: []string{"x"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Claim(ctx, "held", "other-instance", time.Minute, state.ClaimOptions{}); err != nil {
		t.Fatal(err)
	}
	resp, raw := push(t, f, envelope("h1", `{"batch_id": "held", "game_date": "2025-01-15"}`, 0, nil))
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("lease held = %d %s, want 429 with Retry-After", resp.StatusCode, raw)
	}
	f.runner.Drain(time.Second)
	resp, _ = push(t, f, envelope("d1", `{"batch_id": "d1", "game_date": "2025-01-15"}`, 0, nil))
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("while draining = %d, want 503", resp.StatusCode)
	}
	if dl := deadLetters(t, f); len(dl) != 0 {
		t.Fatalf("dead letters: %+v", dl)
	}
}

func TestPushBudgetSpentResumesOnRedelivery(t *testing.T) {
	t.Parallel()
	rules, err := worker.ParseFaults("system=*,kind=latency,latency=30ms,rate=1")
	if err != nil {
		t.Fatal(err)
	}
	f := setupWith(t, fixtureOpts{engine: worker.Config{Faults: rules}, pushBudget: 200 * time.Millisecond})
	body := envelope("b1", `{"batch_id": "budget", "game_date": "2025-01-15", "chunk_size": 10}`, 0, nil)
	resp, _ := push(t, f, body)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("budget spent = %d, want 503", resp.StatusCode)
	}
	b, err := f.store.Get(t.Context(), "budget")
	if err != nil || b.Lease.Owner != "" || b.DoneChunks == 0 || b.Status != state.StatusRunning {
		t.Fatalf("after the budget: owner %q, done %d, %s (%v); want released with progress", b.Lease.Owner, b.DoneChunks, b.Status, err)
	}
	for i := 0; i < 100; i++ {
		resp, _ = push(t, f, body)
		if resp.StatusCode == http.StatusNoContent {
			break
		}
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("redelivery %d = %d", i, resp.StatusCode)
		}
	}
	done, _ := f.store.Get(t.Context(), "budget")
	rows, dup := rowCount(t, f, "budget")
	if done.Status != state.StatusCompleted || rows != 2*len(done.Items) || dup {
		t.Fatalf("after redeliveries: %s, %d rows (dup %v)", done.Status, rows, dup)
	}
}

// continuations records continuation messages instead of publishing them.
type continuations struct {
	mu   sync.Mutex
	msgs []map[string]string
	data [][]byte
}

func (c *continuations) Continue(_ context.Context, data []byte, attrs map[string]string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, attrs)
	c.data = append(c.data, data)
	return nil
}

func TestPushBudgetSpentContinuesInNewMessage(t *testing.T) {
	t.Parallel()
	rules, err := worker.ParseFaults("system=*,kind=latency,latency=30ms,rate=1")
	if err != nil {
		t.Fatal(err)
	}
	cont := &continuations{}
	f := setupWith(t, fixtureOpts{engine: worker.Config{Faults: rules}, pushBudget: 200 * time.Millisecond, continuer: cont})
	payload := `{"game_date": "2025-01-15", "chunk_size": 10}`
	resp, _ := push(t, f, envelope("c1", payload, 0, map[string]string{"batch_id": "cont"}))
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("budget spent with a continuer = %d, want 204", resp.StatusCode)
	}
	cont.mu.Lock()
	if len(cont.msgs) != 1 || cont.msgs[0]["batch_id"] != "cont" || cont.msgs[0]["continuation_of"] != "c1" || string(cont.data[0]) != payload {
		t.Fatalf("continuation = %v %q", cont.msgs, cont.data)
	}
	cont.mu.Unlock()
	// Deliver continuations until the batch completes.
	for i := 0; i < 100; i++ {
		cont.mu.Lock()
		attrs, data := cont.msgs[len(cont.msgs)-1], cont.data[len(cont.data)-1]
		cont.mu.Unlock()
		if resp, _ = push(t, f, envelope(fmt.Sprintf("c%d", i+2), string(data), 0, attrs)); resp.StatusCode != 204 {
			t.Fatalf("continuation %d = %d", i, resp.StatusCode)
		}
		if b, _ := f.store.Get(t.Context(), "cont"); b.Status == state.StatusCompleted {
			break
		}
	}
	done, _ := f.store.Get(t.Context(), "cont")
	rows, dup := rowCount(t, f, "cont")
	if done.Status != state.StatusCompleted || rows != 2*len(done.Items) || dup {
		t.Fatalf("after continuations: %s, %d rows (dup %v)", done.Status, rows, dup)
	}
}

// failingDeadLetters cannot store anything.
type failingDeadLetters struct{ events.DeadLetters }

func (failingDeadLetters) Put(context.Context, events.DeadLetter) (bool, error) {
	return false, errors.New("disk full")
}

func (failingDeadLetters) Attempt(context.Context, string) (int, error) { return 1, nil }

func TestPushDeadLetterNotStoredIs500(t *testing.T) {
	t.Parallel()
	f := setupWith(t, fixtureOpts{deadLetters: failingDeadLetters{}})
	resp, _ := push(t, f, `{"message": `)
	if resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("unstorable dead letter = %d, want 500", resp.StatusCode)
	}
}

// A system that panics on one player is contained: that row falls back, the
// batch completes and the push is acked, with no retry loop.
func TestPushPanickingSystemIsContained(t *testing.T) {
	t.Parallel()
	slate, err := league.Default().Slate(t.Context(), "2025-01-15")
	if err != nil {
		t.Fatal(err)
	}
	victim := slate[7]
	f := setupWith(t, fixtureOpts{register: func(r *systems.Registry) {
		r.Register(movingavg.New(), "")
		r.Register(panicky{victim: victim}, movingavg.ID)
	}})
	resp, raw := push(t, f, envelope("s1", `{"batch_id": "storm", "game_date": "2025-01-15"}`, 0, nil))
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("push = %d %s", resp.StatusCode, raw)
	}
	var fallbacks []string
	if err := f.sink.ReadPredictions(t.Context(), "storm", func(p *systems.Prediction) error {
		if p.Fallback {
			fallbacks = append(fallbacks, p.PlayerLookup+":"+p.FallbackReason)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(fallbacks) != 1 || fallbacks[0] != victim+":panic" {
		t.Fatalf("fallbacks = %v, want only %s:panic", fallbacks, victim)
	}
}

type panicky struct{ victim string }

func (panicky) ID() string      { return "panicky_v1" }
func (panicky) Version() string { return "panicky-1" }
func (p panicky) Predict(ctx context.Context, f *systems.Features) (systems.Estimate, error) {
	if f.PlayerLookup == p.victim {
		var scores []int
		scores[len(f.PlayerLookup)]++ // a real runtime panic: index out of range
	}
	return movingavg.New().Predict(ctx, f)
}

var _ = api.PushEnvelope{}

// A poison message near the 1 MiB body limit is dead-lettered with its first
// 256 KiB, its size and its SHA-256 (a Firestore document holds 1 MiB in
// all), and re-driving it says why it cannot be.
func TestPushHugePoisonMessageIsCappedInTheDeadLetter(t *testing.T) {
	t.Parallel()
	f := setup(t)
	payload := `{"game_date": "2025-01-15", "notes": "` + strings.Repeat("é", 350_000) + `"}`
	body := envelope("huge-1", payload, 0, nil)
	if len(body) < 900_000 || len(body) > api.MaxBodyBytes {
		t.Fatalf("test body of %d bytes", len(body))
	}
	if resp, raw := push(t, f, body); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("push = %d %s", resp.StatusCode, raw)
	}
	dl := deadLetters(t, f)
	sum := sha256.Sum256([]byte(body))
	if len(dl) != 1 || len(dl[0].Raw) != events.MaxRaw || dl[0].RawSize != len(body) ||
		dl[0].RawSHA256 != hex.EncodeToString(sum[:]) || string(dl[0].Raw) != body[:events.MaxRaw] {
		t.Fatalf("dead letter keeps %d bytes of %d (sha %q); want the first %d, the size and the hash",
			len(dl[0].Raw), dl[0].RawSize, dl[0].RawSHA256, events.MaxRaw)
	}
	resp, raw := do(t, "POST", f.srv.URL+"/v1/dead-letters/"+dl[0].ID+"/retry", "", "")
	if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(string(raw), "kept only in part") {
		t.Fatalf("re-drive of a cut dead letter = %d %s", resp.StatusCode, raw)
	}
}

// Upstream late: the feature source has no features for the date yet. That
// is never "no games": the push is redelivered until its attempts run out,
// then dead-lettered as data_incomplete; the API answers 503.
func TestDataNotReadyYetIsRetriedThenDeadLettered(t *testing.T) {
	t.Parallel()
	src := &outageSource{FeatureSource: league.Default()}
	src.set(fmt.Errorf("feature table: %w", systems.ErrDataIncomplete))
	f := setupWith(t, fixtureOpts{features: src})
	var codes []int
	for range 6 {
		resp, _ := push(t, f, envelope("late-1", `{"game_date": "2025-01-15"}`, 0, nil))
		codes = append(codes, resp.StatusCode)
	}
	if fmt.Sprint(codes) != "[503 503 503 503 204 204]" {
		t.Fatalf("answers while upstream is late: %v, want 4 × 503 then a dead letter", codes)
	}
	if dl := deadLetters(t, f); len(dl) != 1 || dl[0].Class != "data_incomplete" {
		t.Fatalf("dead letters = %+v, want one of class data_incomplete", dl)
	}
	resp, raw := do(t, "POST", f.srv.URL+"/v1/batches", "application/json", `{"game_date": "2025-01-15"}`)
	var eb errBody
	_ = json.Unmarshal(raw, &eb)
	if resp.StatusCode != http.StatusServiceUnavailable || eb.Error.Code != "data_incomplete" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("create while upstream is late = %d %s", resp.StatusCode, raw)
	}
}

// A batch whose every row is a failure record completes, but its status and
// completion event say so.
func TestBatchWithoutPredictionsIsNotACleanSuccess(t *testing.T) {
	t.Parallel()
	f := setup(t)
	resp, raw := do(t, "POST", f.srv.URL+"/v1/batches", "application/json", `{"batch_id": "empty", "game_date": "2025-01-15", "players": ["nobody-here"]}`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("create = %d %s", resp.StatusCode, raw)
	}
	st := waitCompleted(t, f, "empty")
	if st.Warning != "no_predictions" || st.Predictions != 0 || st.FailedItems != 2 {
		t.Fatalf("status = %+v, want warning no_predictions", st)
	}
	evs, err := f.store.Outbox(t.Context(), 10)
	if err != nil || len(evs) != 1 || evs[0].Warning != "no_predictions" {
		t.Fatalf("completion event = %+v, %v; want warning no_predictions", evs, err)
	}
}

// Beyond MAX_RUNNING_BATCHES a push is answered 429 with Retry-After (the
// redelivery comes back later), and a resume of a batch already running in
// this instance says so instead of pretending to take it over.
func TestPushAtCapacityAndResumeOfARunningBatch(t *testing.T) {
	t.Parallel()
	rules, err := worker.ParseFaults("system=*,kind=latency,latency=200ms,rate=1")
	if err != nil {
		t.Fatal(err)
	}
	f := setupWith(t, fixtureOpts{engine: worker.Config{Faults: rules, MaxRunning: 1}})
	resp, raw := do(t, "POST", f.srv.URL+"/v1/batches", "application/json", `{"batch_id": "slow", "game_date": "2025-01-15", "chunk_size": 5}`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("create = %d %s", resp.StatusCode, raw)
	}
	resp, raw = push(t, f, envelope("cap-1", `{"batch_id": "pushed", "game_date": "2025-01-15"}`, 0, nil))
	var eb errBody
	_ = json.Unmarshal(raw, &eb)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || eb.Error.Code != "at_capacity" {
		t.Fatalf("push beyond capacity = %d %s; want 429 at_capacity with Retry-After", resp.StatusCode, raw)
	}
	for _, q := range []string{"", "?force=true"} {
		resp, raw = do(t, "POST", f.srv.URL+"/v1/batches/slow/resume"+q, "", "")
		_ = json.Unmarshal(raw, &eb)
		if resp.StatusCode != http.StatusConflict || eb.Error.Code != "already_running" {
			t.Fatalf("resume%s of a batch running here = %d %s; want 409 already_running", q, resp.StatusCode, raw)
		}
	}
	if dl := deadLetters(t, f); len(dl) != 0 {
		t.Fatalf("dead letters: %+v", dl)
	}
}
