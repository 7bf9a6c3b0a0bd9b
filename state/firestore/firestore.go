// Package firestore is the Cloud Firestore state.Store.
//
// Layout, under a configurable collection prefix P:
//
//	P batches/{h}                  one document per batch: request, items,
//	                               status, lease (owner, epoch, expiry)
//	P batches/{h}/chunks/{c}       one document per committed chunk, created
//	                               once, holding the cumulative progress
//
// {h} is a hash of the batch id and {c} a hash-prefixed chunk number, so
// document ids are never monotonically increasing.
//
// Write budget: a checkpoint creates its chunk document and never writes the
// batch document; only claims, renewals, release and finish do. Renewals come
// every HEARTBEAT_INTERVAL, which the service requires to be at least 1 s with
// this store, so the batch document sees at most one write per second in
// steady state, while every chunk is durable the moment it commits (a crash
// redoes at most one chunk).
//
// Every mutation runs in a transaction that reads the batch document first,
// so a claim (which bumps the epoch) and a stale owner's checkpoint are
// serialised: the stale one sees the new epoch and fails with ErrLeaseLost.
// gRPC codes are translated into the state sentinels here; nothing above this
// package sees gRPC.
//
// Time: lease expiry is computed from the server's clock (the read time of
// the transaction that claims or renews), so claimants with skewed clocks
// agree on when a lease expires, and no claimant can take over a lease that
// is live by the server's time. What remains assumed: that this machine's
// clock runs at about the right rate over one LEASE_TTL (the engine's
// self-fencing measures durations locally, with a margin of LEASE_TTL/5),
// and that the server's clock does not jump backwards. A fast local clock
// only makes the run stop itself earlier; a slow one is caught by the
// server-time expiry the store returns.
package firestore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cloud.google.com/go/firestore"
	"github.com/cenkalti/backoff/v5"
	"github.com/jonboulle/clockwork"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/predworker/predworker/events"
	"github.com/predworker/predworker/state"
)

// Options configures the store.
type Options struct {
	Project  string // GOOGLE_CLOUD_PROJECT
	Database string // database id; "" is "(default)"
	// Prefix is prepended to collection names so several deployments or
	// tests can share one database.
	Prefix string
	// Clock is this machine's clock, used for the informational times
	// (created, updated, heartbeat, completed); nil: the real clock. Lease
	// expiry never uses it: see ServerTime.
	Clock clockwork.Clock
	// ServerTime maps the Firestore server's time of a transaction's read
	// to the time lease expiry is computed in. nil (production): the
	// server's time itself, so every claimant measures leases on one clock,
	// whatever its own clock's skew. Tests that move time with a fake
	// clock set it.
	ServerTime func(read time.Time) time.Time
	// ClientOptions reach the Firestore client (tests record the queries
	// the store sends).
	ClientOptions []option.ClientOption
	// CallTimeout bounds every call (default 10 s).
	CallTimeout time.Duration
	// Retention is how long finished batches are kept before the TTL
	// policy on expire_at deletes them (default 30 days).
	Retention time.Duration
	// OnWrite, when set, is called after each committed write with the
	// written document's path (for write-budget tests and metrics).
	OnWrite func(doc string)
}

// Store implements state.Store on Firestore.
type Store struct {
	client *firestore.Client
	opts   Options
	clock  clockwork.Clock
	// serverOffset is the Firestore server's time minus this machine's, as
	// last seen in a read (nanoseconds); Orphans uses it to ask for expired
	// leases in server time without a transaction.
	serverOffset atomic.Int64
	sawServer    atomic.Bool
}

var _ state.Store = (*Store)(nil)

// New connects to Firestore (or the emulator named by FIRESTORE_EMULATOR_HOST).
func New(ctx context.Context, o Options) (*Store, error) {
	if o.Project == "" {
		return nil, errors.New("firestore: GOOGLE_CLOUD_PROJECT is required")
	}
	if o.Database == "" {
		o.Database = firestore.DefaultDatabaseID
	}
	if o.Clock == nil {
		o.Clock = clockwork.NewRealClock()
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = 10 * time.Second
	}
	if o.Retention <= 0 {
		o.Retention = 30 * 24 * time.Hour
	}
	c, err := firestore.NewClientWithDatabase(ctx, o.Project, o.Database, o.ClientOptions...)
	if err != nil {
		return nil, fmt.Errorf("firestore client for %s/%s: %w", o.Project, o.Database, translate(err))
	}
	return &Store{client: c, opts: o, clock: o.Clock}, nil
}

