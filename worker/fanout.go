package worker

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/predworker/predworker/logging"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
)

// fanout calls the systems for a chunk. It owns a caller per system (its
// deadline, breaker and cap on abandoned calls) and turns every (player,
// system) pair into a row: the system's estimate, a fallback's, or an
// explicit failure record; never an error.
type fanout struct {
	registry   *systems.Registry
	cfg        Config
	log        *slog.Logger
	mu         sync.RWMutex
	callers    map[string]*caller
	limit      int
	minQuality float64
	validate   func(*systems.Features, float64) error
	metrics    *Metrics
	tracer     trace.Tracer
}

func newFanout(cfg Config, reg *systems.Registry, src systems.FeatureSource, m *Metrics, log *slog.Logger, tracer trace.Tracer) *fanout {
	f := &fanout{registry: reg, cfg: cfg, log: log, callers: map[string]*caller{}, limit: cfg.Concurrency,
		minQuality: cfg.MinQuality, validate: systems.Validate, metrics: m, tracer: tracer}
	if v, ok := src.(systems.FeatureValidator); ok {
		f.validate = v.ValidateFeatures
	}
	for _, id := range reg.IDs() {
		f.caller(id)
	}
	return f
}

// caller returns system id's caller, made on first use for a system
// registered after the engine started (a model fleet's refresh); nil when
// id is not registered.
func (f *fanout) caller(id string) *caller {
	f.mu.RLock() // every call comes here: the common case only reads
	c, ok := f.callers[id]
	f.mu.RUnlock()
	if ok {
		return c
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.callers[id]; ok {
		return c
	}
	s, ok := f.registry.Get(id)
	if !ok {
		return nil
	}
	c = newCaller(f.cfg, s, f.log)
	f.callers[id] = c
	return c
}

// callOne calls system id for player through its caller, in a span of its
// own.
func (f *fanout) callOne(ctx context.Context, id, player string, fn func(context.Context) (systems.Estimate, error)) (systems.Estimate, string, error) {
	c := f.caller(id)
	if c == nil {
		return systems.Estimate{}, "error", fmt.Errorf("system %q is not registered", id)
	}
	if !trace.SpanFromContext(ctx).IsRecording() { // the chunk is not traced: neither is the call
		return c.call(ctx, fn)
	}
	ctx, span := f.tracer.Start(ctx, c.spanName, trace.WithAttributes(attrSystem.String(id), attrPlayer.String(player)))
	est, reason, err := c.call(ctx, fn)
	if err != nil {
		span.SetAttributes(attrOutcome.String(reason))
		span.SetStatus(codes.Error, err.Error())
	} else {
		span.SetAttributes(attrOutcome.String("ok"))
	}
	span.End()
	return est, reason, err
}

// predictWith returns the call of system id's Predict on ft.
func (f *fanout) predictWith(id string, ft *systems.Features) func(context.Context) (systems.Estimate, error) {
	return func(ctx context.Context) (systems.Estimate, error) { return f.caller(id).sys.Predict(ctx, ft) }
}

// estimates collects, per item, the successful estimates a combiner needs.
type estimates struct {
	mu sync.Mutex
	by map[string]systems.Estimate
}

// chunkPlan is what predict will do for one chunk.
type chunkPlan struct {
	sys    []string             // the batch's systems, in row order within an item
	rows   []systems.Prediction // items × systems, failure records already filled
	feats  []*systems.Features  // per item; nil when the item gets failure records
	calls  []int                // rows a plain system fills (phase 1)
	combos []int                // rows a combiner fills (phase 2)
	extra  []string             // combiner inputs not requested: computed without a row
	inputs []estimates          // per item, when there are combiners
	failed fallbackTally        // failed calls, by system and reason
}

// predict fans the chunk out: plan → call → combine → tally. One task per
// (player, system), at most limit at once. Systems that combine others
// (ensemble_v1) run in a second phase over the first phase's successful
// estimates; their inputs are computed even when not requested.
func (f *fanout) predict(ctx context.Context, b state.Batch, items []string, feats map[string]*systems.Features,
	now time.Time, log *slog.Logger) ([]systems.Prediction, state.Progress) {
	p := f.plan(b, items, feats, now)
	f.call(ctx, p, log)
	f.combine(ctx, p, log)
	p.failed.log(log)
	return p.rows, f.tally(p.rows, len(items), len(p.sys))
}

// plan lays out the rows: failure records for players without valid
// features, the calls of phase 1 and the combiner rows of phase 2.
func (f *fanout) plan(b state.Batch, items []string, feats map[string]*systems.Features, now time.Time) *chunkPlan {
	p := &chunkPlan{sys: b.Request.Systems, feats: make([]*systems.Features, len(items))}
	p.rows = make([]systems.Prediction, len(items)*len(p.sys))
	for _, sid := range p.sys {
		if c, ok := f.combiner(sid); ok {
			for _, in := range c.Inputs() {
				if _, isComb := f.combiner(in); !isComb && f.registry.Has(in) && !slices.Contains(p.sys, in) && !slices.Contains(p.extra, in) {
					p.extra = append(p.extra, in)
				}
			}
		}
	}
	for i, player := range items {
		ft := feats[player]
		var invalid error
		if ft != nil {
			invalid = f.validate(ft, f.minQuality)
		}
		for j, sid := range p.sys {
			k := i*len(p.sys) + j
			row := &p.rows[k]
			*row = systems.Prediction{BatchID: b.ID, GameDate: b.Request.GameDate, PlayerLookup: player,
				SystemID: sid, CreatedAt: now, Recommendation: systems.Pass}
			switch {
			case ft == nil:
				row.Failed, row.FailureReason = true, "no_features: player has no game or no feature row on this date"
				continue
			case invalid != nil:
				row.GameID, row.Attrs = ft.GameID, ft.Attrs
				row.Failed, row.FailureReason = true, "invalid_features: "+invalid.Error()
				continue
			}
			row.GameID, row.Attrs = ft.GameID, ft.Attrs
			if ft.HasLine {
				line := ft.Line
				row.Line = &line
			}
			if _, isComb := f.combiner(sid); isComb {
				p.combos = append(p.combos, k)
			} else {
				p.calls = append(p.calls, k)
			}
		}
		if ft != nil && invalid == nil {
			p.feats[i] = ft
		}
	}
	if len(p.combos) > 0 {
		p.inputs = make([]estimates, len(items))
		for i := range p.inputs {
			p.inputs[i].by = map[string]systems.Estimate{}
		}
	}
	return p
}

// keep records an estimate a combiner of item i may need.
func (p *chunkPlan) keep(i int, id string, est systems.Estimate) {
	if p.inputs == nil {
		return
	}
	p.inputs[i].mu.Lock()
	p.inputs[i].by[id] = est
	p.inputs[i].mu.Unlock()
}

// call runs phase 1: every plain system's row, and the unrequested inputs of
// combiners.
func (f *fanout) call(ctx context.Context, p *chunkPlan, log *slog.Logger) {
	var g errgroup.Group
	g.SetLimit(f.limit)
	for _, k := range p.calls {
		i, row := k/len(p.sys), &p.rows[k]
		g.Go(func() error {
			defer f.contain(row, log)
			f.fill(ctx, p, p.feats[i], row, row.SystemID, nil, log)
			if !row.Failed && !row.Fallback {
				p.keep(i, row.SystemID, systems.Estimate{Points: row.PredictedPoints, Confidence: row.Confidence, Recommendation: row.Recommendation})
			}
			return nil
		})
	}
	if p.inputs != nil {
		for i, ft := range p.feats {
			if ft == nil {
				continue
			}
			for _, id := range p.extra {
				g.Go(func() error {
					defer f.contain(nil, log)
					if est, _, err := f.callOne(ctx, id, ft.PlayerLookup, f.predictWith(id, ft)); err == nil {
						p.keep(i, id, est)
					}
					return nil
				})
			}
		}
	}
	_ = g.Wait() // tasks never return errors
}

// combine runs phase 2: each combiner over its item's phase-1 estimates,
// falling back along its chain when it cannot answer.
func (f *fanout) combine(ctx context.Context, p *chunkPlan, log *slog.Logger) {
	var g errgroup.Group
	g.SetLimit(f.limit)
	for _, k := range p.combos {
		i, row := k/len(p.sys), &p.rows[k]
		ft, c := p.feats[i], f.mustCombiner(row.SystemID)
		in := p.inputs[i].by
		g.Go(func() error {
			defer f.contain(row, log)
			est, reason, err := f.callOne(ctx, row.SystemID, ft.PlayerLookup, func(ctx context.Context) (systems.Estimate, error) {
				return c.Combine(ctx, ft, in)
			})
			if err == nil {
				f.setRow(row, row.SystemID, est)
				return nil
			}
			f.noteFailure(ctx, p, ft, row.SystemID, reason, err, log)
			f.fill(ctx, p, ft, row, f.registry.Fallback(row.SystemID), []string{reason}, log)
			return nil
		})
	}
	_ = g.Wait()
}

// contain turns a panic in a fan-out task (a bug of the engine's own: the
// systems' panics are recovered in callOne) into a failure record for its
// row, so no fan-out goroutine can end the process.
func (f *fanout) contain(row *systems.Prediction, log *slog.Logger) {
	v := recover()
	if v == nil {
		return
	}
	err := newPanicError(v)
	attrs := []any{ErrorAttrs(err)}
	if row != nil {
		row.Fallback, row.Failed, row.FailureReason = false, true, "internal error: "+err.Error()
		attrs = append(attrs, slog.String("system_id", row.SystemID), slog.String("player_lookup", row.PlayerLookup))
	}
	log.Error("fan-out task panicked", attrs...)
}

// tally counts the chunk's rows into a progress delta and the metrics.
func (f *fanout) tally(rows []systems.Prediction, items, perItem int) state.Progress {
	delta := state.Progress{DoneChunks: 1, DoneItems: items}
	for i := range items { // rows are laid out item by item
		if perItem > 0 && !slices.ContainsFunc(rows[i*perItem:(i+1)*perItem], func(r systems.Prediction) bool { return !r.Failed }) {
			delta.FailedPlayers++
		}
	}
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
		f.metrics.Predictions.WithLabelValues(r.SystemID, outcome).Inc()
	}
	return delta
}

