// Package zonematchup is zone_matchup_v1: the season average adjusted zone by
// zone for how generous the opponent's defence is, weighted by how much of the
// offence runs through the player.
package zonematchup

import (
	"context"
	"math"

	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/movingavg"
)

// ID is the stable system id.
const ID = "zone_matchup_v1"

// Thresholds for a call against the line.
const (
	MinEdge       = 2.5
	MinConfidence = 50.0
)

// ZoneWeights for paint, mid-range, three and free throws.
var ZoneWeights = [4]float64{1.2, 1.0, 1.1, 0.8}

// System implements systems.System.
type System struct{}

// New returns the system.
func New() System { return System{} }

// ID implements systems.System.
func (System) ID() string { return ID }

// Version implements systems.System.
func (System) Version() string { return "zone_matchup-1.0" }

// UsageWeight scales zone effects by usage: 20 % usage is 1.0, clamped to 0.5-1.5.
func UsageWeight(usage float64) float64 { return systems.Clamp(usage/20, 0.5, 1.5) }

// Predict implements systems.System.
//
//	p = season average
//	  + Σ_zone share_z · clamp±3((def_rating − 110)·0.3·weight_z) · usage weight
//	  + 0.4·pace adjustment ± 0.8 venue + fatigue adjustment
//
// Confidence is 65 minus 2 per point of last-ten standard deviation above 4,
// minus 15 with fewer than five games, clamped to 20-80.
func (System) Predict(ctx context.Context, f *systems.Features) (systems.Estimate, error) {
	if err := ctx.Err(); err != nil {
		return systems.Estimate{}, err
	}
	shares := [4]float64{f.PaintShare, f.MidShare, f.ThreeShare, f.FTShare}
	p := f.PointsAvgSeason
	uw := UsageWeight(f.Usage)
	for z, w := range ZoneWeights {
		p += shares[z] * systems.Clamp((f.OppDefRating-110)*0.3*w, -3, 3) * uw
	}
	p += 0.4 * f.PaceAdjustment
	if f.Home {
		p += 0.8
	} else {
		p -= 0.8
	}
	p += movingavg.FatigueAdjustment(f.FatigueScore)
	p = math.Round(systems.Clamp(p, 0, 60)*10) / 10

	c := 65 - 2*math.Max(0, f.PointsStdL10-4)
	if f.GamesPlayed < 5 {
		c -= 15
	}
	c = math.Round(systems.Clamp(c, 20, 80)*10) / 10
	return systems.Estimate{
		Points:         p,
		Confidence:     c,
		Recommendation: systems.Recommend(p, c, f, MinEdge, MinConfidence),
	}, nil
}
