package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"

	"github.com/predworker/predworker/events"
	"github.com/predworker/predworker/logging"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
)

// Class names what kind of failure an error is. It is the one taxonomy of
// the service: the engine decides from it whether to retry an operation,
// fail a batch or stop; the API maps it to an HTTP answer; the push endpoint
// to an ack or a redelivery; logs (error_class), metrics and dead letters
// carry it.
type Class string

// Error classes. The comment says what the class means and how each consumer
// treats it (see also the table in the README).
const (
	// ClassValidation: the input can never succeed. Permanent.
	ClassValidation Class = "validation"
	// ClassConflict: the same batch id with a different request. Permanent.
	ClassConflict Class = "conflict"
	// ClassNotFound: the thing asked for does not exist. Permanent.
	ClassNotFound Class = "not_found"
	// ClassFinished: the batch is already finished; there is nothing to
	// run. Permanent.
	ClassFinished Class = "finished"
	// ClassFailed: the batch hit a permanent error and is marked failed.
	// Permanent.
	ClassFailed Class = "batch_failed"
	// ClassDependency: a dependency failed in a way retrying cannot fix (a
	// missing table, an invalid query). Permanent.
	ClassDependency Class = "dependency"
	// ClassBusy: another owner holds the batch (a live lease, or it took
	// the lease over). Transient: come back later; never retried in place.
	ClassBusy Class = "busy"
	// ClassInterrupted: the work stopped before it finished (this instance
	// is draining, the run was stopped or its caller went away); progress is
	// kept. Transient; never retried in place.
	ClassInterrupted Class = "interrupted"
	// ClassDataIncomplete: the feature source has no features for the date
	// yet (upstream is late). Transient, redelivered a bounded number of
	// times like internal errors; never taken as "no games".
	ClassDataIncomplete Class = "data_incomplete"
	// ClassUnavailable: a dependency (state store, feature source, sink)
	// could not be reached. Transient and retried in place.
	ClassUnavailable Class = "unavailable"
	// ClassDeadline: a deadline passed waiting for a dependency. Transient
	// and retried in place.
	ClassDeadline Class = "deadline"
	// ClassInternal: a bug or an unknown failure. Retried in place and
	// redelivered, but only a bounded number of times by the push endpoint,
	// so a deterministic bug cannot cause an endless retry storm.
	ClassInternal Class = "internal"
)

// Classes lists every class, for tables and tests.
var Classes = []Class{ClassValidation, ClassConflict, ClassNotFound, ClassFinished, ClassFailed,
	ClassDependency, ClassBusy, ClassInterrupted, ClassDataIncomplete, ClassUnavailable, ClassDeadline, ClassInternal}

// Permanent reports whether retrying can never help: the input, the batch or
// a dependency is in a state no retry changes.
func (c Class) Permanent() bool {
	switch c {
	case ClassValidation, ClassConflict, ClassNotFound, ClassFinished, ClassFailed, ClassDependency:
		return true
	}
	return false
}

// RetryInPlace reports whether the engine retries the failed operation
// (with backoff, while it holds the lease) instead of stopping the run.
func (c Class) RetryInPlace() bool {
	switch c {
	case ClassUnavailable, ClassDeadline, ClassInternal:
		return true
	}
	return false
}

// Bounded reports whether a transient class is retried only a bounded
// number of times (a push is dead-lettered after MAX_DELIVERY_ATTEMPTS): a
// bug, or upstream data that may never come.
func (c Class) Bounded() bool { return c == ClassInternal || c == ClassDataIncomplete }

// Classifier is implemented by errors that know their class (errors of other
// layers, such as the API's, that the engine's sentinels do not cover).
type Classifier interface{ ErrorClass() Class }

