package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/google/uuid"
	"github.com/jonboulle/clockwork"
	"github.com/sony/gobreaker/v2"
	"golang.org/x/sync/errgroup"

	"github.com/predworker/predworker/logging"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
)

// Config tunes the engine. Zero values take the documented defaults.
type Config struct {
	Owner             string // lease owner id; NewOwnerID() when empty
	DefaultChunkSize  int
	Concurrency       int
	SystemTimeout     time.Duration
	SystemTimeouts    map[string]time.Duration // per-system overrides
	LeaseTTL          time.Duration
	HeartbeatInterval time.Duration
	SweepInterval     time.Duration
	Faults            []FaultRule
	BreakerFailures   uint32        // consecutive failures that open a system's breaker
	BreakerCooldown   time.Duration // how long an open breaker stays open
	// Breakers overrides the breaker settings per system id.
	Breakers map[string]BreakerSettings
	// LocalOwners lets the engine replace, without waiting for expiry, a
	// lease whose owner is a process on this machine that no longer exists.
	// Only meaningful when every worker sharing the state store runs on this
	// machine (the embedded SQLite store).
	LocalOwners bool
	// RetryMaxInterval caps the backoff between retries of transient errors.
	RetryMaxInterval time.Duration
	// MinQuality is the feature quality score (0-100) below which a player's
	// row is not trusted: every system's row for him is a failure record.
	MinQuality float64
}

func (c *Config) defaults() {
	if c.Owner == "" {
		c.Owner = NewOwnerID()
	}
	if c.DefaultChunkSize <= 0 {
		c.DefaultChunkSize = 50
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 4 * runtime.GOMAXPROCS(0)
	}
	if c.SystemTimeout <= 0 {
		c.SystemTimeout = 2 * time.Second
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = 30 * time.Second
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = c.LeaseTTL / 3
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = 15 * time.Second
	}
	if c.BreakerFailures == 0 {
		c.BreakerFailures = 5
	}
	if c.BreakerCooldown <= 0 {
		c.BreakerCooldown = 10 * time.Second
	}
	if c.RetryMaxInterval <= 0 {
		c.RetryMaxInterval = 5 * time.Second
	}
	if c.MinQuality == 0 {
		c.MinQuality = systems.DefaultMinQuality
	}
}

// Validate rejects contradictory settings with a message naming the variable.
func (c Config) Validate() error {
	switch {
	case c.HeartbeatInterval > c.LeaseTTL/3:
		return errors.New("HEARTBEAT_INTERVAL must be at most LEASE_TTL/3")
	case c.LeaseTTL < 100*time.Millisecond:
		return errors.New("LEASE_TTL must be at least 100ms")
	}
	return nil
}

// BreakerSettings tunes one system's circuit breaker.
type BreakerSettings struct {
	Failures uint32        // consecutive failures that open it
	Cooldown time.Duration // how long it stays open
}

// Deps are the engine's collaborators.
type Deps struct {
	Store    state.Store
	Features systems.FeatureSource
	Sink     systems.Sink
	Registry *systems.Registry
	Clock    clockwork.Clock // nil: real clock
	Logger   *slog.Logger    // nil: discard
	Metrics  *Metrics        // nil: unregistered instruments
}

// Engine runs batches.
type Engine struct {
	cfg      Config
	store    state.Store
	features systems.FeatureSource
	sink     systems.Sink
	registry *systems.Registry
	clock    clockwork.Clock
	log      *slog.Logger
	metrics  *Metrics
	systems  map[string]systems.System // with faults applied
	breakers map[string]*gobreaker.CircuitBreaker[systems.Estimate]
}

