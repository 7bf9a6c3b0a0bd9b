// Package gamelogs is a feature source over real player game logs: a CSV (or
// gzipped CSV) with one row per player per game, in the format of the NBA
// data's README (season, game_date, game_id, player_id, player_name, team,
// opponent, home, minutes, points, fga, fta, fg3a), and optionally a file of
// points lines.
//
// Every feature of a player on date D comes from games before D only: the
// outcome of D's game, and anything after D, is never read (a test checks
// that the features are the same whether or not the file holds them). The
// slate of D is the players with a row on D; a row whose minutes and points
// are blank is a scheduled game, so a file can name tomorrow's slate before
// it is played.
//
// Where the logs lack what the synthetic league has, the features are
// proxies computed from what exists (see the README): possessions are
// FGA + 0.44·FTA + 3.5, usage is the player's share of his team's shots and
// free throws per minute on the floor, shot zones are shares of expected
// points from two-point attempts (split two to one between paint and
// mid-range), three-point attempts and free throws.
package gamelogs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"time"

	"github.com/predworker/predworker/systems"
)

// entry is one player's row for one game.
type entry struct {
	day      int32 // days since 1970-01-01
	date     string
	season   int16
	gameID   string
	team     string
	opp      string
	home     bool
	played   bool // false: a scheduled game (blank minutes and points)
	minutes  float64
	points   float64
	fga, fta float64
	fg3a     float64
}

type player struct {
	id, name, lookup string
	games            []entry // by date
}

// teamDay is what a team is as of a date: its defence, pace and the shot
// profile it allows, from its games before that date.
type teamDay struct {
	defRating  float64 // points allowed per 100 possessions
	pace       float64 // possessions per game
	allowed    [3]float64
	tier       int
	games      int
	defRatingL float64 // league average on that date, for convenience
}

// Line is a points line for one player-game.
type Line struct {
	Line      float64
	OverOdds  float64 // American odds
	UnderOdds float64
	Book      string
}

// Source is a loaded game-log file; it implements systems.FeatureSource.
type Source struct {
	seasons  []string
	players  []*player
	byLookup map[string]int
	byID     map[string]int
	slates   map[string][]int // date → players with a row that day, by lookup
	// asOf[season][team][day] is the team on that day; league[season][day]
	// the league's averages.
	asOf      map[int16]map[string]map[int32]*teamDay
	leagueDay map[int16]map[int32]*teamDay
	lines     map[int]map[string]Line // player → date → line
	totals    map[gameTeam]*teamGameTotals
	// rosters are the players of each side of each game; schedule the
	// games of each team, by date.
	rosters  map[gameTeam][]int
	schedule map[seasonTeam][]teamDate
	// incompleteLines counts lines rows without both prices.
	incompleteLines int
	first           string
	last            string
}

var _ systems.FeatureSource = (*Source)(nil)

// Options says where the files are.
type Options struct {
	Games string // the game-log file (required)
	Lines string // the lines file (optional)
}

func dayOf(date string) int32 {
	t, _ := time.Parse(time.DateOnly, date)
	return int32(t.Unix() / 86400)
}

