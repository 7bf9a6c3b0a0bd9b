// Package state owns the durable record of a batch: its request, its resolved
// item list, its progress (the next chunk to run and the counters of the chunks
// already committed) and its lease.
//
// A lease is (owner, epoch, expiry). Claiming a batch bumps the epoch; every
// mutation a running owner makes afterwards (renew, checkpoint, complete,
// release) is conditioned on the owner and the epoch it claimed with, so an owner
// that lost its lease to a takeover can never commit anything again. That
// condition is the fence; stores return ErrLeaseLost when it does not hold.
//
// Implementations live in subpackages (state/sqlite, …) and must pass the
// conformance suite in state/statetest.
package state

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"time"

	"github.com/predworker/predworker/events"
)

// Sentinel errors every Store returns (wrapped) so callers can use errors.Is.
var (
	// ErrNotFound: no batch with that id.
	ErrNotFound = errors.New("batch not found")
	// ErrConflict: a batch with that id exists with a different request.
	ErrConflict = errors.New("batch exists with a different request")
	// ErrLeaseHeld: another owner holds a live lease on the batch.
	ErrLeaseHeld = errors.New("lease held by another owner")
	// ErrLeaseLost: the caller's (owner, epoch) no longer owns the batch; a
	// newer epoch took over or the batch was finished by someone else.
	ErrLeaseLost = errors.New("lease lost")
	// ErrFinished: the batch is completed (or failed, for a claim that does
	// not reopen failed batches); there is nothing to run.
	ErrFinished = errors.New("batch already finished")
	// ErrUnavailable: the store could not be reached; retry later.
	ErrUnavailable = errors.New("state store unavailable")
)

// Status is the lifecycle state of a batch.
type Status string

// Batch lifecycle states.
const (
	StatusPending   Status = "pending"
	StatusRunning   Status = "running"
	StatusCompleted Status = "completed"
	StatusFailed    Status = "failed"
)

// Valid reports whether s is one of the known states.
func (s Status) Valid() bool {
	switch s {
	case StatusPending, StatusRunning, StatusCompleted, StatusFailed:
		return true
	}
	return false
}

// Finished reports whether s is terminal.
func (s Status) Finished() bool { return s == StatusCompleted || s == StatusFailed }

// Request is what a caller asked for. Its fingerprint decides whether a
// second create with the same batch id is a duplicate (same request) or a
// conflict. A stored batch's request has no Players: they are its Items.
type Request struct {
	GameDate      string   `json:"game_date"`
	Players       []string `json:"players,omitempty"`
	Systems       []string `json:"systems,omitempty"`
	ChunkSize     int      `json:"chunk_size"`
	CorrelationID string   `json:"correlation_id,omitempty"`
	// RunMode and DatasetPrefix are a pipeline profile's (PROFILE=phase5):
	// the run's prediction_run_mode, stored on every row and in the
	// completion message, and the prefix of the datasets it reads and
	// writes. Part of the work: the same date in another mode is another
	// batch.
	RunMode       string `json:"prediction_run_mode,omitempty"`
	DatasetPrefix string `json:"dataset_prefix,omitempty"`
}

