package sqlite_test

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/predworker/predworker/events"
	"github.com/predworker/predworker/events/sqlite"
)

func TestDeadLettersAndAttempts(t *testing.T) {
	t.Parallel()
	s, err := sqlite.New(t.Context(), filepath.Join(t.TempDir(), "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	ctx := t.Context()
	raw := []byte(`{"message": {}}`)
	d := events.DeadLetter{ID: events.DeadLetterID("m1", raw), Class: "validation", Error: "bad", MessageID: "m1", Raw: raw}
	for i := range 3 {
		created, err := s.Put(ctx, d)
		if err != nil || created != (i == 0) {
			t.Fatalf("Put #%d = %v, %v; want created only the first time", i+1, created, err)
		}
	}
	if other := events.DeadLetterID("", raw); other == d.ID || other != events.DeadLetterID("", raw) {
		t.Fatal("ids by body must differ from ids by message and be stable")
	}
	list, err := s.List(ctx, 10)
	if err != nil || len(list) != 1 || string(list[0].Raw) != string(raw) || list[0].RetriedAt != nil {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if err := s.MarkRetried(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, d.ID)
	if err != nil || got.Retries != 1 || got.RetriedAt == nil {
		t.Fatalf("after retry: %+v, %v", got, err)
	}
	if _, err := s.Get(ctx, "nope"); !errors.Is(err, events.ErrNotFound) {
		t.Fatalf("Get(unknown) = %v", err)
	}
	if err := s.MarkRetried(ctx, "nope"); !errors.Is(err, events.ErrNotFound) {
		t.Fatalf("MarkRetried(unknown) = %v", err)
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			if _, err := s.Attempt(ctx, "m2"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n, err := s.Attempt(ctx, "m2"); err != nil || n != 11 {
		t.Fatalf("11th attempt counted as %d (%v)", n, err)
	}
}
