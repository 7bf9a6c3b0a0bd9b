// Command trainmodel fits an xgboost_v1 model and writes it in LightGBM's
// text format. The result is the same on every machine: the data and the
// trainer are deterministic.
//
//	go run ./cmd/trainmodel
//	    the bundled model, on the synthetic league
//	    (writes systems/treemodel/model/xgboost_v1.txt)
//	go run ./cmd/trainmodel --games FILE --until DATE --out MODEL
//	    a model of real games: trained on the games before DATE only,
//	    the number of trees chosen on the last season before DATE, then
//	    refitted on every game before DATE. MODEL must be outside this
//	    repository (a model of real data is never committed).
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/predworker/predworker/systems/gamelogs"
	"github.com/predworker/predworker/systems/gbdt"
	"github.com/predworker/predworker/systems/league"
	"github.com/predworker/predworker/systems/treemodel"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "trainmodel:", err)
		os.Exit(1)
	}
}

// GamesConfig is how models of real games are fitted.
var GamesConfig = gbdt.TrainConfig{Trees: 400, Depth: 5, LearningRate: 0.05, Bins: 64, MinLeaf: 200, Objective: "l1"}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("trainmodel", flag.ContinueOnError)
	out := fs.String("out", "", "where to write the model (default: the bundled model's file)")
	games := fs.String("games", "", "a game-log file: fit on real games")
	until := fs.String("until", "", "with --games: train on games before this date only (YYYY-MM-DD)")
	cfg := GamesConfig
	fs.StringVar(&cfg.Objective, "objective", cfg.Objective, "with --games: l1 (the median) or l2 (the mean)")
	fs.IntVar(&cfg.Trees, "trees", cfg.Trees, "with --games: the most trees (the validation season picks how many)")
	fs.IntVar(&cfg.Depth, "depth", cfg.Depth, "with --games: tree depth")
	fs.Float64Var(&cfg.LearningRate, "learning-rate", cfg.LearningRate, "with --games: shrinkage")
	fs.IntVar(&cfg.MinLeaf, "min-leaf", cfg.MinLeaf, "with --games: fewest games in a leaf")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *games == "" {
		if *until != "" {
			return errors.New("--until goes with --games")
		}
		if *out == "" {
			*out = "systems/treemodel/model/xgboost_v1.txt"
		}
		return bundled(*out, stdout)
	}
	if _, err := time.Parse(time.DateOnly, *until); err != nil {
		return fmt.Errorf("--until must be a date like 2024-10-01: %q", *until)
	}
	if *out == "" {
		return errors.New("--out is required with --games")
	}
	if err := outsideRepository(*out); err != nil {
		return err
	}
	return realGames(*games, *until, *out, cfg, stdout)
}

// outsideRepository refuses a path inside the module's directory: a model
// of real data must never be committed.
func outsideRepository(out string) error {
	abs, err := filepath.Abs(out)
	if err != nil {
		return err
	}
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			if rel, err := filepath.Rel(d, abs); err == nil && !strings.HasPrefix(rel, "..") {
				return fmt.Errorf("--out %s is inside the repository (%s): write a model of real data elsewhere", out, d)
			}
			return nil
		}
		if filepath.Dir(d) == d {
			return nil
		}
	}
}

func bundled(out string, stdout io.Writer) error {
	ds, err := treemodel.Dataset(context.Background(), league.Default())
	if err != nil {
		return err
	}
	m, err := gbdt.Train(ds.TrainX, ds.TrainY, gbdt.DefaultTrainConfig)
	if err != nil {
		return err
	}
	if err := write(out, m, treemodel.FeatureNames); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "xgboost_v1: %d trees of depth %d on %d training rows (dates before %s), %d holdout rows\n",
		len(m.Trees), gbdt.DefaultTrainConfig.Depth, len(ds.TrainY), treemodel.HoldoutFrom, len(ds.HoldoutY))
	fmt.Fprintf(stdout, "MAE: train %.3f, holdout %.3f (points); baseline, the season average: holdout %.3f\n",
		m.MAE(ds.TrainX, ds.TrainY), m.MAE(ds.HoldoutX, ds.HoldoutY), ds.BaselineHoldoutMAE())
	return nil
}

func write(out string, m *gbdt.Model, names []string) error {
	var buf bytes.Buffer
	if err := m.WriteLightGBM(&buf, names); err != nil {
		return err
	}
	return os.WriteFile(out, buf.Bytes(), 0o644)
}

// split returns the rows of one season and of the others.
func split(r *treemodel.Rows, season string) (inX, outX [][]float64, inY, outY []float64, inAvg []float64) {
	for i := range r.Y {
		if r.Season[i] == season {
			inX, inY, inAvg = append(inX, r.X[i]), append(inY, r.Y[i]), append(inAvg, r.SeasonAvg[i])
		} else {
			outX, outY = append(outX, r.X[i]), append(outY, r.Y[i])
		}
	}
	return
}

func realGames(games, until, out string, cfg gbdt.TrainConfig, stdout io.Writer) error {
	src, err := gamelogs.Load(gamelogs.Options{Games: games})
	if err != nil {
		return err
	}
	names := treemodel.RealFeatureNames
	rows, err := treemodel.GameRows(context.Background(), src, names, until, 1)
	if err != nil {
		return err
	}
	if len(rows.Y) == 0 {
		return fmt.Errorf("%s has no games before %s", games, until)
	}
	valid := rows.Season[len(rows.Season)-1] // the last season before until
	vX, tX, vY, tY, vAvg := split(rows, valid)
	if len(tY) == 0 {
		return fmt.Errorf("only one season (%s) before %s: nothing to validate on", valid, until)
	}
	m, err := gbdt.Train(tX, tY, cfg)
	if err != nil {
		return err
	}
	trees, validMAE := m.BestPrefix(vX, vY)
	baseline := 0.0
	for i, y := range vY {
		baseline += math.Abs(vAvg[i] - y)
	}
	baseline /= float64(len(vY))
	final := cfg
	final.Trees = trees
	all, err := gbdt.Train(rows.X, rows.Y, final)
	if err != nil {
		return err
	}
	if err := write(out, all, names); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "trained on %d games before %s; validated on %s (%d games, the last season before that date): %d trees, MAE %.3f "+
		"(the season average: %.3f); refitted on all %d games; wrote %s\n",
		len(tY), until, valid, len(vY), trees, validMAE, baseline, len(rows.Y), out)
	return nil
}
