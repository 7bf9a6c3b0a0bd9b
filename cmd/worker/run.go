package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/predworker/predworker/api"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/worker"
)

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// runCommand runs one batch in the foreground. Rerunning the same command
// after a kill resumes the same batch: the default batch id is derived from
// the request.
func runCommand(ctx context.Context, stopSignals func(), cfg *Config, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	date := fs.String("date", "", "game date, YYYY-MM-DD (required)")
	players := fs.String("players", "", "comma-separated player lookups (default: everyone with a game that date)")
	sys := fs.String("systems", "", "comma-separated system ids (default: all)")
	batchID := fs.String("batch-id", "", "batch id (default: derived from the request, so a rerun resumes)")
	chunk := fs.Int("chunk-size", cfg.ChunkSize, "items per chunk")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("run: unexpected argument %q", fs.Arg(0))}
	}
	if *date == "" {
		return usageError{"run: --date is required, e.g. --date 2025-01-15"}
	}
	tty := isTerminal(stderr)
	log, err := newLogger(cfg, stderr, tty && os.Getenv("LOG_LEVEL") == "")
	if err != nil {
		return err
	}
	a, err := newApp(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer func() { _ = a.Close() }()

	b, _, err := a.engine.Submit(ctx, *batchID, state.Request{GameDate: *date, Players: splitList(*players),
		Systems: splitList(*sys), ChunkSize: *chunk})
	var ie *worker.InputError
	if errors.As(err, &ie) {
		return usageError{fmt.Sprintf("run: %s", ie.Error())}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "batch %s: %s, %d players × %d systems in %d chunks of %d\n", b.ID, b.Request.GameDate,
		len(b.Items), len(b.Request.Systems), b.TotalChunks(), b.Request.ChunkSize)
	if b.Status.Finished() {
		fmt.Fprintf(stderr, "already %s\n", b.Status)
		return summary(stdout, b, 0)
	}
	if b.DoneChunks > 0 {
		fmt.Fprintf(stderr, "resuming from chunk %d of %d\n", b.DoneChunks, b.TotalChunks())
	}

	// SIGINT/SIGTERM: stop after the chunk in flight (soft), abandon it
	// after the drain budget (hard). Either way the lease is released.
	stop := make(chan struct{})
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()
	go func() {
		select {
		case <-ctx.Done():
			stopSignals()
			close(stop)
			t := time.NewTimer(cfg.DrainTimeout - min(cfg.DrainTimeout/4, 2*time.Second))
			defer t.Stop()
			select {
			case <-t.C:
				cancelHard()
			case <-hard.Done():
			}
		case <-hard.Done():
		}
	}()

	progress := newProgress(stderr, tty, b)
	start := time.Now()
	for {
		var done state.Batch
		done, err = a.engine.Run(hard, b.ID, worker.RunOptions{Stop: stop, OnProgress: progress.update})
		if errors.Is(err, state.ErrLeaseHeld) {
			if !waitForLease(ctx, stderr, done) {
				return fmt.Errorf("interrupted while waiting for the lease of %s", b.ID)
			}
			continue
		}
		progress.finish()
		if err == nil {
			if _, perr := a.engine.DispatchOutbox(ctx, a.publisher); perr != nil {
				fmt.Fprintf(stderr, "completion event not published yet (the service's outbox will): %v\n", perr)
			}
		}
		switch {
		case errors.Is(err, state.ErrFinished):
			return summary(stdout, done, time.Since(start))
		case errors.Is(err, worker.ErrInterrupted):
			return fmt.Errorf("stopped at chunk %d of %d; run the same command again to resume", done.DoneChunks, done.TotalChunks())
		case err != nil:
			return err
		}
		return summary(stdout, done, time.Since(start))
	}
}

// waitForLease tells the user whose lease it waits for, and sleeps until it
// expires. It returns false when ctx ends first.
func waitForLease(ctx context.Context, w io.Writer, b state.Batch) bool {
	wait := time.Until(b.Lease.ExpiresAt)
	fmt.Fprintf(w, "batch %s is held by %s until %s; waiting %s for the lease to expire (that process may still be running it)\n",
		b.ID, b.Lease.Owner, b.Lease.ExpiresAt.Local().Format(time.TimeOnly), wait.Round(100*time.Millisecond))
	t := time.NewTimer(max(wait, 0) + 50*time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func summary(w io.Writer, b state.Batch, took time.Duration) error {
	_, err := fmt.Fprintf(w, "batch %s %s: %d predictions (%d fallbacks), %d failed, %d players, %d chunks, %s\n"+
		"rows: curl http://127.0.0.1:8080/v1/batches/%s/predictions (with worker serve running) or sqlite3 DATA_DIR/predictions.db\n",
		b.ID, b.Status, b.Predictions, b.Fallbacks, b.FailedItems, b.DoneItems, b.DoneChunks, took.Round(time.Millisecond), b.ID)
	return err
}

// progress shows chunks done: a bar on a terminal, a plain line per chunk
// otherwise.
type progress struct {
	w         io.Writer
	bar       *progressbar.ProgressBar
	start     time.Time
	fromChunk int
}

func newProgress(w io.Writer, tty bool, b state.Batch) *progress {
	p := &progress{w: w, start: time.Now(), fromChunk: b.DoneChunks}
	if tty {
		p.bar = progressbar.NewOptions(b.TotalChunks(),
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription("chunks"),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionClearOnFinish(),
		)
		_ = p.bar.Set(b.DoneChunks)
	}
	return p
}

func (p *progress) update(b state.Batch) {
	if p.bar != nil {
		_ = p.bar.Set(b.DoneChunks)
		return
	}
	elapsed := time.Since(p.start)
	done := b.DoneChunks - p.fromChunk
	rate := float64(done) / max(elapsed.Seconds(), 1e-9)
	eta := time.Duration(float64(b.TotalChunks()-b.DoneChunks) / max(rate, 1e-9) * float64(time.Second))
	fmt.Fprintf(p.w, "chunk %d/%d done, %d predictions, %.1f chunks/s, eta %s\n",
		b.DoneChunks, b.TotalChunks(), b.Predictions, rate, eta.Round(100*time.Millisecond))
}

func (p *progress) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}

func statusCommand(ctx context.Context, cfg *Config, args []string, stdout, stderr io.Writer) error {
	if len(args) != 1 {
		return usageError{"status: want exactly one batch id"}
	}
	if err := worker.ValidateBatchID(args[0]); err != nil {
		return usageError{"status: " + err.Error()}
	}
	a, err := openQuiet(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	defer func() { _ = a.Close() }()
	b, err := a.store.Get(ctx, args[0])
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(api.StatusOf(b))
}

// openQuiet opens the app for a short command: warnings and errors only, as
// text on stderr.
func openQuiet(ctx context.Context, cfg *Config, stderr io.Writer) (*app, error) {
	log, err := newLogger(cfg, stderr, true)
	if err != nil {
		return nil, err
	}
	return newApp(ctx, cfg, log)
}