// Load reads the files and precomputes the per-team, per-date context.
func Load(o Options) (*Source, error) {
	s := &Source{byLookup: map[string]int{}, byID: map[string]int{}, slates: map[string][]int{},
		asOf: map[int16]map[string]map[int32]*teamDay{}, leagueDay: map[int16]map[int32]*teamDay{},
		lines: map[int]map[string]Line{}, totals: map[gameTeam]*teamGameTotals{}, rosters: map[gameTeam][]int{},
		schedule: map[seasonTeam][]teamDate{}}
	if err := s.readGames(o.Games); err != nil {
		return nil, err
	}
	if len(s.players) == 0 {
		return nil, fmt.Errorf("%s: no rows", o.Games)
	}
	s.assignLookups()
	s.context()
	if o.Lines != "" {
		if err := s.readLines(o.Lines); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *Source) readGames(path string) error {
	cr, cols, closeFile, err := openCSV(path, GameColumns)
	if err != nil {
		return err
	}
	defer func() { _ = closeFile() }()
	season := map[string]int16{}
	seen := map[[2]string]bool{}
	for line := 2; ; line++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		r := &row{rec: rec, cols: cols, line: line}
		e := entry{date: r.date("game_date"), gameID: r.nonEmpty("game_id"), team: r.nonEmpty("team"),
			opp: r.nonEmpty("opponent")}
		sname, id, name := r.nonEmpty("season"), r.nonEmpty("player_id"), r.nonEmpty("player_name")
		switch h := r.str("home"); h {
		case "1":
			e.home = true
		case "0":
		default:
			r.fail("home", fmt.Sprintf("%q is not 0 or 1", h))
		}
		if r.str("minutes") == "" && r.str("points") == "" {
			e.played = false // scheduled
		} else {
			e.played = true
			e.minutes = r.float("minutes", 0, 80)
			e.points = r.float("points", 0, 120)
			e.fga = r.float("fga", 0, 100)
			e.fta = r.float("fta", 0, 60)
			e.fg3a = r.float("fg3a", 0, 50)
			if r.err == nil && e.fg3a > e.fga {
				r.fail("fg3a", "more three-point attempts than field-goal attempts")
			}
		}
		if r.err != nil {
			return fmt.Errorf("%s: %w", path, r.err)
		}
		key := [2]string{e.gameID, id}
		if seen[key] {
			return fmt.Errorf("%s: line %d: player %s appears twice in game %s", path, line, id, e.gameID)
		}
		seen[key] = true
		si, ok := season[sname]
		if !ok {
			si = int16(len(s.seasons))
			season[sname] = si
			s.seasons = append(s.seasons, sname)
		}
		e.season, e.day = si, dayOf(e.date)
		pi, ok := s.byID[id]
		if !ok {
			pi = len(s.players)
			s.byID[id] = pi
			s.players = append(s.players, &player{id: id})
		}
		p := s.players[pi]
		if p.name == "" || e.date >= p.games[len(p.games)-1].date {
			p.name = name // the latest spelling
		}
		p.games = append(p.games, e)
		if s.first == "" || e.date < s.first {
			s.first = e.date
		}
		if e.date > s.last {
			s.last = e.date
		}
	}
	for _, p := range s.players {
		slices.SortStableFunc(p.games, func(a, b entry) int { return cmp.Compare(a.day, b.day) })
		for i := 1; i < len(p.games); i++ {
			if p.games[i].day == p.games[i-1].day {
				return fmt.Errorf("%s: player %s has two games on %s", path, p.id, p.games[i].date)
			}
		}
	}
	return nil
}

// assignLookups names each player by his latest spelling; two players whose
// names give the same lookup both get their id appended.
func (s *Source) assignLookups() {
	count := map[string]int{}
	for _, p := range s.players {
		count[Lookup(p.name)]++
	}
	for i, p := range s.players {
		p.lookup = Lookup(p.name)
		if p.lookup == "" || count[p.lookup] > 1 {
			p.lookup += p.id
		}
		s.byLookup[p.lookup] = i
		for _, g := range p.games {
			s.slates[g.date] = append(s.slates[g.date], i)
		}
	}
	for d, ps := range s.slates {
		sort.Slice(ps, func(a, b int) bool { return s.players[ps[a]].lookup < s.players[ps[b]].lookup })
		s.slates[d] = ps
	}
}

// poss estimates possessions from shots and free throws (the logs have no
// turnovers or offensive rebounds; 3.5 is their league-wide difference).
func poss(fga, fta float64) float64 { return fga + 0.44*fta + 3.5 }

// gameTeam names one team's side of one game.
type gameTeam struct{ game, team string }

// seasonTeam names a team in a season; teamDate is one of its games.
type (
	seasonTeam struct {
		season int16
		team   string
	}
	teamDate struct {
		day  int32
		game string
	}
)

// teamGame is one team's totals in one game, with its opponent's.
type teamGame struct {
	day         int32
	season      int16
	team, opp   string
	pts         float64
	fga, fta    float64
	fg3a        float64
	oppPts      float64
	oppFga      float64
	oppFta      float64
	oppFg3a     float64
	teamMinutes float64
}

// allowedAcc sums what a team (or the league) allowed over its games.
type allowedAcc struct{ pts, poss, oppPoss, n, allowedTwo, allowedThree, allowedFT float64 }

