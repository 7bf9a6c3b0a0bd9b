// Package sqlite keeps dead letters and delivery attempts in the embedded
// SQLite database.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/predworker/predworker/events"
	"github.com/predworker/predworker/internal/sqlitedb"
)

const schema = `
CREATE TABLE IF NOT EXISTS dead_letters (
	id           TEXT PRIMARY KEY,
	class        TEXT NOT NULL,
	error        TEXT NOT NULL,
	message_id   TEXT NOT NULL,
	subscription TEXT NOT NULL,
	attempt      INTEGER NOT NULL,
	batch_id     TEXT NOT NULL,
	raw          BLOB NOT NULL,
	created_at   INTEGER NOT NULL,
	retries      INTEGER NOT NULL DEFAULT 0,
	retried_at   INTEGER NOT NULL DEFAULT 0,
	published_at INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX IF NOT EXISTS dead_letters_created ON dead_letters (created_at);
CREATE TABLE IF NOT EXISTS push_attempts (
	message_id TEXT PRIMARY KEY,
	attempts   INTEGER NOT NULL,
	updated_at INTEGER NOT NULL
) STRICT;
`

// Store implements events.DeadLetters.
type Store struct{ db *sql.DB }

var _ events.DeadLetters = (*Store)(nil)

// New opens the store at path.
func New(ctx context.Context, path string) (*Store, error) {
	db, err := sqlitedb.Open(ctx, path, schema)
	if err != nil {
		return nil, err
	}
	if err := sqlitedb.EnsureColumns(ctx, db, "dead_letters", [][2]string{
		{"raw_size", "INTEGER NOT NULL DEFAULT 0"}, {"raw_sha256", "TEXT NOT NULL DEFAULT ''"}}); err != nil {
		return nil, errors.Join(err, db.Close())
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Put implements events.DeadLetters.
func (s *Store) Put(ctx context.Context, d events.DeadLetter) (bool, error) {
	if d.CreatedAt.IsZero() {
		d.CreatedAt = time.Now()
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO dead_letters (id, class, error, message_id, subscription,
		attempt, batch_id, raw, raw_size, raw_sha256, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO NOTHING`,
		d.ID, d.Class, d.Error, d.MessageID, d.Subscription, d.Attempt, d.BatchID, d.Raw, d.RawSize, d.RawSHA256,
		d.CreatedAt.UnixNano())
	if err != nil {
		return false, fmt.Errorf("store dead letter %s: %w", d.ID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("store dead letter %s: %w", d.ID, err)
	}
	return n == 1, nil
}

const cols = `id, class, error, message_id, subscription, attempt, batch_id, raw, raw_size, raw_sha256, created_at,
	retries, retried_at, published_at`

func scan(sc interface{ Scan(...any) error }) (events.DeadLetter, error) {
	var (
		d                           events.DeadLetter
		created, retried, published int64
	)
	err := sc.Scan(&d.ID, &d.Class, &d.Error, &d.MessageID, &d.Subscription, &d.Attempt, &d.BatchID, &d.Raw,
		&d.RawSize, &d.RawSHA256, &created, &d.Retries, &retried, &published)
	if errors.Is(err, sql.ErrNoRows) {
		return d, events.ErrNotFound
	}
	if err != nil {
		return d, err
	}
	d.CreatedAt = time.Unix(0, created).UTC()
	if retried != 0 {
		t := time.Unix(0, retried).UTC()
		d.RetriedAt = &t
	}
	if published != 0 {
		t := time.Unix(0, published).UTC()
		d.PublishedAt = &t
	}
	return d, nil
}

// List implements events.DeadLetters.
func (s *Store) List(ctx context.Context, limit int) ([]events.DeadLetter, error) {
	if limit <= 0 {
		limit = 50
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+cols+` FROM dead_letters ORDER BY created_at DESC, id LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	defer func() { _ = rows.Close() }()
	out := []events.DeadLetter{}
	for rows.Next() {
		d, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("list dead letters: %w", err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// Get implements events.DeadLetters.
func (s *Store) Get(ctx context.Context, id string) (events.DeadLetter, error) {
	d, err := scan(s.db.QueryRowContext(ctx, `SELECT `+cols+` FROM dead_letters WHERE id = ?`, id))
	if err != nil {
		return d, fmt.Errorf("get dead letter %s: %w", id, err)
	}
	return d, nil
}

// MarkRetried implements events.DeadLetters.
func (s *Store) MarkRetried(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE dead_letters SET retries = retries + 1, retried_at = ? WHERE id = ?`,
		time.Now().UnixNano(), id)
	if err != nil {
		return fmt.Errorf("mark dead letter %s retried: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return errors.Join(fmt.Errorf("mark dead letter %s retried: %w", id, events.ErrNotFound), err)
	}
	return nil
}

// MarkPublished implements events.DeadLetters.
func (s *Store) MarkPublished(ctx context.Context, id string) error {
	if _, err := s.db.ExecContext(ctx, `UPDATE dead_letters SET published_at = ? WHERE id = ?`, time.Now().UnixNano(), id); err != nil {
		return fmt.Errorf("mark dead letter %s published: %w", id, err)
	}
	return nil
}

// Attempt implements events.DeadLetters.
func (s *Store) Attempt(ctx context.Context, messageID string) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `INSERT INTO push_attempts (message_id, attempts, updated_at) VALUES (?, 1, ?)
		ON CONFLICT (message_id) DO UPDATE SET attempts = attempts + 1, updated_at = excluded.updated_at
		RETURNING attempts`, messageID, time.Now().UnixNano()).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count attempt of message %s: %w", messageID, err)
	}
	return n, nil
}