// New builds an engine.
func New(cfg Config, d Deps) (*Engine, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := d.Registry.Validate(); err != nil {
		return nil, err
	}
	for id := range cfg.SystemTimeouts {
		if !d.Registry.Has(id) {
			return nil, fmt.Errorf("SYSTEM_TIMEOUTS names unknown system %q", id)
		}
	}
	for _, r := range cfg.Faults {
		if r.System != "*" && !d.Registry.Has(r.System) {
			return nil, fmt.Errorf("FAULTS names unknown system %q", r.System)
		}
	}
	for id := range cfg.Breakers {
		if !d.Registry.Has(id) {
			return nil, fmt.Errorf("SYSTEM_BREAKERS names unknown system %q", id)
		}
	}
	if d.Clock == nil {
		d.Clock = clockwork.NewRealClock()
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Metrics == nil {
		d.Metrics = NewMetrics(nil, nil)
	}
	e := &Engine{cfg: cfg, store: d.Store, features: d.Features, sink: d.Sink, registry: d.Registry,
		clock: d.Clock, log: d.Logger, metrics: d.Metrics,
		systems:  map[string]systems.System{},
		breakers: map[string]*gobreaker.CircuitBreaker[systems.Estimate]{}}
	for _, id := range d.Registry.IDs() {
		s, _ := d.Registry.Get(id)
		e.systems[id] = withFaults(s, cfg.Faults)
		bs := BreakerSettings{Failures: cfg.BreakerFailures, Cooldown: cfg.BreakerCooldown}
		if o, ok := cfg.Breakers[id]; ok {
			bs = o
		}
		e.breakers[id] = gobreaker.NewCircuitBreaker[systems.Estimate](gobreaker.Settings{
			Name:    id,
			Timeout: bs.Cooldown,
			ReadyToTrip: func(c gobreaker.Counts) bool {
				return c.ConsecutiveFailures >= bs.Failures
			},
			// A run being cancelled says nothing about the system.
			IsExcluded: func(err error) bool { return errors.Is(err, context.Canceled) },
			OnStateChange: func(name string, from, to gobreaker.State) {
				if to == gobreaker.StateOpen {
					e.log.Warn("circuit opened", logging.Event(logging.EventCircuitOpened),
						slog.String("system_id", name), slog.Duration("cooldown", bs.Cooldown))
				}
			},
		})
	}
	return e, nil
}

// Owner is the engine's lease owner id.
func (e *Engine) Owner() string { return e.cfg.Owner }

// Config returns the effective configuration.
func (e *Engine) Config() Config { return e.cfg }

// NewOwnerID returns "host/pid/random": unique per process, and telling which
// machine and process holds a lease.
func NewOwnerID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), uuid.NewString()[:8])
}

// ownerGone reports whether owner is a process of this machine that no longer
// exists. Any doubt answers false.
func ownerGone(owner string) bool {
	parts := strings.Split(owner, "/")
	if len(parts) != 3 {
		return false
	}
	host, err := os.Hostname()
	if err != nil || host != parts[0] {
		return false
	}
	pid, err := strconv.Atoi(parts[1])
	if err != nil || pid <= 0 || pid == os.Getpid() {
		return false
	}
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// ---------------------------------------------------------------------------
// Submitting

// InputError is a request the engine refuses; Field names the culprit.
type InputError struct {
	Field   string
	Message string
	Err     error // optional cause
}

func (e *InputError) Error() string { return e.Field + ": " + e.Message }
func (e *InputError) Unwrap() error { return e.Err }

var (
	batchIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)
	playerPattern  = regexp.MustCompile(`^[a-z0-9][a-z0-9._'-]{0,63}$`)
	correlationRe  = regexp.MustCompile(`^[\x21-\x7e]{1,128}$`)
)

// MaxChunkSize bounds chunk_size.
const MaxChunkSize = 1000

// ValidateBatchID checks a caller-supplied batch id.
func ValidateBatchID(id string) error {
	if !batchIDPattern.MatchString(id) {
		return &InputError{Field: "batch_id", Message: "must be 1-128 characters of A-Z, a-z, 0-9, _ and -"}
	}
	return nil
}

// ValidateRequest checks everything about r that does not need the feature
// store.
func (e *Engine) ValidateRequest(r state.Request) error {
	if _, err := time.Parse(time.DateOnly, r.GameDate); err != nil || len(r.GameDate) != 10 {
		return &InputError{Field: "game_date", Message: "must be a date like 2025-01-15"}
	}
	if r.ChunkSize < 0 || r.ChunkSize > MaxChunkSize {
		return &InputError{Field: "chunk_size", Message: fmt.Sprintf("must be from 1 to %d", MaxChunkSize)}
	}
	if len(r.Players) > 5000 {
		return &InputError{Field: "players", Message: "at most 5000 players per batch"}
	}
	for _, p := range r.Players {
		if !playerPattern.MatchString(p) {
			return &InputError{Field: "players", Message: fmt.Sprintf("%.40q is not a player lookup (lower-case letters and digits, up to 64)", p)}
		}
	}
	for _, s := range r.Systems {
		if !e.registry.Has(s) {
			return &InputError{Field: "systems", Message: fmt.Sprintf("unknown system %.40q (known: %s)", s, strings.Join(e.registry.IDs(), ", "))}
		}
	}
	if r.CorrelationID != "" && !correlationRe.MatchString(r.CorrelationID) {
		return &InputError{Field: "correlation_id", Message: "must be 1-128 printable ASCII characters without spaces"}
	}
	return nil
}

