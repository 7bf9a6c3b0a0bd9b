package worker

import (
	"context"
	"errors"

	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
)

// Class names what kind of failure an error is. It travels in logs
// (error_class), metrics and dead letters.
type Class string

// Error classes.
const (
	ClassValidation  Class = "validation"  // the input can never succeed
	ClassConflict    Class = "conflict"    // same batch id, different request
	ClassNotFound    Class = "not_found"   // the thing asked for does not exist
	ClassBusy        Class = "busy"        // another owner holds the batch; retry later
	ClassUnavailable Class = "unavailable" // a dependency is down, or this instance is draining
	ClassDeadline    Class = "deadline"    // a deadline passed
	ClassInternal    Class = "internal"    // a bug or an unknown failure
)

// Classify is the one place that decides what an error means. Transient
// errors are retried (a push is nacked, a run backs off); permanent ones are
// recorded (dead letter, failed batch) and never retried. Internal errors are
// treated as transient for a bounded number of attempts, then as permanent,
// so a deterministic bug cannot cause an endless retry storm.
func Classify(err error) (c Class, transient bool) {
	var (
		ie *InputError
		pe *PanicError
		be *BatchFailedError
	)
	switch {
	case err == nil:
		return "", false
	case errors.As(err, &ie), errors.Is(err, systems.ErrNoGames), errors.Is(err, systems.ErrUnknownDate):
		return ClassValidation, false
	case errors.Is(err, state.ErrConflict):
		return ClassConflict, false
	case errors.Is(err, state.ErrNotFound):
		return ClassNotFound, false
	case errors.As(err, &be), errors.Is(err, systems.ErrPermanent):
		return ClassInternal, false
	case errors.Is(err, state.ErrLeaseHeld):
		return ClassBusy, true
	case errors.Is(err, state.ErrUnavailable), errors.Is(err, systems.ErrUnavailable), errors.Is(err, ErrDraining), errors.Is(err, ErrInterrupted),
		errors.Is(err, state.ErrLeaseLost):
		return ClassUnavailable, true
	case errors.Is(err, context.DeadlineExceeded):
		return ClassDeadline, true
	case errors.As(err, &pe):
		return ClassInternal, true
	}
	return ClassInternal, true
}
