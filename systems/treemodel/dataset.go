package treemodel

import (
	"context"
	"errors"
	"math"
	"time"

	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/league"
)

// Training window of the bundled model: features from TrainFrom, holdout
// from HoldoutFrom to the end of the season.
const (
	TrainFrom   = "2024-11-15"
	HoldoutFrom = "2025-03-01"
)

// Data is a train/holdout split of (feature vector, actual points) rows.
type Data struct {
	TrainX, HoldoutX [][]float64
	TrainY, HoldoutY []float64
	holdoutSeasonAvg []float64
}

// Dataset builds the rows from the league, date by date, players sorted.
func Dataset(ctx context.Context, l *league.League) (*Data, error) {
	d := &Data{}
	start, _ := time.Parse(time.DateOnly, TrainFrom)
	end, _ := time.Parse(time.DateOnly, league.SeasonEnd)
	for t := start; !t.After(end); t = t.AddDate(0, 0, 1) {
		date := t.Format(time.DateOnly)
		slate, err := l.Slate(ctx, date)
		if errors.Is(err, systems.ErrNoGames) {
			continue
		}
		if err != nil {
			return nil, err
		}
		feats, err := l.Features(ctx, date, slate)
		if err != nil {
			return nil, err
		}
		for _, p := range slate {
			f := feats[p]
			actual, ok := l.Actual(p, date)
			if f == nil || !ok || math.IsNaN(actual) {
				continue
			}
			x := Vector(f, nil)
			if date < HoldoutFrom {
				d.TrainX, d.TrainY = append(d.TrainX, x), append(d.TrainY, actual)
			} else {
				d.HoldoutX, d.HoldoutY = append(d.HoldoutX, x), append(d.HoldoutY, actual)
				d.holdoutSeasonAvg = append(d.holdoutSeasonAvg, f.PointsAvgSeason)
			}
		}
	}
	return d, nil
}

// BaselineHoldoutMAE is the holdout error of predicting the season average.
func (d *Data) BaselineHoldoutMAE() float64 {
	s := 0.0
	for i, y := range d.HoldoutY {
		s += math.Abs(d.holdoutSeasonAvg[i] - y)
	}
	return s / float64(len(d.HoldoutY))
}