// DeriveBatchID names a request deterministically: the same request always
// gets the same id, so re-running it resumes instead of starting over.
func DeriveBatchID(r state.Request) string {
	return r.GameDate + "-" + r.Fingerprint()[:16]
}

// Submit creates the batch for r under id (derived from r when empty) unless
// it exists. It returns the stored batch and whether this call created it.
// The same id with a different request is state.ErrConflict.
func (e *Engine) Submit(ctx context.Context, id string, r state.Request) (state.Batch, bool, error) {
	if err := e.ValidateRequest(r); err != nil {
		return state.Batch{}, false, err
	}
	if r.ChunkSize == 0 {
		r.ChunkSize = e.cfg.DefaultChunkSize
	}
	if id == "" {
		id = DeriveBatchID(r)
	} else if err := ValidateBatchID(id); err != nil {
		return state.Batch{}, false, err
	}
	fp := r.Fingerprint()
	existing, err := e.store.Get(ctx, id)
	switch {
	case err == nil && existing.Fingerprint != fp:
		return existing, false, fmt.Errorf("submit batch %s: %w", id, state.ErrConflict)
	case err == nil:
		return existing, false, nil
	case !errors.Is(err, state.ErrNotFound):
		return state.Batch{}, false, fmt.Errorf("submit batch %s: %w", id, err)
	}
	stored := r
	stored.Players = systems.SortedUnique(r.Players)
	if len(r.Systems) == 0 {
		stored.Systems = e.registry.IDs()
	} else {
		stored.Systems = systems.SortedUnique(r.Systems)
	}
	items := stored.Players
	if len(items) == 0 {
		items, err = e.features.Slate(ctx, r.GameDate)
		switch {
		case errors.Is(err, systems.ErrNoGames), errors.Is(err, systems.ErrUnknownDate):
			return state.Batch{}, false, &InputError{Field: "game_date", Message: err.Error(), Err: err}
		case err != nil:
			return state.Batch{}, false, fmt.Errorf("load slate of %s: %w", r.GameDate, err)
		}
	}
	b, created, err := e.store.Create(ctx, state.Batch{ID: id, Request: stored, Fingerprint: fp, Items: items})
	if err != nil {
		return b, false, err
	}
	if created {
		e.log.Info("batch created", logging.Event(logging.EventBatchCreated), slog.String("batch_id", id),
			slog.String("game_date", r.GameDate), slog.Int("items", len(items)),
			slog.Int("total_chunks", b.TotalChunks()), slog.String("correlation_id", r.CorrelationID))
	}
	return b, created, nil
}

// ---------------------------------------------------------------------------
// Running

// ErrInterrupted: the run stopped before the batch finished (drain, context
// cancelled); progress is checkpointed and the lease released.
var ErrInterrupted = errors.New("run interrupted")

// BatchFailedError: the batch hit a permanent error and is marked failed.
type BatchFailedError struct{ Err error }

func (e *BatchFailedError) Error() string { return "batch failed: " + e.Err.Error() }
func (e *BatchFailedError) Unwrap() error { return e.Err }

// RunOptions tune one run.
type RunOptions struct {
	Claim state.ClaimOptions
	// Stop, when closed, asks the run to stop after the chunk in flight.
	Stop <-chan struct{}
	// OnProgress is called after each committed chunk.
	OnProgress func(state.Batch)
}

// Claim takes the lease of batch id. When the lease is held by a process of
// this machine that no longer exists (and LocalOwners is on), it is replaced
// at once instead of waiting for it to expire.
func (e *Engine) Claim(ctx context.Context, id string, opts state.ClaimOptions) (state.Batch, error) {
	b, err := e.store.Claim(ctx, id, e.cfg.Owner, e.cfg.LeaseTTL, opts)
	if errors.Is(err, state.ErrLeaseHeld) && e.cfg.LocalOwners && ownerGone(b.Lease.Owner) {
		opts.Replace = b.Lease.Owner
		e.log.Info("replacing the lease of a process that is gone", slog.String("batch_id", id),
			slog.String("previous_owner", b.Lease.Owner))
		b, err = e.store.Claim(ctx, id, e.cfg.Owner, e.cfg.LeaseTTL, opts)
	}
	return b, err
}

// Run claims batch id and runs it to the end (see RunClaimed).
func (e *Engine) Run(ctx context.Context, id string, opts RunOptions) (state.Batch, error) {
	b, err := e.Claim(ctx, id, opts.Claim)
	if err != nil {
		return b, err
	}
	return e.RunClaimed(ctx, b, opts)
}

