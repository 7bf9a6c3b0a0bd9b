package gamelogs

import (
	"errors"
	"fmt"
	"io"
	"math"
	"sort"

	"github.com/predworker/predworker/systems"
)

// Shooting percentages that turn attempts into expected points for the
// shot-mix proxies (league-wide, roughly constant over the decade).
const (
	twoPct   = 0.52
	threePct = 0.36
	ftPct    = 0.78
	// paintOfTwo is the share of two-point attempts counted as paint.
	paintOfTwo = 2.0 / 3
	// maxRest caps the days of rest a game can have.
	maxRest = 7
)

// defaultShares stand in for a player without a shot yet.
var defaultShares = [4]float64{0.3, 0.15, 0.3, 0.25}

func round1(v float64) float64 { return math.Round(v*10) / 10 }

// usage is a game's usage proxy: the player's share of his team's shots and
// free throws while he was on the floor, in percent.
func (s *Source) usage(g entry, team *teamGameTotals) float64 {
	if g.minutes < 1 || team == nil || team.plays <= 0 {
		return 0
	}
	return 100 * (g.fga + 0.44*g.fta) * (team.minutes / 5) / (g.minutes * team.plays)
}

// teamGameTotals are a team's shots and minutes in one game.
type teamGameTotals struct{ plays, minutes float64 }

// shares returns the expected-points shares of paint, mid-range, three and
// free throws over games.
func shares(games []entry) [4]float64 {
	var two, three, ft float64
	for _, g := range games {
		two += 2 * twoPct * (g.fga - g.fg3a)
		three += 3 * threePct * g.fg3a
		ft += ftPct * g.fta
	}
	total := two + three + ft
	if total <= 0 {
		return defaultShares
	}
	return [4]float64{two * paintOfTwo / total, two * (1 - paintOfTwo) / total, three / total, ft / total}
}

