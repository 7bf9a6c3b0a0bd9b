// Package evaluate scores prediction rows against real outcomes and lines:
// per system the error (MAE, RMSE, bias), the coverage, the fallbacks, and
// against the lines the side hit rate and the return of the calls at the
// listed odds and at -110; beside them the baselines every system must beat
// (the season average of earlier games, and the line itself).
//
// Only player-games with at least MinGames earlier games that season are
// scored, the same rows for every system and baseline.
package evaluate

import (
	"cmp"
	"math"
	"slices"
	"strings"

	"github.com/predworker/predworker/systems"
)

// MinGames is the fewest earlier games that season a player-game needs to
// be scored.
const MinGames = 5

// Line is a points line and its prices (American odds).
type Line struct {
	Line, OverOdds, UnderOdds float64
}

// Outcomes is what the scorer needs to know about the real games.
type Outcomes interface {
	// Actual is the points a player scored on date, if he played.
	Actual(player, date string) (float64, bool)
	// SeasonAverage is his points per game before date that season, and
	// over how many games.
	SeasonAverage(player, date string) (float64, int)
	// Line is the line of his game on date, if there is one.
	Line(player, date string) (Line, bool)
}

// stats accumulates errors.
type stats struct {
	n                  int
	abs, sq, signed    float64
	byMonth            map[string]*[2]float64 // month → Σ|err|, n
	lined              int
	linedAbs           float64
	sides, sideHits    int
	calls, hits        int
	ret, ret110        float64
	fallbacks, covered int
	calib              [10][2]int // raw confidence decile → sides, hits
	// Walk-forward calibrated: each date's sides judged by the calibration
	// fitted on the dates before it.
	calCalib          [10][2]int
	calCalls, calHits int
	calRet, calRet110 float64
}

func newStats() *stats { return &stats{byMonth: map[string]*[2]float64{}} }

func (s *stats) addError(month string, pred, actual float64) {
	e := pred - actual
	s.n++
	s.abs += math.Abs(e)
	s.sq += e * e
	s.signed += e
	m := s.byMonth[month]
	if m == nil {
		m = &[2]float64{}
		s.byMonth[month] = m
	}
	m[0] += math.Abs(e)
	m[1]++
}

// payout is the profit of a one-unit winning bet at American odds.
func payout(odds float64) float64 {
	if odds >= 100 {
		return odds / 100
	}
	return 100 / -odds
}

// Scorer accumulates rows, date after date.
type Scorer struct {
	o         Outcomes
	sys       map[string]*stats
	baselines map[string]*stats
	eligible  int
	games     map[[2]string]*game  // every player-game looked up, eligible or not
	cal       *systems.Calibration // fitted on the dates already ended
	pending   []side
}

type side struct {
	system string
	edge   float64
	won    bool
}

// NewScorer returns an empty scorer over o.
func NewScorer(o Outcomes) *Scorer {
	return &Scorer{o: o, sys: map[string]*stats{}, baselines: map[string]*stats{"season_average": newStats(), "line": newStats()},
		games: map[[2]string]*game{}, cal: systems.NewCalibration()}
}

// EndDate folds the sides of the date just scored into the calibration the
// next dates are judged by. Dates must be scored in order.
func (s *Scorer) EndDate() {
	for _, sd := range s.pending {
		s.cal.Add(sd.system, sd.edge, sd.won)
	}
	s.pending = s.pending[:0]
}

// Calibration is the calibration fitted on every date ended so far.
func (s *Scorer) Calibration() *systems.Calibration { return s.cal }

// game is what the scorer knows of one player-game, looked up once.
type game struct {
	eligible bool // played, with at least MinGames earlier games that season
	actual   float64
	avg      float64 // season average of earlier games
	line     Line
	hasLine  bool
	counted  bool // by AddGame
}

// game returns the player-game, looking it up the first time.
func (s *Scorer) game(player, date string) *game {
	key := [2]string{player, date}
	if g := s.games[key]; g != nil {
		return g
	}
	g := &game{}
	var n int
	g.actual, g.eligible = s.o.Actual(player, date)
	g.avg, n = s.o.SeasonAverage(player, date)
	g.eligible = g.eligible && n >= MinGames
	g.line, g.hasLine = s.o.Line(player, date)
	s.games[key] = g
	return g
}

