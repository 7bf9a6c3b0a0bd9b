package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/predworker/predworker/state"
)

// Publisher delivers completion events (to the log, to Pub/Sub). It returns
// only once the event is confirmed delivered.
type Publisher interface {
	PublishEvent(ctx context.Context, ev state.Event) error
}

// LogPublisher "publishes" events as log lines (EVENTS=log).
type LogPublisher struct{ Log *slog.Logger }

// PublishEvent implements Publisher.
func (p LogPublisher) PublishEvent(_ context.Context, ev state.Event) error {
	p.Log.Info("completion event", slog.String("event_id", ev.ID), slog.String("type", ev.Type),
		slog.String("batch_id", ev.BatchID), slog.String("game_date", ev.GameDate),
		slog.Int("predictions", ev.Predictions), slog.Int("fallbacks", ev.Fallbacks),
		slog.Int("failed_items", ev.FailedItems), slog.Int64("duration_ms", ev.DurationMS),
		slog.String("correlation_id", ev.CorrelationID))
	return nil
}

// DispatchOutbox publishes the store's unsent events, oldest first, marking
// each sent only after the publisher confirmed it. It stops at the first
// failure (the event stays in the outbox for the next pass) and returns how
// many it sent.
func (e *Engine) DispatchOutbox(ctx context.Context, pub Publisher) (int, error) {
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
func (r *Runner) OutboxLoop(ctx context.Context, pub Publisher, interval time.Duration) {
	t := r.engine.clock.NewTicker(interval)
	defer t.Stop()
	pass := func(ctx context.Context) {
		if _, err := r.engine.DispatchOutbox(ctx, pub); err != nil && !errors.Is(err, context.Canceled) {
			r.engine.metrics.Errors.WithLabelValues("publish", "transient").Inc()
			r.log.Warn("outbox dispatch failed; will retry", slog.String("error", err.Error()))
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
