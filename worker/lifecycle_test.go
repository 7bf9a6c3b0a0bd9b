package worker

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/movingavg"
	"github.com/predworker/predworker/systems/zonematchup"
)

// Runner.Do is the one lifecycle: every entry point's situation maps to one
// outcome (or one classified error).
func TestLifecycleOutcomes(t *testing.T) {
	t.Parallel()
	b := setup(t, nil, nil)
	e := b.engine(t, Config{Owner: "here", LeaseTTL: time.Minute, HeartbeatInterval: time.Second})
	r := NewRunner(e)
	t.Cleanup(func() { r.Drain(5 * time.Second) })
	ctx := t.Context()
	req := func(n int) *state.Request {
		return &state.Request{GameDate: "2025-01-15", Players: players(t, n), ChunkSize: 2}
	}
	status := func(id string) state.Status {
		got, err := b.store.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return got.Status
	}

	// Run here: created, run to the end.
	out, err := r.Do(ctx, Job{BatchID: "here", Request: req(4), Here: true})
	if err != nil || out.Kind != Completed || !out.Created || out.Batch.Status != state.StatusCompleted {
		t.Fatalf("run here: %+v, %v", out, err)
	}
	// The same request again: completed earlier, nothing claimed.
	out, err = r.Do(ctx, Job{BatchID: "here", Request: req(4)})
	if err != nil || out.Kind != Completed || out.Created || out.Batch.Lease.Epoch != 1 {
		t.Fatalf("again: %+v, %v", out, err)
	}
	// The same id, another request: a conflict, classified.
	if _, err := r.Do(ctx, Job{BatchID: "here", Request: req(2)}); Classify(err) != ClassConflict {
		t.Fatalf("conflict: %v (%s)", err, Classify(err))
	}
	// A resume of a batch nobody created: not found.
	if _, err := r.Do(ctx, Job{BatchID: "nobody"}); Classify(err) != ClassNotFound {
		t.Fatalf("not found: %v (%s)", err, Classify(err))
	}
	// Background: started, then completed.
	out, err = r.Do(ctx, Job{BatchID: "bg", Request: req(4)})
	if err != nil || out.Kind != Started || !out.Created {
		t.Fatalf("background: %+v, %v", out, err)
	}
	waitFor(t, func() bool { return status("bg") == state.StatusCompleted })

	// Held by another owner: held until its lease expires; forced: started.
	if _, _, err := e.Submit(ctx, "held", *req(2)); err != nil {
		t.Fatal(err)
	}
	theirs, err := b.store.Claim(ctx, "held", "elsewhere", time.Hour, state.ClaimOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out, err = r.Do(ctx, Job{BatchID: "held", Here: true})
	if err != nil || out.Kind != Held || !out.HeldUntil.Equal(theirs.Lease.ExpiresAt) {
		t.Fatalf("held: %+v, %v", out, err)
	}
	out, err = r.Do(ctx, Job{BatchID: "held", Force: true, Here: true})
	if err != nil || out.Kind != Completed || out.Batch.Lease.Epoch != theirs.Lease.Epoch+1 {
		t.Fatalf("forced: %+v, %v", out, err)
	}

	// Failed earlier: Failed with the stored error, unless reopened.
	if _, _, err := e.Submit(ctx, "failed", *req(2)); err != nil {
		t.Fatal(err)
	}
	mine, err := b.store.Claim(ctx, "failed", "x", time.Hour, state.ClaimOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.store.Finish(ctx, "failed", mine.Lease, state.StatusFailed, "feature table missing"); err != nil {
		t.Fatal(err)
	}
	out, err = r.Do(ctx, Job{BatchID: "failed", Here: true})
	if err != nil || out.Kind != Failed || out.Err == nil || status("failed") != state.StatusFailed {
		t.Fatalf("failed earlier: %+v, %v", out, err)
	}
	out, err = r.Do(ctx, Job{BatchID: "failed", Reopen: true, Here: true})
	if err != nil || out.Kind != Completed {
		t.Fatalf("reopened: %+v, %v", out, err)
	}

	// Budget spent: interrupted, progress kept, lease released.
	slow := setup(t, nil, nil)
	rules, err := ParseFaults("system=*,kind=latency,latency=40ms,rate=1")
	if err != nil {
		t.Fatal(err)
	}
	se := slow.engine(t, Config{Faults: rules})
	sr := NewRunner(se)
	out, err = sr.Do(ctx, Job{BatchID: "budget", Request: &state.Request{GameDate: "2025-01-15", Players: players(t, 8), ChunkSize: 1},
		Here: true, Budget: 150 * time.Millisecond})
	if err != nil || out.Kind != Interrupted || !out.BudgetSpent || !errors.Is(out.Err, ErrInterrupted) {
		t.Fatalf("budget: %+v, %v", out, err)
	}
	got, err := slow.store.Get(ctx, "budget")
	if err != nil || got.Lease.Owner != "" || got.DoneChunks == 0 || got.DoneChunks == got.TotalChunks() {
		t.Fatalf("after the budget: owner %q, %d of %d chunks, %v", got.Lease.Owner, got.DoneChunks, got.TotalChunks(), err)
	}

	// Draining: nothing is created or started.
	sr.Drain(time.Second)
	out, err = sr.Do(ctx, Job{BatchID: "late", Request: req(2)})
	if err != nil || out.Kind != Draining {
		t.Fatalf("draining: %+v, %v", out, err)
	}
	if _, err := slow.store.Get(ctx, "late"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("a batch was created while draining: %v", err)
	}
}

// A stored batch that asks for a system this process no longer runs (the
// deploy removed it from SYSTEMS) fails at claim with the system named, in
// the foreground and in a sweep, and nothing panics.
func TestBatchNeedingAMissingSystemFailsAtClaim(t *testing.T) {
	t.Parallel()
	b := setup(t, nil, nil) // moving_average and zone_matchup_v1
	old := b.engine(t, Config{Owner: "old"})
	for _, id := range []string{"fg", "swept"} {
		if _, _, err := old.Submit(t.Context(), id, state.Request{GameDate: "2025-01-15", Players: players(t, 3)}); err != nil {
			t.Fatal(err)
		}
	}
	fewer := setup(t, nil, func(r *systems.Registry) { r.Register(movingavg.New(), "") })
	e, err := New(Config{Owner: "new"}, Deps{Store: b.store, Features: b.features, Sink: b.sink, Registry: fewer.registry})
	if err != nil {
		t.Fatal(err)
	}
	r := NewRunner(e)
	t.Cleanup(func() { r.Drain(5 * time.Second) })
	out, err := r.Do(t.Context(), Job{BatchID: "fg", Here: true})
	var missing *MissingSystemsError
	if err != nil || out.Kind != Failed || !errors.As(out.Err, &missing) || missing.Missing[0] != zonematchup.ID {
		t.Fatalf("run of a batch needing a missing system: %+v, %v", out, err)
	}
	if _, err := r.Sweep(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		got, err := b.store.Get(t.Context(), "swept")
		return err == nil && got.Status == state.StatusFailed && strings.Contains(got.Error, zonematchup.ID)
	})
	if n := len(b.rows(t, "fg")) + len(b.rows(t, "swept")); n != 0 {
		t.Fatalf("%d rows written for batches that could not run", n)
	}
}

// While the registry is still loading (a model fleet's first read), a batch
// naming a system it lacks is neither refused as invalid nor failed: the
// request is unavailable for now, the claimed batch is released, and it runs
// once the system is there.
func TestBatchWaitsForSystemsStillLoading(t *testing.T) {
	t.Parallel()
	b := setup(t, nil, nil) // moving_average and zone_matchup_v1
	old := b.engine(t, Config{Owner: "old"})
	if _, _, err := old.Submit(t.Context(), "waits", state.Request{GameDate: "2025-01-15", Players: players(t, 3)}); err != nil {
		t.Fatal(err)
	}
	reg := systems.NewRegistry()
	reg.SetLoading(true)
	reg.Register(movingavg.New(), "")
	e, err := New(Config{Owner: "new"}, Deps{Store: b.store, Features: b.features, Sink: b.sink, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.Submit(t.Context(), "", state.Request{GameDate: "2025-01-15", Systems: []string{zonematchup.ID}}); Classify(err) != ClassUnavailable {
		t.Errorf("a request naming a system still loading: %v (class %s), want unavailable", err, Classify(err))
	}
	r := NewRunner(e)
	t.Cleanup(func() { r.Drain(5 * time.Second) })
	out, err := r.Do(t.Context(), Job{BatchID: "waits", Here: true})
	if out.Kind == Failed {
		t.Fatalf("a batch waiting for a loading system failed: %+v, %v", out, err)
	}
	got, err := b.store.Get(t.Context(), "waits")
	if err != nil || got.Status == state.StatusFailed || got.DoneChunks != 0 {
		t.Fatalf("after the claim: %+v, %v", got, err)
	}
	reg.Register(zonematchup.New(), "")
	reg.SetLoading(false)
	out, err = r.Do(t.Context(), Job{BatchID: "waits", Here: true})
	if err != nil || out.Kind != Completed {
		t.Fatalf("once loaded: %+v, %v", out, err)
	}
}

// MAX_RUNNING_BATCHES caps the batches one process runs: a job beyond it
// starts nothing (the batch waits, pending, for room), and a sweep claims
// only as many orphans as there is room for.
func TestMaxRunningBatches(t *testing.T) {
	t.Parallel()
	b := setup(t, nil, nil)
	gate := &gatedFeatures{FeatureSource: b.features, free: 0, entered: make(chan struct{}, 8), gate: make(chan struct{})}
	e, err := New(Config{Owner: "here", MaxRunning: 2}, Deps{Store: b.store, Features: gate, Sink: b.sink, Registry: b.registry})
	if err != nil {
		t.Fatal(err)
	}
	r := NewRunner(e)
	t.Cleanup(func() { close(gate.gate); r.Drain(5 * time.Second) })
	req := &state.Request{GameDate: "2025-01-15", Players: players(t, 2)}
	for _, id := range []string{"one", "two"} {
		if out, err := r.Do(t.Context(), Job{BatchID: id, Request: req}); err != nil || out.Kind != Started {
			t.Fatalf("%s: %+v, %v", id, out.Kind, err)
		}
	}
	out, err := r.Do(t.Context(), Job{BatchID: "three", Request: req})
	if err != nil || out.Kind != AtCapacity || !out.Created {
		t.Fatalf("third batch: %+v, %v; want created and at capacity", out.Kind, err)
	}
	got, err := b.store.Get(t.Context(), "three")
	if err != nil || got.Status != state.StatusPending || got.Lease.Epoch != 0 {
		t.Fatalf("third batch after the refusal: %s epoch %d, %v; want pending and never claimed", got.Status, got.Lease.Epoch, err)
	}
	if ids, err := r.Sweep(t.Context()); err != nil || len(ids) != 0 {
		t.Fatalf("sweep while full started %v, %v", ids, err)
	}
	if len(r.Active()) != 2 {
		t.Fatalf("%d batches running, want 2", len(r.Active()))
	}
}
