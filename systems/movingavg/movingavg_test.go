package movingavg_test

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/movingavg"
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
			// base 0.5·20 + 0.3·18 + 0.2·16 = 18.6; fatigue 60 → −1.0; mismatch 2 → +0.6;
			// back-to-back −1.5; pace +2 → +0.6; home +0.5; usage spike 1 → +0.4: 18.2.
			// Confidence 0.5 + 0.1 (std 3 < 4) + 0.1 (12 games) = 70. Edge 18.2 − 15.5 = 2.7 > 2: OVER.
			name: "steady scorer at home",
			f: systems.Features{PointsAvgL5: 20, PointsAvgL10: 18, PointsAvgSeason: 16, FatigueScore: 60,
				ShotZoneMismatch: 2, BackToBack: true, PaceAdjustment: 2, Home: true, UsageSpike: 1,
				PointsStdL10: 3, GamesPlayed: 12, HasLine: true, Line: 15.5},
			pts: 18.2, conf: 70, rec: systems.Over,
		},
		{
			// base 10; fatigue 80 → −2.5; away −0.5: 7.0. Confidence 0.5 − 0.1 (std 9) − 0.1 (3 games) = 30.
			// Edge −1.5: PASS.
			name: "tired, volatile, few games",
			f: systems.Features{PointsAvgL5: 10, PointsAvgL10: 10, PointsAvgSeason: 10, FatigueScore: 80,
				PointsStdL10: 9, GamesPlayed: 3, HasLine: true, Line: 8.5},
			pts: 7.0, conf: 30, rec: systems.Pass,
		},
		{
			// 5.5 − 0.5 away = 5.0 vs 12.5: edge −7.5, but confidence 50 clears 45: UNDER.
			name: "well under the line",
			f: systems.Features{PointsAvgL5: 5.5, PointsAvgL10: 5.5, PointsAvgSeason: 5.5, PointsStdL10: 5,
				GamesPlayed: 8, HasLine: true, Line: 12.5},
			pts: 5.0, conf: 50, rec: systems.Under,
		},
		{
			// 12 + 0.5 home; std 0 (< 4) and 20 games: 0.5 + 0.1 + 0.1 = 70.
			name: "no line",
			f:    systems.Features{PointsAvgL5: 12, PointsAvgL10: 12, PointsAvgSeason: 12, Home: true, GamesPlayed: 20},
			pts:  12.5, conf: 70, rec: systems.NoLine,
		},
		{
			name: "clamped at 60",
			f:    systems.Features{PointsAvgL5: 100, PointsAvgL10: 100, PointsAvgSeason: 100, Home: true, GamesPlayed: 20, HasLine: true, Line: 30.5},
			pts:  60, conf: 70, rec: systems.Over,
		},
	} {
		got, err := movingavg.New().Predict(t.Context(), &tc.f)
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
	rng := rand.New(rand.NewPCG(1, 2))
	odd := []float64{math.NaN(), math.Inf(1), math.Inf(-1), -1e9, 1e9, 0}
	pick := func() float64 {
		if rng.IntN(5) == 0 {
			return odd[rng.IntN(len(odd))]
		}
		return rng.Float64()*80 - 10
	}
	for range 10000 {
		f := systems.Features{PointsAvgL5: pick(), PointsAvgL10: pick(), PointsAvgSeason: pick(),
			PointsStdL10: pick(), FatigueScore: pick(), ShotZoneMismatch: pick(), PaceAdjustment: pick(),
			UsageSpike: pick(), GamesPlayed: rng.IntN(90), Home: rng.IntN(2) == 0, BackToBack: rng.IntN(2) == 0,
			HasLine: rng.IntN(2) == 0, Line: pick()}
		got, err := movingavg.New().Predict(t.Context(), &f)
		if err != nil {
			t.Fatal(err)
		}
		if !(got.Points >= 0 && got.Points <= 60) || !(got.Confidence >= 0 && got.Confidence <= 100) {
			t.Fatalf("out of bounds: %+v for %+v", got, f)
		}
	}
}

func TestHonoursCancellation(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := movingavg.New().Predict(ctx, &systems.Features{}); err == nil {
		t.Fatal("cancelled context: no error")
	}
}

func BenchmarkPredict(b *testing.B) {
	f := systems.Features{PointsAvgL5: 20, PointsAvgL10: 18, PointsAvgSeason: 16, HasLine: true, Line: 15.5}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_, _ = movingavg.New().Predict(ctx, &f)
	}
}
