package firestore_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/predworker/predworker/events/eventstest"
	"github.com/predworker/predworker/events/firestore"
	"github.com/predworker/predworker/internal/emulator"
)

var skip string

func TestMain(m *testing.M) {
	emu, err := emulator.StartFirestore()
	if err != nil {
		skip = err.Error()
	}
	code := m.Run()
	if emu != nil {
		emu.Stop()
	}
	os.Exit(code)
}

func TestConformance(t *testing.T) {
	t.Parallel()
	emulator.SkipOrFail(t, skip)
	s, err := firestore.New(t.Context(), emulator.Project, "", fmt.Sprintf("ev%d_", time.Now().UnixNano()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	eventstest.Run(t, s)
}
