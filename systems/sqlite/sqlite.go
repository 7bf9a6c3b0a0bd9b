// Package sqlite is the embedded prediction sink: a SQLite table keyed on
// (batch_id, player_lookup, system_id), so a replayed chunk can never create a
// second row, and a per-batch fence that refuses writes from an epoch older
// than one that already wrote.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/predworker/predworker/internal/sqlitedb"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
)

const schema = `
CREATE TABLE IF NOT EXISTS predictions (
	batch_id         TEXT NOT NULL,
	player_lookup    TEXT NOT NULL,
	system_id        TEXT NOT NULL,
	game_date        TEXT NOT NULL,
	game_id          TEXT NOT NULL,
	predicted_points REAL NOT NULL,
	confidence       REAL NOT NULL,
	recommendation   TEXT NOT NULL,
	line             REAL,
	fallback         INTEGER NOT NULL,
	fallback_from    TEXT NOT NULL,
	fallback_reason  TEXT NOT NULL,
	produced_by      TEXT NOT NULL,
	failed           INTEGER NOT NULL,
	failure_reason   TEXT NOT NULL,
	model_version    TEXT NOT NULL,
	created_at       INTEGER NOT NULL,
	epoch            INTEGER NOT NULL,
	PRIMARY KEY (batch_id, player_lookup, system_id)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sink_fences (
	batch_id TEXT PRIMARY KEY,
	epoch    INTEGER NOT NULL
) STRICT;
`

// Sink implements systems.Sink and systems.PredictionReader. Writers and
// readers have their own connections: a slow HTTP client streaming
// predictions can never take the connection a chunk's write needs.
type Sink struct {
	db      *sql.DB // writes
	readers *sql.DB // ReadPredictions
}

// readPage is how many rows ReadPredictions reads per query; no connection
// is held while they are handed to the caller (a network write, maybe slow).
const readPage = 500

// readTimeout bounds one page's query.
const readTimeout = 10 * time.Second

var (
	_ systems.Sink             = (*Sink)(nil)
	_ systems.PredictionReader = (*Sink)(nil)
)

// New opens the sink at path.
func New(ctx context.Context, path string) (*Sink, error) {
	db, err := sqlitedb.Open(ctx, path, schema)
	if err != nil {
		return nil, err
	}
	readers, err := sqlitedb.Open(ctx, path, schema)
	if err != nil {
		return nil, errors.Join(err, db.Close())
	}
	return &Sink{db: db, readers: readers}, nil
}

// Write implements systems.Sink: one transaction that checks and raises the
// batch's fence, then inserts the rows. A row of the same key written by an
// older epoch (an owner that wrote the chunk but never checkpointed it) is
// replaced, so the rows stored are those the checkpoint counted; a replay by
// the same epoch changes nothing.
func (s *Sink) Write(ctx context.Context, batchID string, epoch int64, rows []systems.Prediction) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("write predictions of %s: %w", batchID, err)
	}
	if err := write(ctx, tx, batchID, epoch, rows); err != nil {
		return errors.Join(fmt.Errorf("write predictions of %s: %w", batchID, err), tx.Rollback())
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit predictions of %s: %w", batchID, err)
	}
	return nil
}

