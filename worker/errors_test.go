package worker

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/predworker/predworker/events"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/movingavg"
)

// Every error the engine, the stores and the sources produce has exactly
// one class, and the same class wherever it is asked (the engine's retry and
// fail decisions, the API's answers, the push's ack or redelivery all
// derive from it).
func TestClassifyGivesEachErrorOneClass(t *testing.T) {
	t.Parallel()
	wrap := func(err error) error { return fmt.Errorf("load slate of 2025-01-15: %w", err) }
	for _, tc := range []struct {
		err  error
		want Class
	}{
		{&InputError{Field: "game_date", Message: "bad"}, ClassValidation},
		{systems.ErrNoGames, ClassValidation},
		{systems.ErrUnknownDate, ClassValidation},
		{state.ErrConflict, ClassConflict},
		{state.ErrNotFound, ClassNotFound},
		{events.ErrNotFound, ClassNotFound},
		{state.ErrFinished, ClassFinished},
		{&BatchFailedError{Err: systems.ErrPermanent}, ClassFailed},
		{systems.ErrPermanent, ClassDependency},
		{state.ErrLeaseHeld, ClassBusy},
		{state.ErrLeaseLost, ClassBusy},
		{ErrDraining, ClassInterrupted},
		{ErrInterrupted, ClassInterrupted},
		{context.Canceled, ClassInterrupted},
		{state.ErrUnavailable, ClassUnavailable},
		{systems.ErrUnavailable, ClassUnavailable},
		{events.ErrUnavailable, ClassUnavailable},
		{context.DeadlineExceeded, ClassDeadline},
		{systems.ErrDataIncomplete, ClassDataIncomplete},
		{events.ErrRejected, ClassDependency},
		{newPanicError("boom"), ClassInternal},
		{errors.New("something nobody classified"), ClassInternal},
	} {
		for _, err := range []error{tc.err, wrap(tc.err), errors.Join(errors.New("context"), wrap(tc.err))} {
			if got := Classify(err); got != tc.want {
				t.Errorf("Classify(%v) = %s, want %s", err, got, tc.want)
			}
		}
	}
	if Classify(nil) != "" {
		t.Errorf("Classify(nil) = %q", Classify(nil))
	}
	// A finished batch is permanent for everyone (it once was transient for
	// the classifier and permanent for the engine).
	if !Classify(state.ErrFinished).Permanent() || Classify(state.ErrFinished).RetryInPlace() {
		t.Error("ErrFinished must be permanent and never retried")
	}
	for _, c := range Classes {
		if c.Permanent() && c.RetryInPlace() {
			t.Errorf("class %s is both permanent and retried in place", c)
		}
	}
}

// failingSink fails every write with err until n writes have been refused.
type failingSink struct {
	systems.Sink
	err error
	n   int
}

func (s *failingSink) Write(ctx context.Context, batchID string, epoch int64, rows []systems.Prediction) error {
	if s.n > 0 {
		s.n--
		return s.err
	}
	return s.Sink.Write(ctx, batchID, epoch, rows)
}

