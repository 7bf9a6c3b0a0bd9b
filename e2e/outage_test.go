package e2e

import (
	"testing"
	"time"

	"github.com/predworker/predworker/api"
	"github.com/predworker/predworker/state"
)

// TestFirestoreOutage freezes the Firestore emulator mid-batch for several
// seconds: the worker reports not ready while it cannot reach the store, does
// not fail the batch, and completes it once the store is back, with no row
// lost or duplicated. It does not run in parallel: it freezes the emulator
// every Firestore test shares.
func TestFirestoreOutage(t *testing.T) {
	c := newCluster(t, "firestore", "CHUNK_SIZE=20", "LEASE_TTL=10s", "HEARTBEAT_INTERVAL=1s", "SWEEP_INTERVAL=500ms",
		"FAULTS=system=*,kind=latency,latency=40ms,rate=1", "CONCURRENCY=8")
	p := c.start()
	submit(t, p, "outage", "2025-01-15")
	waitUntil(t, 90*time.Second, "two chunks committed", func() bool {
		st, err := status(t, p, "outage")
		return err == nil && st.DoneChunks >= 2
	})
	if err := firestoreEmu.Pause(); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	resumed := false
	defer func() {
		if !resumed {
			_ = firestoreEmu.Resume()
		}
	}()
	sawNotReady := false
	for time.Since(paused) < 6*time.Second {
		code, _, err := request(t, "GET", p.url("/ready"), "")
		if err == nil && code == 503 {
			sawNotReady = true
		}
		if code, _, err := request(t, "GET", p.url("/health"), ""); err != nil || code != 200 {
			t.Errorf("/health during the outage: %d %v", code, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err := firestoreEmu.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	outage := time.Since(paused)
	if !sawNotReady {
		t.Error("/ready never answered 503 while the store was unreachable")
	}
	waitUntil(t, 30*time.Second, "ready again", func() bool {
		code, _, err := request(t, "GET", p.url("/ready"), "")
		return err == nil && code == 200
	})
	var st api.Status
	waitUntil(t, 3*time.Minute, "completion after the outage", func() bool {
		var err error
		st, err = status(t, p, "outage")
		return err == nil && st.State.Finished()
	})
	if st.State != state.StatusCompleted {
		t.Fatalf("batch ended %s (%s) after the outage", st.State, st.Error)
	}
	checkRows(t, p, st)
	retries := 0
	for _, e := range p.eventsSnapshot() {
		if e.Message == "transient error; retrying" || e.Message == "lease renewal failed; retrying" {
			retries++
		}
	}
	t.Logf("outage of %v: /ready went 503, %d retry log lines, batch completed with %d rows", outage.Round(time.Millisecond), retries, st.Predictions)
}
