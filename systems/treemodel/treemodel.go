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
	"math"

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

// FeatureNames is the model's input contract, in order (feature set v1).
var FeatureNames = []string{
	"points_avg_last_5", "points_avg_last_10", "points_avg_season", "points_std_last_10",
	"games_played", "games_in_last_7_days", "fatigue_score", "paint_share", "mid_share",
	"three_share", "ft_share", "shot_zone_mismatch", "opponent_def_rating", "opponent_tier",
	"pace_adjustment", "usage_rate", "usage_spike", "home", "back_to_back", "rest_days",
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Vector writes f's model inputs, in FeatureNames order, into x (len ≥ 20).
func Vector(f *systems.Features, x []float64) []float64 {
	x = append(x[:0], f.PointsAvgL5, f.PointsAvgL10, f.PointsAvgSeason, f.PointsStdL10,
		float64(f.GamesPlayed), float64(f.GamesLast7Days), f.FatigueScore, f.PaintShare, f.MidShare,
		f.ThreeShare, f.FTShare, f.ShotZoneMismatch, f.OppDefRating, float64(f.OppTier),
		f.PaceAdjustment, f.Usage, f.UsageSpike, b2f(f.Home), b2f(f.BackToBack), float64(f.RestDays))
	return x
}

//go:embed model/xgboost_v1.txt
var bundled []byte

// Bundled returns the model shipped with the binary.
func Bundled() []byte { return bundled }

// System implements systems.System over a loaded ensemble.
type System struct {
	model   *leaves.Ensemble
	version string
}

// Load reads a LightGBM text model from r (a file, a bucket object, the
// bundled bytes: the loader does not care) and checks it fits the contract.
func Load(r io.Reader, version string) (*System, error) {
	m, err := leaves.LGEnsembleFromReader(bufio.NewReader(r), false)
	if err != nil {
		return nil, fmt.Errorf("xgboost_v1 model: %w", err)
	}
	if m.NFeatures() != len(FeatureNames) {
		return nil, fmt.Errorf("xgboost_v1 model: %d features, the contract has %d", m.NFeatures(), len(FeatureNames))
	}
	if m.NOutputGroups() != 1 {
		return nil, fmt.Errorf("xgboost_v1 model: %d outputs, want 1 (regression)", m.NOutputGroups())
	}
	return &System{model: m, version: version}, nil
}

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
	var buf [20]float64
	x := Vector(f, buf[:0])
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
