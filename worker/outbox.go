package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/predworker/predworker/events"
)

// DispatchOutbox publishes the store's unsent events, oldest first, marking
// each sent only after the publisher confirmed it. An event the publisher
// refuses for good (a permanent class: the topic is gone, no permission) is
// logged as an ERROR, counted, taken out of the outbox with the reason, and
// the next event is tried: it never blocks the ones behind it. A transient
// failure stops the pass (the next events would fail the same way); what is
// left stays for the next pass. It returns how many it delivered.
func (e *Engine) DispatchOutbox(ctx context.Context, pub events.Publisher) (int, error) {
	evs, err := e.store.Outbox(ctx, 100)
	if err != nil {
		return 0, fmt.Errorf("read outbox: %w", err)
	}
	sent := 0
	for _, ev := range evs {
		failure := ""
		if err := pub.PublishEvent(ctx, ev); err != nil {
			if !Classify(err).Permanent() {
				return sent, fmt.Errorf("publish event %s: %w", ev.ID, err)
			}
			e.metrics.Errors.WithLabelValues("publish", string(Classify(err))).Inc()
			e.log.Error("completion event refused for good; taken out of the outbox", slog.String("event_id", ev.ID),
				slog.String("batch_id", ev.BatchID), slog.String("type", ev.Type), ErrorAttrs(err))
			failure = err.Error()
		}
		if err := e.store.MarkSent(ctx, ev.ID, failure); err != nil {
			// Published but not marked: the next pass publishes a duplicate
			// with the same event id, which consumers de-duplicate.
			return sent, fmt.Errorf("mark event %s sent: %w", ev.ID, err)
		}
		if failure == "" {
			sent++
		}
	}
	return sent, nil
}

// OutboxLoop dispatches the outbox every interval until ctx ends, and once
// more, briefly, when it does (what it cannot publish then stays in the
// outbox for the next instance).
func (r *Runner) OutboxLoop(ctx context.Context, pub events.Publisher, interval time.Duration) {
	t := r.engine.clock.NewTicker(interval)
	defer t.Stop()
	pass := func(ctx context.Context) {
		defer func() { // a panic here is logged; the next pass comes as usual
			if v := recover(); v != nil {
				r.log.Error("outbox dispatch panicked", ErrorAttrs(newPanicError(v)))
			}
		}()
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
