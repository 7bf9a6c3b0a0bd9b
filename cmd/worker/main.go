// Command worker is predworker: a crash-recoverable prediction worker.
//
//	worker [serve]                      HTTP service (the default)
//	worker run --date 2025-01-15 …      one batch in the foreground
//	worker status BATCH_ID              a batch's status as JSON
//	worker score --from … --to …        MAE and hit rate per system
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

const usage = `usage:
  worker [serve]                       run the HTTP service
  worker run --date YYYY-MM-DD [--players a,b] [--systems x,y] [--batch-id ID] [--chunk-size N]
                                       run one batch in the foreground; rerun to resume
  worker status BATCH_ID               print a batch's status as JSON
  worker score --batch-id ID | --from DATE --to DATE
                                       score predictions against the synthetic league's actual points
configuration is read from the environment; see the README`

// realMain runs a subcommand. stopSignals restores default signal handling
// (so a second SIGTERM kills at once) once a drain has started.
func realMain(ctx context.Context, stopSignals func(), args []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "-h", "--help", "help":
		_, err := fmt.Fprintln(stdout, usage)
		return err
	case "serve", "run", "status", "score":
	default:
		return usageError{fmt.Sprintf("unknown command %q\n%s", cmd, usage)}
	}
	cfg, err := LoadConfig(ctx, envconfig.OsLookuper())
	if err != nil {
		return err
	}
	switch cmd {
	case "run":
		return runCommand(ctx, stopSignals, cfg, args, stdout, stderr)
	case "status":
		return statusCommand(ctx, cfg, args, stdout, stderr)
	case "score":
		return scoreCommand(ctx, cfg, args, stdout, stderr)
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
