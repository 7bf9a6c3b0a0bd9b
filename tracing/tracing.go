// Package tracing sets up the process's OpenTelemetry tracer provider:
// off (the default: nothing is recorded), stdout (one JSON span per line,
// for a laptop), otlp (OTLP/gRPC to a collector, configured by the standard
// OTEL_EXPORTER_OTLP_* variables) or cloudtrace (OTLP/gRPC straight to Cloud
// Trace's Telemetry API, telemetry.googleapis.com, with the application
// default credentials).
//
// A trace follows a request: the span of an incoming request continues the
// caller's W3C trace context (Cloud Run passes it in traceparent), and every
// span the engine opens for the batch, its chunks and each system call is a
// descendant of it.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/oauth"
)

// Modes are the values of TRACES.
var Modes = []string{"off", "stdout", "otlp", "cloudtrace"}

// TelemetryEndpoint is Cloud Trace's OTLP endpoint (the Telemetry API).
const TelemetryEndpoint = "telemetry.googleapis.com:443"

// traceScope is the OAuth scope that lets a credential append spans.
const traceScope = "https://www.googleapis.com/auth/trace.append"

// Options configures Setup.
type Options struct {
	Mode        string  // one of Modes; "" is off
	SampleRatio float64 // share of new traces recorded, 0-1 (a caller's sampled trace is always recorded)
	Project     string  // gcp.project_id, required by cloudtrace
	Service     string  // service.name
	Version     string  // service.version
	Stdout      io.Writer
	Logger      *slog.Logger // export failures are logged here at WARNING
}

// Provider is a configured tracer provider; Shutdown flushes what is
// buffered (call it on the way out).
type Provider struct {
	trace.TracerProvider
	shutdown func(context.Context) error
}

// Shutdown flushes and stops the exporter.
func (p *Provider) Shutdown(ctx context.Context) error {
	if p.shutdown == nil {
		return nil
	}
	return p.shutdown(ctx)
}

// Propagator reads and writes W3C trace context (traceparent, tracestate).
func Propagator() propagation.TextMapPropagator { return propagation.TraceContext{} }

// Setup builds the provider for o.Mode.
func Setup(ctx context.Context, o Options) (*Provider, error) {
	var (
		exp sdktrace.SpanExporter
		err error
	)
	switch o.Mode {
	case "", "off":
		return &Provider{TracerProvider: noop.NewTracerProvider()}, nil
	case "stdout":
		exp, err = stdouttrace.New(stdouttrace.WithWriter(o.Stdout))
	case "otlp":
		exp, err = otlptracegrpc.New(ctx) // endpoint, TLS and headers from OTEL_EXPORTER_OTLP_*
	case "cloudtrace":
		if o.Project == "" {
			return nil, errors.New("TRACES=cloudtrace needs GOOGLE_CLOUD_PROJECT")
		}
		var creds credentials.PerRPCCredentials
		creds, err = oauth.NewApplicationDefault(ctx, traceScope)
		if err != nil {
			return nil, fmt.Errorf("TRACES=cloudtrace: application default credentials: %w", err)
		}
		exp, err = otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(TelemetryEndpoint),
			otlptracegrpc.WithDialOption(grpc.WithPerRPCCredentials(creds)))
	default:
		return nil, fmt.Errorf("unknown TRACES %q (want off, stdout, otlp or cloudtrace)", o.Mode)
	}
	if err != nil {
		return nil, fmt.Errorf("trace exporter (%s): %w", o.Mode, err)
	}
	attrs := []attribute.KeyValue{attribute.String("service.name", o.Service), attribute.String("service.version", o.Version)}
	if o.Project != "" {
		attrs = append(attrs, attribute.String("gcp.project_id", o.Project))
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(attrs...))
	if err != nil {
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	installErrorHandler(o.Logger)
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res),
		sdktrace.WithSampler(Sampler(o.SampleRatio)))
	return &Provider{TracerProvider: tp, shutdown: tp.Shutdown}, nil
}

// Sampler records a caller's sampled trace, and ratio of the rest: Cloud
// Run samples few requests, and a batch worth running is worth tracing even
// when its push was not sampled.
func Sampler(ratio float64) sdktrace.Sampler {
	own := sdktrace.TraceIDRatioBased(ratio)
	return sdktrace.ParentBased(own, sdktrace.WithRemoteParentNotSampled(own))
}

var errorHandlerOnce sync.Once

// installErrorHandler routes the SDK's errors (an export that failed) to
// log, once per process: the SDK's handler is global.
func installErrorHandler(log *slog.Logger) {
	if log == nil {
		return
	}
	errorHandlerOnce.Do(func() {
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			log.Warn("trace export failed", slog.String("error", err.Error()))
		}))
	})
}
