package worker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/predworker/predworker/logging"
	"github.com/predworker/predworker/state"
)

// errRunningHere: the batch is already running in this process.
var errRunningHere = errors.New("batch is already running in this process")

// errAtCapacity: this process runs MaxRunning batches already.
var errAtCapacity = errors.New("this instance runs as many batches as it may (MAX_RUNNING_BATCHES)")

// Runner owns the batches a process runs, in the background or in a
// caller's goroutine: it starts them (Do, in lifecycle.go), sweeps for
// orphans, and drains them on shutdown. Every goroutine it starts is waited
// for in Drain.
type Runner struct {
	engine *Engine
	log    *slog.Logger

	hardCtx    context.Context // cancelled at the end of the drain budget
	hardCancel context.CancelFunc
	soft       chan struct{} // closed when the drain starts

	mu       sync.Mutex
	draining bool
	active   map[string]bool
	wg       sync.WaitGroup
}

// NewRunner returns a runner for e.
func NewRunner(e *Engine) *Runner {
	ctx, cancel := context.WithCancel(context.Background())
	return &Runner{engine: e, log: e.log, hardCtx: ctx, hardCancel: cancel,
		soft: make(chan struct{}), active: map[string]bool{}}
}

// Draining reports whether Drain has started.
func (r *Runner) Draining() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.draining
}

// Active returns the ids of the batches running in this process.
func (r *Runner) Active() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.active))
	for id := range r.active {
		out = append(out, id)
	}
	return out
}

func (r *Runner) isActive(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.active[id]
}

// room is how many more batches this process may run now.
func (r *Runner) room() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.engine.cfg.MaxRunning - len(r.active)
}

// admit registers a run of a claimed batch. When the runner is draining, the
// batch already runs here, or MaxRunning batches do, it releases the claim
// instead and says why.
func (r *Runner) admit(ctx context.Context, b state.Batch) error {
	r.mu.Lock()
	var why error
	switch {
	case r.draining:
		why = ErrDraining
	case r.active[b.ID]:
		why = errRunningHere
	case len(r.active) >= r.engine.cfg.MaxRunning:
		why = errAtCapacity
	default:
		r.active[b.ID] = true
		r.wg.Add(1)
		r.mu.Unlock()
		return nil
	}
	r.mu.Unlock()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := r.engine.store.Release(rctx, b.ID, b.Lease); err != nil && !errors.Is(err, state.ErrLeaseLost) {
		logging.FromContext(ctx, r.log).Error("release lease of a batch not started", slog.String("batch_id", b.ID), ErrorAttrs(err))
	}
	return why
}

func (r *Runner) done(id string) {
	r.mu.Lock()
	delete(r.active, id)
	r.mu.Unlock()
	r.wg.Done()
}

// start runs an already claimed batch in the background. Its lines carry
// the logger of ctx (the request that started it); its life is the
// runner's, not ctx's.
func (r *Runner) start(ctx context.Context, b state.Batch) error {
	if err := r.admit(ctx, b); err != nil {
		return err
	}
	// The run outlives the request, but continues its trace.
	runCtx := trace.ContextWithSpanContext(logging.WithLogger(r.hardCtx, logging.FromContext(ctx, r.log)),
		trace.SpanContextFromContext(ctx))
	go func() {
		defer r.done(b.ID)
		defer func() { // no background run may end the process
			if v := recover(); v != nil {
				logging.FromContext(runCtx, r.log).Error("background run panicked", slog.String("batch_id", b.ID),
					ErrorAttrs(newPanicError(v)))
			}
		}()
		_, err := r.engine.RunClaimed(runCtx, b, RunOptions{Stop: r.soft})
		var failed *BatchFailedError
		switch {
		case err == nil, errors.Is(err, ErrInterrupted), errors.As(err, &failed), errors.Is(err, state.ErrLeaseLost):
			// logged by the engine
		default:
			logging.FromContext(runCtx, r.log).Error("run ended with an error", slog.String("batch_id", b.ID), ErrorAttrs(err))
		}
	}()
	return nil
}

