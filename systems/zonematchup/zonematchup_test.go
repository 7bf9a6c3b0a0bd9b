package zonematchup_test

import (
	"context"
	"testing"

	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/systemstest"
	"github.com/predworker/predworker/systems/zonematchup"
)

func TestWorkedExamples(t *testing.T) {
	t.Parallel()
	systemstest.RunExamples(t, zonematchup.New(), []systemstest.Example{
		{
			// Per zone (115 − 110)·0.3·w = 1.8, 1.5, 1.65, 1.2 (inside ±3); weighted by shares
			// .4/.1/.3/.2: 0.72 + 0.15 + 0.495 + 0.24 = 1.605; usage 25 → ×1.25 = 2.00625.
			// 20 + 2.00625 + 0.4·1 pace + 0.8 home = 23.20625 → 23.2.
			// Confidence 65 − 2·(6 − 4) = 61. Edge 23.2 − 20.5 = 2.7 > 2.5: OVER.
			Name: "soft defence at home",
			Features: systems.Features{PointsAvgSeason: 20, OppDefRating: 115, PaintShare: .4, MidShare: .1, ThreeShare: .3,
				FTShare: .2, Usage: 25, PaceAdjustment: 1, Home: true, PointsStdL10: 6, GamesPlayed: 30,
				HasLine: true, Line: 20.5},
			Points: 23.2, Confidence: 61, Rec: systems.Over,
		},
		{
			// Def 130: every zone term clamps to +3; Σ shares = 1 → +3 × usage weight 0.5 (usage 8) = 1.5.
			// 10 + 1.5 − 0.8 away − 2.5 fatigue 75 = 8.2. Confidence 65 − 15 (4 games) = 50: not above 50, PASS.
			Name: "clamped zones, few games",
			Features: systems.Features{PointsAvgSeason: 10, OppDefRating: 130, PaintShare: .25, MidShare: .25, ThreeShare: .25,
				FTShare: .25, Usage: 8, FatigueScore: 75, PointsStdL10: 2, GamesPlayed: 4, HasLine: true, Line: 14.5},
			Points: 8.2, Confidence: 50, Rec: systems.Pass,
		},
		{
			// Def 100: paint (−10)·0.3·1.2 = −3.6 → −3; all shares in paint: −3 × 1.0 (usage 20) = −3.
			// 12 − 3 + 0.8 = 9.8. Confidence 65 − 2·6 = 53. No line.
			Name: "tough interior defence",
			Features: systems.Features{PointsAvgSeason: 12, OppDefRating: 100, PaintShare: 1, Usage: 20, Home: true,
				PointsStdL10: 10, GamesPlayed: 40},
			Points: 9.8, Confidence: 53, Rec: systems.NoLine,
		},
	})
}

func TestBoundsOnRandomInput(t *testing.T) {
	t.Parallel()
	systemstest.CheckBounds(t, zonematchup.New(), 3, 10000)
}

func BenchmarkPredict(b *testing.B) {
	f := systems.Features{PointsAvgSeason: 20, OppDefRating: 115, PaintShare: .4, MidShare: .1, ThreeShare: .3, FTShare: .2, Usage: 25}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_, _ = zonematchup.New().Predict(ctx, &f)
	}
}
