package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/predworker/predworker/logging"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
)

// The chunk loop and its decisions: for each chunk from the checkpoint, load
// features, fan out, write rows, checkpoint; then finalize the sink and
// finish the batch. How a run that ends early is left behind (stopped) is
// decided from the error's class: a lost lease stops without a write, a
// permanent error fails the batch, anything else releases the lease.

// RunOptions tune one run.
type RunOptions struct {
	Claim state.ClaimOptions
	// Stop, when closed, asks the run to stop after the chunk in flight.
	Stop <-chan struct{}
	// OnProgress is called after each committed chunk.
	OnProgress func(state.Batch)
}

// Claim takes the lease of batch id. When the lease is held by a process of
// this machine that no longer exists (and LocalOwners is on), it is replaced
// at once instead of waiting for it to expire.
func (e *Engine) Claim(ctx context.Context, id string, opts state.ClaimOptions) (state.Batch, error) {
	b, err := e.store.Claim(ctx, id, e.cfg.Owner, e.cfg.LeaseTTL, opts)
	if errors.Is(err, state.ErrLeaseHeld) && e.cfg.LocalOwners && ownerGone(b.Lease.Owner) {
		opts.Replace = b.Lease.Owner
		logging.FromContext(ctx, e.log).Info("replacing the lease of a process that is gone", slog.String("batch_id", id),
			slog.String("previous_owner", b.Lease.Owner))
		b, err = e.store.Claim(ctx, id, e.cfg.Owner, e.cfg.LeaseTTL, opts)
	}
	if err != nil {
		return b, fmt.Errorf("claim batch %s: %w", id, err)
	}
	return b, nil
}

// Run claims batch id and runs it to the end (see RunClaimed).
func (e *Engine) Run(ctx context.Context, id string, opts RunOptions) (state.Batch, error) {
	b, err := e.Claim(ctx, id, opts.Claim)
	if err != nil {
		return b, err
	}
	return e.RunClaimed(ctx, b, opts)
}

// batchLogger is the logger of a run: the context's (so a run carries the
// request that started it), with the batch's identity.
func (e *Engine) batchLogger(ctx context.Context, b state.Batch) *slog.Logger {
	return logging.FromContext(ctx, e.log).With(slog.String("batch_id", b.ID), slog.String("game_date", b.Request.GameDate),
		slog.Int64("epoch", b.Lease.Epoch), slog.Int("attempt", b.Attempt), slog.String("correlation_id", b.Request.CorrelationID))
}

// run is one claimed run in progress: its lease guard and the cancellation
// of its context.
type run struct {
	b      state.Batch
	ctx    context.Context // cancelled when the lease is lost or the caller's context ends
	cancel context.CancelCauseFunc
	guard  *leaseGuard
	log    *slog.Logger
}

// RunClaimed runs a batch this engine has just claimed: chunk after chunk from
// the checkpoint, each written to the sink and checkpointed under the lease's
// epoch, while a heartbeat renews the lease. It returns the final batch, or
// ErrInterrupted (lease released), state.ErrLeaseLost (another owner took
// over; nothing more was committed), or *BatchFailedError.
func (e *Engine) RunClaimed(ctx context.Context, b state.Batch, opts RunOptions) (out state.Batch, err error) {
	ctx, span := e.tracer.Start(ctx, "batch", trace.WithAttributes(attrBatchID.String(b.ID), attrEpoch.Int64(b.Lease.Epoch),
		attribute.String("predworker.game_date", b.Request.GameDate), attribute.Int("predworker.done_chunks", b.DoneChunks),
		attribute.Int("predworker.total_chunks", b.TotalChunks()), attrItems.Int(len(b.Items))))
	defer func() { endSpan(span, err) }()
	log := e.batchLogger(ctx, b)
	event := logging.EventBatchClaimed
	if b.DoneChunks > 0 || b.Attempt > 1 {
		event = logging.EventBatchResumed
	}
	log.Info("batch claimed", logging.Event(event), slog.Int("done_chunks", b.DoneChunks),
		slog.Int("total_chunks", b.TotalChunks()))
	e.metrics.ActiveBatches.Inc()
	defer e.metrics.ActiveBatches.Dec()

	r := &run{b: b, log: log}
	r.ctx, r.cancel = context.WithCancelCause(systems.WithScope(ctx, scopeOf(b.Request)))
	defer r.cancel(nil)
	r.guard = newLeaseGuard(e.clock, b.Lease, e.clock.Now(), e.cfg.LeaseTTL, func() {
		r.cancel(fmt.Errorf("lease of %s not renewed in time: %w", b.ID, state.ErrLeaseLost))
	})
	defer r.guard.stop()
	var hb sync.WaitGroup
	ticker := e.clock.NewTicker(e.cfg.HeartbeatInterval) // created here so the first tick is one interval after the claim
	hb.Go(func() {
		defer func() { // a panic here must stop this run, not the process
			if v := recover(); v != nil {
				r.cancel(fmt.Errorf("heartbeat of %s: %w", b.ID, newPanicError(v)))
			}
		}()
		e.heartbeat(r.ctx, r.cancel, ticker, b.ID, r.guard, log)
	})
	defer hb.Wait()
	defer r.cancel(nil) // runs before hb.Wait: stops the heartbeat

	defer func() {
		if v := recover(); v != nil {
			out, err = r.b, e.fail(ctx, r.b, r.guard.lease(), newPanicError(v), log)
		}
	}()
	if missing := e.missingSystems(b); len(missing) > 0 && e.registry.Loading() {
		// The systems are still loading (a model fleet's first read): let
		// the batch wait, released, for a later claim.
		return e.stopped(ctx, r, fmt.Errorf("systems %s are not loaded yet: %w", strings.Join(missing, ", "), systems.ErrUnavailable))
	} else if len(missing) > 0 {
		return r.b, e.fail(ctx, r.b, r.guard.lease(), &MissingSystemsError{Missing: missing, Running: e.registry.IDs()}, log)
	}
	if err := e.commitLast(r); err != nil {
		return e.stopped(ctx, r, err)
	}
	return e.loop(ctx, r, opts)
}

