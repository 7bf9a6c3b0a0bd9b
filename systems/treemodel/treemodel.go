// Package treemodel is xgboost_v1: a gradient-boosted tree ensemble evaluated
// natively in Go by github.com/dmitryikh/leaves from a LightGBM text model.
//
// It also holds the small, deterministic trainer (histogram-based gradient
// boosting on squared error) that fits the bundled model on the synthetic
// league (go run ./cmd/trainmodel) and writes it in LightGBM's text format,
// so the model the system serves is the one the trainer defined.
package treemodel

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"

	"github.com/dmitryikh/leaves"

	"github.com/predworker/predworker/systems"
)

// ID is the stable system id.
const ID = "xgboost_v1"

// Thresholds.
const (
	MinEdge       = 1.5
	MinConfidence = 55.0
)

// FeatureNames is the bundled model's input contract, in order (feature set
// v1). A model file names its own inputs (feature_names=): any of Inputs,
// in any order.
var FeatureNames = []string{
	"points_avg_last_5", "points_avg_last_10", "points_avg_season", "points_std_last_10",
	"games_played", "games_in_last_7_days", "fatigue_score", "paint_share", "mid_share",
	"three_share", "ft_share", "shot_zone_mismatch", "opponent_def_rating", "opponent_tier",
	"pace_adjustment", "usage_rate", "usage_spike", "home", "back_to_back", "rest_days",
}

// RealFeatureNames is the input set of models trained on real game logs
// (cmd/trainmodel --games): v1 plus minutes, pace and form.
var RealFeatureNames = append(slices.Clone(FeatureNames), "minutes_avg_last_5", "minutes_avg_season", "pace", "form",
	"points_per_minute_last_5", "points_per_minute_season", "teammates_out_points")

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Inputs are the features a model may use, by name.
var Inputs = map[string]func(*systems.Features) float64{
	"points_avg_last_5":        func(f *systems.Features) float64 { return f.PointsAvgL5 },
	"points_avg_last_10":       func(f *systems.Features) float64 { return f.PointsAvgL10 },
	"points_avg_season":        func(f *systems.Features) float64 { return f.PointsAvgSeason },
	"points_std_last_10":       func(f *systems.Features) float64 { return f.PointsStdL10 },
	"games_played":             func(f *systems.Features) float64 { return float64(f.GamesPlayed) },
	"games_in_last_7_days":     func(f *systems.Features) float64 { return float64(f.GamesLast7Days) },
	"fatigue_score":            func(f *systems.Features) float64 { return f.FatigueScore },
	"paint_share":              func(f *systems.Features) float64 { return f.PaintShare },
	"mid_share":                func(f *systems.Features) float64 { return f.MidShare },
	"three_share":              func(f *systems.Features) float64 { return f.ThreeShare },
	"ft_share":                 func(f *systems.Features) float64 { return f.FTShare },
	"shot_zone_mismatch":       func(f *systems.Features) float64 { return f.ShotZoneMismatch },
	"opponent_def_rating":      func(f *systems.Features) float64 { return f.OppDefRating },
	"opponent_tier":            func(f *systems.Features) float64 { return float64(f.OppTier) },
	"pace":                     func(f *systems.Features) float64 { return f.Pace },
	"pace_adjustment":          func(f *systems.Features) float64 { return f.PaceAdjustment },
	"usage_rate":               func(f *systems.Features) float64 { return f.Usage },
	"usage_spike":              func(f *systems.Features) float64 { return f.UsageSpike },
	"home":                     func(f *systems.Features) float64 { return b2f(f.Home) },
	"back_to_back":             func(f *systems.Features) float64 { return b2f(f.BackToBack) },
	"rest_days":                func(f *systems.Features) float64 { return float64(f.RestDays) },
	"minutes_avg_last_5":       func(f *systems.Features) float64 { return f.MinutesAvgL5 },
	"minutes_avg_season":       func(f *systems.Features) float64 { return f.MinutesAvgSeason },
	"points_per_minute_last_5": func(f *systems.Features) float64 { return f.PointsPerMinL5 },
	"points_per_minute_season": func(f *systems.Features) float64 { return f.PointsPerMinSeason },
	"teammates_out_points":     func(f *systems.Features) float64 { return f.TeammatesOut },
	"form": func(f *systems.Features) float64 {
		return map[string]float64{"hot": 1, "cold": -1}[f.Form]
	},
}

// VectorOf writes f's inputs named by names, in that order, into x.
func VectorOf(names []string, f *systems.Features, x []float64) []float64 {
	x = x[:0]
	for _, n := range names {
		x = append(x, Inputs[n](f))
	}
	return x
}

