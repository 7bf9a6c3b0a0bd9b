package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/predworker/predworker/state"
)

// The batch lifecycle every entry point shares. The operator API, the push
// endpoint, dead-letter re-drive and the `worker run` command each build a
// Job, call Runner.Do, and only translate the Outcome into their own answer
// (an HTTP status, an ack or a redelivery, an exit code).

// Job asks for a batch to be run.
type Job struct {
	// BatchID names the batch. With a Request and no id, the id is derived
	// from the request (DeriveBatchID), so the same request resumes the
	// same batch.
	BatchID string
	// Request creates the batch unless it exists (the same id with another
	// request is a conflict). Nil: the batch must exist (a resume).
	Request *state.Request
	// Force takes the batch over even when another owner's lease is live;
	// the new epoch fences the old owner.
	Force bool
	// Reopen runs a failed batch again (an operator's resume or re-drive).
	Reopen bool
	// Here runs the batch in the caller's goroutine until it ends (a push
	// request, the CLI); otherwise it is started in the background.
	Here bool
	// Budget, for a run here, is the longest it may take (0: no limit);
	// when it runs out, progress is checkpointed, the lease released and
	// the outcome is Interrupted with BudgetSpent.
	Budget time.Duration
	// OnClaimed, for a run here, is called with the claimed batch just
	// before it runs (the CLI shows where it resumes from).
	OnClaimed func(state.Batch)
	// OnProgress, for a run here, is called after each committed chunk.
	OnProgress func(state.Batch)
}

// OutcomeKind says how a Job ended.
type OutcomeKind string

// Outcomes.
const (
	// Completed: the batch is completed, now or earlier.
	Completed OutcomeKind = "completed"
	// Failed: the batch is marked failed, now or earlier; Outcome.Err is
	// the cause.
	Failed OutcomeKind = "failed"
	// Held: another owner holds the batch, until Outcome.HeldUntil (zero
	// when it took the lease over from this run).
	Held OutcomeKind = "held"
	// Started: claimed and running in the background.
	Started OutcomeKind = "started"
	// Running: already running in this process; nothing was claimed.
	Running OutcomeKind = "running"
	// Interrupted: a run here stopped before the end (drain, budget, the
	// caller went away); progress is checkpointed and the lease released.
	Interrupted OutcomeKind = "interrupted"
	// Draining: this process is shutting down and started nothing.
	Draining OutcomeKind = "draining"
	// AtCapacity: this process runs MAX_RUNNING_BATCHES batches already
	// and started nothing; the batch (created if it was new) waits for an
	// instance with room (a sweep, a redelivery).
	AtCapacity OutcomeKind = "at_capacity"
)

// Outcome is what became of a Job.
type Outcome struct {
	Kind  OutcomeKind
	Batch state.Batch // as last seen
	// Created: this Job created the batch.
	Created bool
	// HeldUntil: when the other owner's lease expires (Held).
	HeldUntil time.Time
	// BudgetSpent: the run here ran out of Job.Budget (Interrupted).
	BudgetSpent bool
	// Err: the failure's cause (Failed) or why the run stopped
	// (Interrupted).
	Err error
}

// Do runs the lifecycle of one Job: create or find the batch, claim it
// unless it is finished, held elsewhere or already running here, and run it
// here or in the background. Errors are the failures the taxonomy classifies
// (invalid request, conflict, not found, a dependency down); every other
// result is an Outcome.
func (r *Runner) Do(ctx context.Context, j Job) (Outcome, error) {
	if r.Draining() {
		return Outcome{Kind: Draining}, nil
	}
	b, created, err := r.find(ctx, j)
	if err != nil {
		return Outcome{}, err
	}
	out := Outcome{Batch: b, Created: created}
	if kind, ok := finished(b, j.Reopen); ok {
		return finishedOutcome(out, kind), nil
	}
	if r.isActive(b.ID) {
		out.Kind = Running
		return out, nil
	}
	if r.room() <= 0 { // checked before claiming: a claim is a write
		out.Kind = AtCapacity
		return out, nil
	}
	claimed, err := r.engine.Claim(ctx, b.ID, state.ClaimOptions{Force: j.Force, Reopen: j.Reopen})
	out.Batch = claimed
	switch {
	case errors.Is(err, state.ErrLeaseHeld):
		out.Kind, out.HeldUntil = Held, claimed.Lease.ExpiresAt
		return out, nil
	case errors.Is(err, state.ErrFinished):
		kind, _ := finished(claimed, false)
		return finishedOutcome(out, kind), nil
	case err != nil:
		out.Batch = b
		return out, err
	}
	if j.Here {
		here, err := r.doHere(ctx, claimed, j)
		here.Created = created
		return here, err
	}
	err = r.start(ctx, claimed)
	switch kind, ok := admitted(err); {
	case ok:
		out.Kind = kind
	case err != nil:
		return out, err
	default:
		out.Kind = Started
	}
	return out, nil
}

// admitted names the outcome of a batch this instance did not admit
// (draining, running it already, full); ok is false for any other err.
func admitted(err error) (OutcomeKind, bool) {
	switch {
	case errors.Is(err, ErrDraining):
		return Draining, true
	case errors.Is(err, errRunningHere):
		return Running, true
	case errors.Is(err, errAtCapacity):
		return AtCapacity, true
	}
	return "", false
}

// find creates the Job's batch or reads the existing one.
func (r *Runner) find(ctx context.Context, j Job) (state.Batch, bool, error) {
	if j.Request != nil {
		return r.engine.Submit(ctx, j.BatchID, *j.Request)
	}
	if err := ValidateBatchID(j.BatchID); err != nil {
		return state.Batch{}, false, err
	}
	b, err := r.engine.store.Get(ctx, j.BatchID)
	if err != nil {
		return b, false, fmt.Errorf("read batch %s: %w", j.BatchID, err)
	}
	return b, false, nil
}

// finished says whether b is finished for this Job: completed, or failed
// when the Job does not reopen failed batches.
func finished(b state.Batch, reopen bool) (OutcomeKind, bool) {
	switch {
	case b.Status == state.StatusCompleted:
		return Completed, true
	case b.Status == state.StatusFailed && !reopen:
		return Failed, true
	}
	return "", false
}

func finishedOutcome(out Outcome, kind OutcomeKind) Outcome {
	out.Kind = kind
	if kind == Failed {
		out.Err = fmt.Errorf("batch %s failed earlier: %s", out.Batch.ID, out.Batch.Error)
	}
	return out
}

// doHere runs a claimed batch in the caller's goroutine, within the Job's
// budget, and says how it ended.
func (r *Runner) doHere(ctx context.Context, b state.Batch, j Job) (Outcome, error) {
	rctx := ctx
	if j.Budget > 0 {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeout(ctx, j.Budget)
		defer cancel()
	}
	if j.OnClaimed != nil {
		j.OnClaimed(b)
	}
	done, err := r.runHere(rctx, b, RunOptions{OnProgress: j.OnProgress})
	out := Outcome{Batch: done, Err: err}
	var failed *BatchFailedError
	kind, notAdmitted := admitted(err)
	switch {
	case err == nil:
		out.Kind = Completed
	case errors.As(err, &failed):
		out.Kind, out.Err = Failed, failed.Err
	case notAdmitted:
		out.Kind = kind
	case errors.Is(err, state.ErrLeaseLost):
		out.Kind = Held
	case errors.Is(err, ErrInterrupted):
		out.Kind = Interrupted
		out.BudgetSpent = errors.Is(rctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
	default:
		return out, err
	}
	return out, nil
}
