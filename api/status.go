package api

import (
	"time"

	"github.com/predworker/predworker/state"
)

// Status is the batch status body.
type Status struct {
	BatchID       string       `json:"batch_id"`
	GameDate      string       `json:"game_date"`
	State         state.Status `json:"state"`
	Systems       []string     `json:"systems"`
	ChunkSize     int          `json:"chunk_size"`
	CorrelationID string       `json:"correlation_id,omitempty"`
	TotalItems    int          `json:"total_items"`
	DoneItems     int          `json:"done_items"`
	TotalChunks   int          `json:"total_chunks"`
	DoneChunks    int          `json:"done_chunks"`
	Attempt       int          `json:"attempt"`
	Lease         LeaseView    `json:"lease"`
	HeartbeatAt   *time.Time   `json:"heartbeat_at"`
	Predictions   int          `json:"predictions"`
	Fallbacks     int          `json:"fallbacks"`
	FailedItems   int          `json:"failed_items"`
	Error         string       `json:"error,omitempty"`
	// Warning: "no_predictions" for a completed batch whose every row is a
	// failure record.
	Warning     string     `json:"warning,omitempty"`
	CreatedAt   *time.Time `json:"created_at"`
	UpdatedAt   *time.Time `json:"updated_at"`
	CompletedAt *time.Time `json:"completed_at"`
}

// LeaseView is the lease part of Status.
type LeaseView struct {
	Owner     string     `json:"owner"`
	Epoch     int64      `json:"epoch"`
	ExpiresAt *time.Time `json:"expires_at"`
}

func ts(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// StatusOf renders a batch.
func StatusOf(b state.Batch) Status {
	return Status{
		BatchID: b.ID, GameDate: b.Request.GameDate, State: b.Status, Systems: b.Request.Systems,
		ChunkSize: b.Request.ChunkSize, CorrelationID: b.Request.CorrelationID,
		TotalItems: b.ItemCount(), DoneItems: b.DoneItems, TotalChunks: b.TotalChunks(), DoneChunks: b.DoneChunks,
		Attempt: b.Attempt, Lease: LeaseView{Owner: b.Lease.Owner, Epoch: b.Lease.Epoch, ExpiresAt: ts(b.Lease.ExpiresAt)},
		HeartbeatAt: ts(b.HeartbeatAt), Predictions: b.Predictions, Fallbacks: b.Fallbacks, FailedItems: b.FailedItems,
		Error: b.Error, Warning: b.Warning(b.Status), CreatedAt: ts(b.CreatedAt), UpdatedAt: ts(b.UpdatedAt), CompletedAt: ts(b.CompletedAt),
	}
}