func (a *allowedAcc) add(g *teamGame) {
	a.pts += g.oppPts // allowed
	a.poss += poss(g.fga, g.fta)
	a.oppPoss += poss(g.oppFga, g.oppFta)
	a.n++
	a.allowedTwo += g.oppFga - g.oppFg3a
	a.allowedThree += g.oppFg3a
	a.allowedFT += g.oppFta
}

// context computes, for every season, team and game day, the team as of
// that day (games before it only) and the league's averages.
func (s *Source) context() {
	type key = gameTeam
	totals := map[key]*teamGame{}
	for pi, p := range s.players {
		for _, g := range p.games {
			k := key{g.gameID, g.team}
			if len(s.rosters[k]) == 0 {
				st := seasonTeam{g.season, g.team}
				s.schedule[st] = append(s.schedule[st], teamDate{g.day, g.gameID})
			}
			s.rosters[k] = append(s.rosters[k], pi)
			if !g.played {
				continue
			}
			t := totals[key{g.gameID, g.team}]
			if t == nil {
				t = &teamGame{day: g.day, season: g.season, team: g.team, opp: g.opp}
				totals[key{g.gameID, g.team}] = t
			}
			t.pts += g.points
			t.fga += g.fga
			t.fta += g.fta
			t.fg3a += g.fg3a
			t.teamMinutes += g.minutes
		}
	}
	for st, games := range s.schedule {
		slices.SortFunc(games, func(a, b teamDate) int { return cmp.Compare(a.day, b.day) })
		s.schedule[st] = games
	}
	bySeason := map[int16][]*teamGame{}
	for k, t := range totals {
		s.totals[k] = &teamGameTotals{plays: t.fga + 0.44*t.fta, minutes: t.teamMinutes}
		if o := totals[key{k.game, t.opp}]; o != nil {
			t.oppPts, t.oppFga, t.oppFta, t.oppFg3a = o.pts, o.fga, o.fta, o.fg3a
			bySeason[t.season] = append(bySeason[t.season], t)
		}
	}
	days := map[int16][]int32{} // every day a row exists (played or scheduled)
	for _, p := range s.players {
		for _, g := range p.games {
			days[g.season] = append(days[g.season], g.day)
		}
	}
	for season, games := range bySeason {
		slices.SortFunc(games, func(a, b *teamGame) int { return cmp.Compare(a.day, b.day) })
		ds := slices.Compact(slices.Sorted(slices.Values(days[season])))
		s.asOf[season], s.leagueDay[season] = map[string]map[int32]*teamDay{}, map[int32]*teamDay{}
		teams := map[string]*allowedAcc{}
		var league allowedAcc
		gi := 0
		for _, d := range ds {
			for ; gi < len(games) && games[gi].day < d; gi++ {
				g := games[gi]
				a := teams[g.team]
				if a == nil {
					a = &allowedAcc{}
					teams[g.team] = a
				}
				a.add(g)
				league.add(g)
			}
			lg := &teamDay{defRating: 112, pace: 100, allowed: [3]float64{0.55, 0.3, 0.22}}
			if league.n > 0 {
				lg.defRating = 100 * league.pts / league.oppPoss
				lg.pace = (league.poss + league.oppPoss) / (2 * league.n)
				lg.allowed = [3]float64{league.allowedTwo / league.oppPoss, league.allowedThree / league.oppPoss,
					league.allowedFT / league.oppPoss}
				lg.games = int(league.n)
			}
			lg.defRatingL = lg.defRating
			s.leagueDay[season][d] = lg
			var rated []*teamDay
			for name, a := range teams {
				td := &teamDay{defRating: 100 * a.pts / a.oppPoss, pace: (a.poss + a.oppPoss) / (2 * a.n),
					allowed: [3]float64{a.allowedTwo / a.oppPoss, a.allowedThree / a.oppPoss, a.allowedFT / a.oppPoss},
					games:   int(a.n), defRatingL: lg.defRating}
				if s.asOf[season][name] == nil {
					s.asOf[season][name] = map[int32]*teamDay{}
				}
				s.asOf[season][name][d] = td
				rated = append(rated, td)
			}
			// Tiers: terciles of defensive rating, 1 the stingiest.
			slices.SortStableFunc(rated, func(a, b *teamDay) int { return cmp.Compare(a.defRating, b.defRating) })
			for i, td := range rated {
				td.tier = 1 + 3*i/len(rated)
			}
		}
	}
}