// features computes the feature row of p's game at index i from the games
// before it.
//
// missing caches, per side of a game, the scoring missing from it (the same
// for every player of that side).
func (s *Source) features(p *player, i int, missing map[gameTeam]float64) *systems.Features {
	cur := p.games[i]
	var season, prior []entry // played games before cur, newest first
	for j := i - 1; j >= 0; j-- {
		g := p.games[j]
		if !g.played {
			continue
		}
		if g.season == cur.season {
			season = append(season, g)
		} else {
			prior = append(prior, g)
		}
	}
	pts := func(gs []entry, n int) []float64 {
		out := make([]float64, 0, min(n, len(gs)))
		for _, g := range gs[:min(n, len(gs))] {
			out = append(out, g.points)
		}
		return out
	}
	mins := func(gs []entry, n int) float64 {
		m := 0.0
		for _, g := range gs[:min(n, len(gs))] {
			m += g.minutes
		}
		return m / math.Max(1, float64(min(n, len(gs))))
	}
	// Before his first game of the season, a player's previous games stand in.
	base := season
	if len(base) == 0 {
		base = prior
	}
	seasonPts := pts(base, len(base))
	std := systems.StdDev(pts(base, 10))
	if len(base) < 3 {
		std = 2 + 0.4*systems.Mean(seasonPts)
	}
	usages := s.usages(base)
	usageSeason := systems.Mean(usages)
	usageL5 := systems.Mean(usages[:min(5, len(usages))])
	rest, games7 := restBefore(p, i), 0
	for j := i - 1; j >= 0 && cur.day-p.games[j].day <= 7; j-- {
		if p.games[j].played {
			games7++
		}
	}
	fatigue := float64(12*games7) + usageSeason/2
	if rest == 1 {
		fatigue += 30
	}
	opp := s.team(cur.season, cur.opp, cur.day)
	own := s.team(cur.season, cur.team, cur.day)
	lg := s.leagueDay[cur.season][cur.day]
	if lg == nil {
		lg = opp
	}
	sh := shares(base)
	// Mismatch: how much more of the player's kind of shots the opponent
	// allows than the league does, weighted by his mix, roughly ±5.
	mismatch := 0.0
	for z, share := range [3]float64{sh[0] + sh[1], sh[2], sh[3]} {
		if lg.allowed[z] > 0 {
			mismatch += 10 * share * (opp.allowed[z]/lg.allowed[z] - 1)
		}
	}
	pace := (own.pace + opp.pace) / 2
	f := &systems.Features{
		PlayerLookup:       p.lookup,
		GameDate:           cur.date,
		GameID:             cur.gameID,
		Team:               cur.team,
		Opponent:           cur.opp,
		PointsAvgL5:        round1(systems.Mean(pts(base, 5))),
		PointsAvgL10:       round1(systems.Mean(pts(base, 10))),
		PointsAvgSeason:    round1(systems.Mean(seasonPts)),
		PointsStdL10:       round1(std),
		MinutesAvgL5:       round1(mins(base, 5)),
		MinutesAvgSeason:   round1(mins(base, len(base))),
		PointsPerMinL5:     perMinute(base[:min(5, len(base))]),
		PointsPerMinSeason: perMinute(base),
		TeammatesOut:       round1(s.teammatesOut(cur, missing)),
		GamesPlayed:        len(season),
		GamesLast7Days:     games7,
		FatigueScore:       round1(systems.Clamp(fatigue, 0, 100)),
		PaintShare:         sh[0],
		MidShare:           sh[1],
		ThreeShare:         sh[2],
		FTShare:            sh[3],
		ShotZoneMismatch:   round1(systems.Clamp(mismatch, -5, 5)),
		OppDefRating:       round1(systems.Clamp(opp.defRating, 80, 140)),
		OppTier:            max(1, opp.tier),
		Pace:               round1(pace),
		PaceAdjustment:     round1(systems.Clamp(pace-lg.pace, -30, 30)),
		Usage:              round1(systems.Clamp(usageSeason, 0, 60)),
		UsageSpike:         round1(systems.Clamp(usageL5-usageSeason, -40, 40)),
		Home:               cur.home,
		BackToBack:         rest == 1,
		RestDays:           rest,
		RecentGames:        s.recent(p, i),
		Quality:            systems.Clamp(40+6*float64(len(season)), 0, 100),
	}
	f.Form = systems.Form(f.PointsAvgL5, f.PointsAvgSeason, len(base))
	if l, ok := s.lines[s.byLookup[p.lookup]][cur.date]; ok {
		f.Line, f.HasLine = l.Line, true
	}
	return f
}

// perMinute is points per minute over games (0 without minutes).
func perMinute(games []entry) float64 {
	var pts, mins float64
	for _, g := range games {
		pts, mins = pts+g.points, mins+g.minutes
	}
	if mins < 1 {
		return 0
	}
	return math.Round(1000*pts/mins) / 1000
}

// teammatesOut sums the season points per game (before cur) of the players
// who played cur's team's previous game that season and have no row on
// cur's date with that team (cur's player has one, so he is never among
// them).
func (s *Source) teammatesOut(cur entry, missing map[gameTeam]float64) float64 {
	key := gameTeam{cur.gameID, cur.team}
	if v, ok := missing[key]; ok {
		return v
	}
	v := s.missingPoints(cur)
	missing[key] = v
	return v
}

func (s *Source) missingPoints(cur entry) float64 {
	games := s.schedule[seasonTeam{cur.season, cur.team}]
	k := sort.Search(len(games), func(k int) bool { return games[k].day >= cur.day })
	if k == 0 {
		return 0
	}
	tonight := map[int]bool{}
	if k < len(games) && games[k].day == cur.day {
		for _, pi := range s.rosters[gameTeam{games[k].game, cur.team}] {
			tonight[pi] = true
		}
	}
	out := 0.0
	for _, pi := range s.rosters[gameTeam{games[k-1].game, cur.team}] {
		if !tonight[pi] {
			avg, _ := averageBefore(s.players[pi], cur.day, cur.season)
			out += avg
		}
	}
	return out
}

