// Package api is the HTTP face of the worker: the operator API under /v1, the
// health and readiness probes and the Prometheus endpoint, on a chi router with
// request-id, trace, logging and panic-recovery middleware. Errors leave
// through one table (errors.go) as {"error": {"code", "message", "field"}}.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"go.opentelemetry.io/otel/trace"
	nooptrace "go.opentelemetry.io/otel/trace/noop"

	"github.com/predworker/predworker/events"
	"github.com/predworker/predworker/logging"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/worker"
)

// MaxBodyBytes is the largest request body accepted.
const MaxBodyBytes = 1 << 20

// Server holds the handlers' collaborators.
type Server struct {
	runner       *worker.Runner
	store        state.Store
	predictions  systems.PredictionReader // nil: the predictions endpoint answers 501
	metrics      http.Handler
	log          *slog.Logger
	project      string // for Cloud Logging trace ids
	deadLetters  events.DeadLetters
	pushBudget   time.Duration
	maxAttempts  int
	auth         Auth
	continuer    Continuer
	writeTimeout time.Duration
	checks       []Check
	tracer       trace.Tracer
	routes       []Route
}

// Route is an extra endpoint (a pipeline profile's trigger), served behind
// the operator authentication like /v1.
type Route struct {
	Method, Path string
	Handler      http.HandlerFunc
}

// Options configures New.
type Options struct {
	// Runner runs batches (worker.Runner.Do is the one lifecycle).
	Runner      *worker.Runner
	Store       state.Store
	Predictions systems.PredictionReader
	Metrics     http.Handler
	Logger      *slog.Logger
	Project     string
	// DeadLetters enables POST /pubsub/push and the dead-letter endpoints.
	DeadLetters events.DeadLetters
	// PushBudget is the longest a push request runs its batch (PUSH_BUDGET;
	// zero: DefaultPushBudget).
	PushBudget time.Duration
	// MaxAttempts is how many deliveries of one message an internal error
	// may take before the message is dead-lettered (MAX_DELIVERY_ATTEMPTS;
	// zero: DefaultMaxAttempts).
	MaxAttempts int
	// Auth guards the push endpoint and the operator API. Health,
	// readiness and metrics stay open.
	Auth Auth
	// Continuer, when set, continues a batch whose push budget ran out in
	// a new message (204) instead of asking for a redelivery (503).
	Continuer Continuer
	// Checks are the deep health check's (GET /v1/doctor).
	Checks []Check
	// Tracer provides the requests' spans (trace.go). nil: none recorded.
	Tracer trace.TracerProvider
	// Routes are extra operator endpoints (PROFILE=phase5: /start, /status).
	Routes []Route
	// WriteTimeout bounds writing an answer (HTTP_WRITE_TIMEOUT; zero:
	// DefaultWriteTimeout). A push gets its budget on top; a predictions
	// stream gets it afresh for every page.
	WriteTimeout time.Duration
}

// Defaults of the push endpoint's settings.
const (
	// DefaultPushBudget leaves a minute of Pub/Sub's longest ack deadline
	// (600 s) for the checkpoint, the lease release and the answer.
	DefaultPushBudget = 540 * time.Second
	// DefaultMaxAttempts bounds the deliveries an internal error may take.
	DefaultMaxAttempts = 5
	// DefaultWriteTimeout bounds writing one answer (or one page of a
	// predictions stream) to a client that does not read.
	DefaultWriteTimeout = 60 * time.Second
)

