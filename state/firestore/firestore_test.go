package firestore_test

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/predworker/predworker/internal/emulator"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/state/firestore"
	"github.com/predworker/predworker/state/statetest"
)

var (
	emu  *emulator.Firestore
	seq  atomic.Int64
	skip string
)

func TestMain(m *testing.M) {
	var err error
	emu, err = emulator.StartFirestore()
	if err != nil {
		skip = err.Error()
	}
	code := m.Run()
	if emu != nil {
		emu.Stop()
	}
	os.Exit(code)
}

// newStore returns a store on a fresh collection prefix of the shared emulator.
func newStore(t *testing.T, clock clockwork.Clock) state.Store {
	t.Helper()
	emulator.SkipOrFail(t, skip)
	// The conformance suite moves time with its fake clock: the store's
	// lease time follows it instead of the emulator's clock. The emulator
	// serializes contending transactions: 40 concurrent claims on a loaded
	// two-core machine can outlast production's 10 s call deadline, which
	// is not what the suite checks.
	s, err := firestore.New(t.Context(), firestore.Options{Project: emulator.Project,
		Prefix: fmt.Sprintf("t%d_", seq.Add(1)), Clock: clock, CallTimeout: 30 * time.Second,
		ServerTime: func(time.Time) time.Time { return clock.Now() }})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	t.Parallel()
	statetest.Run(t, newStore)
}

// Leases are measured on the Firestore server's clock, not the claimant's:
// an instance whose clock runs an hour ahead cannot take over a lease that
// is live by the server's time, and sees its own lease expire on the
// server's time too.
func TestLeaseTimeIsTheServers(t *testing.T) {
	t.Parallel()
	emulator.SkipOrFail(t, skip)
	prefix := fmt.Sprintf("skew%d_", seq.Add(1))
	open := func(clock clockwork.Clock) state.Store {
		s, err := firestore.New(t.Context(), firestore.Options{Project: emulator.Project, Prefix: prefix, Clock: clock})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	honest := open(nil)
	ahead := open(clockwork.NewFakeClockAt(time.Now().Add(time.Hour))) // an hour fast, and stopped
	ctx := t.Context()
	if _, _, err := honest.Create(ctx, state.Batch{ID: "skew", Request: state.Request{GameDate: "2025-01-15", ChunkSize: 1},
		Items: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	held, err := honest.Claim(ctx, "skew", "honest", 30*time.Second, state.ClaimOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ahead.Claim(ctx, "skew", "ahead", 30*time.Second, state.ClaimOptions{}); !errors.Is(err, state.ErrLeaseHeld) {
		t.Fatalf("a claimant an hour fast took over a live lease: %v", err)
	}
	if orphans, err := ahead.Orphans(ctx, 10); err != nil || len(orphans) != 0 {
		t.Fatalf("a claimant an hour fast sees orphans %v (%v)", orphans, err)
	}
	if d := time.Until(held.Lease.ExpiresAt); d < 20*time.Second || d > 40*time.Second {
		t.Fatalf("lease expires in %v, want about 30s of server time", d)
	}
}