// The engine's decisions come from the class: a sink error of a permanent
// class fails the batch at once; one retried in place is retried until it
// clears; one that is neither (another owner) stops the run without failing
// the batch.
func TestEngineDecidesByClass(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err        error
		wantStatus state.Status
		wantErr    func(error) bool
	}{
		{fmt.Errorf("write: %w", systems.ErrPermanent), state.StatusFailed, func(err error) bool { var f *BatchFailedError; return errors.As(err, &f) }},
		{fmt.Errorf("write: %w", state.ErrFinished), state.StatusFailed, func(err error) bool { var f *BatchFailedError; return errors.As(err, &f) }},
		{fmt.Errorf("write: %w", systems.ErrUnavailable), state.StatusCompleted, func(err error) bool { return err == nil }},
		{errors.New("disk hiccup"), state.StatusCompleted, func(err error) bool { return err == nil }},
		{fmt.Errorf("write: %w", state.ErrLeaseHeld), state.StatusRunning, func(err error) bool { return errors.Is(err, ErrInterrupted) }},
	} {
		b := setup(t, nil, nil)
		sink := &failingSink{Sink: b.sink, err: tc.err, n: 2}
		e, err := New(Config{RetryMaxInterval: 1}, Deps{Store: b.store, Features: b.features, Sink: sink, Registry: b.registry})
		if err != nil {
			t.Fatal(err)
		}
		batch, _, err := e.Submit(t.Context(), "c", state.Request{GameDate: "2025-01-15", Players: players(t, 2)})
		if err != nil {
			t.Fatal(err)
		}
		_, err = e.Run(t.Context(), batch.ID, RunOptions{})
		got, gerr := b.store.Get(t.Context(), batch.ID)
		if gerr != nil {
			t.Fatal(gerr)
		}
		if got.Status != tc.wantStatus || !tc.wantErr(err) {
			t.Errorf("sink error %v (%s): batch %s, run error %v; want %s", tc.err, Classify(tc.err), got.Status, err, tc.wantStatus)
		}
	}
}

// crashAfterWrite lets the first write through and then "kills" its run
// before the checkpoint (cancels it), as a crash between the two would.
type crashAfterWrite struct {
	systems.Sink
	kill   context.CancelFunc
	writes int
}

func (s *crashAfterWrite) Write(ctx context.Context, batchID string, epoch int64, rows []systems.Prediction) error {
	err := s.Sink.Write(ctx, batchID, epoch, rows)
	if s.writes++; s.writes == 1 {
		s.kill()
	}
	return err
}

// After an owner wrote a chunk and died before its checkpoint, the next owner
// computes the chunk again (here with a healthy system instead of
// fallbacks): the counters in the status equal the rows the sink holds.
func TestCountersEqualStoredRowsAfterATakeover(t *testing.T) {
	t.Parallel()
	var broken atomic.Bool
	broken.Store(true)
	flaky := &stub{id: "flaky", fn: func(ctx context.Context, f *systems.Features) (systems.Estimate, error) {
		if broken.Load() {
			return systems.Estimate{}, errors.New("model server down")
		}
		return systems.Estimate{Points: 20, Confidence: 60, Recommendation: systems.Pass}, nil
	}}
	b := setup(t, nil, func(r *systems.Registry) {
		r.Register(movingavg.New(), "")
		r.Register(flaky, movingavg.ID)
	})
	ctx, kill := context.WithCancel(t.Context())
	sink := &crashAfterWrite{Sink: b.sink, kill: kill}
	a, err := New(Config{Owner: "A", BreakerFailures: 1000}, Deps{Store: b.store, Features: b.features, Sink: sink, Registry: b.registry})
	if err != nil {
		t.Fatal(err)
	}
	batch, _, err := a.Submit(t.Context(), "takeover", state.Request{GameDate: "2025-01-15", Players: players(t, 4), ChunkSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Run(ctx, batch.ID, RunOptions{}); err == nil {
		t.Fatal("the killed run completed")
	}
	broken.Store(false)
	done, err := b.engine(t, Config{Owner: "B"}).Run(t.Context(), batch.ID, RunOptions{Claim: state.ClaimOptions{Force: true}})
	if err != nil || done.Status != state.StatusCompleted {
		t.Fatalf("B: %s, %v", done.Status, err)
	}
	var stored state.Progress
	for _, r := range b.rows(t, batch.ID) {
		switch {
		case r.Failed:
			stored.FailedItems++
		case r.Fallback:
			stored.Fallbacks++
			stored.Predictions++
		default:
			stored.Predictions++
		}
	}
	if stored.Predictions != done.Predictions || stored.Fallbacks != done.Fallbacks || stored.FailedItems != done.FailedItems {
		t.Fatalf("status counts %d predictions, %d fallbacks, %d failed; the sink holds %d, %d, %d",
			done.Predictions, done.Fallbacks, done.FailedItems, stored.Predictions, stored.Fallbacks, stored.FailedItems)
	}
}