// AddGame counts a player-game for the baselines and the coverage; call it
// once for every player of every scored slate.
func (s *Scorer) AddGame(player, date string) {
	g := s.game(player, date)
	if !g.eligible || g.counted {
		return
	}
	g.counted = true
	s.eligible++
	month := date[:7]
	s.baselines["season_average"].addError(month, g.avg, g.actual)
	if g.hasLine {
		b := s.baselines["season_average"]
		b.lined++
		b.linedAbs += math.Abs(g.avg - g.actual)
		lb := s.baselines["line"]
		lb.addError(month, g.line.Line, g.actual)
		lb.lined++
		lb.linedAbs += math.Abs(g.line.Line - g.actual)
	}
}

// Add scores one prediction row.
func (s *Scorer) Add(p *systems.Prediction) {
	g := s.game(p.PlayerLookup, p.GameDate)
	if !g.eligible || p.Failed {
		return
	}
	actual := g.actual
	st := s.sys[p.SystemID]
	if st == nil {
		st = newStats()
		s.sys[p.SystemID] = st
	}
	st.covered++
	if p.Fallback {
		st.fallbacks++
	}
	st.addError(p.GameDate[:7], p.PredictedPoints, actual)
	if !g.hasLine {
		return
	}
	l := g.line
	st.lined++
	st.linedAbs += math.Abs(p.PredictedPoints - actual)
	if actual == l.Line || p.PredictedPoints == l.Line {
		return // a push, or no side
	}
	over := p.PredictedPoints > l.Line
	won := over == (actual > l.Line)
	st.sides++
	if won {
		st.sideHits++
	}
	d := min(9, max(0, int(p.Confidence/10)))
	st.calib[d][0]++
	if won {
		st.calib[d][1]++
	}
	edge := p.PredictedPoints - l.Line
	st.calibrated(s.cal.Prob(p.SystemID, edge), s.cal.BreakEven, won, l, edge > 0)
	s.pending = append(s.pending, side{p.SystemID, edge, won})
	if p.Recommendation != systems.Over && p.Recommendation != systems.Under {
		return
	}
	odds := l.UnderOdds
	if p.Recommendation == systems.Over {
		odds = l.OverOdds
	}
	called := (p.Recommendation == systems.Over) == (actual > l.Line)
	st.calls++
	if called {
		st.hits++
		st.ret += payout(odds)
		st.ret110 += payout(-110)
	} else {
		st.ret--
		st.ret110--
	}
}

// calibrated counts a side judged at probability prob: its decile, and a
// call when prob beats breakEven.
func (st *stats) calibrated(prob, breakEven float64, won bool, l Line, over bool) {
	d := min(9, max(0, int(prob*10)))
	st.calCalib[d][0]++
	if won {
		st.calCalib[d][1]++
	}
	if prob <= breakEven {
		return
	}
	odds := l.UnderOdds
	if over {
		odds = l.OverOdds
	}
	st.calCalls++
	if won {
		st.calHits++
		st.calRet += payout(odds)
		st.calRet110 += payout(-110)
	} else {
		st.calRet--
		st.calRet110--
	}
}

// Score is one system's or baseline's result. Fields that do not apply are
// absent from the JSON (a baseline has no calls).
type Score struct {
	Name      string  `json:"-"`
	SystemID  string  `json:"system_id,omitempty"`
	Baseline  string  `json:"name,omitempty"`
	N         int     `json:"n"`
	MAE       float64 `json:"mae"`
	RMSE      float64 `json:"rmse"`
	Bias      float64 `json:"bias"`
	Coverage  float64 `json:"coverage"`
	Fallbacks int     `json:"fallbacks"`
	// On the games with a line.
	LinedN   int      `json:"lined_n"`
	LinedMAE float64  `json:"lined_mae"`
	Sides    int      `json:"sides,omitempty"`    // lined games where it took a side
	HitRate  *float64 `json:"hit_rate,omitempty"` // share of those sides that won
	Calls    int      `json:"calls,omitempty"`    // OVER/UNDER recommendations
	CallHits *float64 `json:"call_hit_rate,omitempty"`
	// Return per unit staked on the calls, at the listed odds and at -110.
	ROI    *float64 `json:"roi,omitempty"`
	ROI110 *float64 `json:"roi_at_minus_110,omitempty"`
	// MonthMAE is the error by month (YYYY-MM).
	MonthMAE map[string]float64 `json:"month_mae"`
	// RawCalibration: per decile of the system's own confidence (0-10, …,
	// 90-100), its sides and the share that won.
	RawCalibration []Bin `json:"raw_calibration,omitempty"`
	// Calibration: the same per decile of the walk-forward calibrated
	// confidence (each date judged by the history before it), and the
	// calls it makes (sides above the break-even).
	Calibration       []Bin    `json:"calibration,omitempty"`
	CalibratedCalls   int      `json:"calibrated_calls,omitempty"`
	CalibratedHitRate *float64 `json:"calibrated_call_hit_rate,omitempty"`
	CalibratedROI     *float64 `json:"calibrated_roi,omitempty"`
	CalibratedROI110  *float64 `json:"calibrated_roi_at_minus_110,omitempty"`
}

