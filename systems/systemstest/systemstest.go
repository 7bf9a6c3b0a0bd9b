// Package systemstest holds the checks every prediction system's tests run:
// worked examples computed by hand, and bounds on random and hostile input.
package systemstest

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/predworker/predworker/systems"
)

// Example is a feature row with its expected estimate, worked out by hand.
type Example struct {
	Name       string
	Features   systems.Features
	Points     float64
	Confidence float64
	Rec        systems.Recommendation
}

// RunExamples checks s against each example.
func RunExamples(t *testing.T, s systems.System, examples []Example) {
	t.Helper()
	for _, ex := range examples {
		got, err := s.Predict(t.Context(), &ex.Features)
		if err != nil {
			t.Errorf("%s: %v", ex.Name, err)
			continue
		}
		if math.Abs(got.Points-ex.Points) > 1e-9 || got.Confidence != ex.Confidence || got.Recommendation != ex.Rec {
			t.Errorf("%s: got %.2f pts, %.1f conf, %s; want %.2f, %.1f, %s", ex.Name,
				got.Points, got.Confidence, got.Recommendation, ex.Points, ex.Confidence, ex.Rec)
		}
	}
}

// RandomFeatures returns a feature row with every numeric field random, one
// in five replaced by NaN, ±Inf, huge or zero.
func RandomFeatures(rng *rand.Rand) systems.Features {
	odd := []float64{math.NaN(), math.Inf(1), math.Inf(-1), -1e9, 1e9, 0}
	pick := func() float64 {
		if rng.IntN(5) == 0 {
			return odd[rng.IntN(len(odd))]
		}
		return rng.Float64()*150 - 10
	}
	return systems.Features{
		PointsAvgL5: pick(), PointsAvgL10: pick(), PointsAvgSeason: pick(), PointsStdL10: pick(),
		GamesPlayed: rng.IntN(90), GamesLast7Days: rng.IntN(5), FatigueScore: pick(),
		PaintShare: pick(), MidShare: pick(), ThreeShare: pick(), FTShare: pick(), ShotZoneMismatch: pick(),
		OppDefRating: pick(), Pace: pick(), PaceAdjustment: pick(), Usage: pick(), UsageSpike: pick(),
		Home: rng.IntN(2) == 0, BackToBack: rng.IntN(2) == 0, RestDays: rng.IntN(4),
		HasLine: rng.IntN(2) == 0, Line: pick(), Quality: pick(), OppTier: 1 + rng.IntN(3),
		Form: []string{"hot", "neutral", "cold"}[rng.IntN(3)], RecentGames: randomGames(rng, pick),
	}
}

func randomGames(rng *rand.Rand, pick func() float64) []systems.GameLog {
	games := make([]systems.GameLog, rng.IntN(31))
	for i := range games {
		games[i] = systems.GameLog{OppTier: 1 + rng.IntN(3), RestDays: rng.IntN(4), Home: rng.IntN(2) == 0,
			Form: []string{"hot", "neutral", "cold"}[rng.IntN(3)], Points: pick()}
	}
	return games
}

// CheckBounds runs s on n random rows: it must not panic, may only decline
// with systems.ErrInsufficientData, and points must stay in 0-60 and
// confidence in 0-100. A cancelled context must give an error.
func CheckBounds(t *testing.T, s systems.System, seed uint64, n int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed+1))
	for range n {
		f := RandomFeatures(rng)
		got, err := s.Predict(t.Context(), &f)
		if errors.Is(err, systems.ErrInsufficientData) {
			continue
		}
		if err != nil {
			t.Fatalf("%s on %+v: %v", s.ID(), f, err)
		}
		if !(got.Points >= 0 && got.Points <= 60) || !(got.Confidence >= 0 && got.Confidence <= 100) {
			t.Fatalf("%s out of bounds: %+v for %+v", s.ID(), got, f)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Predict(ctx, &systems.Features{}); err == nil {
		t.Fatalf("%s: no error with a cancelled context", s.ID())
	}
}