// team returns a team as of day (the league average for a team without
// games yet).
func (s *Source) team(season int16, team string, day int32) *teamDay {
	if td := s.asOf[season][team][day]; td != nil {
		return td
	}
	lg := s.leagueDay[season][day]
	if lg == nil {
		lg = &teamDay{defRating: 112, pace: 100, allowed: [3]float64{0.55, 0.3, 0.22}, defRatingL: 112}
	}
	return &teamDay{defRating: lg.defRating, pace: lg.pace, allowed: lg.allowed, tier: 2, defRatingL: lg.defRating}
}

// LinesSkipped counts the lines rows left out for lacking a price.
func (s *Source) LinesSkipped() int { return s.incompleteLines }

// Seasons are the seasons in the file, in the order first seen.
func (s *Source) Seasons() []string { return slices.Clone(s.seasons) }

// SeasonOf is the season of the games on date ("" when there are none).
func (s *Source) SeasonOf(date string) string {
	if ps := s.slates[date]; len(ps) > 0 {
		p := s.players[ps[0]]
		if _, i, ok := s.at(p.lookup, date); ok {
			return s.seasons[p.games[i].season]
		}
	}
	return ""
}

// Dates returns every date with a row, in order.
func (s *Source) Dates() []string {
	out := make([]string, 0, len(s.slates))
	for d := range s.slates {
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

// Slate implements systems.FeatureSource: the players with a row on date.
func (s *Source) Slate(ctx context.Context, date string) ([]string, error) {
	if err := s.checkDate(ctx, date); err != nil {
		return nil, err
	}
	ps := s.slates[date]
	out := make([]string, len(ps))
	for i, pi := range ps {
		out[i] = s.players[pi].lookup
	}
	return out, nil
}

// checkDate says why date has no slate: ErrUnknownDate outside the file,
// ErrNoGames on a day without rows.
func (s *Source) checkDate(ctx context.Context, date string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if date < s.first || date > s.last {
		return fmt.Errorf("%s is outside the game log (%s to %s): %w", date, s.first, s.last, systems.ErrUnknownDate)
	}
	if len(s.slates[date]) == 0 {
		return fmt.Errorf("%s: %w", date, systems.ErrNoGames)
	}
	return nil
}

// at returns the player and the index of his row on date.
func (s *Source) at(lookup, date string) (*player, int, bool) {
	pi, ok := s.byLookup[lookup]
	if !ok {
		return nil, 0, false
	}
	p := s.players[pi]
	d := dayOf(date)
	i := sort.Search(len(p.games), func(i int) bool { return p.games[i].day >= d })
	if i == len(p.games) || p.games[i].day != d {
		return nil, 0, false
	}
	return p, i, true
}

// Actual is the points a player scored on date, when he played.
func (s *Source) Actual(lookup, date string) (float64, bool) {
	p, i, ok := s.at(lookup, date)
	if !ok || !p.games[i].played {
		return 0, false
	}
	return p.games[i].points, true
}

// SeasonAverage is the player's points per game over his games before date
// that season (unrounded), and how many there were.
func (s *Source) SeasonAverage(lookup, date string) (float64, int) {
	p, i, ok := s.at(lookup, date)
	if !ok {
		return 0, 0
	}
	return averageBefore(p, p.games[i].day, p.games[i].season)
}

// LineOf is the line of a player's game on date, when the lines file has one.
func (s *Source) LineOf(lookup, date string) (Line, bool) {
	pi, ok := s.byLookup[lookup]
	if !ok {
		return Line{}, false
	}
	l, ok := s.lines[pi][date]
	return l, ok
}

// Features implements systems.FeatureSource.
func (s *Source) Features(ctx context.Context, date string, players []string) (map[string]*systems.Features, error) {
	if err := s.checkDate(ctx, date); err != nil {
		return nil, err
	}
	out := make(map[string]*systems.Features, len(players))
	missing := map[gameTeam]float64{}
	for _, name := range players {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if p, i, ok := s.at(name, date); ok {
			out[name] = s.features(p, i, missing)
		}
	}
	return out, nil
}
