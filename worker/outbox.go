package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/predworker/predworker/events"
)

// DispatchOutbox publishes the store's unsent events, oldest first, marking
// each sent only after the publisher confirmed it. It stops at the first
// failure (the event stays in the outbox for the next pass) and returns how
// many it sent.
func (e *Engine) DispatchOutbox(ctx context.Context, pub events.Publisher) (int, error) {
	evs, err := e.store.Outbox(ctx, 100)
	if err != nil {
		return 0, fmt.Errorf("read outbox: %w", err)
	}
	for i, ev := range evs {
		if err := pub.PublishEvent(ctx, ev); err != nil {
			return i, fmt.Errorf("publish event %s: %w", ev.ID, err)
		}
		if err := e.store.MarkSent(ctx, ev.ID); err != nil {
			// Published but not marked: the next pass publishes a duplicate
			// with the same event id, which consumers de-duplicate.
			return i, fmt.Errorf("mark event %s sent: %w", ev.ID, err)
		}
	}
	return len(evs), nil
}

// OutboxLoop dispatches the outbox every interval until ctx ends, and once
// more, briefly, when it does (what it cannot publish then stays in the
// outbox for the next instance).
func (r *Runner) OutboxLoop(ctx context.Context, pub events.Publisher, interval time.Duration) {
	t := r.engine.clock.NewTicker(interval)
	defer t.Stop()
	pass := func(ctx context.Context) {
		if _, err := r.engine.DispatchOutbox(ctx, pub); err != nil && !errors.Is(err, context.Canceled) {
			r.engine.metrics.Errors.WithLabelValues("publish", string(Classify(err))).Inc()
			r.log.Warn("outbox dispatch failed; will retry", WarnAttrs(err))
		}
	}
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 300*time.Millisecond)
			pass(fctx)
			cancel()
			return
		case <-t.Chan():
			pass(ctx)
		}
	}
}