// restBefore is the days from the last game p played before his game at
// index i to that game, at most maxRest.
func restBefore(p *player, i int) int {
	for j := i - 1; j >= 0; j-- {
		if p.games[j].played {
			return min(maxRest, int(p.games[i].day-p.games[j].day))
		}
	}
	return maxRest
}

// averageBefore is a player's points per game that season before day, and
// over how many games.
func averageBefore(p *player, day int32, season int16) (float64, int) {
	i := sort.Search(len(p.games), func(k int) bool { return p.games[k].day >= day })
	sum, n := 0.0, 0
	for j := i - 1; j >= 0 && p.games[j].season == season; j-- {
		if p.games[j].played {
			sum += p.games[j].points
			n++
		}
	}
	if n == 0 {
		return 0, 0
	}
	return sum / float64(n), n
}

// usages are the per-game usage proxies of games (newest first), leaving
// out games of under a minute.
func (s *Source) usages(games []entry) []float64 {
	var out []float64
	for _, g := range games {
		if u := s.usage(g, s.totals[gameTeam{g.gameID, g.team}]); u > 0 {
			out = append(out, u)
		}
	}
	return out
}

// recent is the player's last 30 games before index i (any season), newest
// first, each with its opponent's tier, rest and form as they were then.
func (s *Source) recent(p *player, i int) []systems.GameLog {
	var out []systems.GameLog
	for j := i - 1; j >= 0 && len(out) < 30; j-- {
		g := p.games[j]
		if !g.played {
			continue
		}
		var before []float64 // that season's points before g, newest first
		for k := j - 1; k >= 0 && p.games[k].season == g.season; k-- {
			if h := p.games[k]; h.played {
				before = append(before, h.points)
			}
		}
		out = append(out, systems.GameLog{Date: g.date, OppTier: max(1, s.team(g.season, g.opp, g.day).tier),
			RestDays: min(restBefore(p, j), 3), Home: g.home, Points: g.points,
			Form: systems.Form(systems.Mean(before[:min(5, len(before))]), systems.Mean(before), len(before))})
	}
	return out
}

// readLines joins a lines file to the games: on player_id when the row has
// one, else on the player's lookup among that date's slate. A row without
// both prices is skipped (counted in LinesSkipped). A player-game
// listed by several books, or read several times, keeps one line: the first
// book in alphabetical order, its latest snapshot.
func (s *Source) readLines(path string) error {
	cr, cols, closeFile, err := openCSV(path, LineColumns)
	if err != nil {
		return err
	}
	defer func() { _ = closeFile() }()
	_, hasSnapshot := cols["snapshot_utc"]
	snapshots := map[int]map[string]string{}
	for line := 2; ; line++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		r := &row{rec: rec, cols: cols, line: line}
		if r.str("over_odds") == "" || r.str("under_odds") == "" {
			s.incompleteLines++ // a one-sided listing: not a line both ways
			continue
		}
		date, id, name := r.date("game_date"), r.str("player_id"), r.nonEmpty("player_name")
		l := Line{Line: r.float("line", 0, 100), OverOdds: r.float("over_odds", -100000, 100000),
			UnderOdds: r.float("under_odds", -100000, 100000), Book: r.nonEmpty("book")}
		if r.err != nil {
			return fmt.Errorf("%s: %w", path, r.err)
		}
		snap := ""
		if hasSnapshot {
			snap = r.str("snapshot_utc")
		}
		pi, ok := s.byID[id]
		if !ok || id == "" {
			pi, ok = s.byLookup[Lookup(name)]
		}
		if !ok {
			continue // a player who never appears in the game log (a late scratch)
		}
		if _, _, played := s.at(s.players[pi].lookup, date); !played {
			continue
		}
		if s.lines[pi] == nil {
			s.lines[pi], snapshots[pi] = map[string]Line{}, map[string]string{}
		}
		old, had := s.lines[pi][date]
		if !had || l.Book < old.Book || (l.Book == old.Book && snap >= snapshots[pi][date]) {
			s.lines[pi][date] = l
			snapshots[pi][date] = snap
		}
	}
}
