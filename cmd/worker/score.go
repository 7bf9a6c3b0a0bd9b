package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/league"
	"github.com/predworker/predworker/worker"
)

// scoreCommand scores predictions against real outcomes. With --games, every
// date of the range in a game-log file is predicted (in a scratch store) and
// scored against the file's outcomes and lines; otherwise finished batches
// are scored against the synthetic league's actual points: one batch
// (--batch-id), or every date of a range (--from, --to), running the batches
// that do not exist yet.
func scoreCommand(ctx context.Context, cfg *Config, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("score", flag.ContinueOnError)
	fs.SetOutput(stderr)
	batchID := fs.String("batch-id", "", "score this finished batch")
	from := fs.String("from", "", "first date of a range to run and score, YYYY-MM-DD")
	to := fs.String("to", "", "last date of the range (inclusive)")
	games := fs.String("games", "", "a game-log file (CSV or gzipped CSV): predict and score its games")
	lines := fs.String("lines", "", "with --games: a file of points lines")
	asJSON := fs.Bool("json", false, "with --games: print one JSON object")
	plotTo := fs.String("plot", "", "with --games: draw the error by month and the calibration into this SVG file")
	calOut := fs.String("calibration-out", "", "with --games and --lines: write the calibration fitted on the range (for CALIBRATION_PATH)")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("score: unexpected argument %q\n%s", fs.Arg(0), commandUsage["score"])}
	}
	if *games != "" {
		if *batchID != "" || *from == "" || *to == "" {
			return usageError{"score: --games needs --from DATE --to DATE (and no --batch-id)"}
		}
		if *calOut != "" && *lines == "" {
			return usageError{"score: --calibration-out needs --lines"}
		}
		return scoreGames(ctx, cfg, scoreRequest{games: *games, lines: *lines, from: *from, to: *to, json: *asJSON, plot: *plotTo,
			calibrationOut: *calOut}, stdout, stderr)
	}
	if *lines != "" || *asJSON || *plotTo != "" || *calOut != "" {
		return usageError{"score: --lines, --json, --plot and --calibration-out go with --games"}
	}
	if (*batchID == "") == (*from == "") {
		return usageError{"score: give either --batch-id ID or --from DATE --to DATE"}
	}
	a, err := openQuiet(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	defer func() { _ = a.Close() }()
	if a.reader == nil {
		return fmt.Errorf("score reads predictions back from the embedded sink; PREDICTION_SINK=%s cannot be read here", cfg.PredictionSink)
	}
	sc := league.NewScorer(league.Default())
	add := func(id string) error {
		return a.reader.ReadPredictions(ctx, id, func(p *systems.Prediction) error { sc.Add(p); return nil })
	}
	if *batchID != "" {
		b, err := a.store.Get(ctx, *batchID)
		if err != nil {
			return err
		}
		if b.Status != state.StatusCompleted {
			return fmt.Errorf("batch %s is %s, not completed", b.ID, b.Status)
		}
		if err := add(b.ID); err != nil {
			return err
		}
		return league.WriteTable(stdout, sc.Results())
	}
	start, err1 := time.Parse(time.DateOnly, *from)
	end, err2 := time.Parse(time.DateOnly, *to)
	if err1 != nil || err2 != nil || end.Before(start) {
		return usageError{"score: --from and --to must be dates like 2025-01-01, --to not before --from"}
	}
	days := 0
	for d := start; !d.After(end); d = d.AddDate(0, 0, 1) {
		out, err := a.runner.Do(ctx, worker.Job{Request: &state.Request{GameDate: d.Format(time.DateOnly)}, Here: true})
		if worker.Classify(err) == worker.ClassValidation {
			continue // no games that day
		}
		if err != nil {
			return err
		}
		b := out.Batch
		if out.Kind != worker.Completed {
			return fmt.Errorf("run %s: %s: %w", b.ID, out.Kind, out.Err)
		}
		if err := add(b.ID); err != nil {
			return err
		}
		days++
	}
	fmt.Fprintf(stderr, "scored %d game days from %s to %s\n", days, *from, *to)
	return league.WriteTable(stdout, sc.Results())
}