// Fingerprint identifies the work a request asks for. Player and system order
// do not matter; the correlation id is not part of the work.
func (r Request) Fingerprint() string {
	c := r
	c.CorrelationID = ""
	c.Players = slices.Clone(r.Players)
	c.Systems = slices.Clone(r.Systems)
	slices.Sort(c.Players)
	slices.Sort(c.Systems)
	b, _ := json.Marshal(c) // a struct of strings and ints always marshals
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Lease is the ownership record of a batch.
type Lease struct {
	Owner     string    `json:"owner"`
	Epoch     int64     `json:"epoch"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Live reports whether the lease is held by someone at now.
func (l Lease) Live(now time.Time) bool { return l.Owner != "" && now.Before(l.ExpiresAt) }

// Progress is what a checkpoint records: the chunks done so far and the
// counters accumulated over them.
type Progress struct {
	DoneChunks  int `json:"done_chunks"`
	DoneItems   int `json:"done_items"`
	Predictions int `json:"predictions"`
	Fallbacks   int `json:"fallbacks"`
	FailedItems int `json:"failed_items"` // failure records: (player, system) rows no system could fill
	// FailedPlayers are the players without a single prediction (every
	// one of their rows a failure record).
	FailedPlayers int `json:"failed_players"`
	// SinkToken is the sink's handle on the last checkpointed chunk's rows
	// when the sink makes them visible only after the checkpoint (the
	// BigQuery sink's pending write stream); "" otherwise.
	SinkToken string `json:"sink_token,omitempty"`
}

// Add returns p plus the counters of one more chunk, whose sink token
// replaces p's.
func (p Progress) Add(c Progress) Progress {
	return Progress{
		DoneChunks:    p.DoneChunks + c.DoneChunks,
		DoneItems:     p.DoneItems + c.DoneItems,
		Predictions:   p.Predictions + c.Predictions,
		Fallbacks:     p.Fallbacks + c.Fallbacks,
		FailedItems:   p.FailedItems + c.FailedItems,
		FailedPlayers: p.FailedPlayers + c.FailedPlayers,
		SinkToken:     c.SinkToken,
	}
}

// Batch is the durable record of one batch.
type Batch struct {
	ID          string   `json:"batch_id"`
	Request     Request  `json:"request"`
	Fingerprint string   `json:"-"`
	Items       []string `json:"-"` // resolved, sorted player list; chunk i is Items[i*ChunkSize:]
	// TotalItems is len(Items), stored apart: List and Orphans return
	// batches without their item lists (which may hold thousands of
	// players), Get and Claim with them.
	TotalItems int    `json:"total_items"`
	Status     Status `json:"state"`
	Progress
	Attempt     int       `json:"attempt"`
	Lease       Lease     `json:"lease"`
	HeartbeatAt time.Time `json:"heartbeat_at"`
	Error       string    `json:"error,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
	CompletedAt time.Time `json:"completed_at"`
}

// ItemCount is the number of items: len(Items) when they were loaded,
// TotalItems otherwise.
func (b Batch) ItemCount() int {
	if b.Items != nil {
		return len(b.Items)
	}
	return b.TotalItems
}

// TotalChunks is the number of chunks the items split into.
func (b Batch) TotalChunks() int {
	cs := b.Request.ChunkSize
	if cs <= 0 {
		return 0
	}
	return (b.ItemCount() + cs - 1) / cs
}

// Chunk returns the items of chunk i.
func (b Batch) Chunk(i int) []string {
	cs := b.Request.ChunkSize
	lo := i * cs
	hi := min(lo+cs, len(b.Items))
	if lo >= hi {
		return nil
	}
	return b.Items[lo:hi]
}

// CompletionEvent is the event of b finishing in state st at now. Finish
// writes it to the outbox in the same commit that finishes the batch.
func (b Batch) CompletionEvent(st Status, errMsg string, now time.Time) events.Event {
	typ := events.TypeBatchCompleted
	if st == StatusFailed {
		typ = events.TypeBatchFailed
	}
	return events.Event{
		ID: b.ID + ":" + typ + ":" + strconv.FormatInt(b.Lease.Epoch, 10), Type: typ, BatchID: b.ID,
		GameDate: b.Request.GameDate, CorrelationID: b.Request.CorrelationID, RunMode: b.Request.RunMode,
		DatasetPrefix: b.Request.DatasetPrefix, TotalItems: b.ItemCount(),
		DoneItems: b.DoneItems, Predictions: b.Predictions, Fallbacks: b.Fallbacks, FailedItems: b.FailedItems,
		FailedPlayers: b.FailedPlayers, Attempt: b.Attempt, DurationMS: now.Sub(b.CreatedAt).Milliseconds(), Error: errMsg, Warning: b.Warning(st),
		At: now.UTC(),
	}
}

// Warning says why a batch finishing in st is not a clean success even so:
// events.WarningNoPredictions when it completed with every row a failure
// record. Empty otherwise.
func (b Batch) Warning(st Status) string {
	if st == StatusCompleted && b.Predictions == 0 {
		return events.WarningNoPredictions
	}
	return ""
}

// ClaimOptions tunes a claim.
type ClaimOptions struct {
	// Force takes the batch over even when another owner's lease is live;
	// the new epoch fences the old owner.
	Force bool
	// Reopen allows claiming a failed batch (an operator's resume).
	Reopen bool
	// Replace takes the batch over even when the lease is live, but only
	// when it is held by this owner: for an owner known to be dead (a
	// process on this machine that no longer exists). Two claimants racing
	// to replace the same dead owner cannot both win.
	Replace string
}

// ListFilter narrows List.
type ListFilter struct {
	Status Status // empty: all
	Limit  int    // <= 0: store default (50)
}

// Store is the durable state of batches. Every method is safe for concurrent
// use by several goroutines and by several processes sharing the backend.
type Store interface {
	// Create stores b (Status pending, no lease) unless a batch with that id
	// exists. It returns the stored batch and whether this call created it.
	// An existing batch with a different Fingerprint gives ErrConflict.
	Create(ctx context.Context, b Batch) (Batch, bool, error)
	// Get returns the batch or ErrNotFound.
	Get(ctx context.Context, id string) (Batch, error)
	// List returns batches, newest first, without their Items (TotalItems
	// says how many).
	List(ctx context.Context, f ListFilter) ([]Batch, error)
	// Claim takes the lease for owner with a new epoch and marks the batch
	// running. A live lease gives ErrLeaseHeld (with the current batch),
	// even when the caller holds it, unless opts.Force; a completed batch gives ErrFinished,
	// as does a failed one unless opts.Reopen.
	Claim(ctx context.Context, id, owner string, ttl time.Duration, opts ClaimOptions) (Batch, error)
	// Renew extends the lease and returns it as stored. Stores with a write
	// budget may skip a renewal that comes too soon after the last write and
	// return the lease unchanged. ErrLeaseLost when (owner, epoch) lost it.
	Renew(ctx context.Context, id string, l Lease, ttl time.Duration) (Lease, error)
	// Checkpoint records p, which must advance DoneChunks by exactly one
	// over the stored value. Fenced by (owner, epoch). It may also extend the
	// lease (stores with a write budget may skip that); it returns the lease
	// as stored afterwards.
	Checkpoint(ctx context.Context, id string, l Lease, p Progress, ttl time.Duration) (Lease, error)
	// Finish marks the batch completed or failed, drops the lease and writes
	// the completion Event to the outbox, all in one commit. Fenced.
	Finish(ctx context.Context, id string, l Lease, s Status, errMsg string) error
	// Outbox returns unsent events, oldest first.
	Outbox(ctx context.Context, limit int) ([]events.Event, error)
	// MarkSent takes an event out of the outbox: published, or (failure
	// not empty) refused for good by the publisher, with why.
	MarkSent(ctx context.Context, eventID, failure string) error
	// Release drops the lease so another owner can claim at once; the batch
	// keeps its progress and stays running. Fenced.
	Release(ctx context.Context, id string, l Lease) error
	// Orphans returns unfinished batches whose lease has expired or was
	// released (and pending batches nobody claimed), oldest update first,
	// without their Items (a claim returns them).
	Orphans(ctx context.Context, limit int) ([]Batch, error)
	// CountByStatus returns how many batches are in each state.
	CountByStatus(ctx context.Context) (map[Status]int, error)
	// Ping checks that the store answers.
	Ping(ctx context.Context) error
	Close() error
}
