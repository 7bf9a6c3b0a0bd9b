package worker

import (
	"context"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/movingavg"
	"github.com/predworker/predworker/systems/similarity"
	"github.com/predworker/predworker/systems/zonematchup"
)

// A system that ignores its context: each call is abandoned at its deadline
// (the chunk does not wait), the deadlines open its breaker, and the calls
// still running are capped, so goroutines do not pile up.
func TestStuckSystemTripsItsBreakerAndIsCapped(t *testing.T) {
	t.Parallel()
	never := make(chan struct{})
	t.Cleanup(func() { close(never) })
	stuck := &stub{id: "stuck", fn: func(context.Context, *systems.Features) (systems.Estimate, error) {
		<-never // ignores its context
		return systems.Estimate{}, nil
	}}
	b := setup(t, nil, func(r *systems.Registry) {
		r.Register(movingavg.New(), "")
		r.Register(stuck, movingavg.ID)
	})
	e := b.engine(t, Config{SystemTimeouts: map[string]time.Duration{"stuck": 20 * time.Millisecond},
		BreakerFailures: 5, BreakerCooldown: time.Hour, Concurrency: 8, MaxAbandoned: 4})
	batch, _, err := e.Submit(t.Context(), "stuck", state.Request{GameDate: "2025-01-15", Players: players(t, 200),
		Systems: []string{"stuck"}, ChunkSize: 50})
	if err != nil {
		t.Fatal(err)
	}
	done, err := e.Run(t.Context(), batch.ID, RunOptions{})
	if err != nil || done.Status != state.StatusCompleted {
		t.Fatalf("run: %s, %v", done.Status, err)
	}
	reasons := map[string]int{}
	for _, r := range b.rows(t, batch.ID) {
		if !r.Fallback || r.ProducedBy != movingavg.ID {
			t.Fatalf("row %+v, want a moving_average fallback", r)
		}
		reasons[r.FallbackReason]++
	}
	t.Logf("fallback reasons over 200 calls: %v", reasons)
	if reasons["timeout"] > 5+8 || reasons["circuit_open"]+reasons["saturated"] < 150 {
		t.Errorf("reasons %v: the breaker should open after 5 timeouts and the rest fall back at once", reasons)
	}
	if st := e.fanout.callers["stuck"].breaker.State(); st != gobreaker.StateOpen {
		t.Errorf("breaker of the stuck system is %s, want open", st)
	}
	// Every call that reached the system is a goroutine blocked for good:
	// at most the cap plus the calls in flight when it was reached.
	if n := stuck.calls.Load(); n > 4+8 {
		t.Errorf("%d calls reached the stuck system (each a goroutine that never ends), want at most 4 + 8", n)
	}
}

// FAULTS kind=stuck rehearses that system: it is abandoned at the deadline.
func TestFaultStuckIsAbandonedAtTheDeadline(t *testing.T) {
	t.Parallel()
	rules, err := ParseFaults("system=zone_matchup_v1,kind=stuck,rate=1")
	if err != nil {
		t.Fatal(err)
	}
	b := setup(t, nil, nil)
	e := b.engine(t, Config{Faults: rules, SystemTimeouts: map[string]time.Duration{zonematchup.ID: 30 * time.Millisecond},
		BreakerFailures: 1000, MaxAbandoned: 100})
	batch, _, err := e.Submit(t.Context(), "stuck-fault", state.Request{GameDate: "2025-01-15", Players: players(t, 3)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Run(t.Context(), batch.ID, RunOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, r := range b.rows(t, batch.ID) {
		if r.SystemID == zonematchup.ID && (r.FallbackReason != "timeout" || r.ProducedBy != movingavg.ID) {
			t.Errorf("row %+v, want a timeout fallback", r)
		}
	}
}

// On 2024-11-06 the similarity system declines many players (too few
// similar games early in the season). Declines are not failures: its breaker
// stays closed, and every row says why it fell back.
func TestDeclinesDoNotTripTheBreaker(t *testing.T) {
	t.Parallel()
	b := setup(t, nil, allSystems(t))
	e := b.engine(t, Config{}) // the default breaker: 5 consecutive failures
	batch, _, err := e.Submit(t.Context(), "early", state.Request{GameDate: "2024-11-06"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Run(t.Context(), batch.ID, RunOptions{}); err != nil {
		t.Fatal(err)
	}
	reasons := map[string]int{}
	for _, r := range b.rows(t, batch.ID) {
		if r.Fallback {
			reasons[r.FallbackFrom+":"+r.FallbackReason]++
		}
	}
	t.Logf("fallbacks on 2024-11-06: %v", reasons)
	if reasons[similarity.ID+":insufficient_data"] < 5 {
		t.Fatalf("fallbacks %v: the test needs a day with many declines", reasons)
	}
	for k, n := range reasons {
		if k == similarity.ID+":circuit_open" {
			t.Errorf("%d similarity rows fell back on an open breaker opened by declines", n)
		}
	}
}

// A run cancelled mid-chunk (its lease lost, a drain) says nothing about
// the systems: the calls it cuts short and the ones it skips do not count
// towards any breaker.
func TestCancelledRunDoesNotTripBreakers(t *testing.T) {
	t.Parallel()
	slow := &stub{id: "slow", fn: func(ctx context.Context, _ *systems.Features) (systems.Estimate, error) {
		select {
		case <-time.After(50 * time.Millisecond):
			return systems.Estimate{Points: 10, Confidence: 50, Recommendation: systems.Pass}, nil
		case <-ctx.Done():
			return systems.Estimate{}, ctx.Err()
		}
	}}
	b := setup(t, nil, func(r *systems.Registry) { r.Register(slow, "") })
	e := b.engine(t, Config{BreakerFailures: 2, BreakerCooldown: time.Hour, Concurrency: 4, MaxAbandoned: 1})
	batch, _, err := e.Submit(t.Context(), "cut", state.Request{GameDate: "2025-01-15", Players: players(t, 40), ChunkSize: 40})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(120*time.Millisecond, cancel)
	if _, err := e.Run(ctx, batch.ID, RunOptions{}); err == nil {
		t.Fatal("the cancelled run completed")
	}
	if st := e.fanout.callers["slow"].breaker.State(); st != gobreaker.StateClosed {
		t.Fatalf("breaker is %s after a cancelled run, want closed", st)
	}
	done, err := b.engine(t, Config{Owner: "next"}).Run(t.Context(), batch.ID, RunOptions{})
	if err != nil || done.Fallbacks != 0 || done.FailedItems != 0 {
		t.Fatalf("the next run: %d fallbacks, %d failed, %v", done.Fallbacks, done.FailedItems, err)
	}
}