// Bin is one confidence decile.
type Bin struct {
	From    float64 `json:"from"`
	Sides   int     `json:"sides"`
	HitRate float64 `json:"hit_rate"`
}

func ptr(v float64) *float64 { return &v }

func (st *stats) score(name string, eligible int) Score {
	sc := Score{Name: name, N: st.n, Fallbacks: st.fallbacks, LinedN: st.lined, Sides: st.sides, Calls: st.calls,
		MonthMAE: map[string]float64{}}
	if st.n > 0 {
		sc.MAE, sc.RMSE, sc.Bias = st.abs/float64(st.n), math.Sqrt(st.sq/float64(st.n)), st.signed/float64(st.n)
	}
	if eligible > 0 {
		sc.Coverage = float64(st.n) / float64(eligible)
	}
	if st.lined > 0 {
		sc.LinedMAE = st.linedAbs / float64(st.lined)
	}
	if st.sides > 0 {
		sc.HitRate = ptr(float64(st.sideHits) / float64(st.sides))
	}
	if st.calls > 0 {
		sc.CallHits = ptr(float64(st.hits) / float64(st.calls))
		sc.ROI, sc.ROI110 = ptr(st.ret/float64(st.calls)), ptr(st.ret110/float64(st.calls))
	}
	for m, v := range st.byMonth {
		sc.MonthMAE[m] = v[0] / v[1]
	}
	sc.RawCalibration, sc.Calibration = bins(st.calib), bins(st.calCalib)
	sc.CalibratedCalls = st.calCalls
	if st.calCalls > 0 {
		sc.CalibratedHitRate = ptr(float64(st.calHits) / float64(st.calCalls))
		sc.CalibratedROI, sc.CalibratedROI110 = ptr(st.calRet/float64(st.calCalls)), ptr(st.calRet110/float64(st.calCalls))
	}
	return sc
}

func bins(c [10][2]int) []Bin {
	var out []Bin
	for d, n := range c {
		if n[0] > 0 {
			out = append(out, Bin{From: float64(10 * d), Sides: n[0], HitRate: float64(n[1]) / float64(n[0])})
		}
	}
	return out
}

// Report is the whole result.
type Report struct {
	From      string  `json:"from"`
	To        string  `json:"to"`
	Eligible  int     `json:"player_games"`
	Systems   []Score `json:"systems"`
	Baselines []Score `json:"baselines"`
}

// Report returns the scores: systems by MAE, then the baselines.
func (s *Scorer) Report(from, to string) Report {
	r := Report{From: from, To: to, Eligible: s.eligible}
	for id, st := range s.sys {
		sc := st.score(id, s.eligible)
		sc.SystemID = id
		r.Systems = append(r.Systems, sc)
	}
	slices.SortFunc(r.Systems, func(a, b Score) int {
		return cmp.Or(cmp.Compare(a.MAE, b.MAE), strings.Compare(a.Name, b.Name))
	})
	for _, name := range []string{"season_average", "line"} {
		sc := s.baselines[name].score(name, s.eligible)
		sc.Baseline = name
		sc.Coverage = 0
		if name == "season_average" {
			sc.Coverage = 1
		}
		r.Baselines = append(r.Baselines, sc)
	}
	return r
}