// RunClaimed runs a batch this engine has just claimed: chunk after chunk from
// the checkpoint, each written to the sink and checkpointed under the lease's
// epoch, while a heartbeat renews the lease. It returns the final batch, or
// ErrInterrupted (lease released), state.ErrLeaseLost (another owner took
// over; nothing more was committed), or *BatchFailedError.
func (e *Engine) RunClaimed(ctx context.Context, b state.Batch, opts RunOptions) (out state.Batch, err error) {
	log := e.log.With(slog.String("batch_id", b.ID), slog.Int64("epoch", b.Lease.Epoch),
		slog.Int("attempt", b.Attempt), slog.String("correlation_id", b.Request.CorrelationID))
	event := logging.EventBatchClaimed
	if b.DoneChunks > 0 || b.Attempt > 1 {
		event = logging.EventBatchResumed
	}
	log.Info("batch claimed", logging.Event(event), slog.Int("done_chunks", b.DoneChunks),
		slog.Int("total_chunks", b.TotalChunks()))
	e.metrics.ActiveBatches.Inc()
	defer e.metrics.ActiveBatches.Dec()

	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	guard := newLeaseGuard(e.clock, b.Lease, e.clock.Now(), e.cfg.LeaseTTL, func() {
		cancel(fmt.Errorf("lease of %s not renewed in time: %w", b.ID, state.ErrLeaseLost))
	})
	defer guard.stop()
	var hb sync.WaitGroup
	ticker := e.clock.NewTicker(e.cfg.HeartbeatInterval) // created here so the first tick is one interval after the claim
	hb.Go(func() { e.heartbeat(runCtx, cancel, ticker, b.ID, guard, log) })
	defer hb.Wait()
	defer cancel(nil) // runs before hb.Wait: stops the heartbeat

	defer func() {
		if r := recover(); r != nil {
			err = e.fail(ctx, b, guard.lease(), newPanicError(r), log)
		}
	}()

	for chunk := b.DoneChunks; chunk < b.TotalChunks(); chunk++ {
		select {
		case <-opts.Stop:
			return b, e.interrupt(ctx, b, guard.lease(), log, "stop requested")
		default:
		}
		p, err := e.runChunk(runCtx, b, chunk, guard, log)
		if err != nil {
			return e.stopped(ctx, runCtx, b, guard, err, log)
		}
		b.Progress = p
		b.Lease = guard.lease()
		if opts.OnProgress != nil {
			opts.OnProgress(b)
		}
	}
	if fin, ok := e.sink.(systems.Finalizer); ok {
		err = e.retry(runCtx, "finalize predictions", func() error {
			return fin.Finalize(runCtx, b.ID, b.Request.GameDate)
		})
		if err != nil {
			return e.stopped(ctx, runCtx, b, guard, err, log)
		}
	}
	lease := guard.lease()
	err = e.retry(runCtx, "finish", func() error {
		return e.store.Finish(runCtx, b.ID, lease, state.StatusCompleted, "")
	})
	if err != nil {
		return e.stopped(ctx, runCtx, b, guard, err, log)
	}
	now := e.clock.Now()
	b.Status, b.CompletedAt, b.Lease = state.StatusCompleted, now, state.Lease{Epoch: lease.Epoch}
	e.metrics.BatchesFinished.WithLabelValues(string(state.StatusCompleted)).Inc()
	log.Info("batch completed", logging.Event(logging.EventBatchCompleted), slog.Int("predictions", b.Predictions),
		slog.Int("fallbacks", b.Fallbacks), slog.Int("failed_items", b.FailedItems),
		slog.Duration("duration", now.Sub(b.CreatedAt)))
	return b, nil
}

// stopped decides what a run that ended early leaves behind.
func (e *Engine) stopped(ctx, runCtx context.Context, b state.Batch, g *leaseGuard, err error, log *slog.Logger) (state.Batch, error) {
	cause := context.Cause(runCtx)
	switch {
	case errors.Is(err, state.ErrLeaseLost) || errors.Is(cause, state.ErrLeaseLost):
		if cause == nil || !errors.Is(cause, state.ErrLeaseLost) {
			cause = err
		}
		e.metrics.LeaseLost.Inc()
		log.Warn("lease lost; stopping without committing", logging.Event(logging.EventLeaseLost),
			slog.String("error", cause.Error()))
		return b, fmt.Errorf("run batch %s: %w", b.ID, cause)
	case permanent(err):
		return b, e.fail(ctx, b, g.lease(), err, log)
	default:
		return b, e.interrupt(ctx, b, g.lease(), log, err.Error())
	}
}

