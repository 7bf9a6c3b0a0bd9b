package firestore_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/predworker/predworker/internal/emulator"
	"github.com/predworker/predworker/internal/indexfile"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/state/firestore"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/league"
	"github.com/predworker/predworker/systems/movingavg"
	sinksqlite "github.com/predworker/predworker/systems/sqlite"
	"github.com/predworker/predworker/worker"
)

// writeLog records the time of every write per document path.
type writeLog struct {
	mu     sync.Mutex
	writes map[string][]time.Time
}

func (w *writeLog) record(doc string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes[doc] = append(w.writes[doc], time.Now())
}

// peak is the most writes to one document within any 1 s window.
func peak(ts []time.Time) int {
	best := 0
	for i := range ts {
		n := 0
		for j := i; j < len(ts) && ts[j].Sub(ts[i]) < time.Second; j++ {
			n++
		}
		best = max(best, n)
	}
	return best
}

// TestWriteBudget runs a real batch of many short chunks through the engine on
// Firestore and counts the writes to each document: the batch document's
// writes do not grow with the number of chunks, its sustained rate stays at
// or below one per second, and each chunk document is written exactly once.
func TestWriteBudget(t *testing.T) {
	t.Parallel()
	emulator.SkipOrFail(t, skip)
	log := &writeLog{writes: map[string][]time.Time{}}
	// OnWrite sees commits that answered; a commit whose answer was lost to
	// the call deadline on a loaded emulator would be missed by the count,
	// so the deadline here is long enough that none is.
	store, err := firestore.New(t.Context(), firestore.Options{Project: emulator.Project,
		Prefix: fmt.Sprintf("budget%d_", seq.Add(1)), OnWrite: log.record, CallTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = store.Close() }()
	sink, err := sinksqlite.New(t.Context(), filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sink.Close() }()
	reg := systems.NewRegistry()
	reg.Register(movingavg.New(), "")
	rules, err := worker.ParseFaults("system=*,kind=latency,latency=250ms,rate=1")
	if err != nil {
		t.Fatal(err)
	}
	e, err := worker.New(worker.Config{LeaseTTL: 10 * time.Second, HeartbeatInterval: time.Second, Faults: rules, Concurrency: 4},
		worker.Deps{Store: store, Features: league.Default(), Sink: sink, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	// 120 players in chunks of 4: 30 chunks of about 250 ms each.
	slate, err := league.Default().Slate(t.Context(), "2025-01-15")
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := e.Submit(t.Context(), "budget", state.Request{GameDate: "2025-01-15", Players: slate[:120], ChunkSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	done, err := e.Run(context.Background(), b.ID, worker.RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if done.Status != state.StatusCompleted || done.DoneChunks != 30 {
		t.Fatalf("batch %s with %d chunks", done.Status, done.DoneChunks)
	}
	var batchDoc string
	chunkDocs := 0
	for doc, ts := range log.writes {
		switch {
		case strings.Contains(doc, "/chunks/"):
			chunkDocs++
			if len(ts) != 1 {
				t.Errorf("chunk document %s written %d times, want once", doc, len(ts))
			}
		case strings.Contains(doc, "_outbox/"):
			if len(ts) != 1 {
				t.Errorf("outbox document %s written %d times, want once", doc, len(ts))
			}
		case batchDoc != "":
			t.Fatalf("writes to two batch documents: %s and %s", batchDoc, doc)
		default:
			batchDoc = doc
		}
	}
	ts := log.writes[batchDoc]
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	// Steady state: the writes between the claim and the finish (renewals),
	// per second of running.
	sustained := float64(len(ts)-3) / took.Seconds()
	t.Logf("batch of %d chunks in %v: %d writes to the batch document (peak %d in 1 s, sustained %.2f/s), %d chunk documents written once each",
		done.DoneChunks, took.Round(time.Millisecond), len(ts), peak(ts), sustained, chunkDocs)
	if chunkDocs != 30 {
		t.Errorf("%d chunk documents, want 30", chunkDocs)
	}
	// create + claim + one renewal per second of running + finish.
	if limit := 3 + int(took.Seconds()) + 1; len(ts) > limit {
		t.Errorf("%d writes to the batch document in %v, want at most %d", len(ts), took, limit)
	}
	if sustained > 1.0 {
		t.Errorf("sustained %.2f writes/s on the batch document, want ≤ 1", sustained)
	}
	// Bursts: create and claim land together, and so may a renewal and the
	// finish; never more than two in a second.
	if p := peak(ts); p > 2 {
		t.Errorf("peak %d writes in one second on the batch document", p)
	}
}

// The shipped index file must cover the composite queries the store runs.
func TestIndexFileCoversQueries(t *testing.T) {
	t.Parallel()
	f := indexfile.Read(t, "../..")
	var have []string
	for _, ix := range f.Indexes {
		var parts []string
		for _, fl := range ix.Fields {
			parts = append(parts, fl.FieldPath+" "+fl.Order)
		}
		have = append(have, ix.CollectionGroup+": "+strings.Join(parts, ", "))
	}
	for _, want := range []string{
		"batches: status ASCENDING, lease_expires ASCENDING",                   // Orphans
		"batches: status ASCENDING, created_at DESCENDING, batch_id ASCENDING", // List by state
	} {
		if !slices.Contains(have, want) {
			t.Errorf("firestore.indexes.json lacks %q (has %q)", want, have)
		}
	}
	ttl := map[string]bool{}
	for _, o := range f.FieldOverrides {
		if o.TTL {
			ttl[o.CollectionGroup+"."+o.FieldPath] = true
		}
	}
	if !ttl["batches.expire_at"] || !ttl["chunks.expire_at"] {
		t.Errorf("TTL policies = %v, want batches.expire_at and chunks.expire_at", ttl)
	}
}

// Latency of the two calls on the hot path, against the emulator:
//
//	go test -run '^$' -bench . ./state/firestore
func BenchmarkClaim(b *testing.B) {
	emulator.SkipOrFail(b, skip)
	s, err := firestore.New(b.Context(), firestore.Options{Project: emulator.Project, Prefix: fmt.Sprintf("bclaim%d_", seq.Add(1))})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	if _, _, err := s.Create(b.Context(), state.Batch{ID: "b", Request: state.Request{GameDate: "2025-01-15", ChunkSize: 1}, Items: []string{"a"}}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := s.Claim(b.Context(), "b", "o", time.Minute, state.ClaimOptions{Force: true}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCheckpoint(b *testing.B) {
	emulator.SkipOrFail(b, skip)
	s, err := firestore.New(b.Context(), firestore.Options{Project: emulator.Project, Prefix: fmt.Sprintf("bcp%d_", seq.Add(1))})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	items := make([]string, b.N+1)
	for i := range items {
		items[i] = fmt.Sprint(i)
	}
	if _, _, err := s.Create(b.Context(), state.Batch{ID: "b", Request: state.Request{GameDate: "2025-01-15", ChunkSize: 1}, Items: items}); err != nil {
		b.Fatal(err)
	}
	cb, err := s.Claim(b.Context(), "b", "o", time.Hour, state.ClaimOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		if _, err := s.Checkpoint(b.Context(), "b", cb.Lease, state.Progress{DoneChunks: i + 1, DoneItems: i + 1}, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
}
