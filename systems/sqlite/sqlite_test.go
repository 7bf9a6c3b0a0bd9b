package sqlite_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/sqlite"
)

func rows(batch string, epoch int64, players ...string) []systems.Prediction {
	var out []systems.Prediction
	for _, p := range players {
		for _, sys := range []string{"a", "b"} {
			out = append(out, systems.Prediction{BatchID: batch, PlayerLookup: p, SystemID: sys,
				GameDate: "2025-01-15", PredictedPoints: float64(epoch), ModelVersion: fmt.Sprint(epoch),
				Recommendation: systems.Pass, CreatedAt: time.Unix(1, 0)})
		}
	}
	return out
}

func read(t *testing.T, s *sqlite.Sink, batch string) []systems.Prediction {
	t.Helper()
	var out []systems.Prediction
	if err := s.ReadPredictions(t.Context(), batch, func(p *systems.Prediction) error {
		out = append(out, *p)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestReplayWritesNoSecondRow(t *testing.T) {
	t.Parallel()
	s, err := sqlite.New(t.Context(), filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	ctx := t.Context()
	if err := s.Write(ctx, "b1", 1, rows("b1", 1, "x", "y")); err != nil {
		t.Fatal(err)
	}
	// The same chunk again (nothing changes), and by a newer epoch with
	// different values: still one row per key, now the newer epoch's (the
	// owner that checkpoints the chunk counts the rows it wrote).
	if err := s.Write(ctx, "b1", 1, rows("b1", 1, "x", "y")); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, "b1", 2, rows("b1", 2, "y", "z")); err != nil {
		t.Fatal(err)
	}
	got := read(t, s, "b1")
	if len(got) != 6 {
		t.Fatalf("%d rows, want 6 (3 players × 2 systems)", len(got))
	}
	for _, p := range got {
		want := 1.0
		if p.PlayerLookup != "x" {
			want = 2
		}
		if p.PredictedPoints != want {
			t.Errorf("%s/%s = %v, want the newest epoch's %v", p.PlayerLookup, p.SystemID, p.PredictedPoints, want)
		}
	}
	// Epoch 2 wrote: epoch 1 is fenced off, even for new keys.
	err = s.Write(ctx, "b1", 1, rows("b1", 1, "w"))
	if !errors.Is(err, state.ErrLeaseLost) {
		t.Fatalf("stale epoch write err = %v, want ErrLeaseLost", err)
	}
	if n := len(read(t, s, "b1")); n != 6 {
		t.Fatalf("stale write changed the table: %d rows", n)
	}
	// Other batches are fenced separately.
	if err := s.Write(ctx, "b2", 1, rows("b2", 1, "w")); err != nil {
		t.Fatal(err)
	}
	// A row for another batch inside a write is refused whole.
	bad := append(rows("b3", 1, "q"), rows("b4", 1, "q")...)
	if err := s.Write(ctx, "b3", 1, bad); err == nil {
		t.Fatal("mixed-batch write accepted")
	}
	if n := len(read(t, s, "b3")); n != 0 {
		t.Fatalf("refused write left %d rows", n)
	}
}

// Readers that stall (a client that never reads its NDJSON stream) hold no
// connection a chunk's write needs, and a read returns every row in key
// order across its pages.
func TestStalledReadersDoNotBlockWrites(t *testing.T) {
	t.Parallel()
	s, err := sqlite.New(t.Context(), filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	var players []string
	for i := range 700 {
		players = append(players, fmt.Sprintf("p%04d", i))
	}
	if err := s.Write(t.Context(), "big", 1, rows("big", 1, players...)); err != nil {
		t.Fatal(err)
	}
	got := read(t, s, "big")
	if len(got) != 1400 {
		t.Fatalf("read %d rows, want 1400", len(got))
	}
	for i := 1; i < len(got); i++ {
		if got[i-1].PlayerLookup+"/"+got[i-1].SystemID >= got[i].PlayerLookup+"/"+got[i].SystemID {
			t.Fatalf("rows out of key order at %d: %s/%s then %s/%s", i, got[i-1].PlayerLookup, got[i-1].SystemID,
				got[i].PlayerLookup, got[i].SystemID)
		}
	}
	release := make(chan struct{})
	var readers sync.WaitGroup
	for range 8 {
		stalled := make(chan struct{})
		readers.Go(func() {
			_ = s.ReadPredictions(context.Background(), "big", func(*systems.Prediction) error {
				select {
				case <-stalled:
				default:
					close(stalled)
				}
				<-release // a client that does not read
				return nil
			})
		})
		<-stalled
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	err = s.Write(ctx, "other", 1, rows("other", 1, "a", "b"))
	close(release)
	readers.Wait()
	if err != nil {
		t.Fatalf("a write while 8 readers stalled: %v", err)
	}
}