// interrupt releases the lease so another owner can resume at once. It runs
// on a context detached from the run's cancellation, with its own deadline.
func (e *Engine) interrupt(ctx context.Context, b state.Batch, l state.Lease, log *slog.Logger, why string) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := e.store.Release(rctx, b.ID, l); err != nil {
		log.Error("release lease", logging.Err(err))
		e.metrics.Errors.WithLabelValues("release", "transient").Inc()
		return fmt.Errorf("%w (%s); release failed: %w", ErrInterrupted, why, err)
	}
	log.Info("run stopped; lease released", slog.String("reason", why), slog.Int("done_chunks", b.DoneChunks))
	return fmt.Errorf("run batch %s: %w (%s)", b.ID, ErrInterrupted, why)
}

// fail marks the batch failed after a permanent error.
func (e *Engine) fail(ctx context.Context, b state.Batch, l state.Lease, cause error, log *slog.Logger) error {
	log.Error("batch failed", logging.Event(logging.EventBatchFailed), logging.Err(cause))
	e.metrics.Errors.WithLabelValues("run", "permanent").Inc()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := e.store.Finish(fctx, b.ID, l, state.StatusFailed, cause.Error()); err != nil {
		log.Error("record batch failure", logging.Err(err))
		return errors.Join(&BatchFailedError{Err: cause}, err)
	}
	e.metrics.BatchesFinished.WithLabelValues(string(state.StatusFailed)).Inc()
	return &BatchFailedError{Err: cause}
}

// permanent reports errors that retrying cannot fix.
func permanent(err error) bool {
	return errors.Is(err, systems.ErrNoGames) || errors.Is(err, systems.ErrUnknownDate) ||
		errors.Is(err, state.ErrNotFound) || errors.Is(err, state.ErrFinished) ||
		errors.Is(err, systems.ErrPermanent) || errors.Is(err, errPermanent)
}

var errPermanent = errors.New("permanent")

// retry runs op until it succeeds, fails permanently, or ctx ends. Transient
// errors (an unreachable store, a feature source outage) are retried with
// capped exponential backoff and logged; they never end a batch.
func (e *Engine) retry(ctx context.Context, op string, fn func() error) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 50 * time.Millisecond
	b.MaxInterval = e.cfg.RetryMaxInterval
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		err := fn()
		if err != nil && (permanent(err) || errors.Is(err, state.ErrLeaseLost) || ctx.Err() != nil) {
			return struct{}{}, backoff.Permanent(err)
		}
		return struct{}{}, err
	}, backoff.WithBackOff(b), backoff.WithMaxElapsedTime(0), backoff.WithNotify(func(err error, next time.Duration) {
		e.metrics.Errors.WithLabelValues(op, "transient").Inc()
		e.log.Warn("transient error; retrying", slog.String("op", op), slog.String("error", err.Error()),
			slog.Duration("retry_in", next))
	}))
	return err
}

// runChunk computes, writes and checkpoints one chunk, returning the new
// progress.
func (e *Engine) runChunk(ctx context.Context, b state.Batch, chunk int, g *leaseGuard, log *slog.Logger) (state.Progress, error) {
	start := e.clock.Now()
	items := b.Chunk(chunk)
	clog := log.With(slog.Int("chunk", chunk))
	clog.Info("chunk started", logging.Event(logging.EventChunkStarted), slog.Int("items", len(items)))

	var feats map[string]*systems.Features
	err := e.retry(ctx, "load features", func() (err error) {
		feats, err = e.features.Features(ctx, b.Request.GameDate, items)
		return err
	})
	if err != nil {
		return b.Progress, fmt.Errorf("load features of chunk %d: %w", chunk, err)
	}
	rows, delta := e.predictChunk(ctx, b, items, feats, clog)
	if err := context.Cause(ctx); err != nil {
		return b.Progress, err // abandon: never write rows a cancelled fan-out produced
	}
	if !g.valid() {
		return b.Progress, fmt.Errorf("chunk %d: %w", chunk, state.ErrLeaseLost)
	}
	lease := g.lease()
	if err := e.retry(ctx, "write predictions", func() error {
		return e.sink.Write(ctx, b.ID, lease.Epoch, rows)
	}); err != nil {
		return b.Progress, fmt.Errorf("write chunk %d: %w", chunk, err)
	}
	next := b.Progress.Add(delta)
	cpStart := e.clock.Now()
	stored := lease
	err = e.retry(ctx, "checkpoint", func() error {
		l, err := e.store.Checkpoint(ctx, b.ID, lease, next, e.cfg.LeaseTTL)
		if errors.Is(err, state.ErrLeaseLost) {
			// An earlier try may have committed before its answer was lost.
			if cur, gerr := e.store.Get(ctx, b.ID); gerr == nil && cur.Lease.Owner == lease.Owner &&
				cur.Lease.Epoch == lease.Epoch && cur.DoneChunks == next.DoneChunks {
				l, err = cur.Lease, nil
			}
		}
		stored = l
		return err
	})
	if err != nil {
		return b.Progress, fmt.Errorf("checkpoint chunk %d: %w", chunk, err)
	}
	g.renewed(cpStart, stored)
	e.metrics.CheckpointDuration.Observe(e.clock.Since(cpStart).Seconds())
	e.metrics.ChunkDuration.Observe(e.clock.Since(start).Seconds())
	clog.Info("chunk committed", logging.Event(logging.EventChunkCommitted), slog.Int("done_chunks", next.DoneChunks),
		slog.Int("total_chunks", b.TotalChunks()), slog.Int("rows", len(rows)),
		slog.Duration("duration", e.clock.Since(start)))
	return next, nil
}

