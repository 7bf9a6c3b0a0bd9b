// Package sqlite is the embedded state.Store: one SQLite file in WAL mode with
// synchronous=FULL, so a checkpoint that returned is on disk, and every write
// in a BEGIN IMMEDIATE transaction with a busy timeout, so several processes
// sharing one data directory serialise their writes instead of failing.
package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/predworker/predworker/events"
	"github.com/predworker/predworker/internal/sqlitedb"
	"github.com/predworker/predworker/state"
)

const schema = `
CREATE TABLE IF NOT EXISTS batches (
	id            TEXT PRIMARY KEY,
	request       TEXT NOT NULL,
	fingerprint   TEXT NOT NULL,
	items         TEXT NOT NULL,
	status        TEXT NOT NULL,
	done_chunks   INTEGER NOT NULL DEFAULT 0,
	done_items    INTEGER NOT NULL DEFAULT 0,
	predictions   INTEGER NOT NULL DEFAULT 0,
	fallbacks     INTEGER NOT NULL DEFAULT 0,
	failed_items  INTEGER NOT NULL DEFAULT 0,
	attempt       INTEGER NOT NULL DEFAULT 0,
	lease_owner   TEXT NOT NULL DEFAULT '',
	lease_epoch   INTEGER NOT NULL DEFAULT 0,
	lease_expires INTEGER NOT NULL DEFAULT 0,
	heartbeat_at  INTEGER NOT NULL DEFAULT 0,
	error         TEXT NOT NULL DEFAULT '',
	created_at    INTEGER NOT NULL,
	updated_at    INTEGER NOT NULL,
	completed_at  INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX IF NOT EXISTS batches_orphans ON batches (status, lease_expires);
CREATE INDEX IF NOT EXISTS batches_created ON batches (created_at);
CREATE TABLE IF NOT EXISTS outbox (
	id         TEXT PRIMARY KEY,
	payload    TEXT NOT NULL,
	created_at INTEGER NOT NULL,
	sent_at    INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (sent_at, created_at);
-- A batch's item list (thousands of players) lives apart from its row, so
-- listing and sweeping batches never reads it. batches.items is '[]' for
-- every batch created since; older ones are moved here when the store opens.
CREATE TABLE IF NOT EXISTS batch_items (
	batch_id TEXT PRIMARY KEY,
	items    TEXT NOT NULL
) STRICT;
`

