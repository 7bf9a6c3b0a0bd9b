// Package league is the bundled synthetic feature store: a deterministic NBA-like
// league (30 teams × 15 players) over the 2024-25 regular season, generated
// from a fixed seed with math/rand/v2's PCG, whose output is specified
// bit for bit, so every machine sees the same schedule, box scores, features
// and prop lines. It implements systems.FeatureSource and also knows each
// player's actual points, so predictions can be scored.
package league

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/predworker/predworker/systems"
)

// Season bounds of the synthetic league (inclusive).
const (
	SeasonStart = "2024-10-22"
	SeasonEnd   = "2025-04-13"
	dateLayout  = time.DateOnly
	seed1       = 0x9E3779B97F4A7C15
	seed2       = 2025
	leaguePace  = 99.0
)

// Team is one franchise.
type Team struct {
	Abbr      string
	DefRating float64    // points allowed per 100 possessions
	Pace      float64    // possessions per game
	ZoneWeak  [4]float64 // per-zone defensive weakness, -2.5 … +2.5
	Tier      int        // 1 best defence … 3 worst
}

// Player is one rostered player.
type Player struct {
	Lookup     string
	Team       int
	Mean       float64    // true scoring level
	Usage      float64    // percent
	Zones      [4]float64 // shares of points by zone
	Volatility float64
}

// Game is one scheduled game.
type Game struct {
	ID         string
	Date       string
	Home, Away int
}

type box struct {
	game     int
	day      int // days since SeasonStart
	opp      int
	home     bool
	rest     int
	played   bool
	points   float64
	usage    float64
	hasLine  bool
	lineSeed float64
}

// League is the generated data set. It is read-only after generation.
type League struct {
	Teams   []Team
	Players []Player
	Games   []Game
	start   time.Time
	days    int
	byDay   [][]int        // day → game indices
	logs    [][]box        // player → chronological team games
	index   map[string]int // lookup → player
	gameDay map[int]int    // game → day
}

var (
	once    sync.Once
	builtIn *League
)

// Default returns the league generated from the bundled seed (built once).
func Default() *League {
	once.Do(func() { builtIn = Generate(seed1, seed2) })
	return builtIn
}

var (
	teamAbbrs = []string{"ATL", "BOS", "BKN", "CHA", "CHI", "CLE", "DAL", "DEN", "DET", "GSW",
		"HOU", "IND", "LAC", "LAL", "MEM", "MIA", "MIL", "MIN", "NOP", "NYK",
		"OKC", "ORL", "PHI", "PHX", "POR", "SAC", "SAS", "TOR", "UTA", "WAS"}
	firstNames = []string{"aaron", "marcus", "jalen", "tyrese", "devin", "jaylen", "darius", "kevin",
		"anthony", "brandon", "cameron", "dejon", "evan", "franz", "grant", "isaiah", "jordan",
		"keegan", "luka", "malik", "nikola", "obi", "paolo", "quentin", "rudy", "scottie",
		"trae", "victor", "walker", "xavier", "zach", "amen", "bam", "cade", "dyson", "josh",
		"kyle", "lamelo", "mikal", "norman"}
	lastNames = []string{"adams", "barnes", "carter", "daniels", "edwards", "fox", "green", "harris",
		"ingram", "jackson", "kessler", "lopez", "mitchell", "nance", "okoro", "porter", "quickley",
		"reaves", "smith", "thompson", "usher", "vanvleet", "wagner", "young", "zubac", "allen",
		"brown", "collins", "davis", "evans", "fontecchio", "gordon", "holmes", "irving", "jones",
		"kuzma", "lively", "murray", "nesmith", "oubre"}
	// Roster scoring levels, best to worst; noise is added per player.
	rosterMeans = []float64{26, 20, 17, 14, 12, 10.5, 9, 8, 7, 6, 5, 4, 3.5, 3, 2.5}
)