// predictChunk fans the chunk out: one task per (player, system), at most
// Concurrency at once. Systems that combine others (ensemble_v1) run in a
// second phase over the first phase's successful estimates; their inputs are
// computed even when not requested (without a row). Every task yields a row;
// failures become fallbacks or failure records, never errors.
func (e *Engine) predictChunk(ctx context.Context, b state.Batch, items []string,
	feats map[string]*systems.Features, log *slog.Logger) ([]systems.Prediction, state.Progress) {
	sys := b.Request.Systems
	rows := make([]systems.Prediction, len(items)*len(sys))
	now := e.clock.Now().UTC()

	// Phase 1 ids: requested plain systems, then inputs of requested
	// combiners that were not requested themselves.
	var combiners []int
	requested := map[string]bool{}
	for j, sid := range sys {
		requested[sid] = true
		if _, ok := e.combiner(sid); ok {
			combiners = append(combiners, j)
		}
	}
	var extra []string
	for _, j := range combiners {
		c, _ := e.combiner(sys[j])
		for _, in := range c.Inputs() {
			if _, isComb := e.combiner(in); !requested[in] && !isComb && e.registry.Has(in) && !slices.Contains(extra, in) {
				extra = append(extra, in)
			}
		}
	}
	type estimates struct {
		mu sync.Mutex
		by map[string]systems.Estimate
	}
	var inputs []estimates
	if len(combiners) > 0 {
		inputs = make([]estimates, len(items))
		for i := range inputs {
			inputs[i].by = map[string]systems.Estimate{}
		}
	}
	keep := func(i int, id string, est systems.Estimate) {
		if inputs == nil {
			return
		}
		inputs[i].mu.Lock()
		inputs[i].by[id] = est
		inputs[i].mu.Unlock()
	}

	var g errgroup.Group
	g.SetLimit(e.cfg.Concurrency)
	for i, player := range items {
		f := feats[player]
		var invalid error
		if f != nil {
			invalid = systems.Validate(f, e.cfg.MinQuality)
		}
		for j, sid := range sys {
			row := &rows[i*len(sys)+j]
			*row = systems.Prediction{BatchID: b.ID, GameDate: b.Request.GameDate, PlayerLookup: player,
				SystemID: sid, CreatedAt: now, Recommendation: systems.Pass}
			switch {
			case f == nil:
				row.Failed, row.FailureReason = true, "no_features: player has no game or no feature row on this date"
				continue
			case invalid != nil:
				row.GameID = f.GameID
				row.Failed, row.FailureReason = true, "invalid_features: "+invalid.Error()
				continue
			}
			row.GameID = f.GameID
			if f.HasLine {
				line := f.Line
				row.Line = &line
			}
			if _, isComb := e.combiner(sid); isComb {
				continue // phase 2
			}
			g.Go(func() error {
				e.fill(ctx, f, row, row.SystemID, nil, log)
				if !row.Failed && !row.Fallback {
					keep(i, sid, systems.Estimate{Points: row.PredictedPoints, Confidence: row.Confidence, Recommendation: row.Recommendation})
				}
				return nil
			})
		}
		if f == nil || invalid != nil {
			continue
		}
		for _, id := range extra {
			g.Go(func() error {
				if est, _, err := e.call(ctx, id, func(ctx context.Context) (systems.Estimate, error) {
					return e.systems[id].Predict(ctx, f)
				}); err == nil {
					keep(i, id, est)
				}
				return nil
			})
		}
	}
	_ = g.Wait() // tasks never return errors
	if len(combiners) > 0 {
		for i, player := range items {
			f := feats[player]
			if f == nil {
				continue
			}
			for _, j := range combiners {
				row := &rows[i*len(sys)+j]
				if row.Failed {
					continue
				}
				c, _ := e.combiner(row.SystemID)
				in := inputs[i].by
				g.Go(func() error {
					est, reason, err := e.call(ctx, row.SystemID, func(ctx context.Context) (systems.Estimate, error) {
						return c.Combine(ctx, f, in)
					})
					if err == nil {
						e.setRow(row, row.SystemID, est)
						return nil
					}
					e.noteFailure(ctx, f, row.SystemID, reason, err, log)
					e.fill(ctx, f, row, e.registry.Fallback(row.SystemID), []string{reason}, log)
					return nil
				})
			}
		}
		_ = g.Wait()
	}
	delta := state.Progress{DoneChunks: 1, DoneItems: len(items)}
	for i := range rows {
		r := &rows[i]
		outcome := "ok"
		switch {
		case r.Failed:
			delta.FailedItems++
			outcome = "failed"
		case r.Fallback:
			delta.Fallbacks++
			delta.Predictions++
			outcome = "fallback"
		default:
			delta.Predictions++
		}
		e.metrics.Predictions.WithLabelValues(r.SystemID, outcome).Inc()
	}
	return rows, delta
}

