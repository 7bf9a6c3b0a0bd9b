package sqlite_test

import (
	"path/filepath"
	"testing"

	"github.com/predworker/predworker/events/eventstest"
	"github.com/predworker/predworker/events/sqlite"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	s, err := sqlite.New(t.Context(), filepath.Join(t.TempDir(), "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	eventstest.Run(t, s)
}
