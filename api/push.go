package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/predworker/predworker/events"
	"github.com/predworker/predworker/logging"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/worker"
)

// PushEnvelope is the body Pub/Sub push sends. Both the documented camelCase
// and the snake_case spellings of the message fields are accepted; unknown
// envelope fields are ignored (Pub/Sub may add some), unlike in the payload.
type PushEnvelope struct {
	Message struct {
		Data          []byte            `json:"data"` // base64 in JSON
		Attributes    map[string]string `json:"attributes"`
		MessageID     string            `json:"messageId"`
		MessageIDAlt  string            `json:"message_id"`
		PublishTime   string            `json:"publishTime"`
		PublishTimeAl string            `json:"publish_time"`
	} `json:"message"`
	Subscription    string `json:"subscription"`
	DeliveryAttempt *int   `json:"deliveryAttempt"`
}

// ID returns the message id, whichever spelling carried it.
func (e *PushEnvelope) ID() string {
	if e.Message.MessageID != "" {
		return e.Message.MessageID
	}
	return e.Message.MessageIDAlt
}

// DecodePushEnvelope parses a push body. It never panics; every failure is an
// *worker.InputError.
func DecodePushEnvelope(raw []byte) (*PushEnvelope, error) {
	var env PushEnvelope
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&env); err != nil {
		return nil, &worker.InputError{Field: "message", Message: "push body is not a Pub/Sub push envelope: " + err.Error(), Err: err}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, &worker.InputError{Field: "message", Message: "push body has data after the envelope"}
	}
	if env.ID() == "" {
		return nil, &worker.InputError{Field: "message.messageId", Message: "push envelope has no message id"}
	}
	if len(env.Message.Data) == 0 {
		return nil, &worker.InputError{Field: "message.data", Message: "push message has no data"}
	}
	return &env, nil
}

// DecodeBatchRequest parses a batch request strictly (unknown fields, wrong
// types and trailing data are errors).
func DecodeBatchRequest(data []byte) (BatchRequest, error) {
	var req BatchRequest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var ae *Error
		if errors.As(decodeError(err), &ae) {
			return req, &worker.InputError{Field: ae.Field, Message: "message data: " + ae.Message, Err: err}
		}
		return req, &worker.InputError{Field: "message.data", Message: err.Error(), Err: err}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return req, &worker.InputError{Field: "message.data", Message: "message data holds more than one JSON value"}
	}
	return req, nil
}

// pushBatchID picks the batch id: the request's, else the batch_id
// attribute, else one derived from the message id.
func pushBatchID(req BatchRequest, env *PushEnvelope) string {
	switch {
	case req.BatchID != "":
		return req.BatchID
	case env.Message.Attributes["batch_id"] != "":
		return env.Message.Attributes["batch_id"]
	}
	return "msg-" + events.DeadLetterID(env.ID(), nil)
}

