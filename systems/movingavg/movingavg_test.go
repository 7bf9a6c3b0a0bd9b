package movingavg_test

import (
	"context"
	"testing"

	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/movingavg"
	"github.com/predworker/predworker/systems/systemstest"
)

func TestWorkedExamples(t *testing.T) {
	t.Parallel()
	systemstest.RunExamples(t, movingavg.New(), []systemstest.Example{
		{
			// base 0.5·20 + 0.3·18 + 0.2·16 = 18.6; fatigue 60 → −1.0; mismatch 2 → +0.6;
			// back-to-back −1.5; pace +2 → +0.6; home +0.5; usage spike 1 → +0.4: 18.2.
			// Confidence 0.5 + 0.1 (std 3 < 4) + 0.1 (12 games) = 70. Edge 18.2 − 15.5 = 2.7 > 2: OVER.
			Name: "steady scorer at home",
			Features: systems.Features{PointsAvgL5: 20, PointsAvgL10: 18, PointsAvgSeason: 16, FatigueScore: 60,
				ShotZoneMismatch: 2, BackToBack: true, PaceAdjustment: 2, Home: true, UsageSpike: 1,
				PointsStdL10: 3, GamesPlayed: 12, HasLine: true, Line: 15.5},
			Points: 18.2, Confidence: 70, Rec: systems.Over,
		},
		{
			// base 10; fatigue 80 → −2.5; away −0.5: 7.0. Confidence 0.5 − 0.1 (std 9) − 0.1 (3 games) = 30.
			// Edge −1.5: PASS.
			Name: "tired, volatile, few games",
			Features: systems.Features{PointsAvgL5: 10, PointsAvgL10: 10, PointsAvgSeason: 10, FatigueScore: 80,
				PointsStdL10: 9, GamesPlayed: 3, HasLine: true, Line: 8.5},
			Points: 7.0, Confidence: 30, Rec: systems.Pass,
		},
		{
			// 5.5 − 0.5 away = 5.0 vs 12.5: edge −7.5, but confidence 50 clears 45: UNDER.
			Name: "well under the line",
			Features: systems.Features{PointsAvgL5: 5.5, PointsAvgL10: 5.5, PointsAvgSeason: 5.5, PointsStdL10: 5,
				GamesPlayed: 8, HasLine: true, Line: 12.5},
			Points: 5.0, Confidence: 50, Rec: systems.Under,
		},
		{
			// 12 + 0.5 home; std 0 (< 4) and 20 games: 0.5 + 0.1 + 0.1 = 70.
			Name:     "no line",
			Features: systems.Features{PointsAvgL5: 12, PointsAvgL10: 12, PointsAvgSeason: 12, Home: true, GamesPlayed: 20},
			Points:   12.5, Confidence: 70, Rec: systems.NoLine,
		},
		{
			Name:     "clamped at 60",
			Features: systems.Features{PointsAvgL5: 100, PointsAvgL10: 100, PointsAvgSeason: 100, Home: true, GamesPlayed: 20, HasLine: true, Line: 30.5},
			Points:   60, Confidence: 70, Rec: systems.Over,
		},
	})
}

func TestBoundsOnRandomInput(t *testing.T) {
	t.Parallel()
	systemstest.CheckBounds(t, movingavg.New(), 1, 10000)
}

func BenchmarkPredict(b *testing.B) {
	f := systems.Features{PointsAvgL5: 20, PointsAvgL10: 18, PointsAvgSeason: 16, HasLine: true, Line: 15.5}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_, _ = movingavg.New().Predict(ctx, &f)
	}
}