// Close implements state.Store.
func (s *Store) Close() error { return s.client.Close() }

type batchDoc struct {
	BatchID      string     `firestore:"batch_id"`
	Request      string     `firestore:"request"` // JSON of state.Request
	Fingerprint  string     `firestore:"fingerprint"`
	Items        []string   `firestore:"items"`
	TotalItems   int64      `firestore:"total_items"` // len(items), read without them by List and Orphans
	Status       string     `firestore:"status"`
	Attempt      int64      `firestore:"attempt"`
	LeaseOwner   string     `firestore:"lease_owner"`
	LeaseEpoch   int64      `firestore:"lease_epoch"`
	LeaseExpires int64      `firestore:"lease_expires"` // unix ns; 0 when released
	HeartbeatAt  int64      `firestore:"heartbeat_at"`
	Error        string     `firestore:"error"`
	CreatedAt    int64      `firestore:"created_at"`
	UpdatedAt    int64      `firestore:"updated_at"`
	CompletedAt  int64      `firestore:"completed_at"`
	ExpireAt     *time.Time `firestore:"expire_at"` // TTL policy field; set when finished
}

type chunkDoc struct {
	Chunk       int64      `firestore:"chunk"`
	DoneChunks  int64      `firestore:"done_chunks"`
	DoneItems   int64      `firestore:"done_items"`
	Predictions int64      `firestore:"predictions"`
	Fallbacks   int64      `firestore:"fallbacks"`
	FailedItems int64      `firestore:"failed_items"`
	FailedPlay  int64      `firestore:"failed_players"`
	SinkToken   string     `firestore:"sink_token"`
	Owner       string     `firestore:"owner"`
	Epoch       int64      `firestore:"epoch"`
	CommittedAt int64      `firestore:"committed_at"`
	ExpireAt    *time.Time `firestore:"expire_at"`
}

func hash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func (s *Store) batches() *firestore.CollectionRef {
	return s.client.Collection(s.opts.Prefix + "batches")
}

func (s *Store) batchRef(id string) *firestore.DocumentRef { return s.batches().Doc(hash(id)[:24]) }

func (s *Store) chunkRef(id string, chunk int) *firestore.DocumentRef {
	n := strconv.Itoa(chunk)
	return s.batchRef(id).Collection("chunks").Doc(hash(n)[:6] + "-" + n)
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func (d *batchDoc) batch() (state.Batch, error) {
	b := state.Batch{
		ID: d.BatchID, Fingerprint: d.Fingerprint, Items: d.Items, TotalItems: max(int(d.TotalItems), len(d.Items)),
		Status:  state.Status(d.Status),
		Attempt: int(d.Attempt), Error: d.Error,
		Lease:       state.Lease{Owner: d.LeaseOwner, Epoch: d.LeaseEpoch, ExpiresAt: fromNanos(d.LeaseExpires)},
		HeartbeatAt: fromNanos(d.HeartbeatAt), CreatedAt: fromNanos(d.CreatedAt),
		UpdatedAt: fromNanos(d.UpdatedAt), CompletedAt: fromNanos(d.CompletedAt),
	}
	if err := json.Unmarshal([]byte(d.Request), &b.Request); err != nil {
		return b, fmt.Errorf("decode request of %s: %w", d.BatchID, err)
	}
	return b, nil
}

func (c *chunkDoc) progress() state.Progress {
	return state.Progress{DoneChunks: int(c.DoneChunks), DoneItems: int(c.DoneItems),
		Predictions: int(c.Predictions), Fallbacks: int(c.Fallbacks), FailedItems: int(c.FailedItems),
		FailedPlayers: int(c.FailedPlay), SinkToken: c.SinkToken}
}

// ---------------------------------------------------------------------------
// Errors, deadlines, retries

// translate maps gRPC codes to the state sentinels. Errors that are not gRPC
// statuses (our own sentinels, decode errors) pass through.
func translate(err error) error {
	if err == nil {
		return nil
	}
	var es errSentinel
	if errors.As(err, &es) {
		return es.err
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", state.ErrUnavailable, err)
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.NotFound:
		return fmt.Errorf("%w: %w", state.ErrNotFound, err)
	case codes.AlreadyExists:
		return fmt.Errorf("%w: %w", state.ErrConflict, err)
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Internal, codes.Unknown, codes.Aborted:
		return fmt.Errorf("%w: %w", state.ErrUnavailable, err)
	}
	return err
}

// call runs fn under the call deadline, retrying unavailable errors with a
// short backoff while the deadline allows.
func (s *Store) call(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.CallTimeout)
	defer cancel()
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 50 * time.Millisecond
	b.MaxInterval = time.Second
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		err := translate(fn(ctx))
		if err != nil && !errors.Is(err, state.ErrUnavailable) {
			return struct{}{}, backoff.Permanent(err)
		}
		return struct{}{}, err
	}, backoff.WithBackOff(b), backoff.WithMaxElapsedTime(s.opts.CallTimeout))
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, state.ErrUnavailable) {
			err = fmt.Errorf("%w: %w", state.ErrUnavailable, err)
		}
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// tx runs fn in a transaction with generous contention retries, and reports
// the written documents to OnWrite after the commit.
func (s *Store) tx(ctx context.Context, op string, fn func(ctx context.Context, tx *firestore.Transaction, wrote func(*firestore.DocumentRef)) error) error {
	var written []string
	var mu sync.Mutex
	err := s.call(ctx, op, func(ctx context.Context) error {
		written = written[:0]
		return s.client.RunTransaction(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
			mu.Lock()
			written = written[:0]
			mu.Unlock()
			return fn(ctx, tx, func(r *firestore.DocumentRef) {
				mu.Lock()
				written = append(written, r.Path)
				mu.Unlock()
			})
		}, firestore.MaxAttempts(25))
	})
	if err == nil && s.opts.OnWrite != nil {
		for _, w := range written {
			s.opts.OnWrite(w)
		}
	}
	return err
}