// push answers Pub/Sub: 2xx acks, anything else has the message redelivered.
//
//	completed (now or before)                    204
//	bad envelope or payload, unknown date, …     dead letter, 204 (500 if it cannot be stored)
//	live lease held by another instance          429 + Retry-After
//	transient failure, drain, budget spent       503 + Retry-After (resumes from the checkpoint)
//	internal error on attempt ≥ MaxAttempts      dead letter, 204
func (s *Server) push(w http.ResponseWriter, r *http.Request) {
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var me *http.MaxBytesError
		if errors.As(err, &me) {
			s.deadLetter(w, r, pushCtx{raw: raw}, &worker.InputError{Field: "message", Message: "push body over the size limit", Err: err})
			return
		}
		s.pushRetry(w, r, fmt.Errorf("read push body: %w", err))
		return
	}
	pc := pushCtx{raw: raw}
	env, err := DecodePushEnvelope(raw)
	if err != nil {
		s.deadLetter(w, r, pc, err)
		return
	}
	pc.env = env
	pc.attempt, err = s.attempt(r.Context(), env)
	if err != nil {
		s.pushRetry(w, r, err)
		return
	}
	defer func() {
		if v := recover(); v != nil {
			s.pushOutcome(w, r, pc, &worker.PanicError{Value: v, Stack: stack()})
		}
	}()
	req, err := DecodeBatchRequest(env.Message.Data)
	if err != nil {
		s.deadLetter(w, r, pc, err)
		return
	}
	pc.batchID = pushBatchID(req, env)
	if err := worker.ValidateBatchID(pc.batchID); err != nil {
		s.deadLetter(w, r, pc, err)
		return
	}
	correlation := req.CorrelationID
	if correlation == "" {
		correlation = env.Message.Attributes["correlation_id"]
	}
	b, _, err := s.engine.Submit(r.Context(), pc.batchID, state.Request{GameDate: req.GameDate, Players: req.Players,
		Systems: req.Systems, ChunkSize: req.ChunkSize, CorrelationID: correlation})
	if err != nil {
		s.pushOutcome(w, r, pc, err)
		return
	}
	if b.Status == state.StatusCompleted {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	claimed, err := s.engine.Claim(r.Context(), b.ID, state.ClaimOptions{})
	switch {
	case errors.Is(err, state.ErrFinished) && claimed.Status == state.StatusCompleted:
		w.WriteHeader(http.StatusNoContent)
		return
	case errors.Is(err, state.ErrFinished):
		s.deadLetter(w, r, pc, fmt.Errorf("batch %s failed earlier: %s: %w", b.ID, claimed.Error, &worker.BatchFailedError{Err: errors.New(claimed.Error)}))
		return
	case errors.Is(err, state.ErrLeaseHeld):
		wait := max(1, int(time.Until(claimed.Lease.ExpiresAt).Seconds())+1)
		w.Header().Set("Retry-After", strconv.Itoa(wait))
		writeJSON(w, http.StatusTooManyRequests, map[string]*Error{"error": {Code: CodeLeaseHeld,
			Message: "another instance is running this batch; the redelivery will find it completed or orphaned"}})
		return
	case err != nil:
		s.pushOutcome(w, r, pc, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.pushBudget)
	defer cancel()
	_, err = s.runner.RunHere(ctx, claimed)
	if err == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	budgetSpent := errors.Is(ctx.Err(), context.DeadlineExceeded) && r.Context().Err() == nil
	if budgetSpent && s.continuer != nil {
		// Progress is checkpointed and the lease released; hand the rest to
		// a fresh message instead of waiting for a redelivery.
		attrs := map[string]string{"batch_id": claimed.ID, "continuation_of": env.ID()}
		cerr := s.continuer.Continue(r.Context(), env.Message.Data, attrs)
		if cerr == nil {
			logging.FromContext(r.Context(), s.log).Info("push budget spent; continued in a new message",
				slog.String("batch_id", claimed.ID))
			w.WriteHeader(http.StatusNoContent)
			return
		}
		err = errors.Join(err, fmt.Errorf("publish continuation: %w", cerr))
	}
	s.pushOutcome(w, r, pc, err)
}

// Continuer publishes a continuation message for a batch whose push budget
// ran out (PUSH_CONTINUATION_TOPIC). Without one, such a push answers 503 and
// Pub/Sub's redelivery resumes the batch.
type Continuer interface {
	Continue(ctx context.Context, data []byte, attrs map[string]string) error
}

type pushCtx struct {
	raw     []byte
	env     *PushEnvelope
	attempt int
	batchID string
}

// attempt is Pub/Sub's deliveryAttempt when the subscription has a
// dead-letter policy, else our own count per message id.
func (s *Server) attempt(ctx context.Context, env *PushEnvelope) (int, error) {
	if env.DeliveryAttempt != nil && *env.DeliveryAttempt > 0 {
		return *env.DeliveryAttempt, nil
	}
	n, err := s.deadLetters.Attempt(ctx, env.ID())
	if err != nil {
		return 0, fmt.Errorf("count delivery attempt: %w", err)
	}
	return n, nil
}

// pushOutcome answers an error by its class.
func (s *Server) pushOutcome(w http.ResponseWriter, r *http.Request, pc pushCtx, err error) {
	class, transient := worker.Classify(err)
	switch {
	case !transient:
		s.deadLetter(w, r, pc, err)
	case class == worker.ClassInternal && pc.attempt >= s.maxAttempts:
		s.deadLetter(w, r, pc, fmt.Errorf("gave up after %d attempts: %w", pc.attempt, err))
	default:
		s.pushRetry(w, r, err)
	}
}

// pushRetry nacks: Pub/Sub redelivers with backoff.
func (s *Server) pushRetry(w http.ResponseWriter, r *http.Request, err error) {
	class, _ := worker.Classify(err)
	log := logging.FromContext(r.Context(), s.log)
	if class == worker.ClassInternal {
		log.Error("push failed; asking for redelivery", logging.Err(err), slog.String("error_class", string(class)))
	} else {
		log.Warn("push not done; asking for redelivery", slog.String("error", err.Error()), slog.String("error_class", string(class)))
	}
	w.Header().Set("Retry-After", "10")
	writeJSON(w, http.StatusServiceUnavailable, map[string]*Error{"error": {Code: CodeUnavailable,
		Message: "not done yet (" + string(class) + "); redeliver"}})
}

// deadLetter records a permanent failure with its raw message and acks it.
func (s *Server) deadLetter(w http.ResponseWriter, r *http.Request, pc pushCtx, cause error) {
	class, _ := worker.Classify(cause)
	var msgID, sub string
	if pc.env != nil {
		msgID, sub = pc.env.ID(), pc.env.Subscription
	}
	d := events.DeadLetter{ID: events.DeadLetterID(msgID, pc.raw), Class: string(class), Error: cause.Error(),
		MessageID: msgID, Subscription: sub, Attempt: pc.attempt, BatchID: pc.batchID, Raw: pc.raw}
	log := logging.FromContext(r.Context(), s.log).With(slog.String("message_id", msgID),
		slog.String("batch_id", pc.batchID), slog.String("error_class", string(class)), slog.Int("attempt", pc.attempt))
	created, err := s.deadLetters.Put(r.Context(), d)
	if err != nil {
		log.Error("dead letter could not be stored; asking for redelivery", logging.Err(err))
		writeJSON(w, http.StatusInternalServerError, map[string]*Error{"error": {Code: CodeInternal,
			Message: "the dead letter could not be stored"}})
		return
	}
	if created {
		log.Warn("message dead-lettered", logging.Event(logging.EventDeadLettered), slog.String("dead_letter_id", d.ID),
			slog.String("error", cause.Error()))
	}
	w.WriteHeader(http.StatusNoContent)
}

// ---------------------------------------------------------------------------
// Dead-letter endpoints

func (s *Server) listDeadLetters(w http.ResponseWriter, r *http.Request) {
	limit := 50
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 500 {
			s.writeError(w, r, invalid("limit", "must be a number from 1 to 500"))
			return
		}
		limit = n
	}
	list, err := s.deadLetters.List(r.Context(), limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"dead_letters": list})
}