// Generate builds a league from a seed. The same seed always gives the same
// league.
func Generate(s1, s2 uint64) *League {
	rng := rand.New(rand.NewPCG(s1, s2))
	start, _ := time.Parse(dateLayout, SeasonStart) // constant, always parses
	end, _ := time.Parse(dateLayout, SeasonEnd)
	l := &League{start: start, days: int(end.Sub(start).Hours()/24) + 1, index: map[string]int{}, gameDay: map[int]int{}}

	for _, abbr := range teamAbbrs {
		t := Team{Abbr: abbr, DefRating: 106 + rng.Float64()*12, Pace: 96 + rng.Float64()*7}
		for z := range t.ZoneWeak {
			t.ZoneWeak[z] = rng.Float64()*5 - 2.5
		}
		l.Teams = append(l.Teams, t)
	}
	ratings := make([]float64, len(l.Teams))
	for i, t := range l.Teams {
		ratings[i] = t.DefRating
	}
	slices.Sort(ratings)
	for i := range l.Teams {
		switch r := l.Teams[i].DefRating; {
		case r <= ratings[9]:
			l.Teams[i].Tier = 1
		case r <= ratings[19]:
			l.Teams[i].Tier = 2
		default:
			l.Teams[i].Tier = 3
		}
	}

	names := rng.Perm(len(firstNames) * len(lastNames))
	for ti := range l.Teams {
		for slot, mean := range rosterMeans {
			n := names[ti*len(rosterMeans)+slot]
			p := Player{
				Lookup:     firstNames[n/len(lastNames)] + lastNames[n%len(lastNames)],
				Team:       ti,
				Mean:       math.Max(1.5, mean*(0.85+rng.Float64()*0.3)),
				Volatility: 0.9 + rng.Float64()*0.5,
			}
			p.Usage = 12 + p.Mean*0.55 + rng.Float64()*3
			paint, mid, three := 0.2+rng.Float64()*0.4, 0.05+rng.Float64()*0.2, 0.1+rng.Float64()*0.35
			ft := 0.08 + rng.Float64()*0.15
			sum := paint + mid + three + ft
			p.Zones = [4]float64{paint / sum, mid / sum, three / sum, ft / sum}
			l.index[p.Lookup] = len(l.Players)
			l.Players = append(l.Players, p)
		}
	}
	l.schedule(rng)
	l.boxScores(rng)
	return l
}

func (l *League) date(day int) string { return l.start.AddDate(0, 0, day).Format(dateLayout) }

// noGames reports the days without games: Thanksgiving, Christmas Eve and the
// All-Star break.
func (l *League) noGames(day int) bool {
	switch d := l.date(day); {
	case d == "2024-11-28", d == "2024-12-24":
		return true
	case d >= "2025-02-14" && d <= "2025-02-19":
		return true
	}
	return false
}

// fullSlate reports the days every team plays: Wednesdays from November to March.
func (l *League) fullSlate(day int) bool {
	t := l.start.AddDate(0, 0, day)
	return t.Weekday() == time.Wednesday && t.Month() != time.October && t.Month() != time.April
}

// schedule spreads 82 games per team over the season with no three games in
// three days and one full 15-game slate every Wednesday from November to March.
func (l *League) schedule(rng *rand.Rand) {
	nt := len(l.Teams)
	need := make([]int, nt)
	homes := make([]int, nt)
	lastPlayed := make([][2]int, nt) // the last two days played
	for i := range need {
		need[i] = 82
		lastPlayed[i] = [2]int{-10, -10}
	}
	l.byDay = make([][]int, l.days)
	for day := range l.days {
		if l.noGames(day) {
			continue
		}
		full, normal := 0, 0
		for d := day + 1; d < l.days; d++ {
			switch {
			case l.noGames(d):
			case l.fullSlate(d):
				full++
			default:
				normal++
			}
		}
		var chosen []int
		if l.fullSlate(day) {
			for t := range nt {
				if need[t] > 0 {
					chosen = append(chosen, t)
				}
			}
		} else {
			total := 0
			for _, n := range need {
				total += n
			}
			perDay := float64(total-nt*full) / float64(normal+1)
			k := 2 * int(math.Round(perDay/2+rng.Float64()*2-1))
			k = max(2, min(k, nt))
			type cand struct {
				t int
				p float64
			}
			var cands []cand
			for t := range nt {
				threeInThree := lastPlayed[t][0] == day-1 && lastPlayed[t][1] == day-2
				if need[t]-full <= 0 || threeInThree {
					continue
				}
				p := float64(need[t]-full)/float64(normal+1) + rng.Float64()*0.35
				if lastPlayed[t][0] == day-1 {
					p -= 0.25 // back-to-backs happen, but less often
				}
				cands = append(cands, cand{t, p})
			}
			sort.Slice(cands, func(i, j int) bool { return cands[i].p > cands[j].p })
			for _, c := range cands[:min(k, len(cands))] {
				chosen = append(chosen, c.t)
			}
		}
		if len(chosen)%2 == 1 {
			chosen = chosen[:len(chosen)-1]
		}
		rng.Shuffle(len(chosen), func(i, j int) { chosen[i], chosen[j] = chosen[j], chosen[i] })
		for i := 0; i+1 < len(chosen); i += 2 {
			a, b := chosen[i], chosen[i+1]
			if homes[a] > homes[b] {
				a, b = b, a
			}
			homes[a]++
			g := Game{ID: fmt.Sprintf("00224%05d", len(l.Games)+1), Date: l.date(day), Home: a, Away: b}
			l.gameDay[len(l.Games)] = day
			l.byDay[day] = append(l.byDay[day], len(l.Games))
			l.Games = append(l.Games, g)
			for _, t := range []int{a, b} {
				need[t]--
				lastPlayed[t] = [2]int{day, lastPlayed[t][0]}
			}
		}
	}
}

