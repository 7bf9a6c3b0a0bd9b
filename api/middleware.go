package api

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/go-chi/chi/v5/middleware"
	"github.com/google/uuid"
	"go.opentelemetry.io/otel/trace"

	"github.com/predworker/predworker/logging"
)

var requestIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// requestContext gives every request an id (the caller's X-Request-Id when it
// is sane, a new one otherwise), echoes it, and puts a logger carrying it and
// the Cloud Logging trace into the context.
func (s *Server) requestContext(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-Id")
		if !requestIDPattern.MatchString(id) {
			id = uuid.NewString()
		}
		w.Header().Set("X-Request-Id", id)
		log := s.log.With(slog.String("request_id", id))
		if s.project != "" {
			log = log.With(traceAttrs(r, s.project)...)
		}
		next.ServeHTTP(w, r.WithContext(logging.WithLogger(r.Context(), log)))
	})
}

var hex32 = regexp.MustCompile(`^[0-9a-f]{32}$`)

// traceAttrs link a request's log lines to its trace in Cloud Logging: the
// span's when there is one (every traced request), else the trace id the
// caller sent.
func traceAttrs(r *http.Request, project string) []any {
	if sc := trace.SpanContextFromContext(r.Context()); sc.IsValid() {
		return []any{slog.String(logging.TraceKey, fmt.Sprintf("projects/%s/traces/%s", project, sc.TraceID())),
			slog.String(logging.SpanKey, sc.SpanID().String()), slog.Bool(logging.SampledKey, sc.IsSampled())}
	}
	if id := traceID(r); id != "" {
		return []any{slog.String(logging.TraceKey, fmt.Sprintf("projects/%s/traces/%s", project, id))}
	}
	return nil
}

// traceID reads the trace id from traceparent or X-Cloud-Trace-Context.
func traceID(r *http.Request) string {
	if tp := r.Header.Get("traceparent"); tp != "" {
		if parts := strings.Split(tp, "-"); len(parts) == 4 && hex32.MatchString(parts[1]) {
			return parts[1]
		}
	}
	if xc := r.Header.Get("X-Cloud-Trace-Context"); xc != "" {
		id, _, _ := strings.Cut(xc, "/")
		if hex32.MatchString(strings.ToLower(id)) {
			return strings.ToLower(id)
		}
	}
	return ""
}

// writeDeadline bounds the time to write the answer, so a client that never
// reads it cannot hold the handler (and what it holds) for ever. Handlers
// that legitimately take longer (a push running its batch, a stream) move
// it with http.ResponseController.
func (s *Server) writeDeadline(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Not every ResponseWriter supports deadlines (some test recorders);
		// then the server's own timeouts are all there is.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.writeTimeout))
		next.ServeHTTP(w, r)
	})
}

// recoverer turns a handler panic into a logged 500 with a JSON body.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if err, ok := v.(error); ok && errors.Is(err, http.ErrAbortHandler) {
					panic(v) // net/http's own signal to abort the response
				}
				s.writeError(w, r, newPanicked(v))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// accessLog logs one line per request (probes and metrics at debug level).
func (s *Server) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		endRequestSpan(r, ww.Status())
		level := slog.LevelInfo
		if isProbe(r.URL.Path) {
			level = slog.LevelDebug
		}
		logging.FromContext(r.Context(), s.log).Log(r.Context(), level, "request",
			slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Int("status", ww.Status()),
			slog.Int("bytes", ww.BytesWritten()), slog.Int64("duration_ms", time.Since(start).Milliseconds()))
	})
}
