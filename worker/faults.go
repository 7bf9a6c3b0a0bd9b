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

// FaultRule is one rule of FAULTS.
type FaultRule struct {
	System  string // system id or "*"
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
		parts[i] = fmt.Sprintf("system=%s,kind=%s,rate=%g", r.System, r.Kind, r.Rate)
		if r.Latency > 0 {
			parts[i] += ",latency=" + r.Latency.String()
		}
	}
	return strings.Join(parts, ";")
}

// ParseFaults parses FAULTS: rules separated by ";", each
// "system=<id|*>,kind=<latency|error|panic|hang|stuck>,rate=<0..1>[,latency=<duration>]".
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
				return nil, fmt.Errorf("rule %d: unknown key %q (want system, kind, rate, latency)", i+1, k)
			}
		}
		switch {
		case r.System == "":
			return nil, fmt.Errorf("rule %d: system is required (an id or *)", i+1)
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
		if r.System == "*" || r.System == s.ID() {
			mine = append(mine, r)
		}
	}
	if len(mine) == 0 {
		return s
	}
	return faulty{System: s, rules: mine}
}

func (f faulty) Predict(ctx context.Context, in *systems.Features) (systems.Estimate, error) {
	for _, r := range f.rules {
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
				return systems.Estimate{}, ctx.Err()
			}
		case FaultError:
			return systems.Estimate{}, fmt.Errorf("%s: %w", f.ID(), errInjected)
		case FaultPanic:
			panic(fmt.Sprintf("injected panic in %s", f.ID()))
		case FaultHang:
			<-ctx.Done()
			return systems.Estimate{}, ctx.Err()
		case FaultStuck: // a system that ignores its context: the engine abandons it
			<-stuckForever
			return systems.Estimate{}, ctx.Err()
		}
	}
	return f.System.Predict(ctx, in)
}