// boxScores plays every game: each player's points follow his level, the
// opponent's defence and pace, venue, rest and a slowly drifting form.
func (l *League) boxScores(rng *rand.Rand) {
	l.logs = make([][]box, len(l.Players))
	form := make([]float64, len(l.Players))
	prevDay := make([]int, len(l.Teams))
	for i := range prevDay {
		prevDay[i] = -10
	}
	for gi, g := range l.Games {
		day := l.gameDay[gi]
		for _, side := range [2]struct {
			team, opp int
			home      bool
		}{{g.Home, g.Away, true}, {g.Away, g.Home, false}} {
			rest := min(3, day-prevDay[side.team])
			opp := l.Teams[side.opp]
			pace := (l.Teams[side.team].Pace + opp.Pace) / 2
			for pi := side.team * len(rosterMeans); pi < (side.team+1)*len(rosterMeans); pi++ {
				p := l.Players[pi]
				form[pi] = 0.8*form[pi] + rng.NormFloat64()*0.06
				b := box{game: gi, day: day, opp: side.opp, home: side.home, rest: rest,
					played: rng.Float64() >= 0.04, lineSeed: rng.NormFloat64(), hasLine: p.Mean >= 5 || rng.Float64() < 0.3}
				mismatch := 0.0
				for z, share := range p.Zones {
					mismatch += share * opp.ZoneWeak[z]
				}
				mean := p.Mean * (1 + form[pi]) * math.Pow(opp.DefRating/112, 1.5) * (pace / leaguePace)
				mean += 0.4 * mismatch
				if side.home {
					mean += 0.5
				} else {
					mean -= 0.5
				}
				if rest == 1 {
					mean -= 0.05 * p.Mean
				}
				b.points = math.Max(0, math.Round(mean+rng.NormFloat64()*p.Volatility*math.Sqrt(math.Max(mean, 1))*1.6))
				b.usage = p.Usage * (1 + form[pi]) * (0.95 + rng.Float64()*0.1)
				if !b.played {
					b.points = 0
				}
				l.logs[pi] = append(l.logs[pi], b)
			}
			prevDay[side.team] = day
		}
	}
}

// Day returns the day index of date, or an error outside the season.
func (l *League) day(date string) (int, error) {
	t, err := time.Parse(dateLayout, date)
	if err != nil {
		return 0, fmt.Errorf("parse date %q: %w", date, err)
	}
	d := int(t.Sub(l.start).Hours() / 24)
	if t.Before(l.start) || d >= l.days {
		return 0, fmt.Errorf("%s (season %s to %s): %w", date, SeasonStart, SeasonEnd, systems.ErrUnknownDate)
	}
	return d, nil
}

// GamesOn returns the games scheduled on date.
func (l *League) GamesOn(date string) []Game {
	d, err := l.day(date)
	if err != nil {
		return nil
	}
	out := make([]Game, 0, len(l.byDay[d]))
	for _, gi := range l.byDay[d] {
		out = append(out, l.Games[gi])
	}
	return out
}

// entry finds the player's box of the game on day, and its position.
func (l *League) entry(pi, day int) (int, bool) {
	log := l.logs[pi]
	i := sort.Search(len(log), func(i int) bool { return log[i].day >= day })
	return i, i < len(log) && log[i].day == day
}

// Slate implements systems.FeatureSource: the players of the teams playing on
// date who are available (not resting or injured), sorted.
func (l *League) Slate(ctx context.Context, date string) ([]string, error) {
	d, err := l.day(date)
	if err != nil {
		return nil, err
	}
	if len(l.byDay[d]) == 0 {
		return nil, fmt.Errorf("%s: %w", date, systems.ErrNoGames)
	}
	var out []string
	for pi := range l.Players {
		if i, ok := l.entry(pi, d); ok && l.logs[pi][i].played {
			out = append(out, l.Players[pi].Lookup)
		}
	}
	sort.Strings(out)
	return out, ctx.Err()
}

// Actual returns the points player scored on date, and whether he played.
func (l *League) Actual(player, date string) (float64, bool) {
	pi, ok := l.index[player]
	d, err := l.day(date)
	if !ok || err != nil {
		return 0, false
	}
	i, ok := l.entry(pi, d)
	if !ok || !l.logs[pi][i].played {
		return 0, false
	}
	return l.logs[pi][i].points, true
}

// Features implements systems.FeatureSource.
func (l *League) Features(ctx context.Context, date string, players []string) (map[string]*systems.Features, error) {
	d, err := l.day(date)
	if err != nil {
		return nil, err
	}
	out := make(map[string]*systems.Features, len(players))
	for _, name := range players {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		pi, ok := l.index[name]
		if !ok {
			continue
		}
		i, ok := l.entry(pi, d)
		if !ok || !l.logs[pi][i].played {
			continue
		}
		out[name] = l.features(pi, i, date)
	}
	return out, nil
}

