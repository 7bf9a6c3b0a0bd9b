package pubsub_test

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/predworker/predworker/events"
	pspub "github.com/predworker/predworker/events/pubsub"
	eventssqlite "github.com/predworker/predworker/events/sqlite"
	"github.com/predworker/predworker/state"
	statesqlite "github.com/predworker/predworker/state/sqlite"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/league"
	"github.com/predworker/predworker/systems/movingavg"
	sinksqlite "github.com/predworker/predworker/systems/sqlite"
	"github.com/predworker/predworker/worker"
)

const project = "p"

func fake(t *testing.T) (*pstest.Server, *pubsub.Client) {
	t.Helper()
	return fakeWith(t, nil)
}

// refuse decides, per published message, the gRPC error the wire answers
// with instead of the server (nil: let it through).
type refuse func(*pubsubpb.PublishRequest) error

// fakeWith is fake with a client whose Publish calls pass through refuse.
func fakeWith(t *testing.T, r refuse) (*pstest.Server, *pubsub.Client) {
	t.Helper()
	srv := pstest.NewServer()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if r != nil {
		opts = append(opts, grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any,
			cc *grpc.ClientConn, invoker grpc.UnaryInvoker, o ...grpc.CallOption) error {
			if pr, ok := req.(*pubsubpb.PublishRequest); ok {
				if err := r(pr); err != nil {
					return err
				}
			}
			return invoker(ctx, method, req, reply, cc, o...)
		}))
	}
	conn, err := grpc.NewClient(srv.Addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	client, err := pubsub.NewClient(t.Context(), project, option.WithGRPCConn(conn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close(); _ = srv.Close() })
	return srv, client
}

func createTopic(t *testing.T, c *pubsub.Client, id string) {
	t.Helper()
	if _, err := c.TopicAdminClient.CreateTopic(t.Context(), &pubsubpb.Topic{Name: "projects/" + project + "/topics/" + id}); err != nil {
		t.Fatal(err)
	}
}