// scopeOf is what sources and sinks may need of a request.
func scopeOf(r state.Request) systems.Scope {
	return systems.Scope{RunMode: r.RunMode, DatasetPrefix: r.DatasetPrefix}
}

// missingSystems lists the systems b asks for that this engine does not run
// (a deploy removed them from SYSTEMS after the batch was created).
func (e *Engine) missingSystems(b state.Batch) []string {
	var out []string
	for _, id := range b.Request.Systems {
		if !e.registry.Has(id) {
			out = append(out, id)
		}
	}
	return out
}

// loop runs the chunks from the checkpoint, then completes the batch.
func (e *Engine) loop(ctx context.Context, r *run, opts RunOptions) (state.Batch, error) {
	for chunk := r.b.DoneChunks; chunk < r.b.TotalChunks(); chunk++ {
		select {
		case <-opts.Stop:
			return r.b, e.interrupt(ctx, r.b, r.guard.lease(), r.log, "stop requested")
		default:
		}
		p, err := e.runChunk(r.ctx, r.b, chunk, r.guard, r.log)
		if err != nil {
			return e.stopped(ctx, r, err)
		}
		r.b.Progress = p
		r.b.Lease = r.guard.lease()
		if opts.OnProgress != nil {
			opts.OnProgress(r.b)
		}
	}
	if err := e.complete(r); err != nil {
		return e.stopped(ctx, r, err)
	}
	return r.b, nil
}

// complete finalizes the sink (when it needs it) and marks the batch
// completed, fenced by the lease.
func (e *Engine) complete(r *run) error {
	b := r.b
	lease := r.guard.lease()
	if fin, ok := e.sink.(systems.Finisher); ok {
		if !r.guard.valid() {
			return fmt.Errorf("finish the sink: %w", state.ErrLeaseLost)
		}
		if err := e.retry(r.ctx, "finish the sink", r.log, func() error {
			return fin.Finish(r.ctx, b.ID, b.Request.GameDate)
		}); err != nil {
			return fmt.Errorf("finish the sink: %w", err)
		}
	}
	err := e.retry(r.ctx, "finish", r.log, func() error {
		return e.store.Finish(r.ctx, b.ID, lease, state.StatusCompleted, "")
	})
	if err != nil {
		return fmt.Errorf("finish: %w", err)
	}
	now := e.clock.Now()
	r.b.Status, r.b.CompletedAt, r.b.Lease = state.StatusCompleted, now, state.Lease{Epoch: lease.Epoch}
	e.metrics.BatchesFinished.WithLabelValues(string(state.StatusCompleted)).Inc()
	attrs := []any{logging.Event(logging.EventBatchCompleted), slog.Int("predictions", b.Predictions),
		slog.Int("fallbacks", b.Fallbacks), slog.Int("failed_items", b.FailedItems),
		slog.Int64("duration_ms", now.Sub(b.CreatedAt).Milliseconds())}
	if w := r.b.Warning(state.StatusCompleted); w != "" {
		r.log.Warn("batch completed without a single prediction: every row is a failure record",
			append(attrs, slog.String("warning", w))...)
		return nil
	}
	r.log.Info("batch completed", attrs...)
	return nil
}

