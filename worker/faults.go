package worker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/predworker/predworker/systems"
)

// FaultKind is what an injected fault does to a system call.
type FaultKind string

// Fault kinds.
const (
	FaultLatency FaultKind = "latency" // sleep, then answer normally
	FaultError   FaultKind = "error"   // return an error
	FaultPanic   FaultKind = "panic"   // panic
	FaultHang    FaultKind = "hang"    // block until the call's deadline
	FaultStuck   FaultKind = "stuck"   // ignore the deadline and never return
)

// stuckForever is what a stuck call waits on: nothing ever closes it.
var stuckForever = make(chan struct{})

// Fault targets other than systems: the feature source's calls (Slate,
// Features) and the sink's writes (Write, Stage), where BigQuery's latency
// would be.
const (
	TargetFeatures = "features"
	TargetSink     = "sink"
)

// FaultRule is one rule of FAULTS.
type FaultRule struct {
	System  string // system id or "*" (empty for a Target rule)
	Target  string // TargetFeatures or TargetSink (empty for a System rule)
	Kind    FaultKind
	Rate    float64 // 0..1
	Latency time.Duration
}

// errInjected is the error an "error" fault returns.
var errInjected = errors.New("injected fault")

// Faults are the rules of FAULTS.
type Faults []FaultRule

// UnmarshalText implements encoding.TextUnmarshaler (see ParseFaults).
func (f *Faults) UnmarshalText(b []byte) error {
	rules, err := ParseFaults(string(b))
	if err != nil {
		return err
	}
	*f = rules
	return nil
}

// String renders the rules in FAULTS syntax.
func (f Faults) String() string {
	parts := make([]string, len(f))
	for i, r := range f {
		if r.Target != "" {
			parts[i] = fmt.Sprintf("target=%s,kind=%s,rate=%g", r.Target, r.Kind, r.Rate)
		} else {
			parts[i] = fmt.Sprintf("system=%s,kind=%s,rate=%g", r.System, r.Kind, r.Rate)
		}
		if r.Latency > 0 {
			parts[i] += ",latency=" + r.Latency.String()
		}
	}
	return strings.Join(parts, ";")
}

