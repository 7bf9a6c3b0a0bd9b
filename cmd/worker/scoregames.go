package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/predworker/predworker/state"
	statesqlite "github.com/predworker/predworker/state/sqlite"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/evaluate"
	"github.com/predworker/predworker/systems/gamelogs"
	sinksqlite "github.com/predworker/predworker/systems/sqlite"
	"github.com/predworker/predworker/worker"
)

type scoreRequest struct {
	games, lines, from, to string
	json                   bool
	plot, calibrationOut   string
}

// outcomes adapts a game-log source to the scorer.
type outcomes struct{ *gamelogs.Source }

func (o outcomes) Line(player, date string) (evaluate.Line, bool) {
	l, ok := o.LineOf(player, date)
	return evaluate.Line{Line: l.Line, OverOdds: l.OverOdds, UnderOdds: l.UnderOdds}, ok
}

// scoreGames predicts every date of [from, to] in a game-log file with the
// configured systems (SYSTEMS, XGBOOST_MODEL_PATH, …), through the engine
// (timeouts, fallbacks, breakers) into a scratch store, and scores the rows
// against the file's outcomes and lines.
func scoreGames(ctx context.Context, cfg *Config, req scoreRequest, stdout, stderr io.Writer) (err error) {
	for _, d := range []string{req.from, req.to} {
		if _, err := time.Parse(time.DateOnly, d); err != nil {
			return usageError{fmt.Sprintf("score: %q is not a date like 2024-10-22", d)}
		}
	}
	if req.to < req.from {
		return usageError{"score: --to is before --from"}
	}
	src, err := gamelogs.Load(gamelogs.Options{Games: req.games, Lines: req.lines})
	if err != nil {
		return err
	}
	registry, err := newRegistry(cfg)
	if err != nil {
		return err
	}
	log, err := newLogger(cfg, stderr, true)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "predworker-score")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()
	store, err := statesqlite.New(ctx, filepath.Join(dir, "state.db"), nil)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, store.Close()) }()
	sink, err := sinksqlite.New(ctx, filepath.Join(dir, "predictions.db"))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, sink.Close()) }()
	engine, err := worker.New(cfg.engineConfig(), worker.Deps{Store: store, Features: src, Sink: sink, Registry: registry, Logger: log})
	if err != nil {
		return err
	}
	sc := evaluate.NewScorer(outcomes{src})
	days := 0
	for _, date := range src.Dates() {
		if date < req.from || date > req.to {
			continue
		}
		if err := scoreDate(ctx, engine, src, sink, sc, date); err != nil {
			return err
		}
		days++
	}
	if days == 0 {
		return fmt.Errorf("%s has no games from %s to %s", req.games, req.from, req.to)
	}
	fmt.Fprintf(stderr, "scored %d game days from %s to %s\n", days, req.from, req.to)
	report := sc.Report(req.from, req.to)
	if req.plot != "" {
		if err := evaluate.WritePlot(req.plot, report); err != nil {
			return fmt.Errorf("--plot: %w", err)
		}
	}
	if req.calibrationOut != "" {
		if err := writeCalibration(req.calibrationOut, sc.Calibration()); err != nil {
			return fmt.Errorf("--calibration-out: %w", err)
		}
	}
	if req.json {
		return evaluate.WriteJSON(stdout, report)
	}
	return evaluate.WriteTable(stdout, report)
}

// scoreDate runs one date's slate and scores its rows.
func scoreDate(ctx context.Context, engine *worker.Engine, src *gamelogs.Source, sink *sinksqlite.Sink, sc *evaluate.Scorer, date string) error {
	b, _, err := engine.Submit(ctx, "score-"+date, state.Request{GameDate: date})
	if err != nil {
		return fmt.Errorf("%s: %w", date, err)
	}
	if _, err := engine.Run(ctx, b.ID, worker.RunOptions{}); err != nil {
		return fmt.Errorf("%s: %w", date, err)
	}
	for _, p := range b.Items {
		sc.AddGame(p, date)
	}
	err = sink.ReadPredictions(ctx, b.ID, func(p *systems.Prediction) error { sc.Add(p); return nil })
	sc.EndDate()
	return err
}

func writeCalibration(path string, c *systems.Calibration) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	return errors.Join(c.Write(f), f.Close())
}
