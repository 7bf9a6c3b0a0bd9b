// Package movingavg is the moving_average system: a weighted blend of recent
// scoring averages with small contextual adjustments. It is the baseline the
// other systems fall back to, so it needs nothing but the averages.
package movingavg

import (
	"context"
	"math"

	"github.com/predworker/predworker/systems"
)

// ID is the stable system id.
const ID = "moving_average"

// Thresholds for a call against the line.
const (
	MinEdge       = 2.0  // points
	MinConfidence = 45.0 // percent
)

// System implements systems.System.
type System struct{}

// New returns the system.
func New() System { return System{} }

// ID implements systems.System.
func (System) ID() string { return ID }

// Version implements systems.System.
func (System) Version() string { return "moving_average-1.0" }

// Predict implements systems.System.
//
//	base       = 0.5·L5 + 0.3·L10 + 0.2·season
//	fatigue    −2.5 above 70, −1.0 above 50
//	shot zones +0.3·mismatch
//	b2b        −1.5
//	pace       +0.3·(pace − league average)
//	venue      +0.5 home, −0.5 away
//	usage      +0.4·(usage last 5 − season usage)
//	clamp to 0-60
//
// Confidence starts at 0.5, +0.1 when the last ten games were steady (std < 4),
// −0.1 when volatile (std > 8), +0.1 with ten or more games played, −0.1 with
// fewer than five; clamped to 0.2-0.8 and stored as a percentage.
func (System) Predict(ctx context.Context, f *systems.Features) (systems.Estimate, error) {
	if err := ctx.Err(); err != nil {
		return systems.Estimate{}, err
	}
	p := Base(f)
	p += FatigueAdjustment(f.FatigueScore)
	p += 0.3 * f.ShotZoneMismatch
	if f.BackToBack {
		p -= 1.5
	}
	p += 0.3 * f.PaceAdjustment
	if f.Home {
		p += 0.5
	} else {
		p -= 0.5
	}
	p += 0.4 * f.UsageSpike
	p = math.Round(systems.Clamp(p, 0, 60)*10) / 10

	c := 0.5
	switch {
	case f.PointsStdL10 < 4:
		c += 0.1
	case f.PointsStdL10 > 8:
		c -= 0.1
	}
	switch {
	case f.GamesPlayed >= 10:
		c += 0.1
	case f.GamesPlayed < 5:
		c -= 0.1
	}
	c = math.Round(systems.Clamp(c, 0.2, 0.8)*1000) / 10
	return systems.Estimate{
		Points:         p,
		Confidence:     c,
		Recommendation: systems.Recommend(p, c, f, MinEdge, MinConfidence),
	}, nil
}

// Base is the weighted scoring average.
func Base(f *systems.Features) float64 {
	return 0.5*f.PointsAvgL5 + 0.3*f.PointsAvgL10 + 0.2*f.PointsAvgSeason
}

// FatigueAdjustment is the shared fatigue penalty.
func FatigueAdjustment(score float64) float64 {
	switch {
	case score > 70:
		return -2.5
	case score > 50:
		return -1.0
	}
	return 0
}
