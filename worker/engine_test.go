package worker

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/predworker/predworker/state"
	statesqlite "github.com/predworker/predworker/state/sqlite"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/ensemble"
	"github.com/predworker/predworker/systems/league"
	"github.com/predworker/predworker/systems/movingavg"
	sinksqlite "github.com/predworker/predworker/systems/sqlite"
	"github.com/predworker/predworker/systems/zonematchup"
)

// stub is a system whose behaviour a test chooses per call.
type stub struct {
	id    string
	calls atomic.Int64
	fn    func(ctx context.Context, f *systems.Features) (systems.Estimate, error)
}

func (s *stub) ID() string      { return s.id }
func (s *stub) Version() string { return s.id + "-test" }
func (s *stub) Predict(ctx context.Context, f *systems.Features) (systems.Estimate, error) {
	s.calls.Add(1)
	if s.fn == nil {
		return systems.Estimate{Points: 10, Confidence: 50, Recommendation: systems.Pass}, nil
	}
	return s.fn(ctx, f)
}

// gatedFeatures wraps a source; Features blocks on chunk calls after the
// first `free` ones until the gate opens.
type gatedFeatures struct {
	systems.FeatureSource
	free    int32
	n       atomic.Int32
	entered chan struct{}
	gate    chan struct{}
}