// combiner returns id's system as a Combiner, if it is one.
func (e *Engine) combiner(id string) (systems.Combiner, bool) {
	s, ok := e.registry.Get(id)
	if !ok {
		return nil, false
	}
	c, ok := s.(systems.Combiner)
	return c, ok
}

func (e *Engine) setRow(row *systems.Prediction, by string, est systems.Estimate) {
	row.PredictedPoints = est.Points
	row.Confidence = est.Confidence
	row.Recommendation = est.Recommendation
	row.ProducedBy = by
	row.ModelVersion = e.systems[by].Version()
}

// fill fills row from system start, then along its fallback chain. reasons
// holds the failures before start (the requested system's, for a fallback).
func (e *Engine) fill(ctx context.Context, f *systems.Features, row *systems.Prediction, start string, reasons []string, log *slog.Logger) {
	for cur := start; cur != ""; cur = e.registry.Fallback(cur) {
		if _, isComb := e.combiner(cur); isComb {
			reasons = append(reasons, "combiner_as_fallback")
			continue
		}
		est, reason, err := e.call(ctx, cur, func(ctx context.Context) (systems.Estimate, error) {
			return e.systems[cur].Predict(ctx, f)
		})
		if err == nil {
			e.setRow(row, cur, est)
			if cur != row.SystemID {
				row.Fallback, row.FallbackFrom, row.FallbackReason = true, row.SystemID, reasons[0]
			}
			return
		}
		if ctx.Err() != nil {
			return // the chunk is being abandoned; its rows are never written
		}
		reasons = append(reasons, reason)
		e.noteFailure(ctx, f, cur, reason, err, log)
	}
	row.Failed = true
	row.FailureReason = "all systems in the fallback chain failed: " + strings.Join(reasons, ", ")
}

// noteFailure counts and logs a failed system call.
func (e *Engine) noteFailure(ctx context.Context, f *systems.Features, id, reason string, err error, log *slog.Logger) {
	if ctx.Err() != nil {
		return
	}
	e.metrics.Fallbacks.WithLabelValues(id, reason).Inc()
	attrs := []any{logging.Event(logging.EventFallbackUsed), slog.String("system_id", id),
		slog.String("player_lookup", f.PlayerLookup), slog.String("reason", reason),
		slog.String("fallback", e.registry.Fallback(id))}
	switch reason {
	case "panic":
		log.Error("system panicked", append(attrs, logging.Err(err))...)
	case "insufficient_data": // the system declined, as designed: not a failure
		log.Debug("system declined", append(attrs, slog.String("error", err.Error()))...)
	default:
		log.Warn("system failed", append(attrs, slog.String("error", err.Error()))...)
	}
}

