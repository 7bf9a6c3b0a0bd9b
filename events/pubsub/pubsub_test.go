package pubsub_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

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
	srv := pstest.NewServer()
	conn, err := grpc.NewClient(srv.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
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

// A completed batch's event sits in the outbox while Pub/Sub refuses it, and
// is published exactly once when Pub/Sub accepts it again.
func TestOutboxSurvivesPublishFailure(t *testing.T) {
	t.Parallel()
	srv, client := fake(t)
	pub := pspub.New(client, "completions", "dead-letters")
	defer pub.Stop()

	dir := t.TempDir()
	st, err := statesqlite.New(t.Context(), filepath.Join(dir, "state.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	sk, err := sinksqlite.New(t.Context(), filepath.Join(dir, "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sk.Close() }()
	reg := systems.NewRegistry()
	reg.Register(movingavg.New(), "")
	e, err := worker.New(worker.Config{}, worker.Deps{Store: st, Features: league.Default(), Sink: sk, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := e.Submit(t.Context(), "evt", state.Request{GameDate: "2025-01-15", CorrelationID: "corr-9"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Run(t.Context(), b.ID, worker.RunOptions{}); err != nil {
		t.Fatal(err)
	}
	// The topic does not exist yet: publishing fails, nothing is lost.
	if n, err := e.DispatchOutbox(t.Context(), pub); err == nil || n != 0 {
		t.Fatalf("dispatch to a missing topic = %d, %v; want an error", n, err)
	}
	if evs, err := st.Outbox(t.Context(), 10); err != nil || len(evs) != 1 {
		t.Fatalf("outbox after the failure: %d events, %v", len(evs), err)
	}
	createTopic(t, client, "completions")
	if n, err := e.DispatchOutbox(t.Context(), pub); err != nil || n != 1 {
		t.Fatalf("dispatch after recovery = %d, %v", n, err)
	}
	if n, err := e.DispatchOutbox(t.Context(), pub); err != nil || n != 0 {
		t.Fatalf("second dispatch = %d, %v; want nothing left", n, err)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages on the topic, want 1", len(msgs))
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
