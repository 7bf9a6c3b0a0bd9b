package treemodel

import (
	"context"

	"github.com/predworker/predworker/systems/gamelogs"
)

// Rows are (inputs, points) rows of real games.
type Rows struct {
	X      [][]float64
	Y      []float64
	Season []string
	// SeasonAvg is each row's season average of earlier games (the
	// baseline), Games how many earlier games that season.
	SeasonAvg []float64
	Games     []int
}

// GameRows builds a row for every game played before until by a player with
// at least minGames earlier games that season, the inputs named by names
// computed as the feature source computes them for that date (from earlier
// games only).
func GameRows(ctx context.Context, src *gamelogs.Source, names []string, until string, minGames int) (*Rows, error) {
	r := &Rows{}
	seasonOf := src.SeasonOf
	for _, date := range src.Dates() {
		if date >= until {
			break
		}
		slate, err := src.Slate(ctx, date)
		if err != nil {
			return nil, err
		}
		feats, err := src.Features(ctx, date, slate)
		if err != nil {
			return nil, err
		}
		for _, p := range slate {
			actual, played := src.Actual(p, date)
			f := feats[p]
			if !played || f == nil || f.GamesPlayed < minGames {
				continue
			}
			avg, n := src.SeasonAverage(p, date)
			r.X = append(r.X, VectorOf(names, f, nil))
			r.Y = append(r.Y, actual)
			r.Season = append(r.Season, seasonOf(date))
			r.SeasonAvg = append(r.SeasonAvg, avg)
			r.Games = append(r.Games, n)
		}
	}
	return r, nil
}
