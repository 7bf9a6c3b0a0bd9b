package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/predworker/predworker/internal/emulator"
	"github.com/predworker/predworker/state"
)

func topicName(id string) string { return "projects/" + emulator.Project + "/topics/" + id }
func subName(id string) string   { return "projects/" + emulator.Project + "/subscriptions/" + id }

// pubsubClient is a client of the Pub/Sub emulator, closed when the test ends.
func pubsubClient(t *testing.T) *pubsub.Client {
	t.Helper()
	client, err := pubsub.NewClient(t.Context(), emulator.Project)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// TestPubSubPush runs the worker behind a real push subscription of the
// official Pub/Sub emulator (retry policy and dead-letter policy included),
// publishes batch requests and one poison message, SIGKILLs the worker in the
// middle of a batch and restarts it on the same port. Every batch completes
// exactly once, the poison message is dead-lettered exactly once, completion
// events reach their topic, and the push requests stay few.
func TestPubSubPush(t *testing.T) {
	t.Parallel()
	emulator.SkipOrFail(t, pubsubSkip)
	ctx := t.Context()
	client := pubsubClient(t)
	suffix := fmt.Sprint(time.Now().UnixNano())
	requests, pushDLQ := "requests-"+suffix, "push-dlq-"+suffix
	completions, deadLetters := "completions-"+suffix, "dead-letters-"+suffix
	for _, id := range []string{requests, pushDLQ, completions, deadLetters} {
		if _, err := client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: topicName(id)}); err != nil {
			t.Fatal(err)
		}
	}
	for sub, topic := range map[string]string{"completions-sub-" + suffix: completions, "dead-letters-sub-" + suffix: deadLetters} {
		if _, err := client.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
			Name: subName(sub), Topic: topicName(topic), AckDeadlineSeconds: 60}); err != nil {
			t.Fatal(err)
		}
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	c := newCluster(t, "sqlite", "CHUNK_SIZE=20", "LEASE_TTL=5s", "HEARTBEAT_INTERVAL=1s", "SWEEP_INTERVAL=1s",
		"FAULTS=system=*,kind=latency,latency=60ms,rate=1", "CONCURRENCY=8", "EVENTS=pubsub",
		"GOOGLE_CLOUD_PROJECT="+emulator.Project, "COMPLETION_TOPIC="+completions, "DEAD_LETTER_TOPIC="+deadLetters,
		"PUSH_BUDGET=120s")
	c.port = port
	p := c.start()

	if _, err := client.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
		Name: subName("push-" + suffix), Topic: topicName(requests), AckDeadlineSeconds: 120,
		PushConfig:       &pubsubpb.PushConfig{PushEndpoint: fmt.Sprintf("http://127.0.0.1:%d/pubsub/push", port)},
		RetryPolicy:      &pubsubpb.RetryPolicy{MinimumBackoff: durationpb.New(time.Second), MaximumBackoff: durationpb.New(5 * time.Second)},
		DeadLetterPolicy: &pubsubpb.DeadLetterPolicy{DeadLetterTopic: topicName(pushDLQ), MaxDeliveryAttempts: 5},
	}); err != nil {
		t.Fatal(err)
	}

	batches := map[string]string{"ps-a": "2025-01-15", "ps-b": "2025-01-22", "ps-c": "2025-02-05"}
	pub := client.Publisher(requests)
	defer pub.Stop()
	publish := func(data string, attrs map[string]string) {
		t.Helper()
		if _, err := pub.Publish(ctx, &pubsub.Message{Data: []byte(data), Attributes: attrs}).Get(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for id, date := range batches {
		publish(fmt.Sprintf(`{"batch_id": %q, "game_date": %q}`, id, date), nil)
	}
	// A second message for one batch: must not run it twice.
	publish(`{"game_date": "2025-01-15"}`, map[string]string{"batch_id": "ps-a-dup"})
	publish(`{"batch_id": "ps-a", "game_date": "2025-01-15"}`, nil)
	publish(`this is not JSON {`, nil) // the poison message

	// Kill the worker while a batch is mid-way, then restart on the same port.
	waitUntil(t, time.Minute, "a batch half done", func() bool {
		for id := range batches {
			if st, err := status(t, p, id); err == nil && st.DoneChunks >= 3 && st.State == state.StatusRunning {
				return true
			}
		}
		return false
	})
	p.signal(syscall.SIGKILL)
	<-p.exited
	killed := time.Now()
	p = c.start()

	waitUntil(t, 3*time.Minute, "every batch completed", func() bool {
		for id := range batches {
			if st, err := status(t, p, id); err != nil || st.State != state.StatusCompleted {
				return false
			}
		}
		return true
	})
	recovered := time.Since(killed)
	for id := range batches {
		st, err := status(t, p, id)
		if err != nil {
			t.Fatal(err)
		}
		checkRows(t, p, st)
		if id == "ps-a" && st.Attempt > 3 {
			t.Errorf("ps-a claimed %d times; duplicate messages must not rerun it", st.Attempt)
		}
	}

	// Dead letters: exactly one, listed by the API and published once.
	code, body, err := request(t, "GET", p.url("/v1/dead-letters"), "")
	var dl struct {
		DeadLetters []struct {
			Class string `json:"error_class"`
		} `json:"dead_letters"`
	}
	if err != nil || code != 200 || json.Unmarshal(body, &dl) != nil {
		t.Fatalf("GET /v1/dead-letters: %d %v", code, err)
	}
	if len(dl.DeadLetters) != 1 || dl.DeadLetters[0].Class != "validation" {
		t.Errorf("dead letters = %s, want exactly the poison message", body)
	}
	deadMsgs := drain(t, client, "dead-letters-sub-"+suffix, 1)
	completionIDs := map[string]bool{}
	for _, m := range drain(t, client, "completions-sub-"+suffix, len(batches)+1) {
		completionIDs[m.Attributes["batch_id"]] = true
	}
	if len(deadMsgs) != 1 {
		t.Errorf("%d messages on the dead-letter topic, want 1", len(deadMsgs))
	}
	for id := range batches {
		if !completionIDs[id] {
			t.Errorf("no completion event for %s (got %v)", id, completionIDs)
		}
	}

	// No retry storm: count the push requests every worker process received.
	pushes, byStatus := 0, map[int]int{}
	for _, e := range c.allEvents() {
		if e.Message == "request" && e.Path == "/pubsub/push" {
			pushes++
			byStatus[e.Status]++
		}
	}
	const messages = 6
	if pushes > messages*6 {
		t.Errorf("%d push requests for %d messages: a retry storm", pushes, messages)
	}
	t.Logf("push deliveries answered: %d (by status %v) for %d messages; batches completed %d; dead letters %d; "+
		"kill to all completed %v", pushes, byStatus, messages, len(batches), len(deadMsgs), recovered.Round(time.Millisecond))
}

// drain pulls what a subscription holds, waiting up to 20 s for at least want
// messages and then a little longer for stragglers.
func drain(t *testing.T, client *pubsub.Client, sub string, want int) []*pubsub.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var (
		mu   sync.Mutex
		msgs []*pubsub.Message
		once sync.Once
	)
	err := client.Subscriber(subName(sub)).Receive(ctx, func(_ context.Context, m *pubsub.Message) {
		m.Ack()
		mu.Lock()
		msgs = append(msgs, m)
		if len(msgs) >= want {
			once.Do(func() { time.AfterFunc(2*time.Second, cancel) })
		}
		mu.Unlock()
	})
	if err != nil && ctx.Err() == nil {
		t.Fatalf("receive from %s: %v", sub, err)
	}
	mu.Lock()
	defer mu.Unlock()
	return msgs
}