// runHere runs an already claimed batch in the caller's goroutine (a push
// request, the CLI), tracked like the background runs: a drain stops it after
// the chunk in flight and abandons it at the end of the drain budget, and the
// lease is released either way.
func (r *Runner) runHere(ctx context.Context, b state.Batch, opts RunOptions) (state.Batch, error) {
	if err := r.admit(ctx, b); err != nil {
		return b, err
	}
	defer r.done(b.ID)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(r.hardCtx, cancel)
	defer stop()
	opts.Stop = r.soft
	return r.engine.RunClaimed(ctx, b, opts)
}

// Sweep claims every orphaned batch (expired or released lease, or a lease of
// a local process that is gone) and starts it. It returns the ids started.
func (r *Runner) Sweep(ctx context.Context) ([]string, error) {
	if r.Draining() {
		return nil, ErrDraining
	}
	if r.room() <= 0 {
		return nil, nil // full: the orphans wait for an instance with room
	}
	orphans, err := r.orphans(ctx)
	if err != nil {
		return nil, err
	}
	var started []string
	for _, o := range orphans {
		if r.room() <= 0 {
			break
		}
		if r.isActive(o.ID) {
			continue
		}
		b, err := r.engine.Claim(ctx, o.ID, state.ClaimOptions{})
		switch {
		case errors.Is(err, state.ErrLeaseHeld), errors.Is(err, state.ErrFinished):
			continue // someone else got there first: a skip, not a failure
		case err != nil:
			return started, err
		}
		if err := r.start(ctx, b); errors.Is(err, errRunningHere) || errors.Is(err, errAtCapacity) {
			continue
		} else if err != nil {
			return started, err
		}
		started = append(started, b.ID)
	}
	return started, nil
}

// orphans lists the batches a sweep may claim.
func (r *Runner) orphans(ctx context.Context) ([]state.Batch, error) {
	orphans, err := r.engine.store.Orphans(ctx, 100)
	if err != nil {
		return nil, err
	}
	if !r.engine.cfg.LocalOwners {
		return orphans, nil
	}
	running, err := r.engine.store.List(ctx, state.ListFilter{Status: state.StatusRunning, Limit: 500})
	if err != nil {
		return nil, err
	}
	for _, b := range running {
		if b.Lease.Owner != "" && ownerGone(b.Lease.Owner) {
			orphans = append(orphans, b)
		}
	}
	return orphans, nil
}

// SweepLoop sweeps once at once and then every SweepInterval until ctx ends or
// the drain starts.
func (r *Runner) SweepLoop(ctx context.Context) {
	t := r.engine.clock.NewTicker(r.engine.cfg.SweepInterval)
	defer t.Stop()
	for {
		r.sweepOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-r.soft:
			return
		case <-t.Chan():
		}
	}
}

// sweepOnce is one pass of the sweeper; a panic in it is logged and the
// next pass comes as usual.
func (r *Runner) sweepOnce(ctx context.Context) {
	defer func() {
		if v := recover(); v != nil {
			r.log.Error("sweep panicked", ErrorAttrs(newPanicError(v)))
		}
	}()
	if ids, err := r.Sweep(ctx); err != nil && !errors.Is(err, ErrDraining) && ctx.Err() == nil {
		r.log.Warn("sweep failed", WarnAttrs(err))
	} else if len(ids) > 0 {
		r.log.Info("resumed orphaned batches", slog.Any("batch_ids", ids))
	}
}

// SoftDrainBudget is the part of a shutdown budget the runs get to finish
// their chunk in flight and checkpoint; the rest (a quarter, at most 2 s) is
// left for releasing leases and closing the listener.
func SoftDrainBudget(total time.Duration) time.Duration {
	return total - min(total/4, 2*time.Second)
}

// Drain stops taking work, lets running batches finish the chunk in flight
// and checkpoint (soft stop, SoftDrainBudget(total)), cancels whatever is
// still running after that (hard stop), and returns once every run has
// released its lease.
func (r *Runner) Drain(total time.Duration) {
	r.mu.Lock()
	if !r.draining {
		r.draining = true
		close(r.soft)
	}
	r.mu.Unlock()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	t := time.NewTimer(SoftDrainBudget(total))
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		r.log.Warn("drain budget spent; abandoning the chunks in flight", slog.Any("batch_ids", r.Active()))
		r.hardCancel()
		<-done
	}
	r.hardCancel()
}
