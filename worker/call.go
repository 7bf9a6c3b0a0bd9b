package worker

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/predworker/predworker/logging"
	"github.com/predworker/predworker/systems"
)

// errSaturated: too many of a system's calls outlived their deadline and
// have not returned yet; the call falls back at once instead of adding one.
var errSaturated = errors.New("too many abandoned calls of this system are still running")

// caller calls one system: under its own deadline, behind its circuit
// breaker, with panics recovered, and with a cap on the calls that ignored
// their deadline and are still running.
type caller struct {
	id       string
	spanName string         // "system ID"
	sys      systems.System // with injected faults applied
	timeout  time.Duration
	breaker  *gobreaker.TwoStepCircuitBreaker[systems.Estimate]
	// abandoned counts calls given up at their deadline whose goroutine has
	// not returned yet (a system that ignores its context); at
	// maxAbandoned, further calls fall back at once ("saturated").
	abandoned    atomic.Int64
	maxAbandoned int64
}

func newCaller(cfg Config, s systems.System, log *slog.Logger) *caller {
	id := s.ID()
	c := &caller{id: id, spanName: "system " + id, sys: withFaults(s, cfg.Faults), timeout: cfg.SystemTimeout,
		maxAbandoned: int64(cfg.MaxAbandoned)}
	if t, ok := cfg.SystemTimeouts[id]; ok {
		c.timeout = t
	}
	bs := BreakerSettings{Failures: cfg.BreakerFailures, Cooldown: cfg.BreakerCooldown}
	if o, ok := cfg.Breakers[id]; ok {
		bs = o
	}
	c.breaker = gobreaker.NewTwoStepCircuitBreaker[systems.Estimate](gobreaker.Settings{
		Name:    id,
		Timeout: bs.Cooldown,
		ReadyToTrip: func(counts gobreaker.Counts) bool {
			return counts.ConsecutiveFailures >= bs.Failures
		},
		// Only timeouts, errors and panics are failures. A decline
		// (insufficient data) is the system working as designed.
		IsSuccessful: func(err error) bool { return err == nil || errors.Is(err, systems.ErrInsufficientData) },
		// A run being cancelled says nothing about the system.
		IsExcluded: func(err error) bool { return errors.Is(err, context.Canceled) },
		OnStateChange: func(name string, from, to gobreaker.State) {
			if to == gobreaker.StateOpen {
				log.Warn("circuit opened", logging.Event(logging.EventCircuitOpened),
					slog.String("system_id", name), slog.Int64("cooldown_ms", bs.Cooldown.Milliseconds()))
			}
		},
	})
	return c
}

// Call states, for the hand-over between a call and its deadline.
const (
	callRunning int32 = iota
	callReturned
	callAbandoned
)

// call runs fn (a Predict or Combine of this system) and names the reason
// when it fails. A call that ignores its context is abandoned at the
// deadline, so it cannot stretch the chunk; the deadline counts as a failure
// for the breaker, and the abandoned goroutine counts against maxAbandoned
// until it returns.
func (c *caller) call(ctx context.Context, fn func(context.Context) (systems.Estimate, error)) (systems.Estimate, string, error) {
	if err := ctx.Err(); err != nil { // the run is being cancelled: nothing to ask, nothing to count
		return systems.Estimate{}, "cancelled", err
	}
	done, err := c.breaker.Allow()
	if err != nil {
		return systems.Estimate{}, "circuit_open", err
	}
	if c.abandoned.Load() >= c.maxAbandoned {
		if ctx.Err() != nil { // cancelled meanwhile: not the system's doing
			done(context.Canceled)
			return systems.Estimate{}, "cancelled", ctx.Err()
		}
		done(errSaturated) // a failure: the system is not answering
		return systems.Estimate{}, "saturated", errSaturated
	}
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	type result struct {
		est systems.Estimate
		err error
	}
	ch := make(chan result, 1)
	var state atomic.Int32
	go func() {
		var r result
		defer func() { // nothing in this goroutine may end the process
			if v := recover(); v != nil {
				r = result{err: newPanicError(v)}
			}
			ch <- r
			if !state.CompareAndSwap(callRunning, callReturned) { // it was abandoned: it is back now
				c.abandoned.Add(-1)
			}
		}()
		r.est, r.err = fn(cctx)
	}()
	var r result
	select {
	case r = <-ch:
	case <-cctx.Done():
		if state.CompareAndSwap(callRunning, callAbandoned) {
			c.abandoned.Add(1)
			r.err = cctx.Err()
		} else {
			r = <-ch // it returned at the deadline
		}
	}
	if ctx.Err() != nil && r.err != nil {
		done(context.Canceled) // the run is being cancelled: not the system's doing
	} else {
		done(r.err)
	}
	return r.est, failureReason(ctx, r.err), r.err
}

// failureReason names why a system call failed (the fallback_reason of its
// row); "" when it did not.
func failureReason(ctx context.Context, err error) string {
	var pe *PanicError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &pe):
		return "panic"
	case errors.Is(err, gobreaker.ErrOpenState), errors.Is(err, gobreaker.ErrTooManyRequests):
		return "circuit_open"
	case errors.Is(err, errSaturated):
		return "saturated"
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		return "timeout"
	case errors.Is(err, systems.ErrInsufficientData):
		return "insufficient_data"
	case ctx.Err() != nil:
		return "cancelled"
	}
	return "error"
}
