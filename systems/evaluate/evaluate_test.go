package evaluate_test

import (
	"math"
	"testing"

	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/evaluate"
)

type game struct {
	actual, avg float64
	games       int
	line        *evaluate.Line
}

type fake map[[2]string]game

func (f fake) Actual(p, d string) (float64, bool) { g, ok := f[[2]string{p, d}]; return g.actual, ok }
func (f fake) SeasonAverage(p, d string) (float64, int) {
	g := f[[2]string{p, d}]
	return g.avg, g.games
}
func (f fake) Line(p, d string) (evaluate.Line, bool) {
	g := f[[2]string{p, d}]
	if g.line == nil {
		return evaluate.Line{}, false
	}
	return *g.line, true
}

func row(p, d string, points float64, rec systems.Recommendation) *systems.Prediction {
	return &systems.Prediction{PlayerLookup: p, GameDate: d, SystemID: "s", PredictedPoints: points, Confidence: 60, Recommendation: rec}
}

// The metrics of a hand-checked example: errors, coverage, the baselines on
// the same games, the side hit rate, the calls' returns at the listed odds
// and at -110, and players with too few games left out.
func TestMetricsByHand(t *testing.T) {
	l := &evaluate.Line{Line: 20.5, OverOdds: -137, UnderOdds: +120}
	o := fake{
		{"a", "2024-11-01"}: {actual: 25, avg: 20, games: 10, line: l},
		{"b", "2024-11-01"}: {actual: 10, avg: 14, games: 5, line: l},
		{"c", "2024-11-01"}: {actual: 30, avg: 29, games: 6},
		{"d", "2024-11-01"}: {actual: 5, avg: 8, games: 4}, // too few games
	}
	sc := evaluate.NewScorer(o)
	for _, p := range []string{"a", "b", "c", "d"} {
		sc.AddGame(p, "2024-11-01")
	}
	sc.Add(row("a", "2024-11-01", 23, systems.Over)) // over wins at -137: +100/137
	sc.Add(row("b", "2024-11-01", 21, systems.Over)) // over loses: −1
	sc.Add(row("d", "2024-11-01", 6, systems.Under)) // not scored
	sc.Add(&systems.Prediction{PlayerLookup: "c", GameDate: "2024-11-01", SystemID: "s", Failed: true})
	sc.EndDate()
	r := sc.Report("2024-11-01", "2024-11-01")
	if r.Eligible != 3 || len(r.Systems) != 1 {
		t.Fatalf("report %+v", r)
	}
	s := r.Systems[0]
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	if s.N != 2 || !near(s.MAE, (2+11)/2.0) || !near(s.RMSE, math.Sqrt((4+121)/2.0)) || !near(s.Bias, (-2+11)/2.0) ||
		!near(s.Coverage, 2/3.0) || s.LinedN != 2 || s.Sides != 2 || *s.HitRate != 0.5 || s.Calls != 2 ||
		!near(*s.ROI, (100/137.0-1)/2) || !near(*s.ROI110, (100/110.0-1)/2) {
		t.Fatalf("system %+v", s)
	}
	avg, line := r.Baselines[0], r.Baselines[1]
	if avg.N != 3 || !near(avg.MAE, (5+4+1)/3.0) || !near(avg.LinedMAE, (5+4)/2.0) || line.N != 2 || !near(line.MAE, (4.5+10.5)/2) {
		t.Fatalf("baselines %+v %+v", avg, line)
	}
}

// The calibrated calls of a date are judged by the dates before it only:
// the first date's sides are all at 50 % (no call), the second date's by
// the first's history.
func TestCalibrationIsWalkForward(t *testing.T) {
	l := &evaluate.Line{Line: 20.5, OverOdds: -110, UnderOdds: -110}
	o := fake{}
	sc := evaluate.NewScorer(o)
	for day, date := range []string{"2024-11-01", "2024-11-02"} {
		for i := range 200 {
			p := string(rune('a'+i%26)) + string(rune('a'+i/26))
			o[[2]string{p, date}] = game{actual: 25, avg: 20, games: 9, line: l} // every over wins
			sc.AddGame(p, date)
			sc.Add(row(p, date, 23.5, systems.Pass)) // edge 3: over
		}
		sc.EndDate()
		s := sc.Report("2024-11-01", date).Systems[0]
		switch day {
		case 0:
			if s.CalibratedCalls != 0 {
				t.Fatalf("the first date was judged by its own outcomes: %d calls", s.CalibratedCalls)
			}
		case 1:
			// 200 wins of 200, prior 50: (200 + 25) / 250 = 0.9 > break-even.
			if s.CalibratedCalls != 200 || *s.CalibratedHitRate != 1 {
				t.Fatalf("second date: %d calibrated calls", s.CalibratedCalls)
			}
		}
	}
	if p := sc.Calibration().Prob("s", 3); p != (400+25)/450.0 {
		t.Fatalf("final calibration %g", p)
	}
}
