package similarity_test

import (
	"context"
	"errors"
	"testing"

	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/similarity"
	"github.com/predworker/predworker/systems/systemstest"
)

// tonight: tier 2 opponent, one rest day, at home, neutral form.
func tonight(games []systems.GameLog, line float64) systems.Features {
	return systems.Features{OppTier: 2, RestDays: 1, Home: true, Form: "neutral", RecentGames: games, HasLine: line > 0, Line: line}
}

func game(tier, rest int, home bool, form string, pts float64) systems.GameLog {
	return systems.GameLog{OppTier: tier, RestDays: rest, Home: home, Form: form, Points: pts}
}

func TestScore(t *testing.T) {
	t.Parallel()
	f := tonight(nil, 0)
	for _, c := range []struct {
		g    systems.GameLog
		want float64
	}{
		{game(2, 1, true, "neutral", 0), 100}, // 40 + 30 + 15 + 15
		{game(1, 2, true, "hot", 0), 55},      // 20 + 15 + 15 + 5
		{game(3, 3, false, "neutral", 0), 35}, // 20 + 0 + 0 + 15
		{game(2, 2, false, "neutral", 0), 70}, // 40 + 15 + 0 + 15
		{game(2, 1, false, "cold", 0), 75},    // 40 + 30 + 0 + 5
	} {
		if got := similarity.Score(&f, c.g); got != c.want {
			t.Errorf("Score(%+v) = %v, want %v", c.g, got, c.want)
		}
	}
}

func TestWorkedExamples(t *testing.T) {
	t.Parallel()
	// Five identical-context games (score 100) at 20, 22, 24, 26, 28 points,
	// one scoring 70 (30 points) and one scoring 35 (ignored, 99 points).
	// Weighted mean: (100·(20+22+24+26+28) + 70·30) / (500 + 70) = 14100/570 = 24.736… → 24.7.
	// Kept 6, mean score 570/6 = 95; spread: sqrt(Σ(p − 24.7368)²/6) = sqrt(70.415/6) = 3.4258.
	// Confidence 40 + 1.5·6 + 0.5·25 − 3.4258 = 58.074 → 58.1. Edge 24.7 − 21.5 = 3.2 > 2, 58.1 > 55: OVER.
	games := []systems.GameLog{
		game(2, 1, true, "neutral", 20), game(2, 1, true, "neutral", 22), game(2, 1, true, "neutral", 24),
		game(2, 1, true, "neutral", 26), game(2, 1, true, "neutral", 28), game(2, 2, false, "neutral", 30),
		game(3, 3, false, "neutral", 99),
	}
	systemstest.RunExamples(t, similarity.New(), []systemstest.Example{
		{Name: "six similar games", Features: tonight(games, 21.5), Points: 24.7, Confidence: 58.1, Rec: systems.Over},
		// Without a line.
		{Name: "no line", Features: tonight(games, 0), Points: 24.7, Confidence: 58.1, Rec: systems.NoLine},
	})
	few := tonight(games[4:], 20.5) // 28 (100), 30 (70), 99 (35): two kept
	if _, err := similarity.New().Predict(context.Background(), &few); !errors.Is(err, systems.ErrInsufficientData) {
		t.Fatalf("two similar games: %v, want ErrInsufficientData", err)
	}
}

func TestBounds(t *testing.T) {
	t.Parallel()
	systemstest.CheckBounds(t, similarity.New(), 7, 10000)
}

func BenchmarkPredict(b *testing.B) {
	f := tonight(nil, 20.5)
	for i := range 30 {
		f.RecentGames = append(f.RecentGames, game(1+i%3, i%4, i%2 == 0, "neutral", float64(10+i%15)))
	}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = similarity.New().Predict(b.Context(), &f)
	}
}
