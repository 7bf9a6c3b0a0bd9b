package worker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/predworker/predworker/logging"
	"github.com/predworker/predworker/state"
)

// ErrDraining: the runner is shutting down and takes no new work.
var ErrDraining = errors.New("worker is draining")

// Runner owns the batches a serving process runs in the background: it starts
// them, sweeps for orphans, and drains them on shutdown. Every goroutine it
// starts is waited for in Drain.
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

// Start runs an already claimed batch in the background. It returns
// ErrDraining (after releasing the lease) when the runner is shutting down.
func (r *Runner) Start(b state.Batch) error {
	r.mu.Lock()
	if r.draining || r.active[b.ID] {
		draining := r.draining
		r.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := r.engine.store.Release(ctx, b.ID, b.Lease); err != nil && !errors.Is(err, state.ErrLeaseLost) {
			r.log.Error("release lease of a batch not started", slog.String("batch_id", b.ID), logging.Err(err))
		}
		if draining {
			return ErrDraining
		}
		return nil // already running here: the claim above bumped the epoch, the
		// running copy will see lease_lost; the new claim was released.
	}
	r.active[b.ID] = true
	r.wg.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.wg.Done()
		defer func() {
			r.mu.Lock()
			delete(r.active, b.ID)
			r.mu.Unlock()
		}()
		_, err := r.engine.RunClaimed(r.hardCtx, b, RunOptions{Stop: r.soft})
		var failed *BatchFailedError
		switch {
		case err == nil, errors.Is(err, ErrInterrupted), errors.As(err, &failed):
			// logged by the engine
		case errors.Is(err, state.ErrLeaseLost):
		default:
			r.log.Error("run ended with an error", slog.String("batch_id", b.ID), logging.Err(err))
		}
	}()
	return nil
}

// RunHere runs an already claimed batch in the caller's goroutine (a push
// request), tracked like the background runs: a drain stops it after the chunk
// in flight and abandons it at the end of the budget, and the lease is
// released either way.
func (r *Runner) RunHere(ctx context.Context, b state.Batch) (state.Batch, error) {
	r.mu.Lock()
	if r.draining || r.active[b.ID] {
		r.mu.Unlock()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if err := r.engine.store.Release(rctx, b.ID, b.Lease); err != nil && !errors.Is(err, state.ErrLeaseLost) {
			r.log.Error("release lease of a batch not started", slog.String("batch_id", b.ID), logging.Err(err))
		}
		return b, ErrDraining
	}
	r.active[b.ID] = true
	r.wg.Add(1)
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.active, b.ID)
		r.mu.Unlock()
		r.wg.Done()
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(r.hardCtx, cancel)
	defer stop()
	return r.engine.RunClaimed(ctx, b, RunOptions{Stop: r.soft})
}

// Resume claims batch id and runs it in the background.
func (r *Runner) Resume(ctx context.Context, id string, opts state.ClaimOptions) (state.Batch, error) {
	if r.Draining() {
		return state.Batch{}, ErrDraining
	}
	r.mu.Lock()
	here := r.active[id]
	r.mu.Unlock()
	if here {
		// Already running in this process: claiming again would fence it.
		return r.engine.store.Get(ctx, id)
	}
	b, err := r.engine.Claim(ctx, id, opts)
	if err != nil {
		return b, err
	}
	return b, r.Start(b)
}

// Sweep claims every orphaned batch (expired or released lease, or a lease of
// a local process that is gone) and starts it. It returns the ids started.
func (r *Runner) Sweep(ctx context.Context) ([]string, error) {
	if r.Draining() {
		return nil, ErrDraining
	}
	orphans, err := r.engine.store.Orphans(ctx, 100)
	if err != nil {
		return nil, err
	}
	if r.engine.cfg.LocalOwners {
		running, err := r.engine.store.List(ctx, state.ListFilter{Status: state.StatusRunning, Limit: 500})
		if err != nil {
			return nil, err
		}
		for _, b := range running {
			if b.Lease.Owner != "" && ownerGone(b.Lease.Owner) {
				orphans = append(orphans, b)
			}
		}
	}
	var started []string
	for _, o := range orphans {
		r.mu.Lock()
		mine := r.active[o.ID]
		r.mu.Unlock()
		if mine {
			continue
		}
		b, err := r.engine.Claim(ctx, o.ID, state.ClaimOptions{})
		switch {
		case errors.Is(err, state.ErrLeaseHeld), errors.Is(err, state.ErrFinished):
			continue // someone else got there first: a skip, not a failure
		case err != nil:
			return started, err
		}
		if err := r.Start(b); err != nil {
			return started, err
		}
		started = append(started, b.ID)
	}
	return started, nil
}

// SweepLoop sweeps once at once and then every SweepInterval until ctx ends or
// the drain starts.
func (r *Runner) SweepLoop(ctx context.Context) {
	t := r.engine.clock.NewTicker(r.engine.cfg.SweepInterval)
	defer t.Stop()
	for {
		if ids, err := r.Sweep(ctx); err != nil && !errors.Is(err, ErrDraining) && ctx.Err() == nil {
			r.log.Warn("sweep failed", slog.String("error", err.Error()))
		} else if len(ids) > 0 {
			r.log.Info("resumed orphaned batches", slog.Any("batch_ids", ids))
		}
		select {
		case <-ctx.Done():
			return
		case <-r.soft:
			return
		case <-t.Chan():
		}
	}
}

// Drain stops taking work, lets running batches finish the chunk in flight
// and checkpoint (soft stop), cancels whatever is still running after
// softBudget (hard stop), and returns once every run has released its lease.
func (r *Runner) Drain(softBudget time.Duration) {
	r.mu.Lock()
	if !r.draining {
		r.draining = true
		close(r.soft)
	}
	r.mu.Unlock()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	t := time.NewTimer(softBudget)
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
