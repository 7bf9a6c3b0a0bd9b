package e2e

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// collector is an OTLP/gRPC trace receiver that keeps every span.
type collector struct {
	collectortrace.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []*tracepb.Span
}

func (c *collector) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			c.spans = append(c.spans, ss.Spans...)
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func (c *collector) snapshot() []*tracepb.Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*tracepb.Span(nil), c.spans...)
}

func startCollector(t *testing.T) (*collector, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, c)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return c, l.Addr().String()
}

func spanAttr(s *tracepb.Span, key string) string {
	for _, a := range s.Attributes {
		if a.Key == key {
			if v := a.Value.GetStringValue(); v != "" {
				return v
			}
			return fmt.Sprint(a.Value.GetIntValue())
		}
	}
	return ""
}

// TestTracesFollowThePush runs the binary with TRACES=otlp against an
// in-process OTLP collector and sends a push the way Cloud Run delivers it
// (a traceparent header) carrying a message the publisher traced
// (googclient_traceparent), then a POST /v1/batches whose batch runs after
// the request has returned. Every span of each continues the caller's trace,
// and the tree is push → batch → chunk → one span per system call, with the
// publisher linked.
func TestTracesFollowThePush(t *testing.T) {
	t.Parallel()
	col, addr := startCollector(t)
	c := newCluster(t, "sqlite", "TRACES=otlp", "OTEL_EXPORTER_OTLP_ENDPOINT=http://"+addr,
		"OTEL_EXPORTER_OTLP_INSECURE=true", "OTEL_BSP_SCHEDULE_DELAY=100", "CHUNK_SIZE=2", "GOOGLE_CLOUD_PROJECT=trace-proj")
	p := c.start()

	const (
		pushTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
		pushParent = "00f067aa0ba902b7"
		pubTrace   = "0af7651916cd43dd8448eb211c80319c"
		pubSpan    = "b7ad6b7169203331"
		postTrace  = "5cf92f3577b34da6a3ce929d0e0e4799"
	)
	players := []string{"aaronadams", "aaronbarnes", "aarondaniels"} // on the 2025-01-15 slate
	data, _ := json.Marshal(map[string]any{"game_date": "2025-01-15", "players": players,
		"systems": []string{"moving_average", "zone_matchup_v1"}})
	env, _ := json.Marshal(map[string]any{"subscription": "projects/trace-proj/subscriptions/requests-push",
		"message": map[string]any{"data": base64.StdEncoding.EncodeToString(data), "messageId": "trace-msg-1",
			"attributes": map[string]string{"googclient_traceparent": "00-" + pubTrace + "-" + pubSpan + "-01"}}})
	req, err := http.NewRequest("POST", p.url("/pubsub/push"), strings.NewReader(string(env)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("traceparent", "00-"+pushTrace+"-"+pushParent+"-00") // Cloud Run did not sample it
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("push answered %d", resp.StatusCode)
	}

	post, err := http.NewRequest("POST", p.url("/v1/batches"), strings.NewReader(
		`{"batch_id": "traced-post", "game_date": "2025-01-15", "players": ["aaronadams"], "systems": ["moving_average"]}`))
	if err != nil {
		t.Fatal(err)
	}
	post.Header.Set("Content-Type", "application/json")
	post.Header.Set("traceparent", "00-"+postTrace+"-"+pushParent+"-01")
	if resp, err = client.Do(post); err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /v1/batches answered %d", resp.StatusCode)
	}

	byTrace := func(trace string) []*tracepb.Span {
		var out []*tracepb.Span
		for _, s := range col.snapshot() {
			if hex.EncodeToString(s.TraceId) == trace {
				out = append(out, s)
			}
		}
		return out
	}
	hasBatchSpan := func(trace string) bool {
		for _, s := range byTrace(trace) {
			if s.Name == "batch" {
				return true
			}
		}
		return false
	}
	waitUntil(t, 30*time.Second, "both batches' spans", func() bool { return hasBatchSpan(pushTrace) && hasBatchSpan(postTrace) })

	spans := byTrace(pushTrace)
	ids := map[string]*tracepb.Span{}
	for _, s := range spans {
		ids[hex.EncodeToString(s.SpanId)] = s
	}
	parentName := func(s *tracepb.Span) string {
		if p, ok := ids[hex.EncodeToString(s.ParentSpanId)]; ok {
			return p.Name
		}
		return "remote " + hex.EncodeToString(s.ParentSpanId)
	}
	count := map[string]int{}
	for _, s := range spans {
		count[s.Name]++
		switch {
		case s.Name == "POST /pubsub/push":
			if parentName(s) != "remote "+pushParent || s.Kind != tracepb.Span_SPAN_KIND_SERVER ||
				spanAttr(s, "messaging.message.id") != "trace-msg-1" {
				t.Errorf("push span: parent %s, kind %v, attributes %v", parentName(s), s.Kind, s.Attributes)
			}
			if len(s.Links) != 1 || hex.EncodeToString(s.Links[0].TraceId) != pubTrace || hex.EncodeToString(s.Links[0].SpanId) != pubSpan {
				t.Errorf("push span links %v, want the publisher's span", s.Links)
			}
		case s.Name == "batch":
			if parentName(s) != "POST /pubsub/push" || spanAttr(s, "predworker.outcome") != "ok" {
				t.Errorf("batch span: parent %s, attributes %v", parentName(s), s.Attributes)
			}
		case s.Name == "chunk":
			if parentName(s) != "batch" {
				t.Errorf("chunk span's parent is %s", parentName(s))
			}
		case strings.HasPrefix(s.Name, "system "):
			if parentName(s) != "chunk" || spanAttr(s, "predworker.player_lookup") == "" {
				t.Errorf("%s span: parent %s, attributes %v", s.Name, parentName(s), s.Attributes)
			}
		case s.Name == "finish": // marking the batch completed
			if parentName(s) != "batch" {
				t.Errorf("finish span's parent is %s", parentName(s))
			}
		case s.Name == "load features", s.Name == "write predictions", s.Name == "checkpoint":
			if parentName(s) != "chunk" {
				t.Errorf("%s span's parent is %s", s.Name, parentName(s))
			}
		}
	}
	// 3 players in chunks of 2; zone_matchup_v1 calls nothing else here.
	if count["POST /pubsub/push"] != 1 || count["batch"] != 1 || count["chunk"] != 2 ||
		count["system moving_average"] != 3 || count["system zone_matchup_v1"] != 3 || count["checkpoint"] != 2 || count["finish"] != 1 {
		t.Errorf("spans of the push's trace: %v", count)
	}

	postSpans := byTrace(postTrace)
	names := map[string]string{}
	for _, s := range postSpans {
		names[hex.EncodeToString(s.SpanId)] = s.Name
	}
	for _, s := range postSpans {
		if s.Name == "batch" && names[hex.EncodeToString(s.ParentSpanId)] != "POST /v1/batches" {
			t.Errorf("the background batch's parent is %q, want the request that started it", names[hex.EncodeToString(s.ParentSpanId)])
		}
	}
	// The request's log lines carry its trace and span, for Cloud Logging.
	found := false
	for _, e := range c.allEvents() {
		if e.Message == "request" && e.Path == "/pubsub/push" {
			found = strings.Contains(e.Raw, `"logging.googleapis.com/trace":"projects/trace-proj/traces/`+pushTrace+`"`) &&
				strings.Contains(e.Raw, `"logging.googleapis.com/spanId"`)
		}
	}
	if !found {
		t.Error("the push's access log line does not name its trace and span")
	}
}
