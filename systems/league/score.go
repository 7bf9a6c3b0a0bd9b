package league

import (
	"fmt"
	"io"
	"math"
	"sort"

	"github.com/predworker/predworker/systems"
)

// SystemScore is how one system did against the actual points.
type SystemScore struct {
	System    string
	Rows      int     // scored predictions (players who played)
	MAE       float64 // mean absolute error, points
	Calls     int     // OVER or UNDER recommendations
	Hits      int     // calls that were right
	Fallbacks int     // rows produced by a fallback
}

// HitRate is Hits/Calls (NaN without calls).
func (s SystemScore) HitRate() float64 {
	if s.Calls == 0 {
		return math.NaN()
	}
	return float64(s.Hits) / float64(s.Calls)
}

// Scorer accumulates predictions and scores them against the league.
type Scorer struct {
	l   *League
	acc map[string]*SystemScore
	abs map[string]float64
}

// NewScorer returns an empty scorer over l.
func NewScorer(l *League) *Scorer {
	return &Scorer{l: l, acc: map[string]*SystemScore{}, abs: map[string]float64{}}
}

// Add scores one prediction row; failure records and players who did not
// play are skipped.
func (s *Scorer) Add(p *systems.Prediction) {
	if p.Failed {
		return
	}
	actual, played := s.l.Actual(p.PlayerLookup, p.GameDate)
	if !played {
		return
	}
	a := s.acc[p.SystemID]
	if a == nil {
		a = &SystemScore{System: p.SystemID}
		s.acc[p.SystemID] = a
	}
	a.Rows++
	s.abs[p.SystemID] += math.Abs(p.PredictedPoints - actual)
	if p.Fallback {
		a.Fallbacks++
	}
	if p.Line != nil && (p.Recommendation == systems.Over || p.Recommendation == systems.Under) {
		a.Calls++
		if (p.Recommendation == systems.Over && actual > *p.Line) || (p.Recommendation == systems.Under && actual < *p.Line) {
			a.Hits++
		}
	}
}

// Results returns the scores, sorted by MAE.
func (s *Scorer) Results() []SystemScore {
	var out []SystemScore
	for id, a := range s.acc {
		r := *a
		r.MAE = s.abs[id] / float64(a.Rows)
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].MAE < out[j].MAE })
	return out
}

// WriteTable writes the scores as a Markdown table.
func WriteTable(w io.Writer, scores []SystemScore) error {
	if _, err := fmt.Fprintln(w, "| system | rows | MAE (points) | OVER/UNDER calls | hit rate | fallbacks |\n|---|---|---|---|---|---|"); err != nil {
		return err
	}
	for _, s := range scores {
		hit := "—"
		if s.Calls > 0 {
			hit = fmt.Sprintf("%.1f %%", 100*s.HitRate())
		}
		if _, err := fmt.Fprintf(w, "| %s | %d | %.2f | %d | %s | %d |\n", s.System, s.Rows, s.MAE, s.Calls, hit, s.Fallbacks); err != nil {
			return err
		}
	}
	return nil
}
