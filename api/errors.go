package api

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/predworker/predworker/logging"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/worker"
)

// Error codes of the API's error body.
const (
	CodeInvalidArgument  = "invalid_argument"
	CodeNotFound         = "not_found"
	CodeAlreadyExists    = "already_exists"
	CodeLeaseHeld        = "lease_held"
	CodePayloadTooLarge  = "payload_too_large"
	CodeUnsupportedMedia = "unsupported_media_type"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeUnavailable      = "unavailable"
	CodeInternal         = "internal"
)

// Error is an API error: {"error": {"code", "message", "field"}}.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
	// RetryAfter, when set, is sent as the Retry-After header (seconds).
	RetryAfter int `json:"-"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func invalid(field, msg string) *Error {
	return &Error{Status: http.StatusBadRequest, Code: CodeInvalidArgument, Message: msg, Field: field}
}

// toAPIError is the one table from application errors to HTTP answers.
func toAPIError(err error) *Error {
	var (
		ae *Error
		ie *worker.InputError
		me *http.MaxBytesError
	)
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &me):
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodePayloadTooLarge,
			Message: "request body is larger than " + strconv.FormatInt(me.Limit, 10) + " bytes"}
	case errors.As(err, &ie):
		return invalid(ie.Field, ie.Message)
	case errors.Is(err, state.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: "no batch with that id"}
	case errors.Is(err, state.ErrConflict):
		return &Error{Status: http.StatusConflict, Code: CodeAlreadyExists, Field: "batch_id",
			Message: "a batch with this id exists with a different request"}
	case errors.Is(err, state.ErrLeaseHeld):
		return &Error{Status: http.StatusConflict, Code: CodeLeaseHeld, RetryAfter: 10,
			Message: "another worker holds a live lease on this batch; retry later or resume with ?force=true"}
	case errors.Is(err, worker.ErrDraining):
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, RetryAfter: 1,
			Message: "this instance is shutting down; retry"}
	case errors.Is(err, state.ErrUnavailable):
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, RetryAfter: 5,
			Message: "the state store is unavailable; retry"}
	}
	return &Error{Status: http.StatusInternalServerError, Code: CodeInternal, Message: "internal error"}
}

// writeError answers with err's status and body. Only internal errors are
// logged loudly; the caller sees a clean message.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	ae := toAPIError(err)
	log := logging.FromContext(r.Context(), s.log)
	if ae.Status >= 500 {
		log.Error("request failed", logging.Err(err), slog.String("code", ae.Code))
	} else {
		log.Debug("request refused", slog.String("error", err.Error()), slog.String("code", ae.Code))
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