func (g *gatedFeatures) Features(ctx context.Context, date string, players []string) (map[string]*systems.Features, error) {
	if g.n.Add(1) > g.free {
		select {
		case g.entered <- struct{}{}:
		default:
		}
		select {
		case <-g.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return g.FeatureSource.Features(ctx, date, players)
}

type bundle struct {
	store    *statesqlite.Store
	sink     *sinksqlite.Sink
	clock    clockwork.Clock
	registry *systems.Registry
	features systems.FeatureSource
	dir      string
}

func setup(t testing.TB, clock clockwork.Clock, register func(*systems.Registry)) *bundle {
	t.Helper()
	dir := t.TempDir()
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	st, err := statesqlite.New(t.Context(), filepath.Join(dir, "state.db"), clock)
	if err != nil {
		t.Fatal(err)
	}
	sk, err := sinksqlite.New(t.Context(), filepath.Join(dir, "predictions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(); _ = sk.Close() })
	reg := systems.NewRegistry()
	if register == nil {
		reg.Register(movingavg.New(), "")
		reg.Register(zonematchup.New(), movingavg.ID)
	} else {
		register(reg)
	}
	return &bundle{store: st, sink: sk, clock: clock, registry: reg, features: league.Default(), dir: dir}
}

func (b *bundle) engine(t testing.TB, cfg Config) *Engine {
	t.Helper()
	e, err := New(cfg, Deps{Store: b.store, Features: b.features, Sink: b.sink, Registry: b.registry, Clock: b.clock})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (b *bundle) rows(t *testing.T, id string) []systems.Prediction {
	t.Helper()
	var out []systems.Prediction
	if err := b.sink.ReadPredictions(t.Context(), id, func(p *systems.Prediction) error {
		out = append(out, *p)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func players(t *testing.T, n int) []string {
	t.Helper()
	slate, err := league.Default().Slate(t.Context(), "2025-01-15")
	if err != nil {
		t.Fatal(err)
	}
	return slate[:n]
}

func TestRunCompletesEveryRowOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, nil, nil)
	e := b.engine(t, Config{})
	req := state.Request{GameDate: "2025-01-15", ChunkSize: 50}
	batch, created, err := e.Submit(t.Context(), "", req)
	if err != nil || !created {
		t.Fatalf("Submit = %v, %v", created, err)
	}
	if batch.ID != DeriveBatchID(req) || len(batch.Items) < 400 {
		t.Fatalf("batch %s with %d items", batch.ID, len(batch.Items))
	}
	var progress []int
	done, err := e.Run(t.Context(), batch.ID, RunOptions{OnProgress: func(b state.Batch) { progress = append(progress, b.DoneChunks) }})
	if err != nil {
		t.Fatal(err)
	}
	if done.Status != state.StatusCompleted || len(progress) != batch.TotalChunks() {
		t.Fatalf("status %s after %d progress calls, want completed after %d", done.Status, len(progress), batch.TotalChunks())
	}
	rows := b.rows(t, batch.ID)
	if want := len(batch.Items) * 2; len(rows) != want || done.Predictions != want || done.FailedItems != 0 {
		t.Fatalf("%d rows, %d predictions, %d failed; want %d rows", len(rows), done.Predictions, done.FailedItems, want)
	}
	stored, err := b.store.Get(t.Context(), batch.ID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.Status != state.StatusCompleted || stored.DoneItems != len(batch.Items) || stored.Lease.Owner != "" {
		t.Fatalf("stored = %+v", stored)
	}
	// Submitting the same request again is the same batch, not a second run.
	again, created, err := e.Submit(t.Context(), "", req)
	if err != nil || created || again.Status != state.StatusCompleted {
		t.Fatalf("resubmit = %s, created %v, %v", again.Status, created, err)
	}
	if _, err := e.Run(t.Context(), batch.ID, RunOptions{}); !errors.Is(err, state.ErrFinished) {
		t.Fatalf("Run of a completed batch: %v, want ErrFinished", err)
	}
	if n := len(b.rows(t, batch.ID)); n != len(rows) {
		t.Fatalf("rerun changed row count to %d", n)
	}
}

func TestSubmitRefusesBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t, nil, nil)
	e := b.engine(t, Config{})
	cases := []struct {
		id    string
		req   state.Request
		field string
	}{
		{"", state.Request{GameDate: "2025-13-01"}, "game_date"},
		{"", state.Request{GameDate: "15/01/2025"}, "game_date"},
		{"", state.Request{GameDate: "2025-02-16"}, "game_date"}, // All-Star Sunday: no games
		{"", state.Request{GameDate: "2031-01-01"}, "game_date"}, // outside the season
		{"x'; DROP TABLE batches;--", state.Request{GameDate: "2025-01-15"}, "batch_id"},
		{"../../etc", state.Request{GameDate: "2025-01-15"}, "batch_id"},
		{"", state.Request{GameDate: "2025-01-15", Players: []string{"Robert'); --"}}, "players"},
		{"", state.Request{GameDate: "2025-01-15", Systems: []string{"nope"}}, "systems"},
		{"", state.Request{GameDate: "2025-01-15", ChunkSize: -1}, "chunk_size"},
		{"", state.Request{GameDate: "2025-01-15", ChunkSize: MaxChunkSize + 1}, "chunk_size"},
	}
	for _, c := range cases {
		_, _, err := e.Submit(t.Context(), c.id, c.req)
		var ie *InputError
		if !errors.As(err, &ie) || ie.Field != c.field {
			t.Errorf("Submit(%q, %+v) = %v, want an InputError on %s", c.id, c.req, err, c.field)
		}
	}
	if list, err := b.store.List(t.Context(), state.ListFilter{}); err != nil || len(list) != 0 {
		t.Fatalf("bad input created %d batches (%v)", len(list), err)
	}
	if _, _, err := e.Submit(t.Context(), "b1", state.Request{GameDate: "2025-01-15"}); err != nil {
		t.Fatal(err)
	}
	_, _, err := e.Submit(t.Context(), "b1", state.Request{GameDate: "2025-01-16"})
	if !errors.Is(err, state.ErrConflict) {
		t.Fatalf("same id, other request: %v, want ErrConflict", err)
	}
}

func TestUnknownPlayerGetsAFailureRecord(t *testing.T) {
	t.Parallel()
	b := setup(t, nil, nil)
	e := b.engine(t, Config{})
	ps := append(players(t, 3), "nosuchplayer")
	batch, _, err := e.Submit(t.Context(), "b", state.Request{GameDate: "2025-01-15", Players: ps})
	if err != nil {
		t.Fatal(err)
	}
	done, err := e.Run(t.Context(), batch.ID, RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if done.FailedItems != 2 || done.Predictions != 6 {
		t.Fatalf("failed %d, predictions %d; want 2 and 6", done.FailedItems, done.Predictions)
	}
	for _, r := range b.rows(t, batch.ID) {
		if (r.PlayerLookup == "nosuchplayer") != r.Failed {
			t.Errorf("row %s/%s failed=%v (%s)", r.PlayerLookup, r.SystemID, r.Failed, r.FailureReason)
		}
	}
}

func TestFallbacks(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		fn     func(ctx context.Context, f *systems.Features) (systems.Estimate, error)
		reason string
	}{
		{"timeout", func(ctx context.Context, _ *systems.Features) (systems.Estimate, error) {
			<-ctx.Done()
			return systems.Estimate{}, ctx.Err()
		}, "timeout"},
		{"ignores its context", func(ctx context.Context, _ *systems.Features) (systems.Estimate, error) {
			time.Sleep(300 * time.Millisecond)
			return systems.Estimate{Points: 99}, nil
		}, "timeout"},
		{"error", func(context.Context, *systems.Features) (systems.Estimate, error) {
			return systems.Estimate{}, errors.New("model exploded")
		}, "error"},
		{"panic", func(context.Context, *systems.Features) (systems.Estimate, error) {
			panic("index out of range")
		}, "panic"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			flaky := &stub{id: "flaky", fn: tc.fn}
			b := setup(t, nil, func(r *systems.Registry) {
				r.Register(movingavg.New(), "")
				r.Register(flaky, movingavg.ID)
			})
			e := b.engine(t, Config{SystemTimeouts: map[string]time.Duration{"flaky": 20 * time.Millisecond}, BreakerFailures: 1000})
			batch, _, err := e.Submit(t.Context(), "b", state.Request{GameDate: "2025-01-15", Players: players(t, 4), Systems: []string{"flaky"}})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			done, err := e.Run(t.Context(), batch.ID, RunOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if done.Fallbacks != 4 || done.Predictions != 4 {
				t.Fatalf("fallbacks %d predictions %d, want 4 and 4", done.Fallbacks, done.Predictions)
			}
			for _, r := range b.rows(t, batch.ID) {
				if !r.Fallback || r.FallbackFrom != "flaky" || r.FallbackReason != tc.reason ||
					r.ProducedBy != movingavg.ID || r.SystemID != "flaky" || r.PredictedPoints == 99 {
					t.Errorf("row = %+v, want a moving_average fallback for flaky with reason %s", r, tc.reason)
				}
			}
			if tc.reason == "timeout" && time.Since(start) > 5*time.Second {
				t.Errorf("a hung system held the batch for %v", time.Since(start))
			}
		})
	}
}

func TestNoFallbackMeansFailureRecord(t *testing.T) {
	t.Parallel()
	bad := &stub{id: "bad", fn: func(context.Context, *systems.Features) (systems.Estimate, error) {
		return systems.Estimate{}, errors.New("nope")
	}}
	b := setup(t, nil, func(r *systems.Registry) { r.Register(bad, "") })
	e := b.engine(t, Config{})
	batch, _, err := e.Submit(t.Context(), "b", state.Request{GameDate: "2025-01-15", Players: players(t, 2)})
	if err != nil {
		t.Fatal(err)
	}
	done, err := e.Run(t.Context(), batch.ID, RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if done.Status != state.StatusCompleted || done.FailedItems != 2 {
		t.Fatalf("status %s failed %d", done.Status, done.FailedItems)
	}
	for _, r := range b.rows(t, batch.ID) {
		if !r.Failed || r.FailureReason == "" {
			t.Errorf("row %+v is not a failure record", r)
		}
	}
}

func TestBreakerOpens(t *testing.T) {
	t.Parallel()
	failing := &stub{id: "failing", fn: func(context.Context, *systems.Features) (systems.Estimate, error) {
		return systems.Estimate{}, errors.New("down")
	}}
	b := setup(t, nil, func(r *systems.Registry) {
		r.Register(movingavg.New(), "")
		r.Register(failing, movingavg.ID)
	})
	// The global setting would never trip; the per-system one does.
	e := b.engine(t, Config{BreakerFailures: 1000, Breakers: map[string]BreakerSettings{"failing": {Failures: 3, Cooldown: time.Hour}}, Concurrency: 1})
	batch, _, err := e.Submit(t.Context(), "b", state.Request{GameDate: "2025-01-15", Players: players(t, 20), Systems: []string{"failing"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Run(t.Context(), batch.ID, RunOptions{}); err != nil {
		t.Fatal(err)
	}
	if n := failing.calls.Load(); n != 3 {
		t.Fatalf("failing system called %d times, want 3 (then the breaker opens)", n)
	}
	reasons := map[string]int{}
	for _, r := range b.rows(t, batch.ID) {
		reasons[r.FallbackReason]++
	}
	if reasons["error"] != 3 || reasons["circuit_open"] != 17 {
		t.Fatalf("fallback reasons = %v, want 3 error and 17 circuit_open", reasons)
	}
}

func TestFaultInjection(t *testing.T) {
	t.Parallel()
	rules, err := ParseFaults("system=zone_matchup_v1,kind=error,rate=1; system=*,kind=latency,latency=1ms,rate=1")
	if err != nil {
		t.Fatal(err)
	}
	b := setup(t, nil, nil)
	e := b.engine(t, Config{Faults: rules, BreakerFailures: 1000})
	batch, _, err := e.Submit(t.Context(), "b", state.Request{GameDate: "2025-01-15", Players: players(t, 5)})
	if err != nil {
		t.Fatal(err)
	}
	done, err := e.Run(t.Context(), batch.ID, RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if done.Fallbacks != 5 {
		t.Fatalf("fallbacks = %d, want the 5 zone_matchup_v1 rows", done.Fallbacks)
	}
}

// Faults aimed at the feature source and the sink: latency delays each
// call (a chunk of three calls takes at least three latencies), an error is
// transient (retried, never a failed batch), and the wrapped sink is still
// a Stager when it was one.
func TestFaultsOnTheFeatureSourceAndTheSink(t *testing.T) {
	t.Parallel()
	rules, err := ParseFaults("target=features,kind=latency,latency=40ms,rate=1; target=sink,kind=latency,latency=30ms,rate=1")
	if err != nil {
		t.Fatal(err)
	}
	b := setup(t, nil, nil)
	e := b.engine(t, Config{Faults: rules})
	start := time.Now()
	batch, _, err := e.Submit(t.Context(), "slow", state.Request{GameDate: "2025-01-15", Players: players(t, 4), ChunkSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	submitted := time.Since(start)
	done, err := e.Run(t.Context(), batch.ID, RunOptions{})
	if err != nil || done.Status != state.StatusCompleted {
		t.Fatalf("run: %+v, %v", done, err)
	}
	// Lower bounds only: the slate (40 ms), then two chunks of features
	// (40 ms) and a write (30 ms) each.
	if took := time.Since(start); submitted < 40*time.Millisecond || took < 40*time.Millisecond+2*70*time.Millisecond {
		t.Errorf("submit took %v, the batch %v: the injected latency was not applied", submitted, took)
	}
	if _, ok := withSinkFaults(stagerSink{b.sink}, rules).(systems.Stager); !ok {
		t.Error("a Stager wrapped with faults is no longer a Stager")
	}
	if _, ok := withSinkFaults(b.sink, rules).(systems.Stager); ok {
		t.Error("a plain sink wrapped with faults became a Stager")
	}

	failing, err := ParseFaults("target=sink,kind=error,rate=1")
	if err != nil {
		t.Fatal(err)
	}
	fe := b.engine(t, Config{Faults: failing})
	batch, _, err = fe.Submit(t.Context(), "failing", state.Request{GameDate: "2025-01-15", Players: players(t, 2)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	out, err := fe.Run(ctx, batch.ID, RunOptions{})
	if err == nil || out.Status == state.StatusFailed || len(b.rows(t, "failing")) != 0 {
		t.Errorf("a sink failing every write: %+v, %v; want a transient stop, no rows", out, err)
	}
}

// stagerSink makes a sink look like a Stager, for the wrapper's type test.
type stagerSink struct{ systems.Sink }

func (stagerSink) Stage(context.Context, string, int64, []systems.Prediction) (string, error) {
	return "", nil
}

func (stagerSink) Commit(context.Context, string, string, []string, int) error { return nil }

func TestParseFaults(t *testing.T) {
	t.Parallel()
	good := "system=*,kind=latency,latency=20ms,rate=1;system=similarity_balanced_v1,kind=hang,rate=0.05;target=features,kind=latency,latency=300ms,rate=1"
	rules, err := ParseFaults(good)
	if err != nil || len(rules) != 3 || rules[0].Latency != 20*time.Millisecond || rules[1].Rate != 0.05 || rules[2].Target != TargetFeatures {
		t.Fatalf("ParseFaults(%q) = %+v, %v", good, rules, err)
	}
	if again, err := ParseFaults(Faults(rules).String()); err != nil || len(again) != 3 || again[2].Target != TargetFeatures {
		t.Errorf("the rules do not survive their own rendering %q: %v", Faults(rules).String(), err)
	}
	for _, bad := range []string{
		"system=*,kind=latency,rate=1",   // latency without duration
		"system=*,kind=explode,rate=1",   // unknown kind
		"system=*,kind=error,rate=2",     // rate out of range
		"kind=error,rate=1",              // no system
		"system=*,kind=error",            // no rate
		"system=*,kind=error,rate=1,x=y", // unknown key
		"system=*;kind=error",            // not key=value pairs of one rule
		"system=*,kind=latency,latency=-1s,rate=1",
		"target=bigquery,kind=latency,latency=1s,rate=1", // unknown target
		"target=sink,kind=panic,rate=1",                  // a target takes latency, error or hang
		"system=*,target=sink,kind=error,rate=1",         // both
	} {
		if _, err := ParseFaults(bad); err == nil {
			t.Errorf("ParseFaults(%q) accepted", bad)
		}
	}
}

// A run whose lease cannot be renewed stops by itself before the lease expires.
func TestSelfFenceWhenRenewalFails(t *testing.T) {
	t.Parallel()
	clock := clockwork.NewFakeClock()
	b := setup(t, clock, nil)
	gate := &gatedFeatures{FeatureSource: b.features, free: 1, entered: make(chan struct{}, 1), gate: make(chan struct{})}
	b.features = gate
	failing := &failRenew{Store: b.store}
	e, err := New(Config{LeaseTTL: 30 * time.Second, HeartbeatInterval: 10 * time.Second},
		Deps{Store: failing, Features: gate, Sink: b.sink, Registry: b.registry, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	batch, _, err := e.Submit(t.Context(), "b", state.Request{GameDate: "2025-01-15", Players: players(t, 4), ChunkSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		b   state.Batch
		err error
		at  time.Time
	}
	res := make(chan result, 1)
	go func() {
		out, err := e.Run(context.Background(), batch.ID, RunOptions{})
		res <- result{out, err, clock.Now()}
	}()
	<-gate.entered // chunk 1 is loading; chunk 0 is committed
	claimed, err := b.store.Get(t.Context(), batch.ID)
	if err != nil {
		t.Fatal(err)
	}
	for range 30 { // advance one second at a time until the run gives up
		select {
		case r := <-res:
			if !errors.Is(r.err, state.ErrLeaseLost) {
				t.Fatalf("run ended with %v, want ErrLeaseLost", r.err)
			}
			if !r.at.Before(claimed.Lease.ExpiresAt) {
				t.Fatalf("stopped at %v, not before the lease expiry %v", r.at, claimed.Lease.ExpiresAt)
			}
			if failing.renewals.Load() == 0 {
				t.Fatal("no renewal was attempted")
			}
			got, err := b.store.Get(t.Context(), batch.ID)
			if err != nil || got.DoneChunks != 1 {
				t.Fatalf("done chunks = %d (%v), want the 1 committed before", got.DoneChunks, err)
			}
			return
		default:
		}
		clock.Advance(time.Second)
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("run did not stop within the lease TTL")
}

type failRenew struct {
	state.Store
	renewals atomic.Int64
}

func (f *failRenew) Renew(context.Context, string, state.Lease, time.Duration) (state.Lease, error) {
	f.renewals.Add(1)
	return state.Lease{}, fmt.Errorf("renew: %w", state.ErrUnavailable)
}

// A stale owner (paused past its lease, then taken over) commits nothing and
// the output has one row per key.
func TestStaleOwnerIsFenced(t *testing.T) {
	t.Parallel()
	clock := clockwork.NewFakeClock()
	b := setup(t, clock, nil)
	gate := &gatedFeatures{FeatureSource: b.features, free: 1, entered: make(chan struct{}, 1), gate: make(chan struct{})}
	ps := players(t, 6)
	// Owner A: long heartbeat so that only the takeover, not self-fencing,
	// decides what happens.
	a, err := New(Config{Owner: "A", LeaseTTL: 30 * time.Second, HeartbeatInterval: 10 * time.Second},
		Deps{Store: b.store, Features: gate, Sink: b.sink, Registry: b.registry, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	batch, _, err := a.Submit(t.Context(), "b", state.Request{GameDate: "2025-01-15", Players: ps, ChunkSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	resA := make(chan error, 1)
	go func() {
		_, err := a.Run(context.Background(), batch.ID, RunOptions{})
		resA <- err
	}()
	<-gate.entered // A is stuck loading chunk 1

	// B takes over by force (an operator's resume) and finishes the batch.
	bEng := b.engine(t, Config{Owner: "B"})
	done, err := bEng.Run(t.Context(), batch.ID, RunOptions{Claim: state.ClaimOptions{Force: true}})
	if err != nil {
		t.Fatal(err)
	}
	if done.Status != state.StatusCompleted || done.Lease.Epoch != 2 {
		t.Fatalf("B's run = %s epoch %d", done.Status, done.Lease.Epoch)
	}
	close(gate.gate) // A wakes up and tries to carry on
	if err := <-resA; !errors.Is(err, state.ErrLeaseLost) {
		t.Fatalf("stale owner ended with %v, want ErrLeaseLost", err)
	}
	rows := b.rows(t, batch.ID)
	if len(rows) != len(ps)*2 {
		t.Fatalf("%d rows, want %d", len(rows), len(ps)*2)
	}
	final, err := b.store.Get(t.Context(), batch.ID)
	if err != nil || final.Status != state.StatusCompleted || final.DoneChunks != 3 {
		t.Fatalf("final = %+v, %v", final, err)
	}
}

// Lease expiry with a fake clock: after the TTL another owner may claim, and
// the heartbeat of the first keeps it away while it renews.
func TestHeartbeatKeepsLease(t *testing.T) {
	t.Parallel()
	clock := clockwork.NewFakeClock()
	b := setup(t, clock, nil)
	gate := &gatedFeatures{FeatureSource: b.features, free: 1, entered: make(chan struct{}, 1), gate: make(chan struct{})}
	a, err := New(Config{Owner: "A", LeaseTTL: 3 * time.Second, HeartbeatInterval: time.Second},
		Deps{Store: b.store, Features: gate, Sink: b.sink, Registry: b.registry, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	batch, _, err := a.Submit(t.Context(), "b", state.Request{GameDate: "2025-01-15", Players: players(t, 4), ChunkSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() {
		_, err := a.Run(context.Background(), batch.ID, RunOptions{})
		res <- err
	}()
	<-gate.entered
	for range 10 { // ten seconds, far past the TTL, renewed every second
		clock.Advance(time.Second)
		// Wait for this very tick's renewal before the next advance, so no
		// tick is dropped while the heartbeat is busy.
		now := clock.Now()
		waitFor(t, func() bool {
			got, err := b.store.Get(t.Context(), batch.ID)
			return err == nil && got.HeartbeatAt.Equal(now) && got.Lease.ExpiresAt.Equal(now.Add(3*time.Second))
		})
	}
	if _, err := b.store.Claim(t.Context(), batch.ID, "B", 3*time.Second, state.ClaimOptions{}); !errors.Is(err, state.ErrLeaseHeld) {
		t.Fatalf("claim while A heartbeats: %v, want ErrLeaseHeld", err)
	}
	close(gate.gate)
	if err := <-res; err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond. Its 30 s are a liveness bound, not a timing
// assertion: a loaded two-core machine running the race detector beside two
// emulators can take seconds for one SQLite write.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestDrainReleasesLease(t *testing.T) {
	t.Parallel()
	b := setup(t, nil, nil)
	gate := &gatedFeatures{FeatureSource: b.features, free: 1, entered: make(chan struct{}, 1), gate: make(chan struct{})}
	e, err := New(Config{Owner: "A", LeaseTTL: time.Minute, HeartbeatInterval: 10 * time.Second},
		Deps{Store: b.store, Features: gate, Sink: b.sink, Registry: b.registry})
	if err != nil {
		t.Fatal(err)
	}
	r := NewRunner(e)
	batch, _, err := e.Submit(t.Context(), "b", state.Request{GameDate: "2025-01-15", Players: players(t, 6), ChunkSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := r.Do(t.Context(), Job{BatchID: batch.ID}); err != nil || out.Kind != Started {
		t.Fatalf("start: %+v, %v", out.Kind, err)
	}
	<-gate.entered // chunk 1 hangs: the soft stop cannot finish it
	start := time.Now()
	r.Drain(100 * time.Millisecond)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("drain took %v", d)
	}
	got, err := b.store.Get(t.Context(), batch.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Lease.Owner != "" || got.Status != state.StatusRunning || got.DoneChunks != 1 {
		t.Fatalf("after drain: owner %q status %s done %d; want released, running, 1", got.Lease.Owner, got.Status, got.DoneChunks)
	}
	if out, err := r.Do(t.Context(), Job{BatchID: batch.ID}); err != nil || out.Kind != Draining {
		t.Fatalf("resume while draining: %s, %v", out.Kind, err)
	}
	// Another engine resumes at once, without waiting for the TTL.
	close(gate.gate)
	done, err := b.engine(t, Config{Owner: "B"}).Run(t.Context(), batch.ID, RunOptions{})
	if err != nil || done.Status != state.StatusCompleted {
		t.Fatalf("resume after drain: %v %v", done.Status, err)
	}
	if n := len(b.rows(t, batch.ID)); n != 12 {
		t.Fatalf("%d rows, want 12", n)
	}
}

func TestSweepResumesOrphans(t *testing.T) {
	t.Parallel()
	clock := clockwork.NewFakeClock()
	b := setup(t, clock, nil)
	e := b.engine(t, Config{Owner: "A", LeaseTTL: 3 * time.Second, HeartbeatInterval: time.Second})
	var ids []string
	for i := range 3 {
		batch, _, err := e.Submit(t.Context(), fmt.Sprintf("b%d", i), state.Request{GameDate: "2025-01-15", Players: players(t, 2)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, batch.ID)
	}
	// b0 is claimed by a dead owner; b1 is pending; b2 is held by a live one.
	if _, err := b.store.Claim(t.Context(), "b0", "dead", 3*time.Second, state.ClaimOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Claim(t.Context(), "b2", "alive", time.Hour, state.ClaimOptions{}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(4 * time.Second)
	r := NewRunner(e)
	started, err := r.Sweep(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(started) != 2 {
		t.Fatalf("sweep started %v, want b0 and b1", started)
	}
	completed := func() (n int) {
		for _, id := range ids {
			if got, err := b.store.Get(t.Context(), id); err == nil && got.Status == state.StatusCompleted {
				n++
			}
		}
		return n
	}
	waitFor(t, func() bool { return completed() == 2 })
	r.Drain(5 * time.Second)
	if got, err := b.store.Get(t.Context(), "b2"); err != nil || got.Lease.Owner != "alive" {
		t.Fatalf("sweep touched the batch with a live lease: %+v, %v", got.Lease, err)
	}
}

func TestEnsembleRunsItsInputs(t *testing.T) {
	t.Parallel()
	b := setup(t, nil, func(r *systems.Registry) {
		r.Register(movingavg.New(), "")
		r.Register(zonematchup.New(), movingavg.ID)
		r.Register(ensemble.New(movingavg.ID, zonematchup.ID), movingavg.ID)
	})
	e := b.engine(t, Config{})
	// Only the ensemble is requested: its inputs are computed without rows.
	batch, _, err := e.Submit(t.Context(), "ens", state.Request{GameDate: "2025-01-15", Players: players(t, 10), Systems: []string{ensemble.ID}})
	if err != nil {
		t.Fatal(err)
	}
	done, err := e.Run(t.Context(), batch.ID, RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rows := b.rows(t, batch.ID)
	if len(rows) != 10 || done.Fallbacks != 0 {
		t.Fatalf("%d rows, %d fallbacks; want 10 ensemble rows, none falling back", len(rows), done.Fallbacks)
	}
	feats, err := league.Default().Features(t.Context(), "2025-01-15", players(t, 10))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		f := feats[r.PlayerLookup]
		ma, _ := movingavg.New().Predict(t.Context(), f)
		zm, _ := zonematchup.New().Predict(t.Context(), f)
		want, err := ensemble.New(movingavg.ID, zonematchup.ID).Combine(t.Context(), f,
			map[string]systems.Estimate{movingavg.ID: ma, zonematchup.ID: zm})
		if err != nil {
			t.Fatal(err)
		}
		if r.SystemID != ensemble.ID || r.ProducedBy != ensemble.ID || r.PredictedPoints != want.Points || r.Confidence != want.Confidence {
			t.Errorf("row %+v, want %+v", r, want)
		}
	}
}

func TestEnsembleWithTooFewInputsFallsBack(t *testing.T) {
	t.Parallel()
	down := &stub{id: "down", fn: func(context.Context, *systems.Features) (systems.Estimate, error) {
		return systems.Estimate{}, errors.New("down")
	}}
	b := setup(t, nil, func(r *systems.Registry) {
		r.Register(movingavg.New(), "")
		r.Register(down, "")
		r.Register(ensemble.New(movingavg.ID, "down"), movingavg.ID)
	})
	e := b.engine(t, Config{BreakerFailures: 1000})
	batch, _, err := e.Submit(t.Context(), "ens", state.Request{GameDate: "2025-01-15", Players: players(t, 3),
		Systems: []string{ensemble.ID, movingavg.ID}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Run(t.Context(), batch.ID, RunOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, r := range b.rows(t, batch.ID) {
		if r.SystemID != ensemble.ID {
			continue
		}
		if !r.Fallback || r.FallbackReason != "insufficient_data" || r.ProducedBy != movingavg.ID {
			t.Errorf("ensemble row with one input = %+v, want a moving_average fallback (insufficient_data)", r)
		}
	}
}

// poorQuality scores every feature row below the default quality floor.
type poorQuality struct{ systems.FeatureSource }

func (p poorQuality) Features(ctx context.Context, date string, players []string) (map[string]*systems.Features, error) {
	fs, err := p.FeatureSource.Features(ctx, date, players)
	for _, f := range fs {
		f.Quality = systems.DefaultMinQuality - 1
	}
	return fs, err
}

func TestInvalidFeaturesGiveFailureRecords(t *testing.T) {
	t.Parallel()
	b := setup(t, nil, nil)
	b.features = poorQuality{b.features} // nobody's data is good enough
	e := b.engine(t, Config{})
	batch, _, err := e.Submit(t.Context(), "q", state.Request{GameDate: "2025-01-15", Players: players(t, 2)})
	if err != nil {
		t.Fatal(err)
	}
	done, err := e.Run(t.Context(), batch.ID, RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if done.FailedItems != 4 || done.Predictions != 0 {
		t.Fatalf("failed %d predictions %d", done.FailedItems, done.Predictions)
	}
	for _, r := range b.rows(t, batch.ID) {
		if !r.Failed || !strings.HasPrefix(r.FailureReason, "invalid_features: quality") {
			t.Errorf("row = %+v", r)
		}
	}
}

// With FAULTS hanging one system, a chunk's fan-out still finishes within
// that system's timeout plus 100 ms, and every affected row says timeout.
// (The one timing bound the design asks for; it measures the fan-out alone,
// not the disk writes around it.)
func TestHungSystemCostsOnlyItsTimeout(t *testing.T) {
	t.Parallel()
	rules, err := ParseFaults("system=zone_matchup_v1,kind=hang,rate=1")
	if err != nil {
		t.Fatal(err)
	}
	b := setup(t, nil, nil)
	const timeout = 300 * time.Millisecond
	e := b.engine(t, Config{Faults: rules, SystemTimeouts: map[string]time.Duration{zonematchup.ID: timeout},
		BreakerFailures: 100000, Concurrency: 200})
	batch, _, err := e.Submit(t.Context(), "hang", state.Request{GameDate: "2025-01-15", Players: players(t, 50), ChunkSize: 50})
	if err != nil {
		t.Fatal(err)
	}
	feats, err := b.features.Features(t.Context(), "2025-01-15", batch.Items)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rows, _ := e.fanout.predict(t.Context(), batch, batch.Chunk(0), feats, time.Now(), e.log)
	took := time.Since(start)
	t.Logf("fan-out of 50 players × 2 systems with one hung (timeout %v): %v", timeout, took)
	hung := 0
	for _, r := range rows {
		if r.SystemID == zonematchup.ID {
			hung++
			if r.FallbackReason != "timeout" || !r.Fallback || r.ProducedBy != movingavg.ID {
				t.Errorf("row %+v, want a fallback with reason timeout", r)
			}
		}
	}
	if hung != 50 {
		t.Fatalf("%d rows of the hung system, want 50", hung)
	}
	if took > timeout+100*time.Millisecond {
		t.Errorf("fan-out took %v, more than the timeout %v + 100ms", took, timeout)
	}
}