// stopped decides, from the error's class, what a run that ended early
// leaves behind: a lost lease stops without writing anything; a permanent
// error marks the batch failed; anything else releases the lease so another
// owner (or a redelivery) resumes from the checkpoint.
func (e *Engine) stopped(ctx context.Context, r *run, err error) (state.Batch, error) {
	cause := context.Cause(r.ctx)
	switch {
	case errors.Is(err, state.ErrLeaseLost) || errors.Is(cause, state.ErrLeaseLost):
		if cause == nil || !errors.Is(cause, state.ErrLeaseLost) {
			cause = err
		}
		e.metrics.LeaseLost.Inc()
		r.log.Warn("lease lost; stopping without committing", logging.Event(logging.EventLeaseLost), WarnAttrs(cause))
		return r.b, fmt.Errorf("run batch %s: %w", r.b.ID, cause)
	case Classify(err).Permanent():
		return r.b, e.fail(ctx, r.b, r.guard.lease(), err, r.log)
	default:
		return r.b, e.interrupt(ctx, r.b, r.guard.lease(), r.log, err.Error())
	}
}

// interrupt releases the lease so another owner can resume at once. It runs
// on a context detached from the run's cancellation, with its own deadline.
func (e *Engine) interrupt(ctx context.Context, b state.Batch, l state.Lease, log *slog.Logger, why string) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := e.store.Release(rctx, b.ID, l); err != nil {
		log.Error("release lease", ErrorAttrs(err))
		e.metrics.Errors.WithLabelValues("release", string(Classify(err))).Inc()
		return fmt.Errorf("%w (%s); release failed: %w", ErrInterrupted, why, err)
	}
	log.Info("run stopped; lease released", slog.String("reason", why), slog.Int("done_chunks", b.DoneChunks))
	return fmt.Errorf("run batch %s: %w (%s)", b.ID, ErrInterrupted, why)
}

// fail marks the batch failed after a permanent error.
func (e *Engine) fail(ctx context.Context, b state.Batch, l state.Lease, cause error, log *slog.Logger) error {
	log.Error("batch failed", logging.Event(logging.EventBatchFailed), ErrorAttrs(cause))
	e.metrics.Errors.WithLabelValues("run", string(Classify(cause))).Inc()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := e.store.Finish(fctx, b.ID, l, state.StatusFailed, cause.Error()); err != nil {
		log.Error("record batch failure", ErrorAttrs(err))
		return errors.Join(&BatchFailedError{Err: cause}, err)
	}
	e.metrics.BatchesFinished.WithLabelValues(string(state.StatusFailed)).Inc()
	return &BatchFailedError{Err: cause}
}

// retry runs op until it succeeds, fails with an error whose class is not
// retried in place, or ctx ends. Transient errors (an unreachable store, a
// feature source outage) are retried with capped exponential backoff and
// logged; they never end a batch.
func (e *Engine) retry(ctx context.Context, op string, log *slog.Logger, fn func() error) (err error) {
	_, span := e.tracer.Start(ctx, op)
	tries := 0
	defer func() {
		span.SetAttributes(attrTries.Int(tries))
		endSpan(span, err)
	}()
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 50 * time.Millisecond
	b.MaxInterval = e.cfg.RetryMaxInterval
	_, err = backoff.Retry(ctx, func() (struct{}, error) {
		tries++
		err := fn()
		if err != nil && (!Classify(err).RetryInPlace() || ctx.Err() != nil) {
			return struct{}{}, backoff.Permanent(err)
		}
		return struct{}{}, err
	}, backoff.WithBackOff(b), backoff.WithMaxElapsedTime(0), backoff.WithNotify(func(err error, next time.Duration) {
		e.metrics.Errors.WithLabelValues(op, string(Classify(err))).Inc()
		span.AddEvent("retry", trace.WithAttributes(attribute.String("error", err.Error()),
			attribute.Int64("retry_in_ms", next.Milliseconds())))
		log.Warn("transient error; retrying", slog.String("op", op), WarnAttrs(err),
			slog.Int64("retry_in_ms", next.Milliseconds()))
	}))
	return err
}

