package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"

	"github.com/predworker/predworker/logging"
	"github.com/predworker/predworker/worker"
)

// Error codes of the API's error body. Every code the API sends is one of
// these.
const (
	// Answers to the engine's error classes (the answers table).
	CodeInvalidArgument  = "invalid_argument"
	CodeNotFound         = "not_found"
	CodeAlreadyExists    = "already_exists"
	CodeFinished         = "batch_finished"
	CodeLeaseHeld        = "lease_held"
	CodeUnavailable      = "unavailable"
	CodeDataIncomplete   = "data_incomplete"
	CodeDependencyFailed = "dependency_failed"
	CodeInternal         = "internal"
	// Answers of the HTTP layer itself.
	CodeUnauthenticated  = "unauthenticated"
	CodePermissionDenied = "permission_denied"
	CodePayloadTooLarge  = "payload_too_large"
	CodeUnsupportedMedia = "unsupported_media_type"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeNotReadable      = "not_readable"
	// Answers to the lifecycle's outcomes.
	CodeAtCapacity     = "at_capacity"
	CodeAlreadyRunning = "already_running"
)

// answer is how the API answers one error class.
type answer struct {
	status     int
	code       string
	retryAfter int // seconds; 0 sends no Retry-After
	// message is what the caller reads; empty shows the error's own text
	// (for classes whose errors are written for callers).
	message string
}

// answers is the one table from the engine's error classes to HTTP answers
// (worker.Classify decides the class). Every dependency outage answers 503
// with Retry-After; only internal and dependency failures are logged loudly.
var answers = map[worker.Class]answer{
	worker.ClassValidation:  {http.StatusBadRequest, CodeInvalidArgument, 0, ""},
	worker.ClassNotFound:    {http.StatusNotFound, CodeNotFound, 0, ""},
	worker.ClassConflict:    {http.StatusConflict, CodeAlreadyExists, 0, "a batch with this id exists with a different request"},
	worker.ClassFinished:    {http.StatusConflict, CodeFinished, 0, ""},
	worker.ClassFailed:      {http.StatusConflict, CodeFinished, 0, ""},
	worker.ClassBusy:        {http.StatusConflict, CodeLeaseHeld, 10, "another worker holds a live lease on this batch; retry later or resume with ?force=true"},
	worker.ClassInterrupted: {http.StatusServiceUnavailable, CodeUnavailable, 1, "this instance is shutting down, or the work was interrupted; retry"},
	worker.ClassUnavailable: {http.StatusServiceUnavailable, CodeUnavailable, 5, "a dependency (state store, feature source or sink) is unavailable; retry"},
	worker.ClassDataIncomplete: {http.StatusServiceUnavailable, CodeDataIncomplete, 60,
		"the feature source has no features for that date yet (upstream late, or no games); retry later"},
	worker.ClassDeadline:   {http.StatusServiceUnavailable, CodeUnavailable, 5, "a dependency did not answer in time; retry"},
	worker.ClassDependency: {http.StatusInternalServerError, CodeDependencyFailed, 0, "a dependency failed in a way retrying cannot fix; see the service's logs"},
	worker.ClassInternal:   {http.StatusInternalServerError, CodeInternal, 0, "internal error"},
}

// Error is an API error: {"error": {"code", "message", "field"}}. Errors of
// the HTTP layer (authentication, media type, body size, routing) are made
// as Errors directly; everything else goes through the answers table.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
	// RetryAfter, when set, is sent as the Retry-After header (seconds).
	RetryAfter int `json:"-"`
	// Class is the error's class for the push endpoint and the logs; empty
	// means validation for a 4xx and internal otherwise.
	Class worker.Class `json:"-"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// ErrorClass implements worker.Classifier.
func (e *Error) ErrorClass() worker.Class {
	switch {
	case e.Class != "":
		return e.Class
	case e.Status < 500:
		return worker.ClassValidation
	}
	return worker.ClassInternal
}

func invalid(field, msg string) *Error {
	return &Error{Status: http.StatusBadRequest, Code: CodeInvalidArgument, Message: msg, Field: field}
}

// toAPIError turns any error into the answer the caller gets.
func toAPIError(err error) *Error {
	var (
		ae *Error
		me *http.MaxBytesError
		ie *worker.InputError
	)
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &me):
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodePayloadTooLarge,
			Message: "request body is larger than " + strconv.FormatInt(me.Limit, 10) + " bytes"}
	}
	class := worker.Classify(err)
	a := answers[class]
	out := &Error{Status: a.status, Code: a.code, Message: a.message, RetryAfter: a.retryAfter, Class: class}
	switch {
	case errors.As(err, &ie):
		out.Field, out.Message = ie.Field, ie.Message
	case out.Message == "":
		out.Message = err.Error()
	}
	if class == worker.ClassConflict {
		out.Field = "batch_id"
	}
	return out
}

// writeError answers with err's status and body. Only server-side failures
// are logged loudly (with the error's class and a stack); the caller sees a
// clean message.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	ae := toAPIError(err)
	log := logging.FromContext(r.Context(), s.log)
	switch {
	case ae.Status >= 500 && ae.Status != http.StatusServiceUnavailable && ae.Status != http.StatusNotImplemented:
		log.Error("request failed", worker.ErrorAttrs(err), slog.String("code", ae.Code))
	case ae.Status >= 500:
		log.Warn("request not served", worker.WarnAttrs(err), slog.String("code", ae.Code))
	default:
		log.Debug("request refused", worker.WarnAttrs(err), slog.String("code", ae.Code))
	}
	if ae.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(ae.RetryAfter))
	}
	writeJSON(w, ae.Status, map[string]*Error{"error": ae})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing left to tell it
}

// panicked is a recovered handler panic with the stack where it happened.
type panicked struct {
	value any
	stack string
}

func newPanicked(v any) *panicked { return &panicked{value: v, stack: string(debug.Stack())} }

func (p *panicked) Error() string { return fmt.Sprintf("panic: %v", p.value) }

// StackTrace implements logging.StackTracer.
func (p *panicked) StackTrace() string { return p.stack }

// ErrorClass implements worker.Classifier.
func (p *panicked) ErrorClass() worker.Class { return worker.ClassInternal }
