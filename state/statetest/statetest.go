// Package statetest is the conformance suite every state.Store must pass.
// A backend's test calls Run with a constructor that returns a fresh, empty
// store reading time from the given fake clock.
package statetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/predworker/predworker/state"
)

// NewStore returns a fresh, empty store whose notion of "now" is clock.
type NewStore func(t *testing.T, clock clockwork.Clock) state.Store

const ttl = 30 * time.Second

func batch(id string, items ...string) state.Batch {
	return state.Batch{
		ID:      id,
		Request: state.Request{GameDate: "2025-01-15", ChunkSize: 2},
		Items:   items,
	}
}

func setup(t *testing.T, newStore NewStore) (state.Store, *clockwork.FakeClock, context.Context) {
	t.Helper()
	clock := clockwork.NewFakeClockAt(time.Date(2025, 1, 15, 12, 0, 0, 0, time.UTC))
	s := newStore(t, clock)
	t.Cleanup(func() { _ = s.Close() })
	return s, clock, t.Context()
}

func mustCreate(t *testing.T, s state.Store, b state.Batch) state.Batch {
	t.Helper()
	got, created, err := s.Create(t.Context(), b)
	if err != nil || !created {
		t.Fatalf("Create(%s) = created %v, err %v; want created", b.ID, created, err)
	}
	return got
}

func mustClaim(t *testing.T, s state.Store, id, owner string) state.Batch {
	t.Helper()
	b, err := s.Claim(t.Context(), id, owner, ttl, state.ClaimOptions{})
	if err != nil {
		t.Fatalf("Claim(%s, %s): %v", id, owner, err)
	}
	return b
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: err = %v, want %v", what, err, want)
	}
}