// New returns the server.
func New(o Options) *Server {
	if o.PushBudget <= 0 {
		o.PushBudget = DefaultPushBudget
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.Tracer == nil {
		o.Tracer = nooptrace.NewTracerProvider()
	}
	return &Server{runner: o.Runner, store: o.Store, predictions: o.Predictions,
		metrics: o.Metrics, log: o.Logger, project: o.Project, deadLetters: o.DeadLetters,
		pushBudget: o.PushBudget, maxAttempts: o.MaxAttempts, auth: o.Auth, continuer: o.Continuer,
		writeTimeout: o.WriteTimeout, checks: o.Checks, tracer: o.Tracer.Tracer(TracerName), routes: o.Routes}
}

// Handler returns the router.
func (s *Server) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(s.traced, s.requestContext, s.writeDeadline, s.recoverer, s.accessLog)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: "no such endpoint"})
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, &Error{Status: http.StatusMethodNotAllowed, Code: CodeMethodNotAllowed,
			Message: r.Method + " is not allowed on " + r.URL.Path})
	})
	r.Get("/health", s.health)
	r.Get("/ready", s.ready)
	if s.metrics != nil {
		r.Method(http.MethodGet, "/metrics", s.metrics)
	}
	r.Route("/v1", func(r chi.Router) {
		r.Use(s.requireOperator)
		r.Post("/batches", s.createBatch)
		r.Get("/batches", s.listBatches)
		r.Get("/batches/{id}", s.getBatch)
		r.Post("/batches/{id}/resume", s.resumeBatch)
		r.Get("/batches/{id}/predictions", s.batchPredictions)
		r.Post("/sweep", s.sweep)
		r.Get("/doctor", s.doctor)
		if s.deadLetters != nil {
			r.Get("/dead-letters", s.listDeadLetters)
			r.Post("/dead-letters/{id}/retry", s.retryDeadLetter)
		}
	})
	if s.deadLetters != nil {
		r.With(s.requirePush).Post("/pubsub/push", s.push)
	}
	if len(s.routes) > 0 {
		r.Group(func(r chi.Router) {
			r.Use(s.requireOperator)
			for _, rt := range s.routes {
				r.Method(rt.Method, rt.Path, rt.Handler)
			}
		})
	}
	return r
}

// ---------------------------------------------------------------------------
// Handlers

// BatchRequest is the body of POST /v1/batches.
type BatchRequest struct {
	BatchID       string   `json:"batch_id"`
	GameDate      string   `json:"game_date"`
	Players       []string `json:"players"`
	Systems       []string `json:"systems"`
	ChunkSize     int      `json:"chunk_size"`
	CorrelationID string   `json:"correlation_id"`
}

// decodeJSON reads exactly one JSON object of type T from the body, refusing
// other media types, bodies over the limit, and everything decodeStrict
// refuses.
func decodeJSON(w http.ResponseWriter, r *http.Request, dst any, fields []string) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return &Error{Status: http.StatusUnsupportedMediaType, Code: CodeUnsupportedMedia,
				Message: "Content-Type must be application/json"}
		}
	}
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var me *http.MaxBytesError
		if errors.As(err, &me) {
			return err
		}
		return invalid("", "request body could not be read: "+err.Error())
	}
	if ae := decodeStrict(raw, dst, fields); ae != nil {
		return ae
	}
	return nil
}

func decodeError(err error) *Error {
	var (
		se *json.SyntaxError
		te *json.UnmarshalTypeError
		me *http.MaxBytesError
	)
	switch {
	case errors.As(err, &me):
		return toAPIError(err)
	case errors.Is(err, io.EOF):
		return invalid("", "request body is empty; want a JSON object")
	case errors.As(err, &se), errors.Is(err, io.ErrUnexpectedEOF):
		return invalid("", "request body is not valid JSON")
	case errors.As(err, &te):
		return invalid(te.Field, fmt.Sprintf("%s must be %s, not %s", te.Field, te.Type.String(), te.Value))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return invalid(field, "unknown field "+strconv.Quote(field))
	}
	return invalid("", "request body could not be decoded: "+err.Error())
}

func (s *Server) createBatch(w http.ResponseWriter, r *http.Request) {
	var req BatchRequest
	if err := decodeJSON(w, r, &req, batchRequestFields); err != nil {
		s.writeError(w, r, err)
		return
	}
	out, err := s.runner.Do(r.Context(), worker.Job{BatchID: req.BatchID, Request: req.stateRequest()})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	switch out.Kind {
	case worker.Draining:
		s.writeError(w, r, worker.ErrDraining)
	case worker.Completed, worker.Failed:
		w.Header().Set("Location", "/v1/batches/"+out.Batch.ID)
		writeJSON(w, http.StatusOK, StatusOf(out.Batch))
	default: // started, running here or elsewhere, or waiting for an instance with room
		w.Header().Set("Location", "/v1/batches/"+out.Batch.ID)
		writeJSON(w, http.StatusAccepted, StatusOf(out.Batch))
	}
}

// atCapacity is the answer when this instance runs MAX_RUNNING_BATCHES
// batches already.
func atCapacity() *Error {
	return &Error{Status: http.StatusTooManyRequests, Code: CodeAtCapacity, RetryAfter: 10, Class: worker.ClassBusy,
		Message: "this instance runs as many batches as it may (MAX_RUNNING_BATCHES); retry, or let a sweep start it"}
}

// stateRequest is the engine's form of the request.
func (req BatchRequest) stateRequest() *state.Request {
	return &state.Request{GameDate: req.GameDate, Players: req.Players, Systems: req.Systems,
		ChunkSize: req.ChunkSize, CorrelationID: req.CorrelationID}
}