// migrate brings a database of an older version up to this schema: the
// columns added since, and total_items of batches that predate it.
func migrate(ctx context.Context, db *sql.DB) error {
	if err := sqlitedb.EnsureColumns(ctx, db, "outbox", [][2]string{{"failure", "TEXT NOT NULL DEFAULT ''"}}); err != nil {
		return err
	}
	if err := sqlitedb.EnsureColumns(ctx, db, "batches", [][2]string{{"total_items", "INTEGER NOT NULL DEFAULT -1"},
		{"sink_token", "TEXT NOT NULL DEFAULT ''"}, {"failed_players", "INTEGER NOT NULL DEFAULT 0"}}); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, `UPDATE batches SET total_items = json_array_length(items) WHERE total_items < 0`); err != nil {
		return fmt.Errorf("count the items of older batches: %w", err)
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO batch_items (batch_id, items)
		SELECT id, items FROM batches WHERE items != '[]' ON CONFLICT (batch_id) DO NOTHING`); err != nil {
		return fmt.Errorf("move the items of older batches: %w", err)
	}
	if _, err := db.ExecContext(ctx, `UPDATE batches SET items = '[]',
		request = json_remove(request, '$.players') WHERE items != '[]'`); err != nil {
		return fmt.Errorf("move the items of older batches: %w", err)
	}
	return nil
}

// Store implements state.Store on SQLite.
type Store struct {
	db    *sql.DB
	clock clockwork.Clock
}

var _ state.Store = (*Store)(nil)

// New opens the store at path. A nil clock means the real one.
func New(ctx context.Context, path string, clock clockwork.Clock) (*Store, error) {
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	db, err := sqlitedb.Open(ctx, path, schema)
	if err != nil {
		return nil, err
	}
	if err := migrate(ctx, db); err != nil {
		return nil, errors.Join(err, db.Close())
	}
	return &Store{db: db, clock: clock}, nil
}

func (s *Store) now() int64 { return s.clock.Now().UnixNano() }

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

const columns = `id, request, fingerprint,
	(SELECT i.items FROM batch_items i WHERE i.batch_id = batches.id), status, done_chunks, done_items, predictions,
	fallbacks, failed_items, attempt, lease_owner, lease_epoch, lease_expires, heartbeat_at,
	error, created_at, updated_at, completed_at, total_items, sink_token, failed_players`

// summaryColumns are the columns without the item list (List, Orphans).
var summaryColumns = strings.Replace(columns, "(SELECT i.items FROM batch_items i WHERE i.batch_id = batches.id)", "'null'", 1)

type scanner interface{ Scan(dest ...any) error }

func scanBatch(sc scanner) (state.Batch, error) {
	var (
		b                                    state.Batch
		req, status                          string
		items                                sql.NullString
		expires, hb, created, updated, compl int64
	)
	err := sc.Scan(&b.ID, &req, &b.Fingerprint, &items, &status, &b.DoneChunks, &b.DoneItems,
		&b.Predictions, &b.Fallbacks, &b.FailedItems, &b.Attempt, &b.Lease.Owner, &b.Lease.Epoch,
		&expires, &hb, &b.Error, &created, &updated, &compl, &b.TotalItems, &b.SinkToken, &b.FailedPlayers)
	if errors.Is(err, sql.ErrNoRows) {
		return b, state.ErrNotFound
	}
	if err != nil {
		return b, fmt.Errorf("scan batch: %w", err)
	}
	if err := json.Unmarshal([]byte(req), &b.Request); err != nil {
		return b, fmt.Errorf("decode request of %s: %w", b.ID, err)
	}
	if items.Valid && items.String != "null" { // a summary has none
		if err := json.Unmarshal([]byte(items.String), &b.Items); err != nil {
			return b, fmt.Errorf("decode items of %s: %w", b.ID, err)
		}
	}
	b.Status = state.Status(status)
	b.Lease.ExpiresAt = fromNanos(expires)
	b.HeartbeatAt = fromNanos(hb)
	b.CreatedAt = fromNanos(created)
	b.UpdatedAt = fromNanos(updated)
	b.CompletedAt = fromNanos(compl)
	return b, nil
}

// Create implements state.Store.
func (s *Store) Create(ctx context.Context, b state.Batch) (state.Batch, bool, error) {
	req, err := json.Marshal(b.Request)
	if err != nil {
		return b, false, fmt.Errorf("encode request: %w", err)
	}
	items, err := json.Marshal(b.Items)
	if err != nil {
		return b, false, fmt.Errorf("encode items: %w", err)
	}
	if b.Fingerprint == "" {
		b.Fingerprint = b.Request.Fingerprint()
	}
	now := s.now()
	var n int64
	err = s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO batches (id, request, fingerprint, items, total_items, status, created_at, updated_at)
			VALUES (?, ?, ?, '[]', ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
			b.ID, string(req), b.Fingerprint, len(b.Items), string(state.StatusPending), now, now)
		if err != nil {
			return err
		}
		if n, err = res.RowsAffected(); err != nil || n == 0 {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO batch_items (batch_id, items) VALUES (?, ?)`, b.ID, string(items))
		return err
	})
	if err != nil {
		return b, false, fmt.Errorf("create batch %s: %w", b.ID, err)
	}
	got, err := s.Get(ctx, b.ID)
	if err != nil {
		return got, false, err
	}
	if n == 0 && got.Fingerprint != b.Fingerprint {
		return got, false, fmt.Errorf("create batch %s: %w", b.ID, state.ErrConflict)
	}
	return got, n == 1, nil
}

// Get implements state.Store.
func (s *Store) Get(ctx context.Context, id string) (state.Batch, error) {
	b, err := scanBatch(s.db.QueryRowContext(ctx, `SELECT `+columns+` FROM batches WHERE id = ?`, id))
	if err != nil {
		return b, fmt.Errorf("get batch %s: %w", id, err)
	}
	return b, nil
}

