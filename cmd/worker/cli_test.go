package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/predworker/predworker/internal/nbadata"
	"github.com/predworker/predworker/state"
	statesqlite "github.com/predworker/predworker/state/sqlite"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/evaluate"
	"github.com/predworker/predworker/worker"
)

// cli runs the worker command with args in a fresh working directory and
// returns its error and what it printed.
func cli(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut strings.Builder
	err := realMain(t.Context(), func() {}, args, &out, &errOut)
	return out.String(), err
}

// Every command's --help prints its usage, succeeds, and touches nothing:
// no configuration is read and no data directory is made.
func TestHelpExitsZeroAndTouchesNothing(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv("LEASE_TTL", "not a duration") // would fail if the configuration were read
	for _, args := range [][]string{{"--help"}, {"help"}, {"run", "--help"}, {"run", "--date", "2025-01-15", "-h"},
		{"status", "--help"}, {"backfill", "--help"}, {"score", "--help"}, {"resume", "--help"}, {"serve", "--help"}, {"doctor", "--help"}} {
		out, err := cli(t, args...)
		if err != nil || !strings.Contains(out, "usage:") {
			t.Errorf("worker %v = %v, printed %q; want usage and success", args, err, out)
		}
	}
	if entries, err := os.ReadDir("."); err != nil || len(entries) != 0 {
		t.Fatalf("help left %v in the working directory (%v)", entries, err)
	}
}

