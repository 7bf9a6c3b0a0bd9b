package firestore_test

import (
	"fmt"
	"os"
	"sync/atomic"
	"testing"

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
	s, err := firestore.New(t.Context(), firestore.Options{Project: emulator.Project,
		Prefix: fmt.Sprintf("t%d_", seq.Add(1)), Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	t.Parallel()
	statetest.Run(t, newStore)
}