// combiner returns id's system as a Combiner, if it is one.
func (f *fanout) combiner(id string) (systems.Combiner, bool) {
	s, ok := f.registry.Get(id)
	if !ok {
		return nil, false
	}
	c, ok := s.(systems.Combiner)
	return c, ok
}

// mustCombiner is combiner for an id plan has already found to be one.
func (f *fanout) mustCombiner(id string) systems.Combiner {
	c, _ := f.combiner(id)
	return c
}

func (f *fanout) setRow(row *systems.Prediction, by string, est systems.Estimate) {
	row.PredictedPoints = est.Points
	row.Confidence = est.Confidence
	row.Recommendation = est.Recommendation
	row.ProducedBy = by
	row.ModelVersion = f.caller(by).sys.Version()
}

// fill fills row from system start, then along its fallback chain. reasons
// holds the failures before start (the requested system's, for a fallback).
func (f *fanout) fill(ctx context.Context, p *chunkPlan, ft *systems.Features, row *systems.Prediction, start string, reasons []string, log *slog.Logger) {
	for cur := start; cur != ""; cur = f.registry.Fallback(cur) {
		if _, isComb := f.combiner(cur); isComb {
			reasons = append(reasons, "combiner_as_fallback")
			continue
		}
		est, reason, err := f.callOne(ctx, cur, ft.PlayerLookup, f.predictWith(cur, ft))
		if err == nil {
			f.setRow(row, cur, est)
			if cur != row.SystemID {
				row.Fallback, row.FallbackFrom, row.FallbackReason = true, row.SystemID, reasons[0]
			}
			return
		}
		if ctx.Err() != nil {
			return // the chunk is being abandoned; its rows are never written
		}
		reasons = append(reasons, reason)
		f.noteFailure(ctx, p, ft, cur, reason, err, log)
	}
	row.Failed = true
	row.FailureReason = "all systems in the fallback chain failed: " + strings.Join(reasons, ", ")
}