// Run exercises newStore's stores against the state.Store contract.
func Run(t *testing.T, newStore NewStore) {
	t.Run("CreateIsIdempotent", func(t *testing.T) {
		t.Parallel()
		s, _, ctx := setup(t, newStore)
		b := mustCreate(t, s, batch("b1", "a", "b", "c"))
		if b.Status != state.StatusPending || b.Attempt != 0 || b.Lease.Owner != "" {
			t.Fatalf("new batch = %+v, want pending, unleased", b)
		}
		if len(b.Items) != 3 || b.TotalChunks() != 2 || b.Chunk(1)[0] != "c" {
			t.Fatalf("items/chunks = %v/%d", b.Items, b.TotalChunks())
		}
		again := batch("b1", "a", "b", "c")
		again.Request.CorrelationID = "other" // not part of the work
		got, created, err := s.Create(ctx, again)
		if err != nil || created || got.ID != "b1" {
			t.Fatalf("second Create = %v, %v; want existing, not created", created, err)
		}
		diff := batch("b1", "a")
		diff.Request.GameDate = "2025-01-16"
		_, created, err = s.Create(ctx, diff)
		wantErr(t, "Create with a different request", err, state.ErrConflict)
		if created {
			t.Fatal("conflicting Create reported created")
		}
	})

	t.Run("GetUnknown", func(t *testing.T) {
		t.Parallel()
		s, _, ctx := setup(t, newStore)
		_, err := s.Get(ctx, "nope")
		wantErr(t, "Get(unknown)", err, state.ErrNotFound)
		_, err = s.Claim(ctx, "nope", "o", ttl, state.ClaimOptions{})
		wantErr(t, "Claim(unknown)", err, state.ErrNotFound)
	})

	t.Run("ClaimBumpsEpochAndHoldsLease", func(t *testing.T) {
		t.Parallel()
		s, clock, ctx := setup(t, newStore)
		mustCreate(t, s, batch("b1", "a"))
		b := mustClaim(t, s, "b1", "o1")
		if b.Status != state.StatusRunning || b.Lease.Owner != "o1" || b.Lease.Epoch != 1 || b.Attempt != 1 {
			t.Fatalf("claimed = %+v", b)
		}
		if !b.Lease.ExpiresAt.Equal(clock.Now().Add(ttl)) {
			t.Fatalf("expires %v, want %v", b.Lease.ExpiresAt, clock.Now().Add(ttl))
		}
		got, err := s.Claim(ctx, "b1", "o2", ttl, state.ClaimOptions{})
		wantErr(t, "Claim of a live lease", err, state.ErrLeaseHeld)
		_, err = s.Claim(ctx, "b1", "o1", ttl, state.ClaimOptions{})
		wantErr(t, "Claim of a live lease by its own holder", err, state.ErrLeaseHeld)
		if got.Lease.Owner != "o1" {
			t.Fatalf("ErrLeaseHeld batch shows owner %q, want o1", got.Lease.Owner)
		}
		// Expiry frees the lease for another owner, with a new epoch.
		clock.Advance(ttl + time.Second)
		b2 := mustClaim(t, s, "b1", "o2")
		if b2.Lease.Epoch != 2 || b2.Attempt != 2 {
			t.Fatalf("takeover = %+v, want epoch 2 attempt 2", b2.Lease)
		}
	})

	t.Run("StaleEpochIsRefused", func(t *testing.T) {
		t.Parallel()
		s, clock, ctx := setup(t, newStore)
		mustCreate(t, s, batch("b1", "a", "b", "c"))
		old := mustClaim(t, s, "b1", "o1").Lease
		clock.Advance(ttl + time.Second)
		cur := mustClaim(t, s, "b1", "o2").Lease

		_, err := s.Renew(ctx, "b1", old, ttl)
		wantErr(t, "Renew by stale owner", err, state.ErrLeaseLost)
		err = checkpoint(s, ctx, "b1", old, state.Progress{DoneChunks: 1, DoneItems: 2}, ttl)
		wantErr(t, "Checkpoint by stale owner", err, state.ErrLeaseLost)
		wantErr(t, "Release by stale owner", s.Release(ctx, "b1", old), state.ErrLeaseLost)
		wantErr(t, "Finish by stale owner", s.Finish(ctx, "b1", old, state.StatusCompleted, ""), state.ErrLeaseLost)
		// Same owner name with an older epoch is stale too.
		sameName := cur
		sameName.Epoch--
		err = checkpoint(s, ctx, "b1", sameName, state.Progress{DoneChunks: 1}, ttl)
		wantErr(t, "Checkpoint with old epoch", err, state.ErrLeaseLost)

		b, err := s.Get(ctx, "b1")
		if err != nil {
			t.Fatal(err)
		}
		if b.DoneChunks != 0 || b.Status != state.StatusRunning || b.Lease.Owner != "o2" {
			t.Fatalf("stale writes changed the batch: %+v", b)
		}
		if err := checkpoint(s, ctx, "b1", cur, state.Progress{DoneChunks: 1, DoneItems: 2, Predictions: 4}, ttl); err != nil {
			t.Fatalf("current owner checkpoint: %v", err)
		}
	})

	t.Run("CheckpointAdvancesOneChunk", func(t *testing.T) {
		t.Parallel()
		s, clock, ctx := setup(t, newStore)
		mustCreate(t, s, batch("b1", "a", "b", "c", "d", "e"))
		l := mustClaim(t, s, "b1", "o1").Lease
		clock.Advance(time.Second)
		p := state.Progress{DoneChunks: 1, DoneItems: 2, Predictions: 4, Fallbacks: 1, SinkToken: "stream-0"}
		after, err := s.Checkpoint(ctx, "b1", l, p, ttl)
		if err != nil {
			t.Fatal(err)
		}
		// A replay of the same checkpoint, or a skip, is refused.
		wantErr(t, "replayed checkpoint", checkpoint(s, ctx, "b1", l, p, ttl), state.ErrLeaseLost)
		wantErr(t, "skipping checkpoint", checkpoint(s, ctx, "b1", l, state.Progress{DoneChunks: 3}, ttl), state.ErrLeaseLost)
		b, err := s.Get(ctx, "b1")
		if err != nil {
			t.Fatal(err)
		}
		if b.Progress != p {
			t.Fatalf("progress = %+v, want %+v", b.Progress, p)
		}
		// The checkpoint may extend the lease (a store with a write budget
		// may skip it); either way it reports the lease as stored.
		if !b.Lease.ExpiresAt.Equal(after.ExpiresAt) || after.Epoch != l.Epoch || after.Owner != l.Owner {
			t.Fatalf("checkpoint returned lease %+v, stored %+v", after, b.Lease)
		}
		if b.Lease.ExpiresAt.Before(l.ExpiresAt) || b.Lease.ExpiresAt.After(clock.Now().Add(ttl)) {
			t.Fatalf("lease expiry %v after checkpoint, want between %v and %v", b.Lease.ExpiresAt, l.ExpiresAt, clock.Now().Add(ttl))
		}
	})

	t.Run("RenewExtends", func(t *testing.T) {
		t.Parallel()
		s, clock, ctx := setup(t, newStore)
		mustCreate(t, s, batch("b1", "a"))
		l := mustClaim(t, s, "b1", "o1").Lease
		clock.Advance(20 * time.Second)
		l2, err := s.Renew(ctx, "b1", l, ttl)
		if err != nil {
			t.Fatal(err)
		}
		if !l2.ExpiresAt.Equal(clock.Now().Add(ttl)) || l2.Epoch != l.Epoch {
			t.Fatalf("renewed = %+v", l2)
		}
		clock.Advance(20 * time.Second) // past the first expiry, inside the renewed one
		_, err = s.Claim(ctx, "b1", "o2", ttl, state.ClaimOptions{})
		wantErr(t, "Claim after renewal", err, state.ErrLeaseHeld)
	})

	t.Run("ReleaseMakesOrphanAtOnce", func(t *testing.T) {
		t.Parallel()
		s, _, ctx := setup(t, newStore)
		mustCreate(t, s, batch("b1", "a"))
		mustCreate(t, s, batch("b2", "a"))
		l := mustClaim(t, s, "b1", "o1").Lease
		mustClaim(t, s, "b2", "o1")
		if err := checkpoint(s, ctx, "b1", l, state.Progress{DoneChunks: 1, DoneItems: 1}, ttl); err != nil {
			t.Fatal(err)
		}
		if err := s.Release(ctx, "b1", l); err != nil {
			t.Fatal(err)
		}
		orphans, err := s.Orphans(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(orphans) != 1 || orphans[0].ID != "b1" {
			t.Fatalf("orphans = %v, want [b1]", ids(orphans))
		}
		b := mustClaim(t, s, "b1", "o2")
		if b.DoneChunks != 1 || b.Lease.Epoch != 2 {
			t.Fatalf("resumed batch = %+v, want progress kept and epoch 2", b)
		}
	})

	t.Run("OrphansAfterExpiry", func(t *testing.T) {
		t.Parallel()
		s, clock, ctx := setup(t, newStore)
		mustCreate(t, s, batch("pending", "a"))
		mustCreate(t, s, batch("running", "a"))
		mustCreate(t, s, batch("done", "a"))
		mustClaim(t, s, "running", "o1")
		l := mustClaim(t, s, "done", "o1").Lease
		if err := s.Finish(ctx, "done", l, state.StatusCompleted, ""); err != nil {
			t.Fatal(err)
		}
		orphans, err := s.Orphans(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(orphans); got != "[pending]" {
			t.Fatalf("orphans before expiry = %s, want [pending]", got)
		}
		clock.Advance(ttl)
		orphans, err = s.Orphans(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(orphans); got != "[pending running]" && got != "[running pending]" {
			t.Fatalf("orphans after expiry = %s", got)
		}
	})

	t.Run("FinishIsFinal", func(t *testing.T) {
		t.Parallel()
		s, clock, ctx := setup(t, newStore)
		mustCreate(t, s, batch("ok", "a"))
		mustCreate(t, s, batch("bad", "a"))
		l := mustClaim(t, s, "ok", "o1").Lease
		clock.Advance(time.Second)
		if err := s.Finish(ctx, "ok", l, state.StatusCompleted, ""); err != nil {
			t.Fatal(err)
		}
		b, err := s.Get(ctx, "ok")
		if err != nil {
			t.Fatal(err)
		}
		if b.Status != state.StatusCompleted || b.Lease.Owner != "" || !b.CompletedAt.Equal(clock.Now()) {
			t.Fatalf("finished = %+v", b)
		}
		_, err = s.Claim(ctx, "ok", "o2", ttl, state.ClaimOptions{Force: true, Reopen: true})
		wantErr(t, "Claim of completed", err, state.ErrFinished)

		l = mustClaim(t, s, "bad", "o1").Lease
		if err := s.Finish(ctx, "bad", l, state.StatusFailed, "boom"); err != nil {
			t.Fatal(err)
		}
		_, err = s.Claim(ctx, "bad", "o2", ttl, state.ClaimOptions{})
		wantErr(t, "Claim of failed", err, state.ErrFinished)
		b, err = s.Claim(ctx, "bad", "o2", ttl, state.ClaimOptions{Reopen: true})
		if err != nil || b.Status != state.StatusRunning || b.Error != "" {
			t.Fatalf("reopen failed batch = %+v, %v", b, err)
		}
	})

	t.Run("FinishWritesOutboxEvent", func(t *testing.T) {
		t.Parallel()
		s, clock, ctx := setup(t, newStore)
		mustCreate(t, s, batch("ok", "a", "b"))
		mustCreate(t, s, batch("bad", "a"))
		l := mustClaim(t, s, "ok", "o1").Lease
		if err := checkpoint(s, ctx, "ok", l, state.Progress{DoneChunks: 1, DoneItems: 2, Predictions: 3, Fallbacks: 1, FailedItems: 1}, ttl); err != nil {
			t.Fatal(err)
		}
		clock.Advance(3 * time.Second)
		if err := s.Finish(ctx, "ok", l, state.StatusCompleted, ""); err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Second)
		lb := mustClaim(t, s, "bad", "o1").Lease
		if err := s.Finish(ctx, "bad", lb, state.StatusFailed, "boom"); err != nil {
			t.Fatal(err)
		}
		evs, err := s.Outbox(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 2 {
			t.Fatalf("outbox has %d events, want 2", len(evs))
		}
		ok, bad := evs[0], evs[1]
		if ok.ID != "ok:batch_completed:1" || ok.Type != "batch_completed" || ok.Predictions != 3 || ok.Fallbacks != 1 ||
			ok.FailedItems != 1 || ok.DoneItems != 2 || ok.TotalItems != 2 || ok.DurationMS != 3000 || ok.GameDate != "2025-01-15" {
			t.Errorf("completed event = %+v", ok)
		}
		if bad.Type != "batch_failed" || bad.Error != "boom" || bad.BatchID != "bad" {
			t.Errorf("failed event = %+v", bad)
		}
		if err := s.MarkSent(ctx, ok.ID, ""); err != nil {
			t.Fatal(err)
		}
		evs, err = s.Outbox(ctx, 10)
		if err != nil || len(evs) != 1 || evs[0].ID != bad.ID {
			t.Fatalf("after MarkSent the outbox holds %+v (%v), want only %s", evs, err, bad.ID)
		}
		// Refused for good by the publisher: out of the outbox too.
		if err := s.MarkSent(ctx, bad.ID, "topic not found"); err != nil {
			t.Fatal(err)
		}
		if evs, err := s.Outbox(ctx, 10); err != nil || len(evs) != 0 {
			t.Fatalf("after MarkSent with a failure the outbox holds %+v (%v)", evs, err)
		}
		// A stale owner's Finish writes neither the state nor an event.
		mustCreate(t, s, batch("stale", "a"))
		old := mustClaim(t, s, "stale", "o1").Lease
		clock.Advance(ttl + time.Second)
		mustClaim(t, s, "stale", "o2")
		wantErr(t, "stale Finish", s.Finish(ctx, "stale", old, state.StatusCompleted, ""), state.ErrLeaseLost)
		if evs, _ := s.Outbox(ctx, 10); len(evs) != 0 {
			t.Fatalf("stale Finish left an event: %+v", evs)
		}
	})

	t.Run("ForceTakesOver", func(t *testing.T) {
		t.Parallel()
		s, _, ctx := setup(t, newStore)
		mustCreate(t, s, batch("b1", "a"))
		old := mustClaim(t, s, "b1", "o1").Lease
		b, err := s.Claim(ctx, "b1", "o2", ttl, state.ClaimOptions{Force: true})
		if err != nil || b.Lease.Owner != "o2" || b.Lease.Epoch != old.Epoch+1 {
			t.Fatalf("forced claim = %+v, %v", b.Lease, err)
		}
		_, err = s.Renew(ctx, "b1", old, ttl)
		wantErr(t, "Renew after forced takeover", err, state.ErrLeaseLost)
	})

	t.Run("ReplaceOnlyTheNamedOwner", func(t *testing.T) {
		t.Parallel()
		s, _, ctx := setup(t, newStore)
		mustCreate(t, s, batch("b1", "a"))
		mustClaim(t, s, "b1", "dead")
		_, err := s.Claim(ctx, "b1", "o2", ttl, state.ClaimOptions{Replace: "someone-else"})
		wantErr(t, "Replace naming another owner", err, state.ErrLeaseHeld)
		var wg sync.WaitGroup
		wins := make(chan string, 4)
		for i := range 4 {
			wg.Go(func() {
				owner := fmt.Sprintf("heir%d", i)
				if _, err := s.Claim(ctx, "b1", owner, ttl, state.ClaimOptions{Replace: "dead"}); err == nil {
					wins <- owner
				} else if !errors.Is(err, state.ErrLeaseHeld) {
					t.Errorf("replace: %v", err)
				}
			})
		}
		wg.Wait()
		close(wins)
		if n := len(wins); n != 1 {
			t.Fatalf("%d claimants replaced the dead owner, want 1", n)
		}
	})

	t.Run("CountByStatus", func(t *testing.T) {
		t.Parallel()
		s, _, ctx := setup(t, newStore)
		for i := range 3 {
			mustCreate(t, s, batch(fmt.Sprintf("b%d", i), "a"))
		}
		mustClaim(t, s, "b0", "o")
		got, err := s.CountByStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got[state.StatusPending] != 2 || got[state.StatusRunning] != 1 || got[state.StatusCompleted] != 0 {
			t.Fatalf("counts = %v", got)
		}
	})

	t.Run("ListFilters", func(t *testing.T) {
		t.Parallel()
		s, clock, ctx := setup(t, newStore)
		for i := range 5 {
			mustCreate(t, s, batch(fmt.Sprintf("b%d", i), "a"))
			clock.Advance(time.Second)
		}
		mustClaim(t, s, "b1", "o")
		mustClaim(t, s, "b3", "o")
		all, err := s.List(ctx, state.ListFilter{})
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(all); got != "[b4 b3 b2 b1 b0]" {
			t.Fatalf("List = %s, want newest first", got)
		}
		running, err := s.List(ctx, state.ListFilter{Status: state.StatusRunning})
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(running); got != "[b3 b1]" {
			t.Fatalf("List(running) = %s", got)
		}
		two, err := s.List(ctx, state.ListFilter{Limit: 2})
		if err != nil || len(two) != 2 {
			t.Fatalf("List(limit 2) = %d, %v", len(two), err)
		}
	})

	t.Run("SummariesLeaveItemsOut", func(t *testing.T) {
		t.Parallel()
		s, clock, ctx := setup(t, newStore)
		mustCreate(t, s, batch("many", "a", "b", "c", "d", "e"))
		clock.Advance(time.Second)
		for _, list := range []func() ([]state.Batch, error){
			func() ([]state.Batch, error) { return s.List(ctx, state.ListFilter{}) },
			func() ([]state.Batch, error) { return s.Orphans(ctx, 10) },
		} {
			got, err := list()
			if err != nil || len(got) != 1 {
				t.Fatalf("list = %d batches, %v", len(got), err)
			}
			if got[0].Items != nil || got[0].TotalItems != 5 || got[0].ItemCount() != 5 || got[0].TotalChunks() != 3 {
				t.Fatalf("summary of a listed batch: items %v, total %d, chunks %d; want no items, 5 in 3 chunks",
					got[0].Items, got[0].TotalItems, got[0].TotalChunks())
			}
		}
		// Get and Claim return the items.
		if b, err := s.Get(ctx, "many"); err != nil || len(b.Items) != 5 || b.TotalItems != 5 {
			t.Fatalf("Get = %v items, total %d, %v", b.Items, b.TotalItems, err)
		}
		if b := mustClaim(t, s, "many", "o"); len(b.Items) != 5 || b.Chunk(2)[0] != "e" {
			t.Fatalf("Claim = %v items", b.Items)
		}
	})

	t.Run("ConcurrentClaimsHaveOneWinner", func(t *testing.T) {
		t.Parallel()
		s, _, ctx := setup(t, newStore)
		const batches, claimers = 5, 8
		for i := range batches {
			mustCreate(t, s, batch(fmt.Sprintf("b%d", i), "a"))
		}
		var (
			mu      sync.Mutex
			winners = map[string][]string{}
			wg      sync.WaitGroup
			errs    = make(chan error, batches*claimers)
		)
		for c := range claimers {
			for i := range batches {
				wg.Go(func() {
					id, owner := fmt.Sprintf("b%d", i), fmt.Sprintf("o%d", c)
					b, err := s.Claim(ctx, id, owner, ttl, state.ClaimOptions{})
					switch {
					case errors.Is(err, state.ErrLeaseHeld):
					case err != nil:
						errs <- err
					default:
						mu.Lock()
						winners[id] = append(winners[id], fmt.Sprintf("%s@%d", owner, b.Lease.Epoch))
						mu.Unlock()
					}
				})
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("claim: %v", err)
		}
		for i := range batches {
			id := fmt.Sprintf("b%d", i)
			if len(winners[id]) != 1 {
				t.Errorf("%s claimed by %v, want exactly one winner", id, winners[id])
			}
		}
	})

	t.Run("ConcurrentCheckpointsOnlyCurrentEpochWins", func(t *testing.T) {
		t.Parallel()
		s, _, ctx := setup(t, newStore)
		mustCreate(t, s, batch("b1", "a", "b", "c", "d"))
		var leases []state.Lease
		for i := range 4 {
			b, err := s.Claim(ctx, "b1", fmt.Sprintf("o%d", i), ttl, state.ClaimOptions{Force: true})
			if err != nil {
				t.Fatal(err)
			}
			leases = append(leases, b.Lease)
		}
		var wg sync.WaitGroup
		results := make([]error, len(leases))
		for i, l := range leases {
			wg.Go(func() {
				results[i] = checkpoint(s, ctx, "b1", l, state.Progress{DoneChunks: 1, DoneItems: 2}, ttl)
			})
		}
		wg.Wait()
		for i, err := range results {
			if i == len(leases)-1 {
				if err != nil {
					t.Errorf("current epoch checkpoint: %v", err)
				}
			} else if !errors.Is(err, state.ErrLeaseLost) {
				t.Errorf("epoch %d checkpoint err = %v, want ErrLeaseLost", leases[i].Epoch, err)
			}
		}
	})

	t.Run("Ping", func(t *testing.T) {
		t.Parallel()
		s, _, ctx := setup(t, newStore)
		if err := s.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

func checkpoint(s state.Store, ctx context.Context, id string, l state.Lease, p state.Progress, ttl time.Duration) error {
	_, err := s.Checkpoint(ctx, id, l, p, ttl)
	return err
}

func ids(bs []state.Batch) string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.ID
	}
	return fmt.Sprint(out)
}
