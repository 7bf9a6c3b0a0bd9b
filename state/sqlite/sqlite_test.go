package sqlite_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/state/sqlite"
	"github.com/predworker/predworker/state/statetest"
)

func newStore(t *testing.T, clock clockwork.Clock) state.Store {
	t.Helper()
	s, err := sqlite.New(context.Background(), filepath.Join(t.TempDir(), "state.db"), clock)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	t.Parallel()
	statetest.Run(t, newStore)
}

// Two Store values on one file behave like two processes sharing DATA_DIR:
// separate connection pools, coordinated only by SQLite's file locks.
func TestConformanceTwoHandlesOneFile(t *testing.T) {
	t.Parallel()
	statetest.Run(t, func(t *testing.T, clock clockwork.Clock) state.Store {
		path := filepath.Join(t.TempDir(), "state.db")
		a, err := sqlite.New(context.Background(), path, clock)
		if err != nil {
			t.Fatal(err)
		}
		b, err := sqlite.New(context.Background(), path, clock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return splitStore{Store: a, other: b}
	})
}

// splitStore sends claims, renewals and checkpoints through a second handle.
type splitStore struct {
	state.Store
	other state.Store
}

func (s splitStore) Claim(ctx context.Context, id, owner string, ttl time.Duration, o state.ClaimOptions) (state.Batch, error) {
	return s.other.Claim(ctx, id, owner, ttl, o)
}

func (s splitStore) Renew(ctx context.Context, id string, l state.Lease, ttl time.Duration) (state.Lease, error) {
	return s.other.Renew(ctx, id, l, ttl)
}

func (s splitStore) Checkpoint(ctx context.Context, id string, l state.Lease, p state.Progress, ttl time.Duration) (state.Lease, error) {
	return s.other.Checkpoint(ctx, id, l, p, ttl)
}

func TestWALOnDisk(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := sqlite.New(t.Context(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	if _, _, err := s.Create(t.Context(), state.Batch{ID: "b", Request: state.Request{GameDate: "2025-01-15", ChunkSize: 1}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + "-wal"); err != nil {
		t.Fatalf("no write-ahead log next to the database: %v", err)
	}
}