// errSentinel carries a state sentinel out of a transaction untouched.
type errSentinel struct{ err error }

func (e errSentinel) Error() string { return e.err.Error() }
func (e errSentinel) Unwrap() error { return e.err }

// ---------------------------------------------------------------------------
// Reads

func (s *Store) readBatch(ctx context.Context, tx *firestore.Transaction, id string) (*batchDoc, error) {
	d, _, err := s.readBatchAt(ctx, tx, id)
	return d, err
}

// readBatchAt is readBatch that also returns the time, in lease time (see
// leaseNow), at which the server read the document.
func (s *Store) readBatchAt(ctx context.Context, tx *firestore.Transaction, id string) (*batchDoc, time.Time, error) {
	var snap *firestore.DocumentSnapshot
	var err error
	if tx != nil {
		snap, err = tx.Get(s.batchRef(id))
	} else {
		snap, err = s.batchRef(id).Get(ctx)
	}
	if status.Code(err) == codes.NotFound {
		return nil, time.Time{}, errSentinel{state.ErrNotFound}
	}
	if err != nil {
		return nil, time.Time{}, err
	}
	var d batchDoc
	if err := snap.DataTo(&d); err != nil {
		return nil, time.Time{}, fmt.Errorf("decode batch %s: %w", id, err)
	}
	return &d, s.leaseNow(snap.ReadTime), nil
}

// leaseNow turns the server's read time into the time leases are measured
// in, and remembers how far the server's clock is from this machine's.
func (s *Store) leaseNow(read time.Time) time.Time {
	if read.IsZero() { // not expected from Firestore; stay safe rather than wrong
		read = time.Now().Add(time.Duration(s.serverOffset.Load()))
	} else {
		s.serverOffset.Store(int64(time.Until(read)))
		s.sawServer.Store(true)
	}
	if s.opts.ServerTime != nil {
		return s.opts.ServerTime(read)
	}
	return read
}

// serverNow estimates the server's current time, in lease time: this
// machine's clock plus the offset last seen (learnt with one read if none
// was seen yet).
func (s *Store) serverNow(ctx context.Context) time.Time {
	if !s.sawServer.Load() {
		snap, err := s.client.Collection(s.opts.Prefix + "meta").Doc("ping").Get(ctx)
		if snap != nil && (err == nil || status.Code(err) == codes.NotFound) {
			return s.leaseNow(snap.ReadTime)
		}
	}
	return s.leaseNow(time.Now().Add(time.Duration(s.serverOffset.Load())))
}