// noteFailure counts a failed system call (metrics, the chunk's summary)
// and logs it at DEBUG (event fallback_used); a panic is also an ERROR with
// its stack, for Error Reporting.
func (f *fanout) noteFailure(ctx context.Context, p *chunkPlan, ft *systems.Features, id, reason string, err error, log *slog.Logger) {
	if ctx.Err() != nil {
		return
	}
	f.metrics.Fallbacks.WithLabelValues(id, reason).Inc()
	p.failed.add(id, reason)
	attrs := []any{slog.String("system_id", id), slog.String("player_lookup", ft.PlayerLookup),
		slog.String("reason", reason), slog.String("fallback", f.registry.Fallback(id))}
	if reason == "panic" {
		log.Error("system panicked", append(attrs, ErrorAttrs(err))...)
	}
	log.Debug("fallback used", append(attrs, logging.Event(logging.EventFallbackUsed), WarnAttrs(err))...)
}

// fallbackTally counts a chunk's failed calls by system and reason, for the
// one summary line per chunk.
type fallbackTally struct {
	mu sync.Mutex
	n  map[string]map[string]int
}

func (t *fallbackTally) add(id, reason string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == nil {
		t.n = map[string]map[string]int{}
	}
	if t.n[id] == nil {
		t.n[id] = map[string]int{}
	}
	t.n[id][reason]++
}

// log writes the summary: INFO when every failure was a decline
// (insufficient_data, as designed), WARN otherwise; nothing without
// failures.
func (t *fallbackTally) log(log *slog.Logger) {
	t.mu.Lock()
	defer t.mu.Unlock()
	total, declinesOnly := 0, true
	var bySystem []any
	for _, id := range slices.Sorted(maps.Keys(t.n)) {
		var byReason []any
		for _, reason := range slices.Sorted(maps.Keys(t.n[id])) {
			n := t.n[id][reason]
			total += n
			declinesOnly = declinesOnly && reason == "insufficient_data"
			byReason = append(byReason, slog.Int(reason, n))
		}
		bySystem = append(bySystem, slog.Group(id, byReason...))
	}
	if total == 0 {
		return
	}
	level := slog.LevelWarn
	if declinesOnly {
		level = slog.LevelInfo
	}
	log.Log(context.Background(), level, "system calls fell back in this chunk", logging.Event(logging.EventChunkFallbacks),
		slog.Int("failed_calls", total), slog.Group("by_system", bySystem...))
}