// retryDeadLetter re-drives a dead letter: its batch request is submitted and
// started again. A message that is still invalid is refused with the reason.
func (s *Server) retryDeadLetter(w http.ResponseWriter, r *http.Request) {
	d, err := s.deadLetters.Get(r.Context(), chi.URLParam(r, "id"))
	if errors.Is(err, events.ErrNotFound) {
		s.writeError(w, r, &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: "no dead letter with that id"})
		return
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	env, err := DecodePushEnvelope(d.Raw)
	var req BatchRequest
	if err == nil {
		req, err = DecodeBatchRequest(env.Message.Data)
	}
	if err != nil {
		s.writeError(w, r, &Error{Status: http.StatusUnprocessableEntity, Code: CodeInvalidArgument,
			Message: "the dead-lettered message is still invalid: " + err.Error()})
		return
	}
	b, _, err := s.engine.Submit(r.Context(), pushBatchID(req, env), state.Request{GameDate: req.GameDate,
		Players: req.Players, Systems: req.Systems, ChunkSize: req.ChunkSize, CorrelationID: req.CorrelationID})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.deadLetters.MarkRetried(r.Context(), d.ID); err != nil {
		s.writeError(w, r, err)
		return
	}
	if !b.Status.Finished() || b.Status == state.StatusFailed {
		if b, err = s.start(r.Context(), b, state.ClaimOptions{Reopen: true}); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	w.Header().Set("Location", "/v1/batches/"+b.ID)
	writeJSON(w, http.StatusAccepted, StatusOf(b))
}