// heldError is the answer to a batch another owner holds until until.
func heldError(b state.Batch, until time.Time) *Error {
	a := answers[worker.ClassBusy]
	e := &Error{Status: a.status, Code: a.code, Message: a.message, RetryAfter: a.retryAfter, Class: worker.ClassBusy}
	if !until.IsZero() {
		e.RetryAfter = max(1, int(time.Until(until).Seconds())+1)
		e.Message = fmt.Sprintf("%s holds a live lease on batch %s until %s; retry later or resume with ?force=true",
			b.Lease.Owner, b.ID, until.UTC().Format(time.RFC3339))
	}
	return e
}

// batchID reads and validates the {id} path parameter.
func batchID(r *http.Request) (string, error) {
	id := chi.URLParam(r, "id")
	return id, worker.ValidateBatchID(id)
}

func (s *Server) getBatch(w http.ResponseWriter, r *http.Request) {
	id, err := batchID(r)
	if err == nil {
		var b state.Batch
		if b, err = s.store.Get(r.Context(), id); err == nil {
			writeJSON(w, http.StatusOK, StatusOf(b))
			return
		}
	}
	s.writeError(w, r, err)
}

func (s *Server) listBatches(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := state.ListFilter{Status: state.Status(q.Get("state")), Limit: 50}
	if f.Status != "" && !f.Status.Valid() {
		s.writeError(w, r, invalid("state", "must be pending, running, completed or failed"))
		return
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 500 {
			s.writeError(w, r, invalid("limit", "must be a number from 1 to 500"))
			return
		}
		f.Limit = n
	}
	bs, err := s.store.List(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]Status, len(bs))
	for i, b := range bs {
		out[i] = StatusOf(b)
	}
	writeJSON(w, http.StatusOK, map[string]any{"batches": out})
}

func (s *Server) resumeBatch(w http.ResponseWriter, r *http.Request) {
	id, err := batchID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	force := false
	if v := r.URL.Query().Get("force"); v != "" {
		if force, err = strconv.ParseBool(v); err != nil {
			s.writeError(w, r, invalid("force", "must be true or false"))
			return
		}
	}
	out, err := s.runner.Do(r.Context(), worker.Job{BatchID: id, Force: force, Reopen: true})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	switch out.Kind {
	case worker.Draining:
		s.writeError(w, r, worker.ErrDraining)
	case worker.Held:
		s.writeError(w, r, heldError(out.Batch, out.HeldUntil))
	case worker.AtCapacity:
		s.writeError(w, r, atCapacity())
	case worker.Running:
		s.writeError(w, r, &Error{Status: http.StatusConflict, Code: CodeAlreadyRunning, Class: worker.ClassBusy,
			Message: fmt.Sprintf("batch %s is already running in this instance (owner %s, epoch %d); nothing to resume or take over",
				out.Batch.ID, out.Batch.Lease.Owner, out.Batch.Lease.Epoch)})
	case worker.Completed:
		writeJSON(w, http.StatusOK, StatusOf(out.Batch))
	default: // started
		w.Header().Set("Location", "/v1/batches/"+out.Batch.ID)
		writeJSON(w, http.StatusAccepted, StatusOf(out.Batch))
	}
}

func (s *Server) batchPredictions(w http.ResponseWriter, r *http.Request) {
	id, err := batchID(r)
	if err == nil {
		_, err = s.store.Get(r.Context(), id)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.predictions == nil {
		s.writeError(w, r, &Error{Status: http.StatusNotImplemented, Code: CodeNotReadable,
			Message: "the configured prediction sink cannot be read back through the API"})
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	rc := http.NewResponseController(w)
	n := 0
	err = s.predictions.ReadPredictions(r.Context(), id, func(p *systems.Prediction) error {
		if n%500 == 0 { // a fresh write deadline per page: slow is fine, stalled is not
			_ = rc.SetWriteDeadline(time.Now().Add(s.writeTimeout))
		}
		n++
		return enc.Encode(p)
	})
	if err != nil {
		// Headers are gone; the truncated stream is the signal. Log it.
		logging.FromContext(r.Context(), s.log).Error("stream predictions", slog.String("batch_id", id), worker.ErrorAttrs(err))
	}
}

func (s *Server) sweep(w http.ResponseWriter, r *http.Request) {
	ids, err := s.runner.Sweep(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if ids == nil {
		ids = []string{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"resumed": ids})
}

func (s *Server) health(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	if s.runner.Draining() {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "draining"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "state store unavailable"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}
