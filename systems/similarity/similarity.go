// Package similarity is similarity_balanced_v1: the similarity-weighted mean
// of the player's past games that looked most like tonight's.
package similarity

import (
	"context"
	"fmt"
	"math"
	"sort"

	"github.com/predworker/predworker/systems"
)

// ID is the stable system id.
const ID = "similarity_balanced_v1"

// Tuning, from the platform this replaces.
const (
	MinScore      = 70.0 // a past game must score at least this to count
	MaxGames      = 20   // the most similar games kept
	MinGames      = 5    // fewer similar games than this: no prediction
	MinEdge       = 2.0
	MinConfidence = 55.0
)

// System implements systems.System.
type System struct{}

// New returns the system.
func New() System { return System{} }

// ID implements systems.System.
func (System) ID() string { return ID }

// Version implements systems.System.
func (System) Version() string { return "similarity_balanced-1.0" }

func closeness(a, b int, same, near float64) float64 {
	switch a - b {
	case 0:
		return same
	case 1, -1:
		return near
	}
	return 0
}

// Score rates how much a past game resembles tonight's, 0-100: opponent tier
// 40 (same) / 20 (adjacent) / 0, rest 30 / 15 / 0, venue 15 / 0, form 15 / 5.
func Score(f *systems.Features, g systems.GameLog) float64 {
	s := closeness(f.OppTier, g.OppTier, 40, 20) + closeness(min(f.RestDays, 3), min(g.RestDays, 3), 30, 15)
	if f.Home == g.Home {
		s += 15
	}
	if f.Form == g.Form {
		s += 15
	} else {
		s += 5
	}
	return s
}

// Predict implements systems.System: keep the past games scoring at least 70,
// the 20 best (the most recent first among equals), and need at least 5; the
// prediction is their similarity-weighted mean of points. Confidence is
// 40 + 1.5 per game kept + 0.5 per point of mean similarity above 70 − the
// standard deviation of their points, clamped to 20-85.
func (System) Predict(ctx context.Context, f *systems.Features) (systems.Estimate, error) {
	if err := ctx.Err(); err != nil {
		return systems.Estimate{}, err
	}
	type scored struct {
		score, points float64
		order         int
	}
	var kept []scored
	for i, g := range f.RecentGames {
		if s := Score(f, g); s >= MinScore && !math.IsNaN(g.Points) && !math.IsInf(g.Points, 0) {
			kept = append(kept, scored{s, g.Points, i})
		}
	}
	sort.SliceStable(kept, func(i, j int) bool { return kept[i].score > kept[j].score })
	kept = kept[:min(len(kept), MaxGames)]
	if len(kept) < MinGames {
		return systems.Estimate{}, fmt.Errorf("%d similar games, need %d: %w", len(kept), MinGames, systems.ErrInsufficientData)
	}
	var wsum, sum, ssum float64
	for _, k := range kept {
		wsum += k.score
		sum += k.score * k.points
		ssum += k.score
	}
	p := sum / wsum
	meanScore := ssum / float64(len(kept))
	var v float64
	for _, k := range kept {
		v += (k.points - p) * (k.points - p)
	}
	spread := math.Sqrt(v / float64(len(kept)))
	p = math.Round(systems.Clamp(p, 0, 60)*10) / 10
	c := 40 + 1.5*float64(len(kept)) + 0.5*(meanScore-70) - spread
	c = math.Round(systems.Clamp(c, 20, 85)*10) / 10
	return systems.Estimate{Points: p, Confidence: c, Recommendation: systems.Recommend(p, c, f, MinEdge, MinConfidence)}, nil
}
