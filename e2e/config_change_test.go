package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/predworker/predworker/state"
)

// TestDeployRemovingASystem: a batch is created and half run by a worker
// that runs every system; the worker is killed and the next deploy runs
// fewer systems (SYSTEMS changed). The restarted worker must not crash (no
// panic in a background goroutine, no crash loop): it fails the batch at
// claim with the missing systems named, and keeps serving.
func TestDeployRemovingASystem(t *testing.T) {
	t.Parallel()
	c := newCluster(t, "sqlite", fastLeases("sqlite")...)
	a := c.start()
	submit(t, a, "removed", "2025-01-15")
	waitUntil(t, 90*time.Second, "a committed chunk", func() bool {
		st, err := status(t, a, "removed")
		return err == nil && st.DoneChunks >= 1
	})
	a.signal(syscall.SIGKILL)
	<-a.exited
	c.env = append(c.env, "SYSTEMS=moving_average")
	b := c.start()
	waitUntil(t, 30*time.Second, "the batch to fail", func() bool {
		st, err := status(t, b, "removed")
		return err == nil && st.State == state.StatusFailed
	})
	st, err := status(t, b, "removed")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"zone_matchup_v1", "similarity_balanced_v1", "xgboost_v1", "ensemble_v1"} {
		if !strings.Contains(st.Error, id) {
			t.Errorf("failure %q does not name the missing system %s", st.Error, id)
		}
	}
	// Still alive and serving, after a few more sweeps.
	time.Sleep(2 * time.Second)
	select {
	case <-b.exited:
		t.Fatalf("the worker exited: %v", b.exitErr)
	default:
	}
	if code, _, err := request(t, "GET", b.url("/health"), ""); err != nil || code != 200 {
		t.Fatalf("health after the failed claim: %d %v", code, err)
	}
}