// latestProgress reads the newest chunk document of a batch.
func (s *Store) latestProgress(ctx context.Context, tx *firestore.Transaction, id string) (state.Progress, error) {
	q := s.batchRef(id).Collection("chunks").OrderBy("chunk", firestore.Desc).Limit(1)
	var it *firestore.DocumentIterator
	if tx != nil {
		it = tx.Documents(q)
	} else {
		it = q.Documents(ctx)
	}
	defer it.Stop()
	snap, err := it.Next()
	if errors.Is(err, iterator.Done) {
		return state.Progress{}, nil
	}
	if err != nil {
		return state.Progress{}, err
	}
	var c chunkDoc
	if err := snap.DataTo(&c); err != nil {
		return state.Progress{}, fmt.Errorf("decode chunk of %s: %w", id, err)
	}
	return c.progress(), nil
}

func (s *Store) full(ctx context.Context, tx *firestore.Transaction, d *batchDoc) (state.Batch, error) {
	b, err := d.batch()
	if err != nil {
		return b, err
	}
	b.Progress, err = s.latestProgress(ctx, tx, d.BatchID)
	return b, err
}

// Get implements state.Store.
func (s *Store) Get(ctx context.Context, id string) (state.Batch, error) {
	var b state.Batch
	err := s.call(ctx, "get batch "+id, func(ctx context.Context) error {
		d, err := s.readBatch(ctx, nil, id)
		if err != nil {
			return err
		}
		b, err = s.full(ctx, nil, d)
		return err
	})
	return b, err
}

// summaryFields are the batch document's fields but its item list: List and
// Orphans read summaries (a projection query), Get and Claim whole batches.
var summaryFields = func() []string {
	var out []string
	t := reflect.TypeFor[batchDoc]()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("firestore"), ",")
		if name != "items" {
			out = append(out, name)
		}
	}
	return out
}()

func (s *Store) queryBatches(ctx context.Context, op string, q firestore.Query) ([]state.Batch, error) {
	var out []state.Batch
	err := s.call(ctx, op, func(ctx context.Context) error {
		out = out[:0]
		docs, err := q.Documents(ctx).GetAll()
		if err != nil {
			return err
		}
		for _, snap := range docs {
			var d batchDoc
			if err := snap.DataTo(&d); err != nil {
				return fmt.Errorf("decode %s: %w", snap.Ref.ID, err)
			}
			b, err := s.full(ctx, nil, &d)
			if err != nil {
				return err
			}
			out = append(out, b)
		}
		return nil
	})
	return out, err
}

// List implements state.Store. With a status filter it needs the composite
// index (status, created_at desc) from firestore.indexes.json.
func (s *Store) List(ctx context.Context, f state.ListFilter) ([]state.Batch, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 50
	}
	q := s.batches().Query
	if f.Status != "" {
		q = q.Where("status", "==", string(f.Status))
	}
	q = q.OrderBy("created_at", firestore.Desc).OrderBy("batch_id", firestore.Asc).Limit(limit)
	return s.queryBatches(ctx, "list batches", q.Select(summaryFields...))
}

// Orphans implements state.Store: unfinished batches whose lease expired or
// was released. Backed by the composite index (status, lease_expires).
func (s *Store) Orphans(ctx context.Context, limit int) ([]state.Batch, error) {
	if limit <= 0 {
		limit = 50
	}
	q := s.batches().
		Where("status", "in", []string{string(state.StatusPending), string(state.StatusRunning)}).
		Where("lease_expires", "<=", s.serverNow(ctx).UnixNano()).
		OrderBy("lease_expires", firestore.Asc).Limit(limit)
	return s.queryBatches(ctx, "find orphans", q.Select(summaryFields...))
}

