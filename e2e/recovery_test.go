package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/predworker/predworker/api"
	"github.com/predworker/predworker/state"
)

// fastLeases makes leases, heartbeats and sweeps short, and system calls slow
// enough (FAULTS latency) that a batch takes seconds. Firestore needs
// heartbeats of at least 1s (its write budget), so its leases are 3s.
func fastLeases(backend string) []string {
	env := []string{"CHUNK_SIZE=20", "SWEEP_INTERVAL=500ms", "FAULTS=system=*,kind=latency,latency=40ms,rate=1", "CONCURRENCY=8"}
	if backend == "firestore" {
		return append(env, "LEASE_TTL=3s", "HEARTBEAT_INTERVAL=1s")
	}
	return append(env, "LEASE_TTL=2s", "HEARTBEAT_INTERVAL=500ms")
}

func submit(t *testing.T, p *proc, id, date string) {
	t.Helper()
	code, body, err := request(t, "POST", p.url("/v1/batches"), fmt.Sprintf(`{"batch_id": %q, "game_date": %q}`, id, date))
	if err != nil || (code != 202 && code != 200) {
		t.Fatalf("submit %s: %d %s %v", id, code, body, err)
	}
}

// TestCrashRecovery SIGKILLs the worker at random moments, restarting it each
// time, and checks that every batch completes with exactly one row per
// (player, system) and that no committed chunk is ever run again.
func TestCrashRecovery(t *testing.T) {
	t.Parallel()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) { t.Parallel(); testCrashRecovery(t, backend) })
	}
}

func testCrashRecovery(t *testing.T, backend string) {
	kills := 20
	if v := os.Getenv("CRASH_KILLS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("CRASH_KILLS=%q", v)
		}
		kills = n
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("kill schedule seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))

	env := append(fastLeases(backend), "FAULTS=system=*,kind=latency,latency=80ms,rate=1")
	c := newCluster(t, backend, env...)
	// On the embedded store a restarted process replaces the dead owner's
	// lease at once; elsewhere it waits for expiry (LEASE_TTL 3s), so the
	// kills come further apart there for the batches to make progress.
	minGap, spread := 150, 900
	if backend != "sqlite" {
		minGap, spread = 3300, 1500
	}
	p := c.start()
	batches := map[string]string{"crash-a": "2025-01-15", "crash-b": "2025-01-22", "crash-c": "2025-02-05", "crash-d": "2025-03-12"}
	for id, date := range batches {
		submit(t, p, id, date)
	}
	start := time.Now()
	running := map[string]int{} // batch → kills that hit it while running
	for k := range kills {
		time.Sleep(time.Duration(minGap+rng.IntN(spread)) * time.Millisecond)
		for id := range batches {
			if st, err := status(t, p, id); err == nil && st.State == state.StatusRunning {
				running[id]++
			}
		}
		p.signal(syscall.SIGKILL)
		<-p.exited
		t.Logf("kill %d at %v", k+1, time.Since(start).Round(time.Millisecond))
		p = c.start()
	}
	hits := 0
	for _, n := range running {
		hits += n
	}
	if hits < kills {
		t.Errorf("only %d batch-kills hit a running batch over %d kills: the batches were too short to test much", hits, kills)
	}
	killedAt := time.Now()
	final := map[string]int{}
	waitUntil(t, 3*time.Minute, "every batch completed", func() bool {
		for id := range batches {
			st, err := status(t, p, id)
			if err != nil || st.State != state.StatusCompleted {
				return false
			}
			final[id] = st.TotalChunks
		}
		return true
	})
	t.Logf("all batches completed %v after the last kill", time.Since(killedAt).Round(time.Millisecond))

	for id := range batches {
		st, err := status(t, p, id)
		if err != nil {
			t.Fatal(err)
		}
		checkRows(t, p, st)
	}

	// Rework: a chunk once committed is never started again, and each batch
	// redoes at most one chunk per kill that hit it while running.
	type key struct {
		batch string
		chunk int
	}
	committed := map[key]bool{}
	starts := map[key]int{}
	redone := map[string]int{}
	lost := map[string]int{} // runs that stopped on a lost lease, not a kill
	for _, e := range c.allEvents() {
		if e.Event == "lease_lost" {
			lost[e.BatchID]++
			t.Logf("instance %d lost the lease of %s (epoch %d): %s", e.Instance, e.BatchID, e.Epoch, e.Error)
		}
		if e.Chunk == nil {
			continue
		}
		k := key{e.BatchID, *e.Chunk}
		switch e.Event {
		case "chunk_started":
			if committed[k] {
				t.Errorf("%s chunk %d started again (instance %d) after it was committed", k.batch, k.chunk, e.Instance)
			}
			starts[k]++
			if starts[k] > 1 {
				redone[k.batch]++
			}
		case "chunk_committed":
			committed[k] = true
		}
	}
	total := 0
	for id := range batches {
		for ch := range final[id] {
			if starts[key{id, ch}] == 0 {
				t.Errorf("%s chunk %d never started", id, ch)
			}
		}
		// Each interruption (a kill, or a run stopping itself because it
		// could not keep its lease) may cost the chunk in flight, no more.
		if redone[id] > running[id]+lost[id] {
			t.Errorf("%s redid %d chunks but was interrupted %d times (%d kills, %d lost leases)",
				id, redone[id], running[id]+lost[id], running[id], lost[id])
		}
		total += redone[id]
	}
	t.Logf("kills: %d; chunks redone per batch %v (kills while running %v, lost leases %v); total redone %d",
		kills, redone, running, lost, total)
}

// TestSIGTERMDrains sends SIGTERM mid-batch with a long lease: the process
// exits 0 within 8 s having released the lease, and a new process resumes
// the batch at once rather than after the TTL.
func TestSIGTERMDrains(t *testing.T) {
	t.Parallel()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) { t.Parallel(); testSIGTERMDrains(t, backend) })
	}
}