// Classify is the one place that decides what an error means. Nil has no
// class ("").
func Classify(err error) Class {
	if err == nil {
		return ""
	}
	var c Classifier
	if errors.As(err, &c) {
		return c.ErrorClass()
	}
	switch {
	case errors.Is(err, systems.ErrNoGames), errors.Is(err, systems.ErrUnknownDate), errors.Is(err, systems.ErrNoPlayers):
		return ClassValidation
	case errors.Is(err, state.ErrConflict):
		return ClassConflict
	case errors.Is(err, state.ErrNotFound), errors.Is(err, events.ErrNotFound):
		return ClassNotFound
	case errors.Is(err, state.ErrFinished):
		return ClassFinished
	case errors.Is(err, systems.ErrPermanent), errors.Is(err, events.ErrRejected), errors.Is(err, systems.ErrStagedRowsLost):
		return ClassDependency
	case errors.Is(err, state.ErrLeaseHeld), errors.Is(err, state.ErrLeaseLost):
		return ClassBusy
	case errors.Is(err, ErrDraining), errors.Is(err, ErrInterrupted), errors.Is(err, context.Canceled):
		return ClassInterrupted
	case errors.Is(err, systems.ErrDataIncomplete):
		return ClassDataIncomplete
	case errors.Is(err, state.ErrUnavailable), errors.Is(err, systems.ErrUnavailable), errors.Is(err, events.ErrUnavailable):
		return ClassUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		return ClassDeadline
	}
	return ClassInternal
}

// ---------------------------------------------------------------------------
// The errors the engine produces

// ErrDraining: the runner is shutting down and takes no new work.
var ErrDraining = errors.New("worker is draining")

// ErrInterrupted: the run stopped before the batch finished (drain, stop
// requested, context cancelled); progress is checkpointed and the lease
// released.
var ErrInterrupted = errors.New("run interrupted")

// InputError is a request the engine refuses; Field names the culprit.
type InputError struct {
	Field   string
	Message string
	Err     error // optional cause
}

func (e *InputError) Error() string { return e.Field + ": " + e.Message }
func (e *InputError) Unwrap() error { return e.Err }

// ErrorClass implements Classifier.
func (e *InputError) ErrorClass() Class { return ClassValidation }

// MissingSystemsError: a stored batch asks for systems this process does
// not run (the deploy changed SYSTEMS). The batch fails with the names, so
// an operator can resume it where they run, or submit it again without them.
type MissingSystemsError struct {
	Missing []string
	Running []string
}

func (e *MissingSystemsError) Error() string {
	return fmt.Sprintf("the batch needs systems %s, which this instance does not run (it runs %s); "+
		"resume it where they run, or submit it again without them",
		strings.Join(e.Missing, ", "), strings.Join(e.Running, ", "))
}

// ErrorClass implements Classifier.
func (e *MissingSystemsError) ErrorClass() Class { return ClassDependency }

// BatchFailedError: the batch hit a permanent error and is marked failed.
type BatchFailedError struct{ Err error }

func (e *BatchFailedError) Error() string { return "batch failed: " + e.Err.Error() }
func (e *BatchFailedError) Unwrap() error { return e.Err }

// ErrorClass implements Classifier.
func (e *BatchFailedError) ErrorClass() Class { return ClassFailed }

// PanicError is a recovered panic with the stack where it happened.
type PanicError struct {
	Value any
	Stack string
}

// newPanicError captures the current stack; call it from the deferred
// function that recovered v.
func newPanicError(v any) *PanicError { return &PanicError{Value: v, Stack: string(debug.Stack())} }

func (p *PanicError) Error() string { return fmt.Sprintf("panic: %v", p.Value) }

// StackTrace implements logging.StackTracer.
func (p *PanicError) StackTrace() string { return p.Stack }

// ErrorClass implements Classifier.
func (p *PanicError) ErrorClass() Class { return ClassInternal }

// ---------------------------------------------------------------------------
// Logging errors

// ErrorAttrs are the attributes of an ERROR line about err: the error text,
// its class and a stack trace (the error's own when it carries one).
func ErrorAttrs(err error) slog.Attr {
	return slog.Group("", logging.Err(err), slog.String("error_class", string(Classify(err))))
}

// WarnAttrs are the attributes of a WARNING line about err: the error text
// and its class, without a stack.
func WarnAttrs(err error) slog.Attr {
	return slog.Group("", slog.String("error", err.Error()), slog.String("error_class", string(Classify(err))))
}
