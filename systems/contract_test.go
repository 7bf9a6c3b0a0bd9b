package systems_test

import (
	"math"
	"strings"
	"testing"

	"github.com/predworker/predworker/systems"
)

func good() systems.Features {
	return systems.Features{PointsAvgL5: 20, PointsAvgL10: 19, PointsAvgSeason: 18, PointsStdL10: 5, GamesPlayed: 30,
		GamesLast7Days: 3, FatigueScore: 40, PaintShare: .4, MidShare: .1, ThreeShare: .3, FTShare: .2,
		OppDefRating: 112, OppTier: 2, Usage: 24, RestDays: 1, Quality: 90, HasLine: true, Line: 18.5,
		RecentGames: []systems.GameLog{{Points: 20}}}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	if f := good(); systems.Validate(&f, 50) != nil {
		t.Fatalf("a good row is refused: %v", systems.Validate(&f, 50))
	}
	for _, c := range []struct {
		name  string
		edit  func(*systems.Features)
		field string
	}{
		{"NaN average", func(f *systems.Features) { f.PointsAvgL5 = math.NaN() }, "points_avg_last_5"},
		{"infinite usage", func(f *systems.Features) { f.Usage = math.Inf(1) }, "usage_rate"},
		{"negative season", func(f *systems.Features) { f.PointsAvgSeason = -3 }, "points_avg_season"},
		{"impossible defence", func(f *systems.Features) { f.OppDefRating = 300 }, "opponent_def_rating"},
		{"missing tier", func(f *systems.Features) { f.OppTier = 0 }, "opponent_tier"},
		{"shares", func(f *systems.Features) { f.PaintShare = .9 }, "zone shares"},
		{"bad line", func(f *systems.Features) { f.Line = -1 }, "line"},
		{"bad game log", func(f *systems.Features) { f.RecentGames[0].Points = math.NaN() }, "recent game"},
		{"low quality", func(f *systems.Features) { f.Quality = 35 }, "quality 35 below 50"},
	} {
		f := good()
		c.edit(&f)
		err := systems.Validate(&f, 50)
		if err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: %v, want an error naming %s", c.name, err, c.field)
		}
	}
}
