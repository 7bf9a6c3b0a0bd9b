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
	"github.com/predworker/predworker/worker"
)

// PushEnvelope is the body Pub/Sub push sends. Both the documented camelCase
// and the snake_case spellings of the message fields are accepted; unknown
// envelope fields are ignored (Pub/Sub may add some), unlike in the payload.
type PushEnvelope struct {
	Message struct {
		Data         []byte            `json:"data"` // base64 in JSON
		Attributes   map[string]string `json:"attributes"`
		MessageID    string            `json:"messageId"`
		MessageIDAlt string            `json:"message_id"`
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
// *Error of class validation.
func DecodePushEnvelope(raw []byte) (*PushEnvelope, error) {
	var env PushEnvelope
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&env); err != nil {
		return nil, invalid("message", "push body is not a Pub/Sub push envelope: "+err.Error())
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, invalid("message", "push body has data after the envelope")
	}
	if err := checkKeys(raw, nil); err != nil {
		var ae *Error
		if errors.As(err, &ae) {
			return nil, invalid(ae.Field, "push envelope: "+ae.Message)
		}
		return nil, invalid("message", "push body is not a Pub/Sub push envelope: "+err.Error())
	}
	if env.ID() == "" {
		return nil, invalid("message.messageId", "push envelope has no message id")
	}
	if len(env.Message.Data) == 0 {
		return nil, invalid("message.data", "push message has no data")
	}
	return &env, nil
}

// DecodeBatchRequest parses a batch request strictly (unknown fields, wrong
// types, trailing data, duplicate and case-variant keys are errors).
func DecodeBatchRequest(data []byte) (BatchRequest, error) {
	var req BatchRequest
	if ae := decodeStrict(data, &req, batchRequestFields); ae != nil {
		return req, invalid(ae.Field, "message data: "+ae.Message)
	}
	return req, nil
}

// pushBatchID picks the batch id: the request's, else the batch_id
// attribute, else "" (the engine derives it from the request, so the same
// trigger published twice runs one batch; a deliberate second run names its
// own batch_id).
func pushBatchID(req BatchRequest, env *PushEnvelope) string {
	if req.BatchID != "" {
		return req.BatchID
	}
	return env.Message.Attributes["batch_id"]
}

// push answers Pub/Sub: 2xx acks, anything else has the message redelivered.
// It decodes the message, runs its batch here through the one lifecycle
// (worker.Runner.Do) within the push budget, and translates the outcome:
//
//	completed (now or before)                    204
//	failed (now or before)                       dead letter, 204
//	bad envelope or payload, unknown date, …     dead letter, 204 (500 if it cannot be stored)
//	held by another owner, or running here       429 + Retry-After
//	budget spent                                 continuation + 204, or 503 + Retry-After
//	transient failure, drain                     503 + Retry-After (resumes from the checkpoint)
//	internal error on attempt ≥ MaxAttempts      dead letter, 204
func (s *Server) push(w http.ResponseWriter, r *http.Request) {
	// The batch runs inside this request: the answer may come a budget later.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.pushBudget + s.writeTimeout))
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var me *http.MaxBytesError
		if errors.As(err, &me) {
			s.deadLetter(w, r, pushCtx{raw: raw}, toAPIError(err))
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
	tracePush(r, env)
	pc.attempt, err = s.attempt(r.Context(), env)
	if err != nil {
		s.pushRetry(w, r, err)
		return
	}
	defer func() {
		if v := recover(); v != nil {
			s.pushFailed(w, r, pc, newPanicked(v))
		}
	}()
	req, err := DecodeBatchRequest(env.Message.Data)
	if err != nil {
		s.deadLetter(w, r, pc, err)
		return
	}
	pc.batchID = pushBatchID(req, env)
	breq := req.stateRequest()
	if breq.CorrelationID == "" {
		breq.CorrelationID = env.Message.Attributes["correlation_id"]
	}
	out, err := s.runner.Do(r.Context(), worker.Job{BatchID: pc.batchID, Request: breq, Here: true, Budget: s.pushBudget})
	if out.Batch.ID != "" {
		pc.batchID = out.Batch.ID
	}
	if err != nil {
		s.pushFailed(w, r, pc, err)
		return
	}
	s.pushAnswer(w, r, pc, out)
}

// pushAnswer translates the outcome of a push's run into Pub/Sub's terms.
func (s *Server) pushAnswer(w http.ResponseWriter, r *http.Request, pc pushCtx, out worker.Outcome) {
	switch out.Kind {
	case worker.Completed:
		w.WriteHeader(http.StatusNoContent)
	case worker.Failed:
		s.deadLetterAs(w, r, pc, worker.ClassFailed, fmt.Errorf("batch %s failed: %w", out.Batch.ID, out.Err))
	case worker.Held, worker.Running:
		s.pushHeld(w, out)
	case worker.AtCapacity:
		ae := atCapacity()
		w.Header().Set("Retry-After", strconv.Itoa(ae.RetryAfter))
		writeJSON(w, ae.Status, map[string]*Error{"error": ae})
	case worker.Draining:
		s.pushRetry(w, r, worker.ErrDraining)
	case worker.Interrupted:
		if out.BudgetSpent && s.continuer != nil {
			s.pushContinue(w, r, pc, out)
			return
		}
		s.pushRetry(w, r, out.Err)
	default:
		s.pushRetry(w, r, fmt.Errorf("push of batch %s ended %s", out.Batch.ID, out.Kind))
	}
}

// pushContinue hands the rest of a batch whose push budget ran out to a
// fresh message (progress is checkpointed and the lease released), instead of
// waiting for a redelivery.
func (s *Server) pushContinue(w http.ResponseWriter, r *http.Request, pc pushCtx, out worker.Outcome) {
	attrs := map[string]string{"batch_id": out.Batch.ID, "continuation_of": pc.env.ID()}
	if err := s.continuer.Continue(r.Context(), pc.env.Message.Data, attrs); err != nil {
		s.pushRetry(w, r, errors.Join(out.Err, fmt.Errorf("publish continuation: %w", err)))
		return
	}
	logging.FromContext(r.Context(), s.log).Info("push budget spent; continued in a new message",
		slog.String("batch_id", out.Batch.ID))
	w.WriteHeader(http.StatusNoContent)
}

// pushHeld nacks a message whose batch another owner (or another request of
// this instance) is running: the redelivery will find it completed or
// orphaned.
func (s *Server) pushHeld(w http.ResponseWriter, out worker.Outcome) {
	wait := answers[worker.ClassBusy].retryAfter
	if !out.HeldUntil.IsZero() {
		wait = max(1, int(time.Until(out.HeldUntil).Seconds())+1)
	}
	w.Header().Set("Retry-After", strconv.Itoa(wait))
	writeJSON(w, http.StatusTooManyRequests, map[string]*Error{"error": {Code: answers[worker.ClassBusy].code,
		Message: "another owner is running this batch; the redelivery will find it completed or orphaned"}})
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

// pushFailed answers an error by its class: permanent errors are
// dead-lettered; internal errors too once the delivery attempts run out;
// everything else is redelivered.
func (s *Server) pushFailed(w http.ResponseWriter, r *http.Request, pc pushCtx, err error) {
	class := worker.Classify(err)
	switch {
	case class.Permanent():
		s.deadLetter(w, r, pc, err)
	case class.Bounded() && pc.attempt >= s.maxAttempts:
		s.deadLetter(w, r, pc, fmt.Errorf("gave up after %d attempts: %w", pc.attempt, err))
	default:
		s.pushRetry(w, r, err)
	}
}

// pushRetry nacks: Pub/Sub redelivers with backoff. The body and the
// Retry-After come from the answers table.
func (s *Server) pushRetry(w http.ResponseWriter, r *http.Request, err error) {
	class := worker.Classify(err)
	log := logging.FromContext(r.Context(), s.log)
	if class == worker.ClassInternal {
		log.Error("push failed; asking for redelivery", worker.ErrorAttrs(err))
	} else {
		log.Warn("push not done; asking for redelivery", worker.WarnAttrs(err))
	}
	a := answers[class]
	wait := a.retryAfter
	if wait == 0 {
		wait = 10
	}
	w.Header().Set("Retry-After", strconv.Itoa(wait))
	writeJSON(w, http.StatusServiceUnavailable, map[string]*Error{"error": {Code: a.code,
		Message: "not done yet (" + string(class) + "); redeliver"}})
}

// deadLetter records a permanent failure with its raw message and its class,
// and acks it.
func (s *Server) deadLetter(w http.ResponseWriter, r *http.Request, pc pushCtx, cause error) {
	s.deadLetterAs(w, r, pc, worker.Classify(cause), cause)
}

// deadLetterAs is deadLetter for a cause of a known class.
func (s *Server) deadLetterAs(w http.ResponseWriter, r *http.Request, pc pushCtx, class worker.Class, cause error) {
	var msgID, sub string
	if pc.env != nil {
		msgID, sub = pc.env.ID(), pc.env.Subscription
	}
	d := events.DeadLetter{ID: events.DeadLetterID(msgID, pc.raw), Class: string(class),
		Error: events.TruncateUTF8(cause.Error(), events.MaxError), MessageID: msgID, Subscription: sub,
		Attempt: pc.attempt, BatchID: pc.batchID}
	d.SetRaw(pc.raw)
	log := logging.FromContext(r.Context(), s.log).With(slog.String("message_id", msgID),
		slog.String("batch_id", pc.batchID), slog.String("error_class", string(class)), slog.Int("attempt", pc.attempt))
	created, err := s.deadLetters.Put(r.Context(), d)
	if err != nil {
		log.Error("dead letter could not be stored; asking for redelivery", worker.ErrorAttrs(err))
		writeJSON(w, http.StatusInternalServerError, map[string]*Error{"error": {Code: answers[worker.ClassInternal].code,
			Message: "the dead letter could not be stored"}})
		return
	}
	if created {
		log.Warn("message dead-lettered", logging.Event(logging.EventDeadLettered), slog.String("dead_letter_id", d.ID),
			slog.String("error", d.Error), slog.Int("raw_size", d.RawSize), slog.String("raw_sha256", d.RawSHA256))
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
// started again (a failed batch is reopened). A message that is still
// invalid is refused with the reason.
func (s *Server) retryDeadLetter(w http.ResponseWriter, r *http.Request) {
	d, err := s.deadLetters.Get(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if d.Truncated() {
		s.writeError(w, r, &Error{Status: http.StatusUnprocessableEntity, Code: CodeInvalidArgument,
			Message: fmt.Sprintf("the dead-lettered message was %d bytes, kept only in part (its first %d; sha256 %s): "+
				"publish it again from its source instead", d.RawSize, len(d.Raw), d.RawSHA256)})
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
	out, err := s.runner.Do(r.Context(), worker.Job{BatchID: pushBatchID(req, env), Request: req.stateRequest(), Reopen: true})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if out.Kind == worker.Draining {
		s.writeError(w, r, worker.ErrDraining)
		return
	}
	if err := s.deadLetters.MarkRetried(r.Context(), d.ID); err != nil {
		s.writeError(w, r, fmt.Errorf("mark dead letter %s retried: %w", d.ID, err))
		return
	}
	w.Header().Set("Location", "/v1/batches/"+out.Batch.ID)
	writeJSON(w, http.StatusAccepted, StatusOf(out.Batch))
}
