package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"
	"golang.org/x/sync/errgroup"

	"github.com/predworker/predworker/logging"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
)

// fanout calls the systems for a chunk. It owns the systems (with injected
// faults applied), their circuit breakers and deadlines, and turns every
// (player, system) pair into a row: the system's estimate, a fallback's, or
// an explicit failure record; never an error.
type fanout struct {
	registry   *systems.Registry
	systems    map[string]systems.System
	breakers   map[string]*gobreaker.CircuitBreaker[systems.Estimate]
	timeout    time.Duration
	timeouts   Timeouts
	limit      int
	minQuality float64
	metrics    *Metrics
}

func newFanout(cfg Config, reg *systems.Registry, m *Metrics, log *slog.Logger) *fanout {
	f := &fanout{registry: reg, systems: map[string]systems.System{},
		breakers: map[string]*gobreaker.CircuitBreaker[systems.Estimate]{},
		timeout:  cfg.SystemTimeout, timeouts: cfg.SystemTimeouts, limit: cfg.Concurrency,
		minQuality: cfg.MinQuality, metrics: m}
	for _, id := range reg.IDs() {
		s, _ := reg.Get(id)
		f.systems[id] = withFaults(s, cfg.Faults)
		bs := BreakerSettings{Failures: cfg.BreakerFailures, Cooldown: cfg.BreakerCooldown}
		if o, ok := cfg.Breakers[id]; ok {
			bs = o
		}
		f.breakers[id] = gobreaker.NewCircuitBreaker[systems.Estimate](gobreaker.Settings{
			Name:    id,
			Timeout: bs.Cooldown,
			ReadyToTrip: func(c gobreaker.Counts) bool {
				return c.ConsecutiveFailures >= bs.Failures
			},
			// A run being cancelled says nothing about the system.
			IsExcluded: func(err error) bool { return errors.Is(err, context.Canceled) },
			OnStateChange: func(name string, from, to gobreaker.State) {
				if to == gobreaker.StateOpen {
					log.Warn("circuit opened", logging.Event(logging.EventCircuitOpened),
						slog.String("system_id", name), slog.Int64("cooldown_ms", bs.Cooldown.Milliseconds()))
				}
			},
		})
	}
	return f
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
	return p.rows, f.tally(p.rows, len(items))
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
			invalid = systems.Validate(ft, f.minQuality)
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
				row.GameID = ft.GameID
				row.Failed, row.FailureReason = true, "invalid_features: "+invalid.Error()
				continue
			}
			row.GameID = ft.GameID
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
			f.fill(ctx, p.feats[i], row, row.SystemID, nil, log)
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
					if est, _, err := f.callOne(ctx, id, func(ctx context.Context) (systems.Estimate, error) {
						return f.systems[id].Predict(ctx, ft)
					}); err == nil {
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
			est, reason, err := f.callOne(ctx, row.SystemID, func(ctx context.Context) (systems.Estimate, error) {
				return c.Combine(ctx, ft, in)
			})
			if err == nil {
				f.setRow(row, row.SystemID, est)
				return nil
			}
			f.noteFailure(ctx, ft, row.SystemID, reason, err, log)
			f.fill(ctx, ft, row, f.registry.Fallback(row.SystemID), []string{reason}, log)
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
func (f *fanout) tally(rows []systems.Prediction, items int) state.Progress {
	delta := state.Progress{DoneChunks: 1, DoneItems: items}
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
	row.ModelVersion = f.systems[by].Version()
}

// fill fills row from system start, then along its fallback chain. reasons
// holds the failures before start (the requested system's, for a fallback).
func (f *fanout) fill(ctx context.Context, ft *systems.Features, row *systems.Prediction, start string, reasons []string, log *slog.Logger) {
	for cur := start; cur != ""; cur = f.registry.Fallback(cur) {
		if _, isComb := f.combiner(cur); isComb {
			reasons = append(reasons, "combiner_as_fallback")
			continue
		}
		est, reason, err := f.callOne(ctx, cur, func(ctx context.Context) (systems.Estimate, error) {
			return f.systems[cur].Predict(ctx, ft)
		})
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
		f.noteFailure(ctx, ft, cur, reason, err, log)
	}
	row.Failed = true
	row.FailureReason = "all systems in the fallback chain failed: " + strings.Join(reasons, ", ")
}

// noteFailure counts and logs a failed system call.
func (f *fanout) noteFailure(ctx context.Context, ft *systems.Features, id, reason string, err error, log *slog.Logger) {
	if ctx.Err() != nil {
		return
	}
	f.metrics.Fallbacks.WithLabelValues(id, reason).Inc()
	attrs := []any{logging.Event(logging.EventFallbackUsed), slog.String("system_id", id),
		slog.String("player_lookup", ft.PlayerLookup), slog.String("reason", reason),
		slog.String("fallback", f.registry.Fallback(id))}
	switch reason {
	case "panic":
		log.Error("system panicked", append(attrs, ErrorAttrs(err))...)
	case "insufficient_data": // the system declined, as designed: not a failure
		log.Debug("system declined", append(attrs, slog.String("detail", err.Error()))...)
	default:
		log.Warn("system failed", append(attrs, WarnAttrs(err))...)
	}
}

// callOne runs one system under its own deadline, behind its breaker, with
// panics recovered, and names the reason when it fails. The result arrives
// through a channel so a system that ignores its context is abandoned at the
// deadline instead of stretching the chunk; its goroutine ends when the
// system returns.
func (f *fanout) callOne(ctx context.Context, id string, fn func(context.Context) (systems.Estimate, error)) (systems.Estimate, string, error) {
	timeout := f.timeout
	if t, ok := f.timeouts[id]; ok {
		timeout = t
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	type result struct {
		est systems.Estimate
		err error
	}
	br, ok := f.breakers[id]
	if !ok {
		return systems.Estimate{}, "error", fmt.Errorf("system %q is not registered", id)
	}
	ch := make(chan result, 1)
	go func() {
		var r result
		defer func() { // nothing in this goroutine may end the process
			if v := recover(); v != nil {
				r = result{err: newPanicError(v)}
			}
			ch <- r
		}()
		r.est, r.err = br.Execute(func() (est systems.Estimate, err error) {
			defer func() {
				if v := recover(); v != nil {
					err = newPanicError(v)
				}
			}()
			return fn(cctx)
		})
	}()
	var r result
	select {
	case r = <-ch:
	case <-cctx.Done():
		r.err = cctx.Err()
	}
	return r.est, failureReason(ctx, r.err), r.err
}

// failureReason names why a system call failed (the fallback_reason of its
// row); "" when it did not.
func failureReason(ctx context.Context, err error) string {
	var pe *PanicError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &pe):
		return "panic"
	case errors.Is(err, gobreaker.ErrOpenState), errors.Is(err, gobreaker.ErrTooManyRequests):
		return "circuit_open"
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		return "timeout"
	case errors.Is(err, systems.ErrInsufficientData):
		return "insufficient_data"
	case ctx.Err() != nil:
		return "cancelled"
	}
	return "error"
}
