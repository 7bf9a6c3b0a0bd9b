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

	"github.com/predworker/predworker/events"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/worker"
)

// MaxBodyBytes is the largest request body accepted.
const MaxBodyBytes = 1 << 20

// Server holds the handlers' collaborators.
type Server struct {
	engine      *worker.Engine
	runner      *worker.Runner
	store       state.Store
	predictions systems.PredictionReader // nil: the predictions endpoint answers 501
	metrics     http.Handler
	log         *slog.Logger
	project     string // for Cloud Logging trace ids
	deadLetters events.DeadLetters
	pushBudget  time.Duration
	maxAttempts int
	auth        Auth
	continuer   Continuer
}

// Options configures New.
type Options struct {
	Engine      *worker.Engine
	Runner      *worker.Runner
	Store       state.Store
	Predictions systems.PredictionReader
	Metrics     http.Handler
	Logger      *slog.Logger
	Project     string
	// DeadLetters enables POST /pubsub/push and the dead-letter endpoints.
	DeadLetters events.DeadLetters
	// PushBudget is the longest a push request runs its batch (PUSH_BUDGET).
	PushBudget time.Duration
	// MaxAttempts is how many deliveries of one message an internal error
	// may take before the message is dead-lettered (default 5).
	MaxAttempts int
	// Auth guards the push endpoint and the operator API. Health,
	// readiness and metrics stay open.
	Auth Auth
	// Continuer, when set, continues a batch whose push budget ran out in
	// a new message (204) instead of asking for a redelivery (503).
	Continuer Continuer
}

// New returns the server.
func New(o Options) *Server {
	if o.PushBudget <= 0 {
		o.PushBudget = 540 * time.Second
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 5
	}
	return &Server{engine: o.Engine, runner: o.Runner, store: o.Store, predictions: o.Predictions,
		metrics: o.Metrics, log: o.Logger, project: o.Project, deadLetters: o.DeadLetters,
		pushBudget: o.PushBudget, maxAttempts: o.MaxAttempts, auth: o.Auth, continuer: o.Continuer}
}

// Handler returns the router.
func (s *Server) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(s.requestContext, s.recoverer, s.accessLog)
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
		if s.deadLetters != nil {
			r.Get("/dead-letters", s.listDeadLetters)
			r.Post("/dead-letters/{id}/retry", s.retryDeadLetter)
		}
	})
	if s.deadLetters != nil {
		r.With(s.requirePush).Post("/pubsub/push", s.push)
	}
	return r
}

// ---------------------------------------------------------------------------
// Views

// Status is the batch status body.
type Status struct {
	BatchID       string       `json:"batch_id"`
	GameDate      string       `json:"game_date"`
	State         state.Status `json:"state"`
	Systems       []string     `json:"systems"`
	ChunkSize     int          `json:"chunk_size"`
	CorrelationID string       `json:"correlation_id,omitempty"`
	TotalItems    int          `json:"total_items"`
	DoneItems     int          `json:"done_items"`
	TotalChunks   int          `json:"total_chunks"`
	DoneChunks    int          `json:"done_chunks"`
	Attempt       int          `json:"attempt"`
	Lease         LeaseView    `json:"lease"`
	HeartbeatAt   *time.Time   `json:"heartbeat_at"`
	Predictions   int          `json:"predictions"`
	Fallbacks     int          `json:"fallbacks"`
	FailedItems   int          `json:"failed_items"`
	Error         string       `json:"error,omitempty"`
	CreatedAt     *time.Time   `json:"created_at"`
	UpdatedAt     *time.Time   `json:"updated_at"`
	CompletedAt   *time.Time   `json:"completed_at"`
}

// LeaseView is the lease part of Status.
type LeaseView struct {
	Owner     string     `json:"owner"`
	Epoch     int64      `json:"epoch"`
	ExpiresAt *time.Time `json:"expires_at"`
}

func ts(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// StatusOf renders a batch.
func StatusOf(b state.Batch) Status {
	return Status{
		BatchID: b.ID, GameDate: b.Request.GameDate, State: b.Status, Systems: b.Request.Systems,
		ChunkSize: b.Request.ChunkSize, CorrelationID: b.Request.CorrelationID,
		TotalItems: len(b.Items), DoneItems: b.DoneItems, TotalChunks: b.TotalChunks(), DoneChunks: b.DoneChunks,
		Attempt: b.Attempt, Lease: LeaseView{Owner: b.Lease.Owner, Epoch: b.Lease.Epoch, ExpiresAt: ts(b.Lease.ExpiresAt)},
		HeartbeatAt: ts(b.HeartbeatAt), Predictions: b.Predictions, Fallbacks: b.Fallbacks, FailedItems: b.FailedItems,
		Error: b.Error, CreatedAt: ts(b.CreatedAt), UpdatedAt: ts(b.UpdatedAt), CompletedAt: ts(b.CompletedAt),
	}
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
// other media types, unknown fields, trailing data and bodies over the limit.
func decodeJSON(w http.ResponseWriter, r *http.Request, dst any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return &Error{Status: http.StatusUnsupportedMediaType, Code: CodeUnsupportedMedia,
				Message: "Content-Type must be application/json"}
		}
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var me *http.MaxBytesError
		if errors.As(err, &me) {
			return err
		}
		return invalid("", "request body must hold a single JSON object")
	}
	return nil
}

func decodeError(err error) error {
	var (
		se *json.SyntaxError
		te *json.UnmarshalTypeError
		me *http.MaxBytesError
	)
	switch {
	case errors.As(err, &me):
		return err
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
	if err := decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.BatchID != "" {
		if err := worker.ValidateBatchID(req.BatchID); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	b, created, err := s.engine.Submit(r.Context(), req.BatchID, state.Request{
		GameDate: req.GameDate, Players: req.Players, Systems: req.Systems,
		ChunkSize: req.ChunkSize, CorrelationID: req.CorrelationID,
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/batches/"+b.ID)
	if b.Status.Finished() {
		writeJSON(w, http.StatusOK, StatusOf(b))
		return
	}
	if created || !b.Lease.Live(time.Now()) {
		if b, err = s.start(r.Context(), b, state.ClaimOptions{}); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	writeJSON(w, http.StatusAccepted, StatusOf(b))
}

// start claims b and runs it in the background. Another instance claiming it
// first is fine: it is running, which is what was asked.
func (s *Server) start(ctx context.Context, b state.Batch, opts state.ClaimOptions) (state.Batch, error) {
	started, err := s.runner.Resume(ctx, b.ID, opts)
	switch {
	case err == nil:
		return started, nil
	case errors.Is(err, state.ErrLeaseHeld):
		return b, nil
	}
	return b, err
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
	b, err := s.runner.Resume(r.Context(), id, state.ClaimOptions{Force: force, Reopen: true})
	switch {
	case errors.Is(err, state.ErrFinished):
		writeJSON(w, http.StatusOK, StatusOf(b))
	case err != nil:
		s.writeError(w, r, err)
	default:
		w.Header().Set("Location", "/v1/batches/"+b.ID)
		writeJSON(w, http.StatusAccepted, StatusOf(b))
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
		writeJSON(w, http.StatusNotImplemented, map[string]*Error{"error": {Code: "not_readable",
			Message: "the configured prediction sink cannot be read back through the API"}})
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	err = s.predictions.ReadPredictions(r.Context(), id, func(p *systems.Prediction) error {
		return enc.Encode(p)
	})
	if err != nil {
		// Headers are gone; the truncated stream is the signal. Log it.
		s.log.ErrorContext(r.Context(), "stream predictions", slog.String("batch_id", id), slog.String("error", err.Error()))
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
