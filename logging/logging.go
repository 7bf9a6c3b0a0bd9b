// Package logging builds the process logger: log/slog writing one JSON object
// per line in Cloud Logging's structured format (severity, message, time,
// logging.googleapis.com/trace), or human-readable text. It also names the
// stable lifecycle events operators build log-based metrics on, and carries a
// request-scoped logger in the context.
package logging

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"strings"
)

// Lifecycle events, logged in the "event" field.
const (
	EventBatchCreated   = "batch_created"
	EventBatchClaimed   = "batch_claimed"
	EventBatchResumed   = "batch_resumed"
	EventChunkStarted   = "chunk_started"
	EventChunkCommitted = "chunk_committed"
	EventBatchCompleted = "batch_completed"
	EventBatchFailed    = "batch_failed"
	EventFallbackUsed   = "fallback_used"
	EventChunkFallbacks = "chunk_fallbacks"
	EventCircuitOpened  = "circuit_opened"
	EventLeaseLost      = "lease_lost"
	EventDeadLettered   = "dead_lettered"
	EventDrainStarted   = "drain_started"
	EventDrainCompleted = "drain_completed"
)

// TraceKey is the Cloud Logging field that links a log line to a trace.
const TraceKey = "logging.googleapis.com/trace"

// SpanKey and SampledKey are the Cloud Logging fields of the span a line
// belongs to and whether its trace is sampled.
const (
	SpanKey    = "logging.googleapis.com/spanId"
	SampledKey = "logging.googleapis.com/trace_sampled"
)

// ParseLevel maps LOG_LEVEL values to slog levels.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown level %q (want debug, info, warn or error)", s)
}

// New returns a logger writing to w in format "json" (Cloud Logging) or "text".
func New(w io.Writer, level slog.Level, format string) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: cloudLogging}
	switch format {
	case "", "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})), nil
	}
	return nil, fmt.Errorf("unknown format %q (want json or text)", format)
}

// cloudLogging renames slog's built-in keys to the ones Cloud Logging reads.
func cloudLogging(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch a.Key {
	case slog.MessageKey:
		a.Key = "message"
	case slog.LevelKey:
		a.Key = "severity"
		switch lvl := a.Value.Any().(slog.Level); {
		case lvl >= slog.LevelError:
			a.Value = slog.StringValue("ERROR")
		case lvl >= slog.LevelWarn:
			a.Value = slog.StringValue("WARNING")
		case lvl >= slog.LevelInfo:
			a.Value = slog.StringValue("INFO")
		default:
			a.Value = slog.StringValue("DEBUG")
		}
	}
	return a
}

// Event is the attribute naming a lifecycle event.
func Event(name string) slog.Attr { return slog.String("event", name) }

// StackTracer is an error that carries the stack where it arose (a recovered
// panic, for example).
type StackTracer interface{ StackTrace() string }

// Err returns the attributes an error log line carries: the error text and a
// stack_trace (the error's own when it has one, else the logging site's) so
// Error Reporting groups it.
func Err(err error) slog.Attr {
	stack := string(debug.Stack())
	var st StackTracer
	if errors.As(err, &st) {
		stack = st.StackTrace()
	}
	return slog.Group("", slog.String("error", err.Error()), slog.String("stack_trace", stack))
}

type ctxKey struct{}

// WithLogger returns ctx carrying l.
func WithLogger(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, ctxKey{}, l)
}

// FromContext returns the logger in ctx, or fallback when there is none.
func FromContext(ctx context.Context, fallback *slog.Logger) *slog.Logger {
	if l, ok := ctx.Value(ctxKey{}).(*slog.Logger); ok {
		return l
	}
	return fallback
}
