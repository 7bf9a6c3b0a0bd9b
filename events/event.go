package events

import (
	"context"
	"log/slog"
	"time"
)

// Completion event types.
const (
	TypeBatchCompleted = "batch_completed"
	TypeBatchFailed    = "batch_failed"
)

// Event is a completion event: a batch finished, completed or failed. The
// state store writes it to its outbox in the same commit that finishes the
// batch; the worker's dispatcher hands it to a Publisher and marks it sent,
// so a crash between the two loses nothing and a replay publishes at most a
// duplicate with the same ID.
type Event struct {
	ID            string `json:"event_id"` // batch id, type and epoch: unique per finish
	Type          string `json:"type"`     // TypeBatchCompleted or TypeBatchFailed
	BatchID       string `json:"batch_id"`
	GameDate      string `json:"game_date"`
	CorrelationID string `json:"correlation_id,omitempty"`
	RunMode       string `json:"prediction_run_mode,omitempty"`
	DatasetPrefix string `json:"dataset_prefix,omitempty"`
	TotalItems    int    `json:"total_items"`
	DoneItems     int    `json:"done_items"`
	Predictions   int    `json:"predictions"`
	Fallbacks     int    `json:"fallbacks"`
	FailedItems   int    `json:"failed_items"`
	FailedPlayers int    `json:"failed_players"`
	Attempt       int    `json:"attempt"`
	DurationMS    int64  `json:"duration_ms"`
	Error         string `json:"error,omitempty"`
	// Warning flags a completion that is not a clean success: "no_predictions"
	// when every row is a failure record.
	Warning string    `json:"warning,omitempty"`
	At      time.Time `json:"at"`
}

// WarningNoPredictions flags a batch that completed without one prediction.
const WarningNoPredictions = "no_predictions"

// Publisher delivers completion events (to the log, to Pub/Sub). It returns
// only once the event is confirmed delivered.
type Publisher interface {
	PublishEvent(ctx context.Context, ev Event) error
}

// LogPublisher "publishes" events as log lines (EVENTS=log).
type LogPublisher struct{ Log *slog.Logger }

// PublishEvent implements Publisher.
func (p LogPublisher) PublishEvent(_ context.Context, ev Event) error {
	p.Log.Info("completion event", slog.String("event_id", ev.ID), slog.String("type", ev.Type),
		slog.String("batch_id", ev.BatchID), slog.String("game_date", ev.GameDate),
		slog.Int("predictions", ev.Predictions), slog.Int("fallbacks", ev.Fallbacks),
		slog.Int("failed_items", ev.FailedItems), slog.Int64("duration_ms", ev.DurationMS),
		slog.String("correlation_id", ev.CorrelationID), slog.String("warning", ev.Warning))
	return nil
}
