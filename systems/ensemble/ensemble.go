// Package ensemble is ensemble_v1: the confidence-weighted mean of the other
// systems' estimates, more confident when they agree.
package ensemble

import (
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/predworker/predworker/systems"
)

// ID is the stable system id.
const ID = "ensemble_v1"

// Thresholds.
const (
	MinInputs     = 2
	MinEdge       = 2.0
	MinConfidence = 55.0
)

// System implements systems.Combiner.
type System struct{ inputs []string }

// New returns the ensemble over the given systems.
func New(inputs ...string) System { return System{inputs: slices.Clone(inputs)} }

// ID implements systems.System.
func (System) ID() string { return ID }

// Version implements systems.System.
func (System) Version() string { return "ensemble-1.0" }

// Inputs implements systems.Combiner.
func (s System) Inputs() []string { return slices.Clone(s.inputs) }

// Predict implements systems.System: an ensemble has nothing to say alone.
func (System) Predict(context.Context, *systems.Features) (systems.Estimate, error) {
	return systems.Estimate{}, fmt.Errorf("ensemble_v1 needs its inputs: %w", systems.ErrInsufficientData)
}

// Combine implements systems.Combiner: mean of the inputs weighted by their
// confidence; confidence is their mean confidence +10 when their spread
// (max − min) is under 2 points, +5 under 3, −5 under 6, −10 otherwise,
// clamped to 20-90. Fewer than two inputs: ErrInsufficientData.
func (s System) Combine(ctx context.Context, f *systems.Features, in map[string]systems.Estimate) (systems.Estimate, error) {
	if err := ctx.Err(); err != nil {
		return systems.Estimate{}, err
	}
	var wsum, sum, csum float64
	lo, hi, n := math.Inf(1), math.Inf(-1), 0
	for _, id := range s.inputs {
		e, ok := in[id]
		if !ok || math.IsNaN(e.Points) || math.IsNaN(e.Confidence) {
			continue
		}
		w := math.Max(e.Confidence, 1)
		wsum += w
		sum += w * e.Points
		csum += e.Confidence
		lo, hi = math.Min(lo, e.Points), math.Max(hi, e.Points)
		n++
	}
	if n < MinInputs {
		return systems.Estimate{}, fmt.Errorf("%d inputs, need %d: %w", n, MinInputs, systems.ErrInsufficientData)
	}
	p := math.Round(systems.Clamp(sum/wsum, 0, 60)*10) / 10
	c := csum / float64(n)
	switch spread := hi - lo; {
	case spread < 2:
		c += 10
	case spread < 3:
		c += 5
	case spread < 6:
		c -= 5
	default:
		c -= 10
	}
	c = math.Round(systems.Clamp(c, 20, 90)*10) / 10
	return systems.Estimate{Points: p, Confidence: c, Recommendation: systems.Recommend(p, c, f, MinEdge, MinConfidence)}, nil
}