// ParseFaults parses FAULTS: rules separated by ";", each
// "system=<id|*>,kind=<latency|error|panic|hang|stuck>,rate=<0..1>[,latency=<duration>]"
// or "target=<features|sink>,kind=<latency|error|hang>,rate=<0..1>[,latency=<duration>]".
func ParseFaults(spec string) (Faults, error) {
	var rules Faults
	for i, raw := range strings.Split(spec, ";") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		r := FaultRule{Rate: -1}
		for _, kv := range strings.Split(raw, ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
			if !ok {
				return nil, fmt.Errorf("rule %d: %q is not key=value", i+1, kv)
			}
			switch k {
			case "system":
				r.System = v
			case "target":
				if v != TargetFeatures && v != TargetSink {
					return nil, fmt.Errorf("rule %d: target %q must be features or sink", i+1, v)
				}
				r.Target = v
			case "kind":
				r.Kind = FaultKind(v)
			case "rate":
				f, err := strconv.ParseFloat(v, 64)
				if err != nil || f < 0 || f > 1 {
					return nil, fmt.Errorf("rule %d: rate %q must be a number from 0 to 1", i+1, v)
				}
				r.Rate = f
			case "latency":
				d, err := time.ParseDuration(v)
				if err != nil || d < 0 {
					return nil, fmt.Errorf("rule %d: latency %q must be a duration like 20ms", i+1, v)
				}
				r.Latency = d
			default:
				return nil, fmt.Errorf("rule %d: unknown key %q (want system or target, kind, rate, latency)", i+1, k)
			}
		}
		switch {
		case r.System == "" && r.Target == "":
			return nil, fmt.Errorf("rule %d: system (an id or *) or target (features or sink) is required", i+1)
		case r.System != "" && r.Target != "":
			return nil, fmt.Errorf("rule %d: a rule names a system or a target, not both", i+1)
		case r.Target != "" && r.Kind != FaultLatency && r.Kind != FaultError && r.Kind != FaultHang:
			return nil, fmt.Errorf("rule %d: a target takes kind latency, error or hang", i+1)
		case r.Rate < 0:
			return nil, fmt.Errorf("rule %d: rate is required", i+1)
		}
		switch r.Kind {
		case FaultLatency:
			if r.Latency <= 0 {
				return nil, fmt.Errorf("rule %d: kind=latency needs latency=<duration>", i+1)
			}
		case FaultError, FaultPanic, FaultHang, FaultStuck:
		default:
			return nil, fmt.Errorf("rule %d: kind %q must be latency, error, panic, hang or stuck", i+1, r.Kind)
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// faulty wraps a system with the rules that apply to it.
type faulty struct {
	systems.System
	rules []FaultRule
}

// withFaults returns s wrapped with the rules naming it (or "*"); s itself
// when none do.
func withFaults(s systems.System, rules Faults) systems.System {
	var mine []FaultRule
	for _, r := range rules {
		if r.Target == "" && (r.System == "*" || r.System == s.ID()) {
			mine = append(mine, r)
		}
	}
	if len(mine) == 0 {
		return s
	}
	return faulty{System: s, rules: mine}
}

// inject applies rules to one call named what: nil to go on, or the error
// the call returns instead.
func inject(ctx context.Context, what string, rules []FaultRule) error {
	for _, r := range rules {
		if r.Rate < 1 && rand.Float64() >= r.Rate {
			continue
		}
		switch r.Kind {
		case FaultLatency:
			t := time.NewTimer(r.Latency)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		case FaultError:
			return fmt.Errorf("%s: %w", what, errInjected)
		case FaultPanic:
			panic(fmt.Sprintf("injected panic in %s", what))
		case FaultHang:
			<-ctx.Done()
			return ctx.Err()
		case FaultStuck: // a system that ignores its context: the engine abandons it
			<-stuckForever
			return ctx.Err()
		}
	}
	return nil
}

func (f faulty) Predict(ctx context.Context, in *systems.Features) (systems.Estimate, error) {
	if err := inject(ctx, f.ID(), f.rules); err != nil {
		return systems.Estimate{}, err
	}
	return f.System.Predict(ctx, in)
}

func targetRules(rules Faults, target string) []FaultRule {
	var out []FaultRule
	for _, r := range rules {
		if r.Target == target {
			out = append(out, r)
		}
	}
	return out
}

// injectedErr marks an injected feature-source or sink error as transient,
// as an outage of the real backend would be.
func injectedErr(err error) error {
	if err == nil || !errors.Is(err, errInjected) {
		return err
	}
	return fmt.Errorf("%w: %w", systems.ErrUnavailable, err)
}

// faultySource is a feature source with injected faults on its calls.
type faultySource struct {
	systems.FeatureSource
	rules []FaultRule
}

// withSourceFaults wraps src with the rules targeting the feature source.
func withSourceFaults(src systems.FeatureSource, rules Faults) systems.FeatureSource {
	mine := targetRules(rules, TargetFeatures)
	if len(mine) == 0 || src == nil {
		return src
	}
	return faultySource{FeatureSource: src, rules: mine}
}

func (f faultySource) Slate(ctx context.Context, date string) ([]string, error) {
	if err := inject(ctx, "feature source", f.rules); err != nil {
		return nil, injectedErr(err)
	}
	return f.FeatureSource.Slate(ctx, date)
}

func (f faultySource) Features(ctx context.Context, date string, players []string) (map[string]*systems.Features, error) {
	if err := inject(ctx, "feature source", f.rules); err != nil {
		return nil, injectedErr(err)
	}
	return f.FeatureSource.Features(ctx, date, players)
}

// ValidateFeatures keeps the wrapped source's own validation.
func (f faultySource) ValidateFeatures(ft *systems.Features, minQuality float64) error {
	if v, ok := f.FeatureSource.(systems.FeatureValidator); ok {
		return v.ValidateFeatures(ft, minQuality)
	}
	return systems.Validate(ft, minQuality)
}

// faultySink is a sink with injected faults on its writes; faultyStager
// keeps a Stager a Stager.
type faultySink struct {
	systems.Sink
	rules []FaultRule
}

type faultyStager struct {
	faultySink
	st systems.Stager
}

// withSinkFaults wraps sink with the rules targeting the sink.
func withSinkFaults(sink systems.Sink, rules Faults) systems.Sink {
	mine := targetRules(rules, TargetSink)
	if len(mine) == 0 || sink == nil {
		return sink
	}
	fs := faultySink{Sink: sink, rules: mine}
	if st, ok := sink.(systems.Stager); ok {
		return faultyStager{faultySink: fs, st: st}
	}
	return fs
}

func (f faultySink) Write(ctx context.Context, batchID string, epoch int64, rows []systems.Prediction) error {
	if err := inject(ctx, "sink", f.rules); err != nil {
		return injectedErr(err)
	}
	return f.Sink.Write(ctx, batchID, epoch, rows)
}

// Finish keeps the wrapped sink's finishing step.
func (f faultySink) Finish(ctx context.Context, batchID, gameDate string) error {
	if fin, ok := f.Sink.(systems.Finisher); ok {
		return fin.Finish(ctx, batchID, gameDate)
	}
	return nil
}

func (f faultyStager) Stage(ctx context.Context, batchID string, epoch int64, rows []systems.Prediction) (string, error) {
	if err := inject(ctx, "sink", f.rules); err != nil {
		return "", injectedErr(err)
	}
	return f.st.Stage(ctx, batchID, epoch, rows)
}

func (f faultyStager) Commit(ctx context.Context, batchID, token string, players []string, rows int) error {
	return f.st.Commit(ctx, batchID, token, players, rows)
}
