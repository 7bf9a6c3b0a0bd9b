package tracing_test

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/predworker/predworker/tracing"
)

// Off records nothing; stdout writes one JSON object per span, with the
// service and project on its resource, once flushed.
func TestModes(t *testing.T) {
	off, err := tracing.Setup(t.Context(), tracing.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, span := off.Tracer("t").Start(t.Context(), "x"); span.IsRecording() {
		t.Fatal("TRACES=off records spans")
	}

	var out bytes.Buffer
	p, err := tracing.Setup(t.Context(), tracing.Options{Mode: "stdout", SampleRatio: 1, Stdout: &out,
		Project: "my-proj", Service: "predworker", Version: "b42"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, parent := p.Tracer("t").Start(t.Context(), "batch")
	_, child := p.Tracer("t").Start(ctx, "chunk")
	child.End()
	parent.End()
	if err := p.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("stdout wrote %d lines, want one per span:\n%s", len(lines), out.String())
	}
	var span struct {
		Name     string
		Resource []struct {
			Key   string
			Value struct{ Value any }
		}
	}
	if err := json.Unmarshal([]byte(lines[0]), &span); err != nil || span.Name != "chunk" {
		t.Fatalf("first span %q (%v)", lines[0], err)
	}
	res := map[string]any{}
	for _, kv := range span.Resource {
		res[kv.Key] = kv.Value.Value
	}
	if res["service.name"] != "predworker" || res["service.version"] != "b42" || res["gcp.project_id"] != "my-proj" {
		t.Fatalf("resource %v", res)
	}

	if _, err := tracing.Setup(t.Context(), tracing.Options{Mode: "zipkin"}); err == nil {
		t.Fatal("an unknown mode was accepted")
	}
}

// cloudtrace needs a project and credentials; with both it starts (and
// sends nothing until there are spans).
func TestCloudTraceNeedsProjectAndCredentials(t *testing.T) {
	if _, err := tracing.Setup(t.Context(), tracing.Options{Mode: "cloudtrace"}); err == nil ||
		!strings.Contains(err.Error(), "GOOGLE_CLOUD_PROJECT") {
		t.Fatalf("cloudtrace without a project: %v", err)
	}
	dir := t.TempDir()
	t.Setenv("HOME", dir) // no gcloud credentials of the machine's user
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", filepath.Join(dir, "missing.json"))
	if _, err := tracing.Setup(t.Context(), tracing.Options{Mode: "cloudtrace", Project: "p"}); err == nil ||
		!strings.Contains(err.Error(), "credentials") {
		t.Fatalf("cloudtrace without credentials: %v", err)
	}
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", serviceAccountKey(t, dir))
	p, err := tracing.Setup(t.Context(), tracing.Options{Mode: "cloudtrace", Project: "p"})
	if err != nil {
		t.Fatalf("cloudtrace with a service account key: %v", err)
	}
	if err := p.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// serviceAccountKey writes a service account key file (a fresh RSA key; it
// is never used to sign a request here).
func serviceAccountKey(t *testing.T, dir string) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(map[string]string{"type": "service_account", "project_id": "p", "private_key_id": "k1",
		"private_key":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email": "predworker-run@p.iam.gserviceaccount.com", "client_id": "1",
		"token_uri": "https://oauth2.googleapis.com/token"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "key.json")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// The sampler records a trace its caller sampled, and ratio of the others,
// even when Cloud Run passed a trace context it did not sample.
func TestSampler(t *testing.T) {
	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	remote := func(sampled bool) trace.SpanContext {
		var flags trace.TraceFlags
		if sampled {
			flags = trace.FlagsSampled
		}
		return trace.NewSpanContext(trace.SpanContextConfig{TraceID: traceID, SpanID: spanID, TraceFlags: flags, Remote: true})
	}
	for _, c := range []struct {
		ratio  float64
		parent *trace.SpanContext
		want   bool
	}{
		{1, nil, true}, {0, nil, false},
		{1, new(remote(false)), true}, {0, new(remote(false)), false},
		{0, new(remote(true)), true},
	} {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(tracing.Sampler(c.ratio)))
		ctx := t.Context()
		if c.parent != nil {
			ctx = trace.ContextWithRemoteSpanContext(ctx, *c.parent)
		}
		_, span := tp.Tracer("t").Start(ctx, "push")
		if span.IsRecording() != c.want {
			t.Errorf("ratio %g, parent %v: recording %v, want %v", c.ratio, c.parent, span.IsRecording(), c.want)
		}
		span.End()
	}
}