func (s *Store) query(ctx context.Context, q string, args ...any) ([]state.Batch, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []state.Batch
	for rows.Next() {
		b, err := scanBatch(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

// List implements state.Store.
func (s *Store) List(ctx context.Context, f state.ListFilter) ([]state.Batch, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 50
	}
	out, err := s.query(ctx, `SELECT `+summaryColumns+` FROM batches WHERE (? = '' OR status = ?)
		ORDER BY created_at DESC, id LIMIT ?`, string(f.Status), string(f.Status), limit)
	if err != nil {
		return nil, fmt.Errorf("list batches: %w", err)
	}
	return out, nil
}

// Orphans implements state.Store.
func (s *Store) Orphans(ctx context.Context, limit int) ([]state.Batch, error) {
	if limit <= 0 {
		limit = 50
	}
	out, err := s.query(ctx, `SELECT `+summaryColumns+` FROM batches WHERE status IN ('pending', 'running')
		AND lease_expires <= ? ORDER BY updated_at, id LIMIT ?`, s.now(), limit)
	if err != nil {
		return nil, fmt.Errorf("find orphans: %w", err)
	}
	return out, nil
}

// tx runs fn in a write transaction (BEGIN IMMEDIATE through the DSN).
func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		return errors.Join(err, tx.Rollback())
	}
	return tx.Commit()
}

// Claim implements state.Store.
func (s *Store) Claim(ctx context.Context, id, owner string, ttl time.Duration, opts state.ClaimOptions) (state.Batch, error) {
	var out state.Batch
	err := s.tx(ctx, func(tx *sql.Tx) error {
		b, err := scanBatch(tx.QueryRowContext(ctx, `SELECT `+columns+` FROM batches WHERE id = ?`, id))
		if err != nil {
			return err
		}
		now := s.clock.Now()
		switch {
		case b.Status == state.StatusCompleted, b.Status == state.StatusFailed && !opts.Reopen:
			out = b
			return state.ErrFinished
		case b.Lease.Live(now) && !opts.Force && (opts.Replace == "" || opts.Replace != b.Lease.Owner):
			// Held, even by this owner: one owner never runs a batch twice.
			out = b
			return state.ErrLeaseHeld
		}
		_, err = tx.ExecContext(ctx, `UPDATE batches SET status = 'running', error = '', lease_owner = ?,
			lease_epoch = lease_epoch + 1, lease_expires = ?, heartbeat_at = ?, attempt = attempt + 1,
			updated_at = ? WHERE id = ?`, owner, now.Add(ttl).UnixNano(), now.UnixNano(), now.UnixNano(), id)
		if err != nil {
			return err
		}
		out, err = scanBatch(tx.QueryRowContext(ctx, `SELECT `+columns+` FROM batches WHERE id = ?`, id))
		return err
	})
	if err != nil {
		return out, fmt.Errorf("claim batch %s: %w", id, err)
	}
	return out, nil
}

