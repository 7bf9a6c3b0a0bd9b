// Package eventstest is the conformance suite every events.DeadLetters store
// must pass.
package eventstest

import (
	"bytes"
	"errors"
	"sync"
	"testing"

	"github.com/predworker/predworker/events"
)

// Run exercises a fresh, empty store.
func Run(t *testing.T, s events.DeadLetters) {
	t.Helper()
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
	if err := s.MarkPublished(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(ctx, d.ID); err != nil || got.PublishedAt == nil {
		t.Fatalf("after MarkPublished: %+v, %v", got, err)
	}
	// The largest dead letter a push can produce fits (a 1 MiB body is cut
	// to MaxRaw, with its size and hash kept).
	var big events.DeadLetter
	big.ID, big.Class, big.Error, big.MessageID = events.DeadLetterID("big", nil), "validation", "too big", "big"
	big.SetRaw(bytes.Repeat([]byte("x"), 1<<20))
	if _, err := s.Put(ctx, big); err != nil {
		t.Fatalf("Put of a dead letter with a 1 MiB body: %v", err)
	}
	if got, err := s.Get(ctx, big.ID); err != nil || len(got.Raw) != events.MaxRaw || got.RawSize != 1<<20 ||
		got.RawSHA256 != big.RawSHA256 || !got.Truncated() {
		t.Fatalf("big dead letter read back: %d bytes of %d, sha %q, %v", len(got.Raw), got.RawSize, got.RawSHA256, err)
	}
	if err := s.MarkPublished(ctx, big.ID); err != nil { // published, so List below sees two of interest
		t.Fatal(err)
	}
	// Newest first.
	d2 := events.DeadLetter{ID: events.DeadLetterID("m3", nil), Class: "internal", Error: "boom", MessageID: "m3", Raw: []byte("x")}
	if _, err := s.Put(ctx, d2); err != nil {
		t.Fatal(err)
	}
	if list, err := s.List(ctx, 10); err != nil || len(list) != 3 || list[0].ID != d2.ID {
		t.Fatalf("List after a second dead letter = %v, %v", list, err)
	}
}
