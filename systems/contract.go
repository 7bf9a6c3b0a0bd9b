package systems

import (
	"fmt"
	"math"
)

// FeatureVersion names the feature contract the systems are written against:
// the Features fields, their units and the ranges Validate enforces.
const FeatureVersion = "features-v1"

// DefaultMinQuality is the quality score below which a row is not trusted
// (the platform this replaces used 50).
const DefaultMinQuality = 50

type bound struct {
	name   string
	v      float64
	lo, hi float64
}

// Validate checks one player's feature row against the contract: every
// number finite and in range, zone shares summing to one, the quality score
// at least minQuality. The error names the first offending feature.
func Validate(f *Features, minQuality float64) error {
	bounds := []bound{
		{"points_avg_last_5", f.PointsAvgL5, 0, 80}, {"points_avg_last_10", f.PointsAvgL10, 0, 80},
		{"points_avg_season", f.PointsAvgSeason, 0, 80}, {"points_std_last_10", f.PointsStdL10, 0, 50},
		{"games_played", float64(f.GamesPlayed), 0, 100}, {"games_in_last_7_days", float64(f.GamesLast7Days), 0, 7},
		{"fatigue_score", f.FatigueScore, 0, 100}, {"paint_share", f.PaintShare, 0, 1}, {"mid_share", f.MidShare, 0, 1},
		{"three_share", f.ThreeShare, 0, 1}, {"ft_share", f.FTShare, 0, 1},
		{"shot_zone_mismatch", f.ShotZoneMismatch, -20, 20}, {"opponent_def_rating", f.OppDefRating, 80, 140},
		{"opponent_tier", float64(f.OppTier), 1, 3}, {"pace_adjustment", f.PaceAdjustment, -30, 30},
		{"usage_rate", f.Usage, 0, 60}, {"usage_spike", f.UsageSpike, -40, 40}, {"rest_days", float64(f.RestDays), 0, 30},
		{"quality", f.Quality, 0, 100},
	}
	if f.HasLine {
		bounds = append(bounds, bound{"line", f.Line, 0, 80})
	}
	for _, b := range bounds {
		switch {
		case math.IsNaN(b.v) || math.IsInf(b.v, 0):
			return fmt.Errorf("%s is not a finite number", b.name)
		case b.v < b.lo || b.v > b.hi:
			return fmt.Errorf("%s %g outside %g to %g", b.name, b.v, b.lo, b.hi)
		}
	}
	if s := f.PaintShare + f.MidShare + f.ThreeShare + f.FTShare; math.Abs(s-1) > 0.02 {
		return fmt.Errorf("zone shares sum to %.3f, not 1", s)
	}
	for i, g := range f.RecentGames {
		if math.IsNaN(g.Points) || math.IsInf(g.Points, 0) || g.Points < 0 || g.Points > 120 {
			return fmt.Errorf("recent game %d has points %g", i, g.Points)
		}
	}
	if f.Quality < minQuality {
		return fmt.Errorf("quality %g below %g", f.Quality, minQuality)
	}
	return nil
}

// Form is the form rule of the feature contract: hot when the last five
// games average three points above the season, cold when three below,
// neutral otherwise or with fewer than three games.
func Form(l5, season float64, games int) string {
	switch {
	case games < 3:
		return "neutral"
	case l5 > season+3:
		return "hot"
	case l5 < season-3:
		return "cold"
	}
	return "neutral"
}

// Mean of xs (0 for none).
func Mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

// StdDev is the sample standard deviation of xs (0 for fewer than two).
func StdDev(xs []float64) float64 {
	if len(xs) < 2 {
		return 0
	}
	m, s := Mean(xs), 0.0
	for _, x := range xs {
		s += (x - m) * (x - m)
	}
	return math.Sqrt(s / float64(len(xs)-1))
}
