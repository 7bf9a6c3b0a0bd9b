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

// runFlags are the flags of `worker run`.
type runFlags struct {
	batchID string
	req     state.Request
}

// requestFlags registers the flags that shape a batch's request (players,
// systems, chunk size) on fs; the function it returns reads them, after
// parsing, into the request of a date.
func requestFlags(fs *flag.FlagSet, cfg *Config) func(date string) state.Request {
	players := fs.String("players", "", "comma-separated player lookups (default: everyone with a game that date)")
	sys := fs.String("systems", "", "comma-separated system ids (default: all)")
	chunk := fs.Int("chunk-size", cfg.ChunkSize, "items per chunk")
	return func(date string) state.Request {
		return state.Request{GameDate: date, Players: splitList(*players), Systems: splitList(*sys), ChunkSize: *chunk}
	}
}

// parseFlags parses a command's flags, refusing arguments that are not.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))}
	}
	return nil
}

func parseRunFlags(cfg *Config, args []string, stderr io.Writer) (runFlags, error) {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	date := fs.String("date", "", "game date, YYYY-MM-DD (required)")
	batchID := fs.String("batch-id", "", "batch id (default: derived from the request, so a rerun resumes)")
	request := requestFlags(fs, cfg)
	if err := parseFlags(fs, args); err != nil {
		return runFlags{}, err
	}
	if *date == "" {
		return runFlags{}, usageError{"run: --date is required, e.g. --date 2025-01-15"}
	}
	return runFlags{batchID: *batchID, req: request(*date)}, nil
}

// drainOnSignal drains r when ctx ends (SIGINT/SIGTERM): the run in flight
// stops after its chunk, or is abandoned at the end of budget; either way
// its lease is released. It returns the context runs use (not cancelled by
// the signal: the drain decides) and a stop function that waits for the
// drain.
func drainOnSignal(ctx context.Context, stopSignals func(), r *worker.Runner, budget time.Duration) (context.Context, func()) {
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		select {
		case <-ctx.Done():
			stopSignals()
			r.Drain(budget)
		case <-runCtx.Done():
		}
	}()
	return runCtx, func() { cancel(); <-drained }
}

// runCommand runs one batch in the foreground. Rerunning the same command
// after a kill resumes the same batch: the default batch id is derived from
// the request.
func runCommand(ctx context.Context, stopSignals func(), cfg *Config, args []string, stdout, stderr io.Writer) error {
	flags, err := parseRunFlags(cfg, args, stderr)
	if err != nil {
		return err
	}
	return foreground(ctx, stopSignals, cfg, worker.Job{BatchID: flags.batchID, Request: &flags.req}, "run", stdout, stderr)
}

// resumeCommand resumes a stopped, failed or orphaned batch in the
// foreground; --force takes it over from a live owner.
func resumeCommand(ctx context.Context, stopSignals func(), cfg *Config, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("resume", flag.ContinueOnError)
	fs.SetOutput(stderr)
	force := fs.Bool("force", false, "take the batch over even when another owner's lease is live (the old owner is fenced)")
	var id string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		id, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if id == "" && fs.NArg() == 1 {
		id = fs.Arg(0)
	} else if fs.NArg() > 0 || id == "" {
		return usageError{"resume: want exactly one batch id\n" + commandUsage["resume"]}
	}
	if err := worker.ValidateBatchID(id); err != nil {
		return usageError{"resume: " + err.Error()}
	}
	return foreground(ctx, stopSignals, cfg, worker.Job{BatchID: id, Reopen: true, Force: *force}, "resume", stdout, stderr)
}

// foreground runs job here, showing progress, waiting for another owner's
// lease when it must. It returns nil only when the batch completed with at
// least one prediction.
func foreground(ctx context.Context, stopSignals func(), cfg *Config, job worker.Job, cmd string, stdout, stderr io.Writer) error {
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
	runCtx, stop := drainOnSignal(ctx, stopSignals, a.runner, cfg.DrainTimeout)
	defer stop()

	v := &runView{stdout: stdout, stderr: stderr, tty: tty, publish: func() error {
		_, err := a.engine.DispatchOutbox(ctx, a.publisher)
		return err
	}}
	job.Here, job.OnClaimed, job.OnProgress = true, v.claimed, v.progress
	for {
		out, err := a.runner.Do(runCtx, job)
		if worker.Classify(err) == worker.ClassValidation {
			return usageError{fmt.Sprintf("%s: %s", cmd, err.Error())}
		}
		if err != nil {
			return err
		}
		if out.Kind == worker.Held || out.Kind == worker.Running {
			v.describe(out.Batch)
			if !waitForLease(ctx, stderr, out.Batch) {
				return fmt.Errorf("interrupted while waiting for the lease of %s", out.Batch.ID)
			}
			continue
		}
		return v.end(out)
	}
}