// fenced runs an UPDATE whose WHERE clause ends with the lease fence and maps
// "no row matched" to ErrLeaseLost.
func (s *Store) fenced(ctx context.Context, op, id string, l state.Lease, set string, args ...any) error {
	args = append(args, id, l.Owner, l.Epoch)
	res, err := s.db.ExecContext(ctx, `UPDATE batches SET `+set+
		` WHERE id = ? AND lease_owner = ? AND lease_epoch = ? AND status = 'running'`, args...)
	if err != nil {
		return fmt.Errorf("%s batch %s: %w", op, id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("%s batch %s: %w", op, id, err)
	}
	if n == 0 {
		return fmt.Errorf("%s batch %s (owner %s, epoch %d): %w", op, id, l.Owner, l.Epoch, state.ErrLeaseLost)
	}
	return nil
}

// Renew implements state.Store.
func (s *Store) Renew(ctx context.Context, id string, l state.Lease, ttl time.Duration) (state.Lease, error) {
	now := s.clock.Now()
	l.ExpiresAt = now.Add(ttl)
	err := s.fenced(ctx, "renew lease of", id, l, `lease_expires = ?, heartbeat_at = ?`,
		l.ExpiresAt.UnixNano(), now.UnixNano())
	return l, err
}

// Checkpoint implements state.Store.
func (s *Store) Checkpoint(ctx context.Context, id string, l state.Lease, p state.Progress, ttl time.Duration) (state.Lease, error) {
	now := s.clock.Now()
	old := l
	l.ExpiresAt = now.Add(ttl)
	args := []any{p.DoneChunks, p.DoneItems, p.Predictions, p.Fallbacks, p.FailedItems, p.FailedPlayers, p.SinkToken,
		l.ExpiresAt.UnixNano(), now.UnixNano(), now.UnixNano(), p.DoneChunks - 1}
	args = append(args, id, l.Owner, l.Epoch)
	res, err := s.db.ExecContext(ctx, `UPDATE batches SET done_chunks = ?, done_items = ?, predictions = ?,
		fallbacks = ?, failed_items = ?, failed_players = ?, sink_token = ?, lease_expires = ?, heartbeat_at = ?, updated_at = ?
		WHERE done_chunks = ? AND id = ? AND lease_owner = ? AND lease_epoch = ? AND status = 'running'`, args...)
	if err != nil {
		return old, fmt.Errorf("checkpoint batch %s: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return old, fmt.Errorf("checkpoint batch %s: %w", id, err)
	} else if n == 0 {
		return old, fmt.Errorf("checkpoint batch %s chunk %d (owner %s, epoch %d): %w",
			id, p.DoneChunks-1, l.Owner, l.Epoch, state.ErrLeaseLost)
	}
	return l, nil
}

// Finish implements state.Store: the final state and the outbox event in one
// transaction.
func (s *Store) Finish(ctx context.Context, id string, l state.Lease, st state.Status, errMsg string) error {
	if !st.Finished() {
		return fmt.Errorf("finish batch %s: %q is not a final state", id, st)
	}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		b, err := scanBatch(tx.QueryRowContext(ctx, `SELECT `+columns+` FROM batches WHERE id = ?`, id))
		if err != nil {
			return err
		}
		if b.Lease.Owner != l.Owner || b.Lease.Epoch != l.Epoch || b.Status != state.StatusRunning {
			return fmt.Errorf("owner %s, epoch %d: %w", l.Owner, l.Epoch, state.ErrLeaseLost)
		}
		now := s.clock.Now()
		ev := b.CompletionEvent(st, errMsg, now)
		payload, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE batches SET status = ?, error = ?, completed_at = ?, updated_at = ?,
			lease_owner = '', lease_expires = 0 WHERE id = ?`, string(st), errMsg, now.UnixNano(), now.UnixNano(), id); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO outbox (id, payload, created_at) VALUES (?, ?, ?)
			ON CONFLICT (id) DO NOTHING`, ev.ID, string(payload), now.UnixNano())
		return err
	})
	if err != nil {
		return fmt.Errorf("finish batch %s: %w", id, err)
	}
	return nil
}

// Outbox implements state.Store.
func (s *Store) Outbox(ctx context.Context, limit int) ([]events.Event, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.db.QueryContext(ctx, `SELECT payload FROM outbox WHERE sent_at = 0 ORDER BY created_at, id LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []events.Event
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			return nil, fmt.Errorf("read outbox: %w", err)
		}
		var ev events.Event
		if err := json.Unmarshal([]byte(p), &ev); err != nil {
			return nil, fmt.Errorf("decode outbox event: %w", err)
		}
		out = append(out, ev)
	}
	return out, rows.Err()
}

// MarkSent implements state.Store.
func (s *Store) MarkSent(ctx context.Context, eventID, failure string) error {
	if _, err := s.db.ExecContext(ctx, `UPDATE outbox SET sent_at = ?, failure = ? WHERE id = ?`, s.now(), failure, eventID); err != nil {
		return fmt.Errorf("mark event %s sent: %w", eventID, err)
	}
	return nil
}

// Release implements state.Store.
func (s *Store) Release(ctx context.Context, id string, l state.Lease) error {
	return s.fenced(ctx, "release", id, l, `lease_owner = '', lease_expires = 0, updated_at = ?`, s.now())
}

// CountByStatus implements state.Store.
func (s *Store) CountByStatus(ctx context.Context) (map[state.Status]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT status, count(*) FROM batches GROUP BY status`)
	if err != nil {
		return nil, fmt.Errorf("count batches: %w", err)
	}
	defer func() { _ = rows.Close() }()
	out := map[state.Status]int{}
	for rows.Next() {
		var (
			st string
			n  int
		)
		if err := rows.Scan(&st, &n); err != nil {
			return nil, fmt.Errorf("count batches: %w", err)
		}
		out[state.Status(st)] = n
	}
	return out, rows.Err()
}

// Ping implements state.Store.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("ping sqlite: %w: %w", state.ErrUnavailable, err)
	}
	return nil
}

// Close implements state.Store.
func (s *Store) Close() error { return s.db.Close() }
