package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/predworker/predworker/logging"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
)

// Submission: request validation, batch ids, and the creation of a batch
// with its resolved, sorted item list (so chunk i is the same players on
// every attempt).

var (
	batchIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)
	playerPattern  = regexp.MustCompile(`^[a-z0-9][a-z0-9._'-]{0,63}$`)
	correlationRe  = regexp.MustCompile(`^[\x21-\x7e]{1,128}$`)
)

// ValidateBatchID checks a caller-supplied batch id.
func ValidateBatchID(id string) error {
	if !batchIDPattern.MatchString(id) {
		return &InputError{Field: "batch_id", Message: "must be 1-128 characters of A-Z, a-z, 0-9, _ and -"}
	}
	return nil
}

// validateRequest checks everything about r that does not need the feature
// store.
func (e *Engine) validateRequest(r state.Request) error {
	if _, err := time.Parse(time.DateOnly, r.GameDate); err != nil || len(r.GameDate) != 10 {
		return &InputError{Field: "game_date", Message: "must be a date like 2025-01-15"}
	}
	if r.ChunkSize < 0 || r.ChunkSize > MaxChunkSize {
		return &InputError{Field: "chunk_size", Message: fmt.Sprintf("must be from 1 to %d", MaxChunkSize)}
	}
	if len(r.Players) > 5000 {
		return &InputError{Field: "players", Message: "at most 5000 players per batch"}
	}
	for _, p := range r.Players {
		if !playerPattern.MatchString(p) {
			return &InputError{Field: "players", Message: fmt.Sprintf("%.40q is not a player lookup (lower-case letters and digits, up to 64)", p)}
		}
	}
	for _, s := range r.Systems {
		if !e.registry.Has(s) && e.registry.Loading() {
			return fmt.Errorf("system %.40q is not loaded yet: %w", s, systems.ErrUnavailable)
		}
		if !e.registry.Has(s) {
			return &InputError{Field: "systems", Message: fmt.Sprintf("unknown system %.40q (known: %s)", s, strings.Join(e.registry.IDs(), ", "))}
		}
	}
	if r.CorrelationID != "" && !correlationRe.MatchString(r.CorrelationID) {
		return &InputError{Field: "correlation_id", Message: "must be 1-128 printable ASCII characters without spaces"}
	}
	return nil
}

// DeriveBatchID names a request deterministically: the same request always
// gets the same id, so re-running it resumes instead of starting over.
func DeriveBatchID(r state.Request) string {
	return r.GameDate + "-" + r.Fingerprint()[:16]
}

// Submit creates the batch for r under id (derived from r when empty) unless
// it exists. It returns the stored batch and whether this call created it.
// The same id with a different request is state.ErrConflict.
func (e *Engine) Submit(ctx context.Context, id string, r state.Request) (state.Batch, bool, error) {
	if err := e.validateRequest(r); err != nil {
		return state.Batch{}, false, err
	}
	if r.ChunkSize == 0 {
		r.ChunkSize = e.cfg.ChunkSize
	}
	if id == "" {
		id = DeriveBatchID(r)
	} else if err := ValidateBatchID(id); err != nil {
		return state.Batch{}, false, err
	}
	fp := r.Fingerprint()
	existing, err := e.store.Get(ctx, id)
	switch {
	case err == nil && existing.Fingerprint != fp:
		return existing, false, fmt.Errorf("submit batch %s: %w", id, state.ErrConflict)
	case err == nil:
		return existing, false, nil
	case !errors.Is(err, state.ErrNotFound):
		return state.Batch{}, false, fmt.Errorf("submit batch %s: %w", id, err)
	}
	stored := r
	stored.Players = systems.SortedUnique(r.Players)
	if len(r.Systems) == 0 {
		stored.Systems = e.registry.IDs()
	} else {
		stored.Systems = systems.SortedUnique(r.Systems)
	}
	// The date is checked against the feature source even when the request
	// names its players: a date outside the season or without games is
	// refused here, not discovered as a batch of failure records.
	slate, err := e.features.Slate(systems.WithScope(ctx, scopeOf(r)), r.GameDate)
	switch {
	case errors.Is(err, systems.ErrNoGames), errors.Is(err, systems.ErrUnknownDate), errors.Is(err, systems.ErrNoPlayers):
		return state.Batch{}, false, &InputError{Field: "game_date", Message: err.Error(), Err: err}
	case err != nil:
		return state.Batch{}, false, fmt.Errorf("load slate of %s: %w", r.GameDate, err)
	}
	items := stored.Players
	if len(items) == 0 {
		items = slate
	}
	// The players are the items: the stored request does not repeat them,
	// so a summary of the batch (a list, a sweep) stays small.
	stored.Players = nil
	b, created, err := e.store.Create(ctx, state.Batch{ID: id, Request: stored, Fingerprint: fp, Items: items})
	if err != nil {
		return b, false, fmt.Errorf("create batch %s: %w", id, err)
	}
	if created {
		logging.FromContext(ctx, e.log).Info("batch created", logging.Event(logging.EventBatchCreated), slog.String("batch_id", id),
			slog.String("game_date", r.GameDate), slog.Int("items", len(items)),
			slog.Int("total_chunks", b.TotalChunks()), slog.String("correlation_id", r.CorrelationID))
	}
	return b, created, nil
}