func testSIGTERMDrains(t *testing.T, backend string) {
	c := newCluster(t, backend, "CHUNK_SIZE=20", "LEASE_TTL=60s", "HEARTBEAT_INTERVAL=20s", "SWEEP_INTERVAL=1s",
		"FAULTS=system=*,kind=latency,latency=40ms,rate=1", "CONCURRENCY=8")
	p := c.start()
	submit(t, p, "term", "2025-01-15")
	waitUntil(t, 90*time.Second, "two chunks committed", func() bool {
		st, err := status(t, p, "term")
		return err == nil && st.DoneChunks >= 2
	})
	sent := time.Now()
	p.signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("worker still running 10s after SIGTERM")
	}
	took := time.Since(sent)
	if p.exitErr != nil {
		t.Fatalf("exit after SIGTERM: %v, want status 0", p.exitErr)
	}
	if took > 8*time.Second {
		t.Fatalf("exit took %v, want ≤ 8s", took)
	}
	// Read the store directly: the lease must be released, not left to expire.
	b, err := c.openStore().Get(t.Context(), "term")
	if err != nil {
		t.Fatal(err)
	}
	if b.Lease.Owner != "" || b.Status != state.StatusRunning {
		t.Fatalf("after SIGTERM: owner %q state %s; want the lease released", b.Lease.Owner, b.Status)
	}
	var drained bool
	for _, e := range p.eventsSnapshot() {
		drained = drained || e.Event == "drain_completed"
	}
	if !drained {
		t.Error("no drain_completed event")
	}
	restarted := time.Now()
	q := c.start()
	// Well under the 60 s lease: only a released lease allows this.
	waitUntil(t, 15*time.Second, "the new process to resume", func() bool {
		st, err := status(t, q, "term")
		return err == nil && st.Lease.Owner == q.owner || st.State == state.StatusCompleted
	})
	t.Logf("SIGTERM to exit %v (done chunks %d); resumed %v after restart", took.Round(time.Millisecond),
		b.DoneChunks, time.Since(restarted).Round(time.Millisecond))
	waitUntil(t, 3*time.Minute, "completion", func() bool {
		st, err := status(t, q, "term")
		return err == nil && st.State == state.StatusCompleted
	})
	st, err := status(t, q, "term")
	if err != nil {
		t.Fatal(err)
	}
	checkRows(t, q, st)
}

// TestSplitBrain pauses the owner past its lease so a second process on the
// same data directory takes over, then lets it continue: the stale owner
// commits nothing, logs lease_lost, and the output has no duplicates.
func TestSplitBrain(t *testing.T) {
	t.Parallel()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) { t.Parallel(); testSplitBrain(t, backend) })
	}
}

func testSplitBrain(t *testing.T, backend string) {
	c := newCluster(t, backend, fastLeases(backend)...)
	a := c.start()
	submit(t, a, "split", "2025-01-15")
	waitUntil(t, 90*time.Second, "A to commit a chunk", func() bool {
		st, err := status(t, a, "split")
		return err == nil && st.DoneChunks >= 1
	})
	b := c.start()
	a.signal(syscall.SIGSTOP)
	stoppedAt := time.Now()
	var takenOver api.Status
	waitUntil(t, 45*time.Second, "B to take over", func() bool {
		st, err := status(t, b, "split")
		takenOver = st
		return err == nil && st.Lease.Owner == b.owner
	})
	t.Logf("B took over after %v at epoch %d, chunk %d", time.Since(stoppedAt).Round(time.Millisecond),
		takenOver.Lease.Epoch, takenOver.DoneChunks)
	mark := len(a.eventsSnapshot())
	staleEpoch := takenOver.Lease.Epoch - 1 // the epoch A held when it was paused
	a.signal(syscall.SIGCONT)
	waitUntil(t, 3*time.Minute, "completion", func() bool {
		st, err := status(t, b, "split")
		return err == nil && st.State == state.StatusCompleted
	})
	lost := false
	for _, e := range a.eventsSnapshot()[mark:] {
		if e.Event == "lease_lost" && e.Epoch == staleEpoch {
			lost = true
		}
		// A may later win the batch back with a new epoch through its own
		// sweeper (a legitimate claim); under the stale epoch it commits nothing.
		if (e.Event == "chunk_committed" || e.Event == "batch_completed") && e.Epoch <= staleEpoch {
			t.Errorf("stale owner committed under epoch %d after resuming: %+v", e.Epoch, e)
		}
	}
	if !lost {
		t.Error("stale owner did not log lease_lost")
	}
	st, err := status(t, b, "split")
	if err != nil {
		t.Fatal(err)
	}
	checkRows(t, b, st)
}