// CountByStatus implements state.Store with one count aggregation per state.
func (s *Store) CountByStatus(ctx context.Context) (map[state.Status]int, error) {
	out := map[state.Status]int{}
	for _, st := range []state.Status{state.StatusPending, state.StatusRunning, state.StatusCompleted, state.StatusFailed} {
		err := s.call(ctx, "count batches", func(ctx context.Context) error {
			q := s.batches().Where("status", "==", string(st))
			res, err := q.NewAggregationQuery().WithCount("n").Get(ctx)
			if err != nil {
				return err
			}
			n, err := countOf(res["n"])
			out[st] = n
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func countOf(v any) (int, error) {
	switch n := v.(type) {
	case int64:
		return int(n), nil
	case interface{ GetIntegerValue() int64 }:
		return int(n.GetIntegerValue()), nil
	}
	return 0, fmt.Errorf("count aggregation returned %T", v)
}

// Ping implements state.Store: a read of a document that need not exist.
func (s *Store) Ping(ctx context.Context) error {
	return s.call(ctx, "ping firestore", func(ctx context.Context) error {
		_, err := s.client.Collection(s.opts.Prefix + "meta").Doc("ping").Get(ctx)
		if status.Code(err) == codes.NotFound {
			return nil
		}
		return err
	})
}

// ---------------------------------------------------------------------------
// Writes

// Create implements state.Store.
func (s *Store) Create(ctx context.Context, b state.Batch) (state.Batch, bool, error) {
	req, err := json.Marshal(b.Request)
	if err != nil {
		return b, false, fmt.Errorf("encode request: %w", err)
	}
	if b.Fingerprint == "" {
		b.Fingerprint = b.Request.Fingerprint()
	}
	items := b.Items
	if items == nil {
		items = []string{}
	}
	var (
		out     state.Batch
		created bool
	)
	err = s.tx(ctx, "create batch "+b.ID, func(ctx context.Context, tx *firestore.Transaction, wrote func(*firestore.DocumentRef)) error {
		d, err := s.readBatch(ctx, tx, b.ID)
		switch {
		case err == nil:
			created = false
			if out, err = d.batch(); err != nil {
				return err
			}
			if d.Fingerprint != b.Fingerprint {
				return errSentinel{state.ErrConflict}
			}
			return nil
		case !errors.Is(err, state.ErrNotFound):
			return err
		}
		now := s.clock.Now().UnixNano()
		nd := &batchDoc{BatchID: b.ID, Request: string(req), Fingerprint: b.Fingerprint, Items: items,
			TotalItems: int64(len(items)), Status: string(state.StatusPending), CreatedAt: now, UpdatedAt: now}
		if err := tx.Create(s.batchRef(b.ID), nd); err != nil {
			return err
		}
		wrote(s.batchRef(b.ID))
		created = true
		out, err = nd.batch()
		return err
	})
	if err != nil {
		return out, false, err
	}
	return out, created, nil
}

// Claim implements state.Store.
func (s *Store) Claim(ctx context.Context, id, owner string, ttl time.Duration, opts state.ClaimOptions) (state.Batch, error) {
	var out state.Batch
	err := s.tx(ctx, "claim batch "+id, func(ctx context.Context, tx *firestore.Transaction, wrote func(*firestore.DocumentRef)) error {
		d, leaseNow, err := s.readBatchAt(ctx, tx, id)
		if err != nil {
			return err
		}
		if out, err = s.full(ctx, tx, d); err != nil {
			return err
		}
		switch {
		case out.Status == state.StatusCompleted, out.Status == state.StatusFailed && !opts.Reopen:
			return errSentinel{state.ErrFinished}
		case out.Lease.Live(leaseNow) && !opts.Force && (opts.Replace == "" || opts.Replace != out.Lease.Owner):
			// Held, even by this owner: one owner never runs a batch twice.
			return errSentinel{state.ErrLeaseHeld}
		}
		now := s.clock.Now()
		d.Status, d.Error = string(state.StatusRunning), ""
		d.LeaseOwner, d.LeaseEpoch = owner, d.LeaseEpoch+1
		d.LeaseExpires, d.HeartbeatAt, d.UpdatedAt = leaseNow.Add(ttl).UnixNano(), now.UnixNano(), now.UnixNano()
		d.Attempt++
		if err := tx.Set(s.batchRef(id), d); err != nil {
			return err
		}
		wrote(s.batchRef(id))
		p := out.Progress
		if out, err = d.batch(); err != nil {
			return err
		}
		out.Progress = p
		return nil
	})
	return out, err
}

// fenced reads the batch in tx and checks that (owner, epoch) still holds it.
func (s *Store) fenced(ctx context.Context, tx *firestore.Transaction, id string, l state.Lease) (*batchDoc, error) {
	d, _, err := s.fencedAt(ctx, tx, id, l)
	return d, err
}

// fencedAt is fenced that also returns the read's time in lease time.
func (s *Store) fencedAt(ctx context.Context, tx *firestore.Transaction, id string, l state.Lease) (*batchDoc, time.Time, error) {
	d, at, err := s.readBatchAt(ctx, tx, id)
	if err != nil {
		return nil, at, err
	}
	if d.LeaseOwner != l.Owner || d.LeaseEpoch != l.Epoch || d.Status != string(state.StatusRunning) {
		return nil, at, errSentinel{fmt.Errorf("owner %s, epoch %d: %w", l.Owner, l.Epoch, state.ErrLeaseLost)}
	}
	return d, at, nil
}

// Renew implements state.Store.
func (s *Store) Renew(ctx context.Context, id string, l state.Lease, ttl time.Duration) (state.Lease, error) {
	out := l
	err := s.tx(ctx, "renew lease of "+id, func(ctx context.Context, tx *firestore.Transaction, wrote func(*firestore.DocumentRef)) error {
		_, leaseNow, err := s.fencedAt(ctx, tx, id, l)
		if err != nil {
			return err
		}
		out.ExpiresAt = leaseNow.Add(ttl)
		if err := tx.Update(s.batchRef(id), []firestore.Update{
			{Path: "lease_expires", Value: out.ExpiresAt.UnixNano()},
			{Path: "heartbeat_at", Value: s.clock.Now().UnixNano()},
		}); err != nil {
			return err
		}
		wrote(s.batchRef(id))
		return nil
	})
	return out, err
}

// Checkpoint implements state.Store: the chunk's own document is created
// (never updated), in a transaction that first checks the fence on the batch
// document and that the chunk follows the last committed one. The batch
// document is not written (write budget), so the returned lease is the
// stored one, unchanged.
func (s *Store) Checkpoint(ctx context.Context, id string, l state.Lease, p state.Progress, ttl time.Duration) (state.Lease, error) {
	out := l
	chunk := p.DoneChunks - 1
	err := s.tx(ctx, "checkpoint batch "+id, func(ctx context.Context, tx *firestore.Transaction, wrote func(*firestore.DocumentRef)) error {
		d, err := s.fenced(ctx, tx, id, l)
		if err != nil {
			return err
		}
		out.ExpiresAt = fromNanos(d.LeaseExpires)
		cur, err := s.latestProgress(ctx, tx, id)
		if err != nil {
			return err
		}
		if chunk < 0 || cur.DoneChunks != chunk {
			return errSentinel{fmt.Errorf("chunk %d does not follow %d committed chunks: %w", chunk, cur.DoneChunks, state.ErrLeaseLost)}
		}
		now := s.clock.Now()
		expire := now.Add(s.opts.Retention) // batches finish long before their chunks expire
		cd := &chunkDoc{Chunk: int64(chunk), DoneChunks: int64(p.DoneChunks), DoneItems: int64(p.DoneItems),
			Predictions: int64(p.Predictions), Fallbacks: int64(p.Fallbacks), FailedItems: int64(p.FailedItems),
			FailedPlay: int64(p.FailedPlayers), SinkToken: p.SinkToken, Owner: l.Owner, Epoch: l.Epoch, CommittedAt: now.UnixNano(), ExpireAt: &expire}
		if err := tx.Create(s.chunkRef(id, chunk), cd); err != nil {
			return err
		}
		wrote(s.chunkRef(id, chunk))
		return nil
	})
	if errors.Is(err, state.ErrConflict) { // the chunk document exists: a replay
		return l, fmt.Errorf("checkpoint batch %s chunk %d: %w", id, chunk, state.ErrLeaseLost)
	}
	return out, err
}

// Finish implements state.Store: the final state and the outbox event in one
// transaction. It stamps expire_at on the batch, so the TTL policy on
// expire_at (firestore.indexes.json) removes it after Retention; chunk
// documents carry their own expire_at, Retention after their commit.
func (s *Store) Finish(ctx context.Context, id string, l state.Lease, st state.Status, errMsg string) error {
	if !st.Finished() {
		return fmt.Errorf("finish batch %s: %q is not a final state", id, st)
	}
	return s.tx(ctx, "finish batch "+id, func(ctx context.Context, tx *firestore.Transaction, wrote func(*firestore.DocumentRef)) error {
		d, err := s.fenced(ctx, tx, id, l)
		if err != nil {
			return err
		}
		b, err := s.full(ctx, tx, d)
		if err != nil {
			return err
		}
		now := s.clock.Now()
		expire := now.Add(s.opts.Retention)
		if err := tx.Update(s.batchRef(id), []firestore.Update{
			{Path: "status", Value: string(st)}, {Path: "error", Value: errMsg},
			{Path: "completed_at", Value: now.UnixNano()}, {Path: "updated_at", Value: now.UnixNano()},
			{Path: "lease_owner", Value: ""}, {Path: "lease_expires", Value: int64(0)},
			{Path: "expire_at", Value: expire},
		}); err != nil {
			return err
		}
		wrote(s.batchRef(id))
		ev := b.CompletionEvent(st, errMsg, now)
		payload, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		ref := s.outboxRef(ev.ID)
		if err := tx.Set(ref, outboxDoc{Payload: string(payload), CreatedAt: now.UnixNano(), ExpireAt: &expire}); err != nil {
			return err
		}
		wrote(ref)
		return nil
	})
}

type outboxDoc struct {
	Payload   string     `firestore:"payload"`
	CreatedAt int64      `firestore:"created_at"`
	Sent      bool       `firestore:"sent"`
	SentAt    int64      `firestore:"sent_at"`
	ExpireAt  *time.Time `firestore:"expire_at"`
}

func (s *Store) outboxRef(eventID string) *firestore.DocumentRef {
	return s.client.Collection(s.opts.Prefix + "outbox").Doc(hash(eventID)[:24])
}

// Outbox implements state.Store. Backed by the index (sent, created_at).
func (s *Store) Outbox(ctx context.Context, limit int) ([]events.Event, error) {
	if limit <= 0 {
		limit = 100
	}
	var out []events.Event
	err := s.call(ctx, "read outbox", func(ctx context.Context) error {
		out = out[:0]
		docs, err := s.client.Collection(s.opts.Prefix+"outbox").Where("sent", "==", false).
			OrderBy("created_at", firestore.Asc).Limit(limit).Documents(ctx).GetAll()
		if err != nil {
			return err
		}
		for _, snap := range docs {
			var d outboxDoc
			if err := snap.DataTo(&d); err != nil {
				return fmt.Errorf("decode outbox %s: %w", snap.Ref.ID, err)
			}
			var ev events.Event
			if err := json.Unmarshal([]byte(d.Payload), &ev); err != nil {
				return fmt.Errorf("decode outbox event %s: %w", snap.Ref.ID, err)
			}
			out = append(out, ev)
		}
		return nil
	})
	return out, err
}

// MarkSent implements state.Store.
func (s *Store) MarkSent(ctx context.Context, eventID, failure string) error {
	return s.call(ctx, "mark event "+eventID+" sent", func(ctx context.Context) error {
		_, err := s.outboxRef(eventID).Update(ctx, []firestore.Update{
			{Path: "sent", Value: true}, {Path: "sent_at", Value: s.clock.Now().UnixNano()},
			{Path: "failure", Value: failure},
		})
		return err
	})
}

// Release implements state.Store.
func (s *Store) Release(ctx context.Context, id string, l state.Lease) error {
	return s.tx(ctx, "release batch "+id, func(ctx context.Context, tx *firestore.Transaction, wrote func(*firestore.DocumentRef)) error {
		if _, err := s.fenced(ctx, tx, id, l); err != nil {
			return err
		}
		if err := tx.Update(s.batchRef(id), []firestore.Update{
			{Path: "lease_owner", Value: ""}, {Path: "lease_expires", Value: int64(0)},
			{Path: "updated_at", Value: s.clock.Now().UnixNano()},
		}); err != nil {
			return err
		}
		wrote(s.batchRef(id))
		return nil
	})
}

// CheckIndexes runs every query shape the store uses, once, with a limit of
// one (for `worker doctor`): in production a shape without its composite
// index fails with FAILED_PRECONDITION and a link that creates it. (The
// emulator does not enforce indexes; TestIndexesCoverEveryQuery checks the
// shapes against firestore.indexes.json instead.)
func (s *Store) CheckIndexes(ctx context.Context) error {
	for _, q := range []struct {
		name string
		run  func() error
	}{
		{"list", func() error { _, err := s.List(ctx, state.ListFilter{Limit: 1}); return err }},
		{"list by state", func() error {
			_, err := s.List(ctx, state.ListFilter{Status: state.StatusRunning, Limit: 1})
			return err
		}},
		{"orphans", func() error { _, err := s.Orphans(ctx, 1); return err }},
		{"outbox", func() error { _, err := s.Outbox(ctx, 1); return err }},
	} {
		if err := q.run(); err != nil {
			return fmt.Errorf("%s query: %w", q.name, err)
		}
	}
	return nil
}