// `worker run` succeeds only for a batch that completed with predictions: a
// failed batch (now or before) and a batch of only failure records exit
// non-zero; `worker resume` reopens the failed one.
func TestRunExitsNonZeroUnlessCompleted(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("DATA_DIR", dir)
	t.Setenv("LOG_LEVEL", "error")
	// No player of that name: every row is a failure record.
	_, err := cli(t, "run", "--date", "2025-01-15", "--players", "nobody-at-all", "--systems", "moving_average")
	if err == nil || !strings.Contains(err.Error(), "without a single prediction") {
		t.Fatalf("run with only failure records = %v, want an error", err)
	}
	// A batch that failed earlier.
	req := state.Request{GameDate: "2025-01-15", Players: []string{"aaronadams"}, Systems: []string{"moving_average"}, ChunkSize: 50}
	st, err := statesqlite.New(t.Context(), filepath.Join(dir, "state.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	id := failedBatch(t, st, req, "feature table missing")
	_ = st.Close()
	out, err := cli(t, "run", "--date", "2025-01-15", "--players", "aaronadams", "--systems", "moving_average")
	if err == nil || !strings.Contains(err.Error(), "failed: feature table missing") || !strings.Contains(out, id+" failed") {
		t.Fatalf("rerun of a failed batch = %v (printed %q), want a non-zero exit naming the failure", err, out)
	}
	out, err = cli(t, "resume", id)
	if err != nil || !strings.Contains(out, id+" completed: 1 predictions") {
		t.Fatalf("resume of the failed batch = %v (printed %q), want it completed", err, out)
	}
	_, err = cli(t, "run", "--date", "2025-01-15", "--players", "aaronadams", "--systems", "moving_average")
	if err != nil {
		t.Fatalf("rerun of the completed batch = %v, want success", err)
	}
	if _, err := cli(t, "resume"); err == nil {
		t.Fatal("resume without a batch id succeeded")
	}
}

// `worker doctor` on the embedded default passes every check; with the
// model file missing (allowed to start by XGBOOST_MODEL_OPTIONAL) the
// prediction-systems check fails naming the model, and doctor exits non-zero.
func TestDoctorOnTheEmbeddedDefault(t *testing.T) {
	t.Setenv("DATA_DIR", t.TempDir())
	out, err := cli(t, "doctor")
	if err != nil || strings.Count(out, "\nok ")+1 != strings.Count(out, "\n") || !strings.HasPrefix(out, "ok ") ||
		!strings.Contains(out, "xgboost_v1") {
		t.Fatalf("doctor = %v, printed:\n%s", err, out)
	}
	t.Setenv("XGBOOST_MODEL_PATH", filepath.Join(t.TempDir(), "missing.txt"))
	t.Setenv("XGBOOST_MODEL_OPTIONAL", "true")
	out, err = cli(t, "doctor")
	if !errors.Is(err, errChecksFailed) || !strings.Contains(out, "FAIL prediction systems") ||
		!strings.Contains(out, "xgboost_v1: model unavailable") {
		t.Fatalf("doctor without the model = %v, printed:\n%s", err, out)
	}
	if _, err := cli(t, "doctor", "extra"); !errors.As(err, new(usageError)) {
		t.Fatalf("doctor with an argument = %v, want a usage error", err)
	}
}

// `worker score --games` over a week of real games: every system and both
// baselines scored on the same player-games, as JSON, with the plot drawn;
// the same numbers on a second run.
func TestScoreGames(t *testing.T) {
	data := nbadata.Require(t)
	t.Setenv("LOG_LEVEL", "error")
	plot := filepath.Join(t.TempDir(), "score.svg")
	args := []string{"score", "--games", data.Games, "--lines", data.Lines, "--from", "2024-12-01", "--to", "2024-12-07", "--json"}
	calPath := filepath.Join(t.TempDir(), "cal.json")
	out, err := cli(t, append(args, "--plot", plot, "--calibration-out", calPath)...)
	if err != nil {
		t.Fatal(err)
	}
	cal, err := systems.ReadCalibration(calPath)
	if err != nil || len(cal.Systems) != 5 {
		t.Fatalf("calibration written: %v", err)
	}
	var r evaluate.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if r.Eligible < 500 || len(r.Systems) != 5 || len(r.Baselines) != 2 {
		t.Fatalf("report: %d player-games, %d systems, %d baselines", r.Eligible, len(r.Systems), len(r.Baselines))
	}
	for _, s := range r.Systems {
		if s.N != r.Eligible || s.MAE < 2 || s.MAE > 8 || s.LinedN != r.Baselines[1].N || s.HitRate == nil {
			t.Errorf("%s: %+v", s.SystemID, s)
		}
	}
	if b := r.Baselines[0]; b.Baseline != "season_average" || b.N != r.Eligible {
		t.Errorf("season average baseline %+v", b)
	}
	if b := r.Baselines[1]; b.Baseline != "line" || b.N == 0 || b.N >= r.Eligible {
		t.Errorf("line baseline %+v", b)
	}
	svg, err := os.ReadFile(plot)
	if err != nil || !strings.Contains(string(svg), "<svg") || !strings.Contains(string(svg), "MAE by month") {
		t.Fatalf("plot: %v", err)
	}
	again, err := cli(t, args...)
	if err != nil || again != out {
		t.Fatalf("a second run differs (%v)", err)
	}
	for _, bad := range [][]string{{"score", "--games", data.Games}, {"score", "--games", data.Games, "--from", "2024-12-07", "--to", "2024-12-01"},
		{"score", "--from", "2024-12-01", "--to", "2024-12-02", "--json"}} {
		if _, err := cli(t, bad...); !errors.As(err, new(usageError)) {
			t.Errorf("worker %v = %v, want a usage error", bad, err)
		}
	}
}

// failedBatch stores req's batch, under its derived id, as another owner
// left it: failed with msg.
func failedBatch(t *testing.T, st state.Store, req state.Request, msg string) string {
	t.Helper()
	id := worker.DeriveBatchID(req)
	if _, _, err := st.Create(t.Context(), state.Batch{ID: id, Request: req, Items: req.Players}); err != nil {
		t.Fatal(err)
	}
	b, err := st.Claim(t.Context(), id, "someone", time.Minute, state.ClaimOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Finish(context.Background(), id, b.Lease, state.StatusFailed, msg); err != nil {
		t.Fatal(err)
	}
	return id
}

// `worker backfill` runs one batch per date with games (Thanksgiving has
// none), with ids derived from the requests: a second run redoes nothing;
// a date whose batch failed is listed with its error and the command exits
// non-zero.
func TestBackfill(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("DATA_DIR", dir)
	t.Setenv("LOG_LEVEL", "error")
	args := []string{"backfill", "--from", "2024-11-27", "--to", "2024-11-29", "--players", "aaronadams,abeljohnson",
		"--systems", "moving_average,zone_matchup_v1", "--poll", "100ms"}
	out, err := cli(t, args...)
	if err != nil {
		t.Fatalf("backfill = %v (printed %q)", err, out)
	}
	if strings.Count(out, " completed ") != 2 || strings.Contains(out, "2024-11-28") || !strings.Contains(out, "dates 2/2 done, 0 failed") {
		t.Fatalf("backfill printed %q, want two completed dates and no Thanksgiving", out)
	}
	st, err := statesqlite.New(t.Context(), filepath.Join(dir, "state.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	ids := map[string]state.Batch{}
	for _, d := range []string{"2024-11-27", "2024-11-29"} {
		req := state.Request{GameDate: d, Players: []string{"aaronadams", "abeljohnson"},
			Systems: []string{"moving_average", "zone_matchup_v1"}, ChunkSize: worker.DefaultConfig().ChunkSize}
		b, err := st.Get(t.Context(), worker.DeriveBatchID(req))
		if err != nil || b.Status != state.StatusCompleted {
			t.Fatalf("batch of %s: %+v, %v", d, b, err)
		}
		ids[d] = b
	}
	if out, err := cli(t, args...); err != nil || !strings.Contains(out, "dates 2/2 done, 0 failed") {
		t.Fatalf("second backfill = %v (printed %q)", err, out)
	}
	for d, before := range ids {
		if after, err := st.Get(t.Context(), before.ID); err != nil || after.Attempt != before.Attempt || after.Predictions != before.Predictions {
			t.Errorf("%s ran again: %+v → %+v (%v)", d, before, after, err)
		}
	}

	// A date whose batch failed: listed, non-zero exit.
	req := state.Request{GameDate: "2024-12-02", Players: []string{"aaronadams", "abeljohnson"},
		Systems: []string{"moving_average", "zone_matchup_v1"}, ChunkSize: worker.DefaultConfig().ChunkSize}
	id := failedBatch(t, st, req, "feature table missing")
	args[2], args[4] = "2024-11-29", "2024-12-02"
	out, err = cli(t, args...)
	if err == nil || !strings.Contains(err.Error(), "2024-12-02 ("+id+"): feature table missing") || !strings.Contains(out, "1 failed") {
		t.Fatalf("backfill over a failed date = %v (printed %q), want a non-zero exit naming it", err, out)
	}
	if _, err := cli(t, "backfill", "--from", "2025-01-02", "--to", "2025-01-01"); err == nil {
		t.Error("a reversed range was accepted")
	}
}

// Ctrl-C during a local backfill stops it with the running batches'
// progress kept and their leases released; the same command then finishes
// them from their checkpoints.
func TestBackfillInterruptedResumes(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("DATA_DIR", dir)
	t.Setenv("LOG_LEVEL", "error")
	t.Setenv("FAULTS", "target=features,kind=latency,latency=100ms,rate=1")
	t.Setenv("MAX_RUNNING_BATCHES", "2")
	args := []string{"backfill", "--from", "2025-01-13", "--to", "2025-01-16", "--systems", "moving_average",
		"--chunk-size", "25", "--poll", "100ms"}
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(700*time.Millisecond, cancel) // Ctrl-C, as signal.NotifyContext delivers it
	var out, errOut strings.Builder
	err := realMain(ctx, func() {}, args, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "run the same command again to resume") {
		t.Fatalf("interrupted backfill = %v (printed %q)", err, out.String())
	}
	st, err := statesqlite.New(t.Context(), filepath.Join(dir, "state.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	before := map[string]int{}
	for _, status := range []state.Status{state.StatusRunning, state.StatusPending, state.StatusCompleted} {
		bs, err := st.List(t.Context(), state.ListFilter{Status: status, Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range bs {
			before[b.ID] = b.DoneChunks
			if b.Status == state.StatusRunning && b.Lease.Live(time.Now()) {
				t.Errorf("%s still holds a live lease after the stop", b.ID)
			}
		}
	}
	if len(before) == 0 {
		t.Fatal("nothing was started before the stop")
	}
	if out, err := cli(t, args...); err != nil || !strings.Contains(out, "dates 4/4 done, 0 failed") {
		t.Fatalf("the same command again = %v (printed %q)", err, out)
	}
	for id, done := range before {
		b, err := st.Get(t.Context(), id)
		if err != nil || b.Status != state.StatusCompleted || b.DoneChunks < done {
			t.Errorf("%s after the rerun: %+v, %v", id, b, err)
		}
	}
}
