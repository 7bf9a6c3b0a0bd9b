// Package sqlitedb opens the embedded SQLite databases the same way for every
// SQLite adapter (state/sqlite, systems/sqlite, events/sqlite): WAL, so
// readers never block the writer; synchronous=FULL, so a commit that returned
// is on disk; BEGIN IMMEDIATE transactions with a busy timeout, so several
// processes sharing one data directory serialise their writes instead of
// failing. It is the only package that imports the SQLite driver.
package sqlitedb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// DSN returns the connection string for the SQLite file at path with the
// pragmas the embedded backends rely on.
func DSN(path string) string {
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(FULL)", "busy_timeout(15000)", "foreign_keys(1)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	return "file:" + path + "?" + q.Encode()
}

// Open opens (creating if needed) the SQLite database at path with DSN's
// pragmas and applies schema, a script of idempotent statements.
func Open(ctx context.Context, path, schema string) (*sql.DB, error) {
	db, err := sql.Open("sqlite", DSN(path))
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	db.SetMaxOpenConns(4)
	if _, err := db.ExecContext(ctx, schema); err != nil {
		return nil, errors.Join(fmt.Errorf("apply schema to %s: %w", path, err), db.Close())
	}
	return db, nil
}

// EnsureColumns adds to table each column of cols (name → definition) that
// an older version of the schema lacks. CREATE TABLE IF NOT EXISTS leaves an
// existing table as it was, so columns added later arrive this way.
func EnsureColumns(ctx context.Context, db *sql.DB, table string, cols [][2]string) error {
	have := map[string]bool{}
	rows, err := db.QueryContext(ctx, `SELECT name FROM pragma_table_info(?)`, table)
	if err != nil {
		return fmt.Errorf("columns of %s: %w", table, err)
	}
	defer func() { _ = rows.Close() }()
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return fmt.Errorf("columns of %s: %w", table, err)
		}
		have[name] = true
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("columns of %s: %w", table, err)
	}
	for _, c := range cols {
		if have[c[0]] {
			continue
		}
		// Identifiers cannot be parameters; table and columns are constants
		// of the calling package, never input.
		if _, err := db.ExecContext(ctx, `ALTER TABLE `+table+` ADD COLUMN `+c[0]+` `+c[1]); err != nil {
			return fmt.Errorf("add column %s.%s: %w", table, c[0], err)
		}
	}
	return nil
}