func round1(v float64) float64 { return math.Round(v*10) / 10 }

// features computes the feature row of player pi for his game at log index i
// from the games he played before it.
func (l *League) features(pi, i int, date string) *systems.Features {
	p := l.Players[pi]
	log := l.logs[pi]
	cur := log[i]
	var pts, usage []float64 // newest first
	var recent []systems.GameLog
	for j := i - 1; j >= 0; j-- {
		b := log[j]
		if !b.played {
			continue
		}
		pts = append(pts, b.points)
		usage = append(usage, b.usage)
		if len(recent) < 30 {
			recent = append(recent, systems.GameLog{Date: l.date(b.day), OppTier: l.Teams[b.opp].Tier,
				RestDays: b.rest, Home: b.home, Points: b.points})
		}
	}
	// Before the first game, last season's level stands in for every average.
	prior := math.Round(p.Mean)
	avg := func(n int) float64 {
		if len(pts) == 0 {
			return prior
		}
		return round1(systems.Mean(pts[:min(n, len(pts))]))
	}
	std := systems.StdDev(pts[:min(10, len(pts))])
	if len(pts) < 3 {
		std = p.Volatility * math.Sqrt(p.Mean) * 1.6
	}
	// Form of each recent game: the last-five average coming into it versus the
	// season average coming into it.
	for k := range recent {
		older := pts[k+1:]
		recent[k].Form = systems.Form(systems.Mean(older[:min(5, len(older))]), systems.Mean(older), len(older))
	}
	games7, fatigue := 0, 0.0
	for j := i - 1; j >= 0 && log[j].day >= cur.day-7; j-- {
		if log[j].played {
			games7++
		}
	}
	fatigue = float64(12*games7) + p.Usage/2
	if cur.rest == 1 {
		fatigue += 30
	}
	opp := l.Teams[cur.opp]
	mismatch := 0.0
	for z, share := range p.Zones {
		mismatch += share * opp.ZoneWeak[z] * 2
	}
	usageL5 := p.Usage
	if len(usage) > 0 {
		usageL5 = systems.Mean(usage[:min(5, len(usage))])
	}
	pace := (l.Teams[p.Team].Pace + opp.Pace) / 2
	f := &systems.Features{
		PlayerLookup:     p.Lookup,
		GameDate:         date,
		GameID:           l.Games[cur.game].ID,
		Team:             l.Teams[p.Team].Abbr,
		Opponent:         opp.Abbr,
		PointsAvgL5:      avg(5),
		PointsAvgL10:     avg(10),
		PointsAvgSeason:  avg(len(pts)),
		PointsStdL10:     round1(std),
		GamesPlayed:      len(pts),
		GamesLast7Days:   games7,
		FatigueScore:     round1(systems.Clamp(fatigue, 0, 100)),
		PaintShare:       p.Zones[0],
		MidShare:         p.Zones[1],
		ThreeShare:       p.Zones[2],
		FTShare:          p.Zones[3],
		ShotZoneMismatch: round1(mismatch),
		OppDefRating:     round1(opp.DefRating),
		OppTier:          opp.Tier,
		Pace:             round1(pace),
		PaceAdjustment:   round1(pace - leaguePace),
		Usage:            round1(p.Usage),
		UsageSpike:       round1(usageL5 - p.Usage),
		Home:             cur.home,
		BackToBack:       cur.rest == 1,
		RestDays:         cur.rest,
		RecentGames:      recent,
		Quality:          systems.Clamp(40+6*float64(len(pts)), 0, 100),
	}
	f.Form = systems.Form(f.PointsAvgL5, f.PointsAvgSeason, len(pts))
	if cur.hasLine {
		f.HasLine = true
		f.Line = math.Round((0.55*f.PointsAvgL10+0.45*f.PointsAvgSeason+cur.lineSeed)*2)/2 - 0.5
		f.Line = math.Max(0.5, f.Line)
		if math.Mod(f.Line, 1) == 0 { // books hang half-point lines
			f.Line += 0.5
		}
	}
	return f
}

var _ systems.FeatureSource = (*League)(nil)

// Lazy is a FeatureSource over Default that generates the league on first
// use, so a process is ready to serve before the league exists.
type Lazy struct{}

// Slate implements systems.FeatureSource.
func (Lazy) Slate(ctx context.Context, date string) ([]string, error) {
	return Default().Slate(ctx, date)
}

// Features implements systems.FeatureSource.
func (Lazy) Features(ctx context.Context, date string, players []string) (map[string]*systems.Features, error) {
	return Default().Features(ctx, date, players)
}
