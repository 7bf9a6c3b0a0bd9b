package systems

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
)

// EdgeBins are the upper bounds of the distance-from-the-line bins a
// Calibration counts sides in (points; the last bin is open).
var EdgeBins = []float64{0.5, 1, 1.5, 2, 3, 4, 6, math.Inf(1)}

// BreakEvenAtMinus110 is the share of bets that must win to break even at
// -110: 110/210.
const BreakEvenAtMinus110 = 110.0 / 210

// Calibration turns a system's distance from the line into the probability
// that its side wins, from scored history: per system and edge bin, how
// many sides were taken and how many won, shrunk toward a coin flip by
// Prior pseudo-sides. It is what confidence means once calibrated: the
// share of such sides that won.
type Calibration struct {
	// Prior is the weight, in sides, of the 50 % every bin starts from.
	Prior float64 `json:"prior"`
	// BreakEven is the probability a side must exceed to be recommended.
	BreakEven float64                `json:"break_even"`
	Systems   map[string][]SideCount `json:"systems"`
}

// SideCount is one edge bin's history.
type SideCount struct {
	MaxEdge float64 `json:"max_edge"` // upper bound (points); 0 stands for no bound
	Sides   int     `json:"sides"`
	Wins    int     `json:"wins"`
}

// NewCalibration is an empty calibration: every side at 50 %.
func NewCalibration() *Calibration {
	return &Calibration{Prior: 50, BreakEven: BreakEvenAtMinus110, Systems: map[string][]SideCount{}}
}

func binOf(edge float64) int {
	edge = math.Abs(edge)
	for i, b := range EdgeBins {
		if edge < b {
			return i
		}
	}
	return len(EdgeBins) - 1
}

// Add counts one side a system took edge points from the line, won or lost.
func (c *Calibration) Add(system string, edge float64, won bool) {
	bins := c.Systems[system]
	if bins == nil {
		bins = make([]SideCount, len(EdgeBins))
		for i, b := range EdgeBins {
			if !math.IsInf(b, 1) {
				bins[i].MaxEdge = b
			}
		}
		c.Systems[system] = bins
	}
	i := binOf(edge)
	bins[i].Sides++
	if won {
		bins[i].Wins++
	}
}

// Prob is the probability that a side edge points from the line wins, for
// system.
func (c *Calibration) Prob(system string, edge float64) float64 {
	bins := c.Systems[system]
	if bins == nil {
		return 0.5
	}
	b := bins[binOf(edge)]
	return (float64(b.Wins) + c.Prior/2) / (float64(b.Sides) + c.Prior)
}

// Apply sets e's confidence to the calibrated probability of its side (in
// percent) and recommends that side only when it beats BreakEven; rows
// without a line are left as they are.
func (c *Calibration) Apply(system string, f *Features, e Estimate) Estimate {
	if !f.HasLine {
		return e
	}
	edge := e.Points - f.Line
	p := c.Prob(system, edge)
	e.Confidence = math.Round(1000*p) / 10
	switch {
	case edge == 0 || p <= c.BreakEven:
		e.Recommendation = Pass
	case edge > 0:
		e.Recommendation = Over
	default:
		e.Recommendation = Under
	}
	return e
}

// ReadCalibration reads a calibration file (JSON, as `worker score
// --calibration-out` writes it).
func ReadCalibration(path string) (*Calibration, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	c := NewCalibration()
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if c.Prior < 0 || c.BreakEven <= 0 || c.BreakEven >= 1 {
		return nil, fmt.Errorf("%s: prior %g must be ≥ 0 and break_even %g between 0 and 1", path, c.Prior, c.BreakEven)
	}
	for id, bins := range c.Systems {
		if len(bins) != len(EdgeBins) {
			return nil, fmt.Errorf("%s: %s has %d bins, want %d", path, id, len(bins), len(EdgeBins))
		}
		for _, b := range bins {
			if b.Sides < 0 || b.Wins < 0 || b.Wins > b.Sides {
				return nil, fmt.Errorf("%s: %s has a bin with %d wins of %d sides", path, id, b.Wins, b.Sides)
			}
		}
	}
	return c, nil
}

// Write writes the calibration as JSON.
func (c *Calibration) Write(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(c)
}

// WithCalibration returns s with its confidence and recommendation on lined
// rows replaced by c's.
func WithCalibration(s System, c *Calibration) System {
	cal := calibrated{System: s, c: c}
	if comb, ok := s.(Combiner); ok {
		return calibratedCombiner{calibrated: cal, comb: comb}
	}
	return cal
}

type calibrated struct {
	System
	c *Calibration
}

func (s calibrated) Predict(ctx context.Context, f *Features) (Estimate, error) {
	e, err := s.System.Predict(ctx, f)
	if err != nil {
		return e, err
	}
	return s.c.Apply(s.ID(), f, e), nil
}

type calibratedCombiner struct {
	calibrated
	comb Combiner
}

func (s calibratedCombiner) Inputs() []string { return s.comb.Inputs() }

func (s calibratedCombiner) Combine(ctx context.Context, f *Features, in map[string]Estimate) (Estimate, error) {
	e, err := s.comb.Combine(ctx, f, in)
	if err != nil {
		return e, err
	}
	return s.c.Apply(s.ID(), f, e), nil
}
