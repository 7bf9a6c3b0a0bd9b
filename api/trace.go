package api

import (
	"net/http"

	"github.com/go-chi/chi/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// TracerName names the HTTP server's tracer.
const TracerName = "github.com/predworker/predworker/api"

// pubsubTraceparent is the attribute in which Pub/Sub's client libraries
// carry the publisher's trace context (when the publisher traces).
const pubsubTraceparent = "googclient_traceparent"

var propagator = propagation.TraceContext{}

// traced opens a server span for every request but the probes and the
// metrics scrape, continuing the caller's W3C trace context (traceparent:
// Cloud Run passes it on). accessLog names it by its route when it ends.
func (s *Server) traced(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isProbe(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		ctx := propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		ctx, span := s.tracer.Start(ctx, r.Method, trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("http.request.method", r.Method), attribute.String("url.path", r.URL.Path)))
		defer span.End()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// endRequestSpan names the request's span by its route and records its
// status (5xx is an error).
func endRequestSpan(r *http.Request, status int) {
	span := trace.SpanFromContext(r.Context())
	if !span.IsRecording() {
		return
	}
	if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
		span.SetName(r.Method + " " + rc.RoutePattern())
		span.SetAttributes(attribute.String("http.route", rc.RoutePattern()))
	}
	span.SetAttributes(attribute.Int("http.response.status_code", status))
	if status >= 500 {
		span.SetStatus(codes.Error, http.StatusText(status))
	}
}

// tracePush puts the push's message on its span: id, subscription, delivery
// attempt, and a link to the publisher's span when the message carries one.
func tracePush(r *http.Request, env *PushEnvelope) {
	span := trace.SpanFromContext(r.Context())
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(attribute.String("messaging.system", "gcp_pubsub"),
		attribute.String("messaging.message.id", env.ID()),
		attribute.String("messaging.destination.subscription.name", env.Subscription))
	if env.DeliveryAttempt != nil {
		span.SetAttributes(attribute.Int("messaging.gcp_pubsub.message.delivery_attempt", *env.DeliveryAttempt))
	}
	if tp := env.Message.Attributes[pubsubTraceparent]; tp != "" {
		pub := trace.SpanContextFromContext(propagator.Extract(r.Context(), propagation.MapCarrier{"traceparent": tp}))
		if pub.IsValid() {
			span.AddLink(trace.Link{SpanContext: pub, Attributes: []attribute.KeyValue{attribute.String("predworker.link", "publish")}})
		}
	}
}

// isProbe reports whether path is a health probe or the metrics scrape.
func isProbe(path string) bool {
	switch path {
	case "/health", "/ready", "/metrics":
		return true
	}
	return false
}