// runChunk computes, writes and checkpoints one chunk, returning the new
// progress.
func (e *Engine) runChunk(ctx context.Context, b state.Batch, chunk int, g *leaseGuard, log *slog.Logger) (_ state.Progress, err error) {
	start := e.clock.Now()
	items := b.Chunk(chunk)
	ctx, span := e.tracer.Start(ctx, "chunk", trace.WithAttributes(attrBatchID.String(b.ID), attrChunk.Int(chunk),
		attrItems.Int(len(items))))
	defer func() { endSpan(span, err) }()
	log = log.With(slog.Int("chunk", chunk))
	log.Info("chunk started", logging.Event(logging.EventChunkStarted), slog.Int("items", len(items)))

	var feats map[string]*systems.Features
	err = e.retry(ctx, "load features", log, func() (err error) {
		feats, err = e.features.Features(ctx, b.Request.GameDate, items)
		return err
	})
	if err != nil {
		return b.Progress, fmt.Errorf("load features of chunk %d: %w", chunk, err)
	}
	rows, delta := e.fanout.predict(ctx, b, items, feats, e.clock.Now().UTC(), log)
	if err := context.Cause(ctx); err != nil {
		return b.Progress, err // abandon: never write rows a cancelled fan-out produced
	}
	if !g.valid() {
		return b.Progress, fmt.Errorf("chunk %d: %w", chunk, state.ErrLeaseLost)
	}
	lease := g.lease()
	if delta.SinkToken, err = e.write(ctx, b.ID, lease.Epoch, rows, log); err != nil {
		return b.Progress, fmt.Errorf("write chunk %d: %w", chunk, err)
	}
	next := b.Progress.Add(delta)
	cpStart := e.clock.Now()
	stored, err := e.checkpoint(ctx, b.ID, lease, next, log)
	if err != nil {
		return b.Progress, fmt.Errorf("checkpoint chunk %d: %w", chunk, err)
	}
	g.renewed(cpStart, stored)
	if err := e.commit(ctx, b, chunk, delta.SinkToken, log); err != nil {
		return next, fmt.Errorf("commit chunk %d: %w", chunk, err)
	}
	e.metrics.CheckpointDuration.Observe(e.clock.Since(cpStart).Seconds())
	e.metrics.ChunkDuration.Observe(e.clock.Since(start).Seconds())
	span.SetAttributes(attrRows.Int(len(rows)), attribute.Int("predworker.fallbacks", delta.Fallbacks),
		attribute.Int("predworker.failed_items", delta.FailedItems))
	log.Info("chunk committed", logging.Event(logging.EventChunkCommitted), slog.Int("done_chunks", next.DoneChunks),
		slog.Int("total_chunks", b.TotalChunks()), slog.Int("rows", len(rows)),
		slog.Int64("duration_ms", e.clock.Since(start).Milliseconds()))
	return next, nil
}

// write stores a chunk's rows, retrying transient errors. A Stager's rows
// stay invisible until commit; the token it returns goes into the
// checkpoint.
func (e *Engine) write(ctx context.Context, id string, epoch int64, rows []systems.Prediction, log *slog.Logger) (string, error) {
	token := ""
	err := e.retry(ctx, "write predictions", log, func() (err error) {
		if st, ok := e.sink.(systems.Stager); ok {
			token, err = st.Stage(ctx, id, epoch, rows)
			return err
		}
		return e.sink.Write(ctx, id, epoch, rows)
	})
	return token, err
}

// commit makes a checkpointed chunk's staged rows visible (a Stager's; a
// no-op for other sinks), retrying transient errors. Committing twice is
// success, so a resumed run commits the last checkpointed chunk again.
func (e *Engine) commit(ctx context.Context, b state.Batch, chunk int, token string, log *slog.Logger) error {
	st, ok := e.sink.(systems.Stager)
	if !ok || token == "" {
		return nil
	}
	players := b.Chunk(chunk)
	return e.retry(ctx, "commit predictions", log, func() error {
		return st.Commit(ctx, b.ID, token, players, len(players)*len(b.Request.Systems))
	})
}

// commitLast commits the last checkpointed chunk's staged rows: a crash may
// have come between that checkpoint and its commit.
func (e *Engine) commitLast(r *run) error {
	if r.b.DoneChunks == 0 {
		return nil
	}
	last := r.b.DoneChunks - 1
	if err := e.commit(r.ctx, r.b, last, r.b.SinkToken, r.log); err != nil {
		return fmt.Errorf("commit chunk %d: %w", last, err)
	}
	return nil
}

// checkpoint records next under lease, retrying transient errors. It
// returns the lease as stored.
func (e *Engine) checkpoint(ctx context.Context, id string, lease state.Lease, next state.Progress, log *slog.Logger) (state.Lease, error) {
	stored := lease
	err := e.retry(ctx, "checkpoint", log, func() error {
		l, err := e.store.Checkpoint(ctx, id, lease, next, e.cfg.LeaseTTL)
		if errors.Is(err, state.ErrLeaseLost) {
			// An earlier try may have committed before its answer was lost.
			if cur, gerr := e.store.Get(ctx, id); gerr == nil && cur.Lease.Owner == lease.Owner &&
				cur.Lease.Epoch == lease.Epoch && cur.DoneChunks == next.DoneChunks {
				l, err = cur.Lease, nil
			}
		}
		stored = l
		return err
	})
	return stored, err
}