// runView is what `worker run` shows: the batch, where it resumes from,
// progress, and a summary.
type runView struct {
	stdout, stderr io.Writer
	tty            bool
	publish        func() error // the completion event, once the batch completed here
	described      bool
	prog           *progress // while a run here is in progress
	ran            bool
	start          time.Time
}

func (v *runView) describe(b state.Batch) {
	if !v.described {
		v.described = true
		fmt.Fprintf(v.stderr, "batch %s: %s, %d players × %d systems in %d chunks of %d\n", b.ID, b.Request.GameDate,
			b.ItemCount(), len(b.Request.Systems), b.TotalChunks(), b.Request.ChunkSize)
	}
}

func (v *runView) claimed(b state.Batch) {
	v.describe(b)
	if b.DoneChunks > 0 {
		fmt.Fprintf(v.stderr, "resuming from chunk %d of %d\n", b.DoneChunks, b.TotalChunks())
	}
	v.prog, v.ran, v.start = newProgress(v.stderr, v.tty, b), true, time.Now()
}

func (v *runView) progress(b state.Batch) { v.prog.update(b) }

// end reports how the run ended: nil only for a batch that completed (now
// or before) with at least one prediction.
func (v *runView) end(out worker.Outcome) error {
	b := out.Batch
	v.describe(b)
	if v.prog != nil {
		v.prog.finish()
	}
	took := time.Duration(0)
	switch {
	case out.Kind == worker.AtCapacity:
		return fmt.Errorf("batch %s not started: this process runs as many batches as MAX_RUNNING_BATCHES allows", b.ID)
	case out.Kind != worker.Completed && out.Kind != worker.Failed:
		// interrupted or draining: progress is kept and the lease released
		return fmt.Errorf("stopped at chunk %d of %d; run the same command again to resume", b.DoneChunks, b.TotalChunks())
	case !v.ran:
		fmt.Fprintf(v.stderr, "already %s\n", b.Status)
	case out.Kind == worker.Completed:
		took = time.Since(v.start)
		if err := v.publish(); err != nil {
			fmt.Fprintf(v.stderr, "completion event not published yet (the service's outbox will): %v\n", err)
		}
	}
	if err := summary(v.stdout, b, took); err != nil {
		return err
	}
	switch {
	case out.Kind == worker.Failed:
		return fmt.Errorf("batch %s failed: %s (after fixing the cause: worker resume %s)", b.ID, b.Error, b.ID)
	case b.Predictions == 0:
		return fmt.Errorf("batch %s completed without a single prediction: every row is a failure record (see failure_reason)", b.ID)
	}
	return nil
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
		return usageError{"status: want exactly one batch id\n" + commandUsage["status"]}
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

// errChecksFailed is doctor's answer when a dependency check failed; the
// lines on stdout say which.
var errChecksFailed = errors.New("doctor: a check failed")

// doctorCommand runs every dependency check the service would run for GET
// /v1/doctor, printing one line per check.
func doctorCommand(ctx context.Context, cfg *Config, args []string, stdout, stderr io.Writer) error {
	if len(args) != 0 {
		return usageError{"doctor takes no arguments\n" + commandUsage["doctor"]}
	}
	a, err := openQuiet(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	defer func() { _ = a.Close() }()
	failed := false
	for _, r := range api.RunChecks(ctx, a.checks, 20*time.Second) {
		verdict := "ok  "
		if !r.OK {
			verdict, failed = "FAIL", true
		}
		line := fmt.Sprintf("%s %s (%d ms)", verdict, r.Name, r.MS)
		if r.Error != "" {
			line += ": " + r.Error
		}
		if _, err := fmt.Fprintln(stdout, line); err != nil {
			return err
		}
	}
	if failed {
		return errChecksFailed
	}
	return nil
}