// call runs one system under its own deadline, behind its breaker, with
// panics recovered. The result arrives through a channel so a system that
// ignores its context is abandoned at the deadline instead of stretching the
// chunk; its goroutine ends when the system returns.
func (e *Engine) call(ctx context.Context, id string, fn func(context.Context) (systems.Estimate, error)) (systems.Estimate, string, error) {
	timeout := e.cfg.SystemTimeout
	if t, ok := e.cfg.SystemTimeouts[id]; ok {
		timeout = t
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	type result struct {
		est systems.Estimate
		err error
	}
	ch := make(chan result, 1)
	go func() {
		est, err := e.breakers[id].Execute(func() (est systems.Estimate, err error) {
			defer func() {
				if r := recover(); r != nil {
					err = newPanicError(r)
				}
			}()
			return fn(cctx)
		})
		ch <- result{est, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-cctx.Done():
		r.err = cctx.Err()
	}
	var pe *PanicError
	switch {
	case r.err == nil:
		return r.est, "", nil
	case errors.As(r.err, &pe):
		return r.est, "panic", r.err
	case errors.Is(r.err, gobreaker.ErrOpenState), errors.Is(r.err, gobreaker.ErrTooManyRequests):
		return r.est, "circuit_open", r.err
	case errors.Is(r.err, context.DeadlineExceeded) && ctx.Err() == nil:
		return r.est, "timeout", r.err
	case errors.Is(r.err, systems.ErrInsufficientData):
		return r.est, "insufficient_data", r.err
	case ctx.Err() != nil:
		return r.est, "cancelled", r.err
	}
	return r.est, "error", r.err
}

// PanicError is a recovered panic with the stack where it happened.
type PanicError struct {
	Value any
	Stack string
}

func newPanicError(v any) *PanicError { return &PanicError{Value: v, Stack: string(debug.Stack())} }

func (p *PanicError) Error() string { return fmt.Sprintf("panic: %v", p.Value) }

// StackTrace implements logging.StackTracer.
func (p *PanicError) StackTrace() string { return p.Stack }

// ---------------------------------------------------------------------------
// Lease keeping

// heartbeat renews the lease every HeartbeatInterval until ctx ends. A lost
// lease cancels the run at once; failed renewals are retried, and the guard's
// timer cancels the run if none succeeds before the lease is about to lapse.
func (e *Engine) heartbeat(ctx context.Context, cancel context.CancelCauseFunc, t clockwork.Ticker, id string, g *leaseGuard, log *slog.Logger) {
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.Chan():
		}
		sent := e.clock.Now()
		rctx, rcancel := context.WithTimeout(ctx, e.cfg.HeartbeatInterval)
		l, err := e.store.Renew(rctx, id, g.lease(), e.cfg.LeaseTTL)
		rcancel()
		switch {
		case err == nil:
			e.metrics.LeaseRenewals.WithLabelValues("ok").Inc()
			g.renewed(sent, l)
		case errors.Is(err, state.ErrLeaseLost):
			e.metrics.LeaseRenewals.WithLabelValues("lost").Inc()
			cancel(fmt.Errorf("renew: %w", err))
			return
		case ctx.Err() != nil:
			return
		default:
			e.metrics.LeaseRenewals.WithLabelValues("error").Inc()
			e.metrics.Errors.WithLabelValues("renew", "transient").Inc()
			log.Warn("lease renewal failed; retrying", slog.String("error", err.Error()),
				slog.Time("valid_until", g.validUntil()))
		}
	}
}

// leaseGuard knows until when the lease is surely ours: the time the last
// successful renewal was *sent*, plus the TTL, minus a safety margin. When that
// passes without a renewal, it calls onExpire (self-fencing), so a worker that
// cannot reach the store stops before another owner may take over.
type leaseGuard struct {
	clock  clockwork.Clock
	ttl    time.Duration
	margin time.Duration
	mu     sync.Mutex
	l      state.Lease
	until  time.Time
	timer  clockwork.Timer
	expire func()
}

func newLeaseGuard(c clockwork.Clock, l state.Lease, sent time.Time, ttl time.Duration, onExpire func()) *leaseGuard {
	g := &leaseGuard{clock: c, ttl: ttl, margin: max(ttl/5, 50*time.Millisecond), l: l, expire: onExpire}
	g.until = sent.Add(ttl - g.margin)
	g.timer = c.AfterFunc(g.until.Sub(c.Now()), onExpire)
	return g
}

// renewed records a write that returned lease l and was sent at sent. The
// lease is ours until the earlier of sent+TTL and the stored expiry (a store
// may have skipped the extension), less the margin.
func (g *leaseGuard) renewed(sent time.Time, l state.Lease) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.l = l
	end := sent.Add(g.ttl)
	if !l.ExpiresAt.IsZero() && l.ExpiresAt.Before(end) {
		end = l.ExpiresAt
	}
	if u := end.Add(-g.margin); u.After(g.until) {
		g.until = u
		g.timer.Reset(u.Sub(g.clock.Now()))
	}
}

func (g *leaseGuard) lease() state.Lease {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.l
}

func (g *leaseGuard) validUntil() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.until
}

func (g *leaseGuard) valid() bool { return g.clock.Now().Before(g.validUntil()) }

func (g *leaseGuard) stop() { g.timer.Stop() }
