// Command worker is predworker: a crash-recoverable prediction worker.
//
//	worker [serve]                      HTTP service (the default)
//	worker run --date 2025-01-15 …      one batch in the foreground
//	worker resume BATCH_ID [--force]    resume a batch in the foreground
//	worker status BATCH_ID              a batch's status as JSON
//	worker backfill --from … --to …     one batch per date, here or published
//	worker score --from … --to …        MAE and hit rate per system
//	worker doctor                       check every configured dependency
//
// Configuration comes from the environment (see the README). main only wires.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/sethvargo/go-envconfig"
)

// buildID is stamped at build time (-ldflags "-X main.buildID=…").
var buildID = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := realMain(ctx, stop, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var ue usageError
	switch {
	case err == nil:
	case errors.As(err, &ue):
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

// commandUsage is each command's help; `worker CMD --help` prints it, exits
// 0 and touches nothing (no configuration read, no data directory made).
var commandUsage = map[string]string{
	"serve": `worker [serve]
    run the HTTP service (configuration from the environment; see the README)`,
	"run": `worker run --date YYYY-MM-DD [--players a,b] [--systems x,y] [--batch-id ID] [--chunk-size N]
    run one batch in the foreground; run the same command again to resume it.
    Exits 0 only when the batch completed with at least one prediction.`,
	"resume": `worker resume BATCH_ID [--force]
    resume a stopped, failed or orphaned batch in the foreground; --force takes it
    over from a live owner (the old owner is fenced). Exits 0 only when it completed.`,
	"status": `worker status BATCH_ID
    print a batch's status as JSON`,
	"backfill": `worker backfill --from YYYY-MM-DD --to YYYY-MM-DD [--players a,b] [--systems x,y] [--chunk-size N]
                [--publish TOPIC | --url URL] [--poll 1s]
    one batch per date with games, with ids derived from the requests: running the
    same command again skips the dates completed and resumes the others. By default
    the batches run here, MAX_RUNNING_BATCHES at a time; with --publish their
    requests go to the Pub/Sub topic the service's push subscription reads, and the
    command follows them through the state store; with --url they are created
    through the service's API (POST /v1/batches, OPERATOR_TOKEN sent) and followed
    there. One progress line over the range
    (dates, predictions, rate, ETA, failures). Ctrl-C stops (here: after the running
    chunks, leases released; published: only the following). Exits 0 only when every
    date completed; failed dates are listed with their error.`,
	"score": `worker score --games FILE [--lines FILE] --from DATE --to DATE [--json] [--plot FILE.svg]
    predict every game of the range in a game-log file and score the systems against
    the real outcomes, the season average and the lines (MAE, RMSE, bias, coverage,
    fallbacks, side hit rate, return at the listed odds and at -110)
  worker score --batch-id ID | --from DATE --to DATE
    score predictions against the synthetic league's actual points`,
	"doctor": `worker doctor
    check every configured dependency (state store and its indexes, tables and
    their schema, topics, prediction systems); one line per check. Exits 0 only
    when all pass.`,
}

var usage = "usage:\n  " + strings.Join([]string{commandUsage["serve"], commandUsage["run"], commandUsage["resume"],
	commandUsage["status"], commandUsage["backfill"], commandUsage["score"], commandUsage["doctor"]}, "\n  ") + "\nconfiguration is read from the environment; see the README"

// wantsHelp reports whether args ask for help (-h, -help, --help).
func wantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "-h", "-help", "--help":
			return true
		case "--":
			return false
		}
	}
	return false
}

// realMain runs a subcommand. stopSignals restores default signal handling
// (so a second SIGTERM kills at once) once a drain has started.
func realMain(ctx context.Context, stopSignals func(), args []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	switch {
	case cmd == "-h" || cmd == "--help" || cmd == "-help" || cmd == "help":
		_, err := fmt.Fprintln(stdout, usage)
		return err
	case commandUsage[cmd] == "":
		return usageError{fmt.Sprintf("unknown command %q\n%s", cmd, usage)}
	case wantsHelp(args):
		_, err := fmt.Fprintln(stdout, "usage:\n  "+commandUsage[cmd])
		return err
	}
	cfg, err := LoadConfig(ctx, envconfig.OsLookuper())
	if err != nil {
		return err
	}
	switch cmd {
	case "run":
		return runCommand(ctx, stopSignals, cfg, args, stdout, stderr)
	case "resume":
		return resumeCommand(ctx, stopSignals, cfg, args, stdout, stderr)
	case "status":
		return statusCommand(ctx, cfg, args, stdout, stderr)
	case "backfill":
		return backfillCommand(ctx, stopSignals, cfg, args, stdout, stderr)
	case "score":
		return scoreCommand(ctx, cfg, args, stdout, stderr)
	case "doctor":
		return doctorCommand(ctx, cfg, args, stdout, stderr)
	}
	if len(args) > 0 {
		return usageError{fmt.Sprintf("serve takes no arguments\n%s", usage)}
	}
	log, err := newLogger(cfg, stdout, false)
	if err != nil {
		return err
	}
	log.Info("starting", slog.String("build_id", buildID), slog.Any("config", cfg))
	return serve(ctx, stopSignals, cfg, log)
}
