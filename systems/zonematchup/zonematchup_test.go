package zonematchup_test

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/zonematchup"
)

func TestWorkedExamples(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		f    systems.Features
		pts  float64
		conf float64
		rec  systems.Recommendation
	}{
		{
			// Per zone (115 − 110)·0.3·w = 1.8, 1.5, 1.65, 1.2 (inside ±3); weighted by shares
			// .4/.1/.3/.2: 0.72 + 0.15 + 0.495 + 0.24 = 1.605; usage 25 → ×1.25 = 2.00625.
			// 20 + 2.00625 + 0.4·1 pace + 0.8 home = 23.20625 → 23.2.
			// Confidence 65 − 2·(6 − 4) = 61. Edge 23.2 − 20.5 = 2.7 > 2.5: OVER.
			name: "soft defence at home",
			f: systems.Features{PointsAvgSeason: 20, OppDefRating: 115, PaintShare: .4, MidShare: .1, ThreeShare: .3,
				FTShare: .2, Usage: 25, PaceAdjustment: 1, Home: true, PointsStdL10: 6, GamesPlayed: 30,
				HasLine: true, Line: 20.5},
			pts: 23.2, conf: 61, rec: systems.Over,
		},
		{
			// Def 130: every zone term clamps to +3; Σ shares = 1 → +3 × usage weight 0.5 (usage 8) = 1.5.
			// 10 + 1.5 − 0.8 away − 2.5 fatigue 75 = 8.2. Confidence 65 − 15 (4 games) = 50: not above 50, PASS.
			name: "clamped zones, few games",
			f: systems.Features{PointsAvgSeason: 10, OppDefRating: 130, PaintShare: .25, MidShare: .25, ThreeShare: .25,
				FTShare: .25, Usage: 8, FatigueScore: 75, PointsStdL10: 2, GamesPlayed: 4, HasLine: true, Line: 14.5},
			pts: 8.2, conf: 50, rec: systems.Pass,
		},
		{
			// Def 100: paint (−10)·0.3·1.2 = −3.6 → −3; all shares in paint: −3 × 1.0 (usage 20) = −3.
			// 12 − 3 + 0.8 = 9.8. Confidence 65 − 2·6 = 53. No line.
			name: "tough interior defence",
			f: systems.Features{PointsAvgSeason: 12, OppDefRating: 100, PaintShare: 1, Usage: 20, Home: true,
				PointsStdL10: 10, GamesPlayed: 40},
			pts: 9.8, conf: 53, rec: systems.NoLine,
		},
	} {
		got, err := zonematchup.New().Predict(t.Context(), &tc.f)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if math.Abs(got.Points-tc.pts) > 1e-9 || got.Confidence != tc.conf || got.Recommendation != tc.rec {
			t.Errorf("%s: got %.2f pts, %.1f conf, %s; want %.2f, %.1f, %s", tc.name,
				got.Points, got.Confidence, got.Recommendation, tc.pts, tc.conf, tc.rec)
		}
	}
}

func TestBoundsOnRandomInput(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(3, 4))
	odd := []float64{math.NaN(), math.Inf(1), math.Inf(-1), -1e9, 1e9, 0}
	pick := func() float64 {
		if rng.IntN(5) == 0 {
			return odd[rng.IntN(len(odd))]
		}
		return rng.Float64()*150 - 10
	}
	for range 10000 {
		f := systems.Features{PointsAvgSeason: pick(), OppDefRating: pick(), PaintShare: pick(), MidShare: pick(),
			ThreeShare: pick(), FTShare: pick(), Usage: pick(), PaceAdjustment: pick(), FatigueScore: pick(),
			PointsStdL10: pick(), GamesPlayed: rng.IntN(90), Home: rng.IntN(2) == 0, HasLine: true, Line: pick()}
		got, err := zonematchup.New().Predict(t.Context(), &f)
		if err != nil {
			t.Fatal(err)
		}
		if !(got.Points >= 0 && got.Points <= 60) || !(got.Confidence >= 0 && got.Confidence <= 100) {
			t.Fatalf("out of bounds: %+v for %+v", got, f)
		}
	}
}

func BenchmarkPredict(b *testing.B) {
	f := systems.Features{PointsAvgSeason: 20, OppDefRating: 115, PaintShare: .4, MidShare: .1, ThreeShare: .3, FTShare: .2, Usage: 25}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_, _ = zonematchup.New().Predict(ctx, &f)
	}
}
