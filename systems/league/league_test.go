package league_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"testing"

	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/league"
)

func TestSchedule(t *testing.T) {
	t.Parallel()
	l := league.Default()
	if len(l.Teams) != 30 || len(l.Players) != 450 {
		t.Fatalf("%d teams, %d players; want 30, 450", len(l.Teams), len(l.Players))
	}
	perTeam := make([]int, len(l.Teams))
	seen := map[string]bool{}
	for _, g := range l.Games {
		if g.Home == g.Away {
			t.Fatalf("game %s: team plays itself", g.ID)
		}
		if seen[g.ID] {
			t.Fatalf("duplicate game id %s", g.ID)
		}
		seen[g.ID] = true
		if g.Date < league.SeasonStart || g.Date > league.SeasonEnd {
			t.Fatalf("game %s on %s, outside the season", g.ID, g.Date)
		}
		perTeam[g.Home]++
		perTeam[g.Away]++
	}
	for i, n := range perTeam {
		if n < 78 || n > 82 {
			t.Errorf("team %s plays %d games, want 78-82", l.Teams[i].Abbr, n)
		}
	}
	if n := len(l.GamesOn("2025-01-15")); n != 15 {
		t.Errorf("2025-01-15 has %d games, want a full slate of 15", n)
	}
	if n := len(l.GamesOn("2025-02-16")); n != 0 {
		t.Errorf("All-Star Sunday has %d games", n)
	}
}

func TestSlateAndFeatures(t *testing.T) {
	t.Parallel()
	l := league.Default()
	ctx := t.Context()
	slate, err := l.Slate(ctx, "2025-01-15")
	if err != nil {
		t.Fatal(err)
	}
	if len(slate) < 400 || len(slate) > 450 {
		t.Fatalf("full slate has %d players, want about 450", len(slate))
	}
	feats, err := l.Features(ctx, "2025-01-15", append(slate, "nobody"))
	if err != nil {
		t.Fatal(err)
	}
	if len(feats) != len(slate) {
		t.Fatalf("features for %d of %d players", len(feats), len(slate))
	}
	withLine := 0
	for name, f := range feats {
		if f.PlayerLookup != name || f.GameID == "" || f.Opponent == f.Team {
			t.Fatalf("bad identity in %+v", f)
		}
		if f.PointsAvgSeason < 0 || f.PointsAvgSeason > 45 || f.GamesPlayed < 20 {
			t.Fatalf("%s: implausible season average %.1f over %d games", name, f.PointsAvgSeason, f.GamesPlayed)
		}
		if s := f.PaintShare + f.MidShare + f.ThreeShare + f.FTShare; s < 0.999 || s > 1.001 {
			t.Fatalf("%s: zone shares sum to %f", name, s)
		}
		if len(f.RecentGames) != 30 {
			t.Fatalf("%s: %d recent games by mid-January, want 30", name, len(f.RecentGames))
		}
		if f.HasLine {
			withLine++
			if f.Line <= 0 || f.Line > 45 {
				t.Fatalf("%s: line %.1f", name, f.Line)
			}
		}
		if _, played := l.Actual(name, "2025-01-15"); !played {
			t.Fatalf("%s on the slate but has no actual points", name)
		}
	}
	if withLine < len(slate)*2/3 {
		t.Errorf("only %d of %d players have a line", withLine, len(slate))
	}
	if _, err := l.Slate(ctx, "2025-02-16"); !errors.Is(err, systems.ErrNoGames) {
		t.Errorf("All-Star Sunday slate err = %v, want ErrNoGames", err)
	}
	if _, err := l.Slate(ctx, "2023-01-01"); !errors.Is(err, systems.ErrUnknownDate) {
		t.Errorf("out-of-season slate err = %v, want ErrUnknownDate", err)
	}
}

// The league is part of the product's contract: the same seed must give the
// same data on every machine. A change to the generator changes this digest,
// which is then a deliberate, reviewed change.
func TestDeterministic(t *testing.T) {
	t.Parallel()
	a := league.Generate(1, 2)
	b := league.Generate(1, 2)
	digest := func(l *league.League) string {
		slate, err := l.Slate(t.Context(), "2025-03-05")
		if err != nil {
			t.Fatal(err)
		}
		f, err := l.Features(t.Context(), "2025-03-05", slate)
		if err != nil {
			t.Fatal(err)
		}
		js, err := json.Marshal(struct {
			G any
			F any
		}{l.Games, f})
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(js)
		return hex.EncodeToString(sum[:])
	}
	if da, db := digest(a), digest(b); da != db {
		t.Fatalf("same seed, different data: %s vs %s", da, db)
	}
	if digest(a) == digest(league.Default()) {
		t.Fatal("different seeds gave the same league")
	}
	const want = "2c4712236f17cc2e123e09ef5d6e2c25a35bf234bee92d70061f51fb19c3e2a5"
	if got := digest(league.Default()); got != want {
		t.Fatalf("bundled league digest = %s, want %s", got, want)
	}
}

func BenchmarkGenerate(b *testing.B) {
	for b.Loop() {
		league.Generate(1, 2)
	}
}