// outboxEngine runs two finished batches (one completed, one failed) on an
// embedded store, so the outbox holds their two events.
func outboxEngine(t *testing.T) (*worker.Engine, *statesqlite.Store) {
	t.Helper()
	dir := t.TempDir()
	st, err := statesqlite.New(t.Context(), filepath.Join(dir, "state.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	sk, err := sinksqlite.New(t.Context(), filepath.Join(dir, "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sk.Close() })
	reg := systems.NewRegistry()
	reg.Register(movingavg.New(), "")
	e, err := worker.New(worker.Config{}, worker.Deps{Store: st, Features: league.Default(), Sink: sk, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"evt", "poison"} {
		b, _, err := e.Submit(t.Context(), id, state.Request{GameDate: "2025-01-15", Players: []string{"aaronadams"}, CorrelationID: "corr-9"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.Run(t.Context(), b.ID, worker.RunOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return e, st
}

// A completed batch's event sits in the outbox while Pub/Sub cannot be
// reached, and is published exactly once when it can again.
func TestOutboxSurvivesPublishFailure(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	down.Store(true)
	srv, client := fakeWith(t, func(*pubsubpb.PublishRequest) error {
		if down.Load() {
			return status.Error(codes.Unavailable, "pubsub is down")
		}
		return nil
	})
	createTopic(t, client, "completions")
	pub := pspub.New(client, "completions", "dead-letters")
	defer pub.Stop()
	e, st := outboxEngine(t)
	// Pub/Sub is down: publishing fails, nothing is lost.
	if n, err := e.DispatchOutbox(t.Context(), pub); worker.Classify(err) != worker.ClassUnavailable || n != 0 {
		t.Fatalf("dispatch while Pub/Sub is down = %d, %v; want an unavailable error", n, err)
	}
	if evs, err := st.Outbox(t.Context(), 10); err != nil || len(evs) != 2 {
		t.Fatalf("outbox after the failure: %d events, %v", len(evs), err)
	}
	down.Store(false)
	if n, err := e.DispatchOutbox(t.Context(), pub); err != nil || n != 2 {
		t.Fatalf("dispatch after recovery = %d, %v", n, err)
	}
	if n, err := e.DispatchOutbox(t.Context(), pub); err != nil || n != 0 {
		t.Fatalf("second dispatch = %d, %v; want nothing left", n, err)
	}
	msgs := srv.Messages()
	if len(msgs) != 2 {
		t.Fatalf("%d messages on the topic, want 2", len(msgs))
	}
	var ev events.Event
	if err := json.Unmarshal(msgs[0].Data, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Type != "batch_completed" || ev.BatchID != "evt" || ev.CorrelationID != "corr-9" || ev.Predictions == 0 ||
		msgs[0].Attributes["event_id"] != ev.ID || ev.ID == "" {
		t.Fatalf("event = %+v, attributes %v", ev, msgs[0].Attributes)
	}
}

// An event Pub/Sub refuses for good (no permission, no topic) is taken out
// of the outbox with the reason and does not block the events behind it.
func TestOutboxMovesPastARefusedEvent(t *testing.T) {
	t.Parallel()
	srv, client := fakeWith(t, func(r *pubsubpb.PublishRequest) error {
		for _, m := range r.GetMessages() {
			if m.GetAttributes()["batch_id"] == "evt" { // the older event
				return status.Error(codes.PermissionDenied, "no permission to publish this")
			}
		}
		return nil
	})
	createTopic(t, client, "completions")
	pub := pspub.New(client, "completions", "dead-letters")
	defer pub.Stop()
	e, st := outboxEngine(t)
	if n, err := e.DispatchOutbox(t.Context(), pub); err != nil || n != 1 {
		t.Fatalf("dispatch = %d, %v; want the second event delivered past the refused first", n, err)
	}
	if evs, err := st.Outbox(t.Context(), 10); err != nil || len(evs) != 0 {
		t.Fatalf("outbox after the pass holds %+v (%v); want it empty", evs, err)
	}
	if msgs := srv.Messages(); len(msgs) != 1 || msgs[0].Attributes["batch_id"] != "poison" {
		t.Fatalf("published %d messages, want only the second event", len(msgs))
	}
}

func TestDeadLettersArePublishedOnce(t *testing.T) {
	t.Parallel()
	srv, client := fake(t)
	pub := pspub.New(client, "completions", "dead-letters")
	defer pub.Stop()
	local, err := eventssqlite.New(t.Context(), filepath.Join(t.TempDir(), "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = local.Close() }()
	dl := pspub.DeadLetters{DeadLetters: local, Pub: pub}
	d := events.DeadLetter{ID: "d1", Class: "validation", Error: "bad date", MessageID: "m1", Attempt: 2, Raw: []byte(`{"raw": 1}`)}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// No topic: the dead letter cannot be confirmed, so Put fails (the push
	// answers 500 and Pub/Sub redelivers).
	if _, err := dl.Put(ctx, d); err == nil {
		t.Fatal("Put succeeded without a dead-letter topic")
	}
	createTopic(t, client, "dead-letters")
	for range 3 {
		if _, err := dl.Put(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d dead letters published, want 1", len(msgs))
	}
	m := msgs[0]
	if string(m.Data) != `{"raw": 1}` || m.Attributes["error_class"] != "validation" || m.Attributes["message_id"] != "m1" ||
		m.Attributes["attempt"] != "2" {
		t.Fatalf("published dead letter = %q %v", m.Data, m.Attributes)
	}
}

func TestContinuerPublishes(t *testing.T) {
	t.Parallel()
	srv, client := fake(t)
	createTopic(t, client, "requests")
	c := pspub.NewContinuer(client, "requests")
	defer c.Stop()
	if err := c.Continue(t.Context(), []byte(`{"game_date": "2025-01-15"}`), map[string]string{"batch_id": "b"}); err != nil {
		t.Fatal(err)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 || msgs[0].Attributes["batch_id"] != "b" || string(msgs[0].Data) != `{"game_date": "2025-01-15"}` {
		t.Fatalf("continuation messages = %+v", msgs)
	}
}

// A dead letter whose error text is long and not ASCII is published with
// the text cut on a character boundary (attributes must be UTF-8).
func TestDeadLetterAttributesStayUTF8(t *testing.T) {
	t.Parallel()
	srv, client := fake(t)
	createTopic(t, client, "dead-letters")
	pub := pspub.New(client, "completions", "dead-letters")
	defer pub.Stop()
	// "é" is two bytes; one ASCII byte first puts a character across byte 1024.
	d := events.DeadLetter{ID: "d2", Class: "validation", Error: "x" + strings.Repeat("é", 2000), MessageID: "m2"}
	d.SetRaw([]byte(`{}`))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := pub.PublishDeadLetter(ctx, d); err != nil {
		t.Fatalf("publish of a dead letter with a long non-ASCII error: %v", err)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	got := msgs[0].Attributes["error"]
	if !utf8.ValidString(got) || len(got) > 1024 || len(got) < 1020 || msgs[0].Attributes["raw_size"] != "2" {
		t.Fatalf("error attribute of %d bytes (valid UTF-8: %v), raw_size %q", len(got), utf8.ValidString(got), msgs[0].Attributes["raw_size"])
	}
}

// CheckTopics passes when every topic exists (by id or full name) and names
// each missing one as rejected.
func TestCheckTopicsNamesMissingTopics(t *testing.T) {
	t.Parallel()
	_, client := fake(t)
	createTopic(t, client, "completions")
	if err := pspub.CheckTopics(t.Context(), client, "completions", "projects/"+project+"/topics/completions"); err != nil {
		t.Fatalf("existing topics: %v", err)
	}
	err := pspub.CheckTopics(t.Context(), client, "completions", "dead-letters", "projects/other/topics/x")
	if err == nil || !errors.Is(err, events.ErrRejected) || !strings.Contains(err.Error(), "projects/p/topics/dead-letters") ||
		!strings.Contains(err.Error(), "projects/other/topics/x") || strings.Contains(err.Error(), "topics/completions") {
		t.Fatalf("missing topics: %v", err)
	}
}

// In FormatPhase5 a completion event goes out as the replaced stage's
// message (ORIGIN.md §5.3): exactly its fields, no attributes, and a status
// that says what happened.
func TestPhase5CompletionMessage(t *testing.T) {
	t.Parallel()
	srv, client := fake(t)
	createTopic(t, client, "nba-phase5-predictions-complete")
	createTopic(t, client, "dl")
	pub := pspub.New(client, "nba-phase5-predictions-complete", "dl")
	pub.Format = pspub.FormatPhase5
	defer pub.Stop()
	at := time.Date(2026, 1, 15, 19, 30, 0, 0, time.UTC)
	base := events.Event{ID: "e1", Type: events.TypeBatchCompleted, BatchID: "batch_2026-01-15_1768471200",
		GameDate: "2026-01-15", CorrelationID: "abc12345", TotalItems: 200, DoneItems: 200, Predictions: 1000, At: at,
		DurationMS: 93500}
	partial := base
	// Ten players without a prediction: 50 failure records over five systems.
	partial.ID, partial.FailedItems, partial.FailedPlayers, partial.CorrelationID, partial.DatasetPrefix = "e2", 50, 10, "", "test"
	failed := base
	failed.ID, failed.Type, failed.DoneItems, failed.Predictions = "e3", events.TypeBatchFailed, 50, 250
	for _, ev := range []events.Event{base, partial, failed} {
		if err := pub.PublishEvent(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
	msgs := srv.Messages()
	if len(msgs) != 3 {
		t.Fatalf("%d messages", len(msgs))
	}
	want := []string{"processor_name", "phase", "execution_id", "correlation_id", "game_date", "output_table", "output_dataset",
		"status", "record_count", "records_failed", "timestamp", "duration_seconds", "trigger_source", "metadata"}
	wantMeta := []string{"batch_id", "expected_players", "completed_players", "completed_predictions", "total_predictions", "completion_pct"}
	var got []map[string]any
	for _, m := range msgs {
		if len(m.Attributes) != 0 {
			t.Errorf("attributes %v, want none", m.Attributes)
		}
		var v map[string]any
		if err := json.Unmarshal(m.Data, &v); err != nil {
			t.Fatal(err)
		}
		if keys := slices.Sorted(maps.Keys(v)); !slices.Equal(keys, slices.Sorted(slices.Values(want))) {
			t.Errorf("fields %v, want %v", keys, want)
		}
		meta, _ := v["metadata"].(map[string]any)
		if keys := slices.Sorted(maps.Keys(meta)); !slices.Equal(keys, slices.Sorted(slices.Values(wantMeta))) {
			t.Errorf("metadata fields %v, want %v", keys, wantMeta)
		}
		got = append(got, v)
	}
	ok, part, fail := got[0], got[1], got[2]
	if ok["processor_name"] != "PredictionCoordinator" || ok["phase"] != "phase_5_predictions" ||
		ok["execution_id"] != "batch_2026-01-15_1768471200" || ok["correlation_id"] != "abc12345" ||
		ok["output_table"] != "player_prop_predictions" || ok["output_dataset"] != "nba_predictions" || ok["status"] != "success" ||
		ok["record_count"] != 200.0 || ok["records_failed"] != 0.0 || ok["timestamp"] != "2026-01-15T19:30:00Z" ||
		ok["duration_seconds"] != 93.5 || ok["trigger_source"] != "automatic" {
		t.Errorf("success message %v", ok)
	}
	if m := ok["metadata"].(map[string]any); m["batch_id"] != "batch_2026-01-15_1768471200" || m["expected_players"] != 200.0 ||
		m["completed_players"] != 200.0 || m["completed_predictions"] != 200.0 || m["total_predictions"] != 1000.0 ||
		m["completion_pct"] != 100.0 {
		t.Errorf("success metadata %v", m)
	}
	if m := part["metadata"].(map[string]any); part["status"] != "partial" || part["record_count"] != 190.0 ||
		part["records_failed"] != 10.0 || part["correlation_id"] != "batch_2026-01-15_1768471200" ||
		part["output_dataset"] != "test_nba_predictions" || m["completion_pct"] != 95.0 {
		t.Errorf("partial message %v", part)
	}
	if m := fail["metadata"].(map[string]any); fail["status"] != "failed" || m["completion_pct"] != 25.0 {
		t.Errorf("failed message %v", fail)
	}
}