func write(ctx context.Context, tx *sql.Tx, batchID string, epoch int64, rows []systems.Prediction) error {
	var fence int64
	err := tx.QueryRowContext(ctx, `SELECT epoch FROM sink_fences WHERE batch_id = ?`, batchID).Scan(&fence)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return err
	case fence > epoch:
		return fmt.Errorf("epoch %d is older than %d: %w", epoch, fence, state.ErrLeaseLost)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO sink_fences (batch_id, epoch) VALUES (?, ?)
		ON CONFLICT (batch_id) DO UPDATE SET epoch = excluded.epoch`, batchID, epoch); err != nil {
		return err
	}
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO predictions (batch_id, player_lookup, system_id,
		game_date, game_id, predicted_points, confidence, recommendation, line, fallback, fallback_from,
		fallback_reason, produced_by, failed, failure_reason, model_version, created_at, epoch)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (batch_id, player_lookup, system_id) DO UPDATE SET
			game_date = excluded.game_date, game_id = excluded.game_id, predicted_points = excluded.predicted_points,
			confidence = excluded.confidence, recommendation = excluded.recommendation, line = excluded.line,
			fallback = excluded.fallback, fallback_from = excluded.fallback_from, fallback_reason = excluded.fallback_reason,
			produced_by = excluded.produced_by, failed = excluded.failed, failure_reason = excluded.failure_reason,
			model_version = excluded.model_version, created_at = excluded.created_at, epoch = excluded.epoch
		WHERE excluded.epoch > predictions.epoch`)
	if err != nil {
		return err
	}
	defer func() { _ = stmt.Close() }()
	for i := range rows {
		r := &rows[i]
		if r.BatchID != batchID {
			return fmt.Errorf("row for batch %q in a write for %q", r.BatchID, batchID)
		}
		if _, err := stmt.ExecContext(ctx, r.BatchID, r.PlayerLookup, r.SystemID, r.GameDate, r.GameID,
			r.PredictedPoints, r.Confidence, string(r.Recommendation), r.Line, r.Fallback, r.FallbackFrom,
			r.FallbackReason, r.ProducedBy, r.Failed, r.FailureReason, r.ModelVersion,
			r.CreatedAt.UnixNano(), epoch); err != nil {
			return err
		}
	}
	return nil
}

// ReadPredictions implements systems.PredictionReader: pages of readPage
// rows in key order, each read on the readers' pool under its own deadline
// and released before fn sees its rows.
func (s *Sink) ReadPredictions(ctx context.Context, batchID string, fn func(*systems.Prediction) error) error {
	var afterPlayer, afterSystem string
	for {
		page, err := s.readPage(ctx, batchID, afterPlayer, afterSystem)
		if err != nil {
			return fmt.Errorf("read predictions of %s: %w", batchID, err)
		}
		for i := range page {
			if err := fn(&page[i]); err != nil {
				return err
			}
		}
		if len(page) < readPage {
			return nil
		}
		last := page[len(page)-1]
		afterPlayer, afterSystem = last.PlayerLookup, last.SystemID
	}
}

// readPage reads the rows after the key (afterPlayer, afterSystem).
func (s *Sink) readPage(ctx context.Context, batchID, afterPlayer, afterSystem string) ([]systems.Prediction, error) {
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	rows, err := s.readers.QueryContext(ctx, `SELECT batch_id, player_lookup, system_id, game_date, game_id,
		predicted_points, confidence, recommendation, line, fallback, fallback_from, fallback_reason,
		produced_by, failed, failure_reason, model_version, created_at
		FROM predictions WHERE batch_id = ? AND (player_lookup, system_id) > (?, ?)
		ORDER BY player_lookup, system_id LIMIT ?`, batchID, afterPlayer, afterSystem, readPage)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	page := make([]systems.Prediction, 0, readPage)
	for rows.Next() {
		var (
			p       systems.Prediction
			rec     string
			line    sql.NullFloat64
			created int64
		)
		if err := rows.Scan(&p.BatchID, &p.PlayerLookup, &p.SystemID, &p.GameDate, &p.GameID,
			&p.PredictedPoints, &p.Confidence, &rec, &line, &p.Fallback, &p.FallbackFrom,
			&p.FallbackReason, &p.ProducedBy, &p.Failed, &p.FailureReason, &p.ModelVersion, &created); err != nil {
			return nil, err
		}
		p.Recommendation = systems.Recommendation(rec)
		if line.Valid {
			p.Line = &line.Float64
		}
		p.CreatedAt = time.Unix(0, created).UTC()
		page = append(page, p)
	}
	return page, rows.Err()
}

// Ping checks the database answers.
func (s *Sink) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// Close closes the database.
func (s *Sink) Close() error { return errors.Join(s.readers.Close(), s.db.Close()) }