// Vector writes f's inputs of feature set v1 into x.
func Vector(f *systems.Features, x []float64) []float64 { return VectorOf(FeatureNames, f, x) }

//go:embed model/xgboost_v1.txt
var bundled []byte

// Bundled returns the model shipped with the binary.
func Bundled() []byte { return bundled }

// System implements systems.System over a loaded ensemble.
type System struct {
	model   *leaves.Ensemble
	names   []string
	inputs  []func(*systems.Features) float64 // Inputs of names, looked up once
	version string
}

// Load reads a LightGBM text model from r (a file, a bucket object, the
// bundled bytes: the loader does not care) and checks that it is a
// regression over inputs this package knows.
func Load(r io.Reader, version string) (*System, error) {
	raw, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("xgboost_v1 model: %w", err)
	}
	m, err := leaves.LGEnsembleFromReader(bufio.NewReader(bytes.NewReader(raw)), false)
	if err != nil {
		return nil, fmt.Errorf("xgboost_v1 model: %w", err)
	}
	names, err := featureNames(raw)
	if err != nil {
		return nil, err
	}
	if m.NFeatures() != len(names) {
		return nil, fmt.Errorf("xgboost_v1 model: %d features, %d names", m.NFeatures(), len(names))
	}
	if m.NOutputGroups() != 1 {
		return nil, fmt.Errorf("xgboost_v1 model: %d outputs, want 1 (regression)", m.NOutputGroups())
	}
	inputs := make([]func(*systems.Features) float64, len(names))
	for i, n := range names {
		inputs[i] = Inputs[n]
	}
	return &System{model: m, names: names, inputs: inputs, version: version}, nil
}

// featureNames reads the model's feature_names= line; every name must be
// one of Inputs.
func featureNames(raw []byte) ([]string, error) {
	for line := range bytes.Lines(raw) {
		if v, ok := bytes.CutPrefix(bytes.TrimRight(line, "\r\n"), []byte("feature_names=")); ok {
			names := strings.Fields(string(v))
			for _, n := range names {
				if Inputs[n] == nil {
					return nil, fmt.Errorf("xgboost_v1 model: unknown input %q (known: %s)", n,
						strings.Join(slices.Sorted(maps.Keys(Inputs)), ", "))
				}
			}
			return names, nil
		}
		if bytes.HasPrefix(line, []byte("Tree=")) {
			break
		}
	}
	return nil, fmt.Errorf("xgboost_v1 model: no feature_names line")
}

// Inputs returns the names of the model's inputs, in order.
func (s *System) Inputs() []string { return slices.Clone(s.names) }

// LoadBundled loads the shipped model.
func LoadBundled() (*System, error) { return Load(bytes.NewReader(bundled), "xgboost_v1-bundled") }

// ID implements systems.System.
func (*System) ID() string { return ID }

// Version implements systems.System.
func (s *System) Version() string { return s.version }

// Raw is the ensemble's output for x.
func (s *System) Raw(x []float64) float64 { return s.model.PredictSingle(x, 0) }

// Predict implements systems.System. Confidence is 60, −1.5 per point of
// last-ten standard deviation above 5, −15 with fewer than five games,
// clamped to 20-80.
func (s *System) Predict(ctx context.Context, f *systems.Features) (systems.Estimate, error) {
	if err := ctx.Err(); err != nil {
		return systems.Estimate{}, err
	}
	var buf [32]float64
	x := buf[:0]
	for _, in := range s.inputs {
		x = append(x, in(f))
	}
	for _, v := range x {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return systems.Estimate{}, fmt.Errorf("non-finite model input: %w", systems.ErrInsufficientData)
		}
	}
	p := math.Round(systems.Clamp(s.Raw(x), 0, 60)*10) / 10
	c := 60 - 1.5*math.Max(0, f.PointsStdL10-5)
	if f.GamesPlayed < 5 {
		c -= 15
	}
	c = math.Round(systems.Clamp(c, 20, 80)*10) / 10
	return systems.Estimate{Points: p, Confidence: c, Recommendation: systems.Recommend(p, c, f, MinEdge, MinConfidence)}, nil
}

// Unavailable stands in for the model when it could not be loaded and the
// configuration says to fall back rather than refuse to start: every call
// fails, so rows fall back along the chain with the reason recorded.
type Unavailable struct{ Err error }

// ID implements systems.System.
func (Unavailable) ID() string { return ID }

// Version implements systems.System.
func (Unavailable) Version() string { return "xgboost_v1-unavailable" }

// Predict implements systems.System.
func (u Unavailable) Predict(context.Context, *systems.Features) (systems.Estimate, error) {
	return systems.Estimate{}, fmt.Errorf("model unavailable: %w", u.Err)
}
