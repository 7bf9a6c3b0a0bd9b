package gamelogs_test

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/predworker/predworker/internal/nbadata"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/gamelogs"
)

const header = "season,game_date,game_id,player_id,player_name,team,opponent,home,minutes,points,fga,fta,fg3a\n"

func write(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// tiny is two teams over four dates: A1 (Luka Dončić) plays every game,
// B1 misses the third; the fourth date is scheduled (blank stats).
const tiny = header +
	"2024-25,2024-11-01,G1,1,Luka Dončić,AAA,BBB,1,36,30,20,10,8\n" +
	"2024-25,2024-11-01,G1,2,Bo Bench,AAA,BBB,1,12,4,4,0,2\n" +
	"2024-25,2024-11-01,G1,3,Cy Center,BBB,AAA,0,34,20,16,4,0\n" +
	"2024-25,2024-11-02,G2,1,Luka Dončić,AAA,BBB,0,38,40,25,12,10\n" +
	"2024-25,2024-11-02,G2,3,Cy Center,BBB,AAA,1,30,10,12,2,0\n" +
	"2024-25,2024-11-05,G3,1,Luka Doncic,AAA,BBB,1,35,20,18,4,6\n" +
	"2024-25,2024-11-05,G3,2,Bo Bench,AAA,BBB,1,10,2,3,0,1\n" +
	"2024-25,2024-11-07,G4,1,Luka Dončić,AAA,BBB,0,,,,,\n" +
	"2024-25,2024-11-07,G4,3,Cy Center,BBB,AAA,1,,,,,\n"

// The features of a small file, checked by hand: averages, rest, the
// back-to-back, venue, games in the last week; the latest spelling names
// the player; a scheduled game is in the slate, its outcome unknown.
func TestFeaturesByHand(t *testing.T) {
	s, err := gamelogs.Load(gamelogs.Options{Games: write(t, "g.csv", tiny)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	slate, err := s.Slate(ctx, "2024-11-07")
	if err != nil || !reflect.DeepEqual(slate, []string{"cycenter", "lukadoncic"}) {
		t.Fatalf("slate of the scheduled date: %v, %v", slate, err)
	}
	if _, ok := s.Actual("lukadoncic", "2024-11-07"); ok {
		t.Fatal("a scheduled game has an outcome")
	}
	fs, err := s.Features(ctx, "2024-11-07", slate)
	if err != nil {
		t.Fatal(err)
	}
	f := fs["lukadoncic"]
	if f.PointsAvgSeason != 30 || f.PointsAvgL5 != 30 || f.GamesPlayed != 3 || f.RestDays != 2 || f.BackToBack ||
		f.Home || f.GamesLast7Days != 3 || f.MinutesAvgSeason != 36.3 || f.Team != "AAA" || f.Opponent != "BBB" ||
		f.GameID != "G4" || len(f.RecentGames) != 3 || f.RecentGames[0].Points != 20 || f.Quality != 58 {
		t.Fatalf("features of Luka on the scheduled date: %+v", f)
	}
	if err := systems.Validate(f, 50); err != nil {
		t.Fatalf("the features break the contract: %v", err)
	}
	fs, _ = s.Features(ctx, "2024-11-02", []string{"lukadoncic", "cycenter"})
	if f := fs["lukadoncic"]; !f.BackToBack || f.RestDays != 1 || f.PointsAvgSeason != 30 || f.GamesPlayed != 1 {
		t.Fatalf("the back-to-back: %+v", f)
	}
	// AAA allowed BBB's 20 points on 16 + 0.44·4 + 3.5 = 21.26 possessions.
	if got := fs["cycenter"].OppDefRating; got != math.Round(1000*20/21.26)/10 {
		t.Fatalf("AAA's defensive rating as BBB's opponent: %g", got)
	}
	if avg, n := s.SeasonAverage("lukadoncic", "2024-11-05"); avg != 35 || n != 2 {
		t.Fatalf("season average before the third game: %g over %d", avg, n)
	}
	if _, err := s.Slate(ctx, "2024-11-03"); !errors.Is(err, systems.ErrNoGames) {
		t.Fatalf("a date without games: %v", err)
	}
	if _, err := s.Slate(ctx, "2025-01-01"); !errors.Is(err, systems.ErrUnknownDate) {
		t.Fatalf("a date after the file: %v", err)
	}
}

// Two players whose names give the same lookup both carry their id.
func TestLookupsAreUnique(t *testing.T) {
	s, err := gamelogs.Load(gamelogs.Options{Games: write(t, "g.csv", header+
		"2024-25,2024-11-01,G1,10,Chris Johnson,AAA,BBB,1,20,8,6,2,1\n"+
		"2024-25,2024-11-01,G1,11,Chris Johnson,BBB,AAA,0,20,8,6,2,1\n"+
		"2024-25,2024-11-01,G1,12,Zoë O'Neal-Smith,BBB,AAA,0,20,8,6,2,1\n")})
	if err != nil {
		t.Fatal(err)
	}
	slate, _ := s.Slate(t.Context(), "2024-11-01")
	if !reflect.DeepEqual(slate, []string{"chrisjohnson10", "chrisjohnson11", "zoeonealsmith"}) {
		t.Fatalf("lookups %v", slate)
	}
}

// Bad files are refused with the line and column at fault.
func TestBadFiles(t *testing.T) {
	for name, c := range map[string]struct{ body, want string }{
		"missing column": {"season,game_date,game_id\n", "lacks player_id"},
		"bad number":     {header + "2024-25,2024-11-01,G1,1,A,AAA,BBB,1,36,lots,20,10,8\n", "line 2, points"},
		"bad date":       {header + "2024-25,11/01/2024,G1,1,A,AAA,BBB,1,36,30,20,10,8\n", "line 2, game_date"},
		"bad home":       {header + "2024-25,2024-11-01,G1,1,A,AAA,BBB,yes,36,30,20,10,8\n", "line 2, home"},
		"threes":         {header + "2024-25,2024-11-01,G1,1,A,AAA,BBB,1,36,30,5,10,8\n", "line 2, fg3a"},
		"twice in game":  {header + strings.Repeat("2024-25,2024-11-01,G1,1,A,AAA,BBB,1,36,30,20,10,8\n", 2), "appears twice"},
		"empty":          {header, "no rows"},
	} {
		if _, err := gamelogs.Load(gamelogs.Options{Games: write(t, "g.csv", c.body)}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

// Lines join on the player id, else on the name; one line per player-game
// (the first book alphabetically, its latest snapshot); one-sided rows are
// skipped; gzip is read as such.
func TestLines(t *testing.T) {
	lines := "game_date,player_id,player_name,game_id,line,over_odds,under_odds,book,snapshot_utc,commence_time_utc\n" +
		"2024-11-05,1,Luka Doncic,G3,31.5,-137,-137,Underdog,2024-11-05T21:00:00Z,x\n" +
		"2024-11-05,1,Luka Doncic,G3,29.5,-120,-110,PrizePicks,2024-11-05T20:00:00Z,x\n" +
		"2024-11-05,1,Luka Doncic,G3,30.5,-115,-115,PrizePicks,2024-11-05T21:00:00Z,x\n" +
		"2024-11-05,,Bo Bench,G3,3.5,-137,,PrizePicks,2024-11-05T21:00:00Z,x\n" +
		"2024-11-02,,Cy Center,G2,12.5,-137,-137,PrizePicks,2024-11-02T21:00:00Z,x\n"
	var gz strings.Builder
	zw := gzip.NewWriter(&gz)
	_, _ = io.WriteString(zw, lines)
	_ = zw.Close()
	s, err := gamelogs.Load(gamelogs.Options{Games: write(t, "g.csv", tiny), Lines: write(t, "l.csv.gz", gz.String())})
	if err != nil {
		t.Fatal(err)
	}
	if l, ok := s.LineOf("lukadoncic", "2024-11-05"); !ok || l.Line != 30.5 || l.OverOdds != -115 || l.Book != "PrizePicks" {
		t.Fatalf("Luka's line: %+v %v", l, ok)
	}
	if l, ok := s.LineOf("cycenter", "2024-11-02"); !ok || l.Line != 12.5 {
		t.Fatalf("a line joined on the name: %+v %v", l, ok)
	}
	if _, ok := s.LineOf("bobench", "2024-11-05"); ok || s.LinesSkipped() != 1 {
		t.Fatalf("a one-sided row was kept (skipped %d)", s.LinesSkipped())
	}
	fs, _ := s.Features(t.Context(), "2024-11-05", []string{"lukadoncic"})
	if f := fs["lukadoncic"]; !f.HasLine || f.Line != 30.5 {
		t.Fatalf("the line is not in the features: %+v", f)
	}
}

// No leakage, on the real data: the features of every player on date D are
// the same from the whole file as from a file that ends at D, with D's games
// present only as scheduled (blank) rows.
func TestNoLeakage(t *testing.T) {
	data := nbadata.Require(t)
	full, err := gamelogs.Load(gamelogs.Options{Games: data.Games, Lines: data.Lines})
	if err != nil {
		t.Fatal(err)
	}
	for _, date := range []string{"2015-10-28", "2021-01-15", "2024-12-16", "2025-04-13"} {
		cut := truncate(t, data.Games, date)
		part, err := gamelogs.Load(gamelogs.Options{Games: cut, Lines: data.Lines})
		if err != nil {
			t.Fatal(err)
		}
		slate, err := full.Slate(t.Context(), date)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := full.Features(t.Context(), date, slate)
		got, err := part.Features(t.Context(), date, slate)
		if err != nil {
			t.Fatal(err)
		}
		if len(want) != len(slate) || len(got) != len(want) {
			t.Fatalf("%s: %d players, %d and %d feature rows", date, len(slate), len(want), len(got))
		}
		for _, p := range slate {
			if !reflect.DeepEqual(want[p], got[p]) {
				t.Fatalf("%s, %s: the features depend on the games of that day or after:\nwhole file %+v\ncut file   %+v", date, p, want[p], got[p])
			}
		}
	}
}

// truncate writes the rows of games before date, and date's rows with their
// outcome blanked.
func truncate(t *testing.T, path, date string) string {
	t.Helper()
	return nbadata.Filter(t, path, func(rec []string) []string {
		switch {
		case rec[1] < date:
			return rec
		case rec[1] == date:
			for c := 8; c < len(rec); c++ {
				rec[c] = ""
			}
			return rec
		}
		return nil
	})
}

// The real data through this source gives the figures the data's own
// checks give: on 2024-25, players with five or more earlier games that
// season, the season average's error and the line's on the lined games.
func TestRealBaselines(t *testing.T) {
	data := nbadata.Require(t)
	s, err := gamelogs.Load(gamelogs.Options{Games: data.Games, Lines: data.Lines})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var n, nl int
	var avgErr, lineErr, avgErrLined float64
	for _, d := range s.Dates() {
		if d < "2024-10-01" {
			continue
		}
		slate, _ := s.Slate(ctx, d)
		for _, p := range slate {
			actual, ok := s.Actual(p, d)
			avg, games := s.SeasonAverage(p, d)
			if !ok || games < 5 {
				continue
			}
			n++
			avgErr += math.Abs(avg - actual)
			if l, ok := s.LineOf(p, d); ok {
				nl++
				lineErr += math.Abs(l.Line - actual)
				avgErrLined += math.Abs(avg - actual)
			}
		}
	}
	got := fmt.Sprintf("%d %.3f | %d %.3f %.3f", n, avgErr/float64(n), nl, lineErr/float64(nl), avgErrLined/float64(nl))
	if want := "23437 4.716 | 4125 5.246 5.391"; got != want {
		t.Fatalf("player-games, season-average MAE | lined, line MAE, season-average MAE: %s, want %s", got, want)
	}
}
