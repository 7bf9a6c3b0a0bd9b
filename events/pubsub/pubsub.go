// Package pubsub publishes completion events and dead letters to Pub/Sub
// topics (EVENTS=pubsub). Every publish waits for the server's confirmation
// (PublishResult.Get) under a deadline, so an unconfirmed event stays in the
// outbox and an unconfirmed dead letter fails the push (which is redelivered).
package pubsub

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/predworker/predworker/events"
)

// Publisher sends to the completion and dead-letter topics.
type Publisher struct {
	completion *pubsub.Publisher
	dead       *pubsub.Publisher
	timeout    time.Duration
	// Format is how completion events are encoded: FormatEvent (the
	// default, "") or FormatPhase5.
	Format string
}

var _ events.Publisher = (*Publisher)(nil)

// New returns a publisher on client for the two topics (ids or full names).
func New(client *pubsub.Client, completionTopic, deadLetterTopic string) *Publisher {
	return &Publisher{completion: client.Publisher(completionTopic), dead: client.Publisher(deadLetterTopic),
		timeout: 10 * time.Second}
}

// Stop flushes and stops the topic publishers.
func (p *Publisher) Stop() {
	p.completion.Stop()
	p.dead.Stop()
}

// PublishEvent implements events.Publisher: the event as JSON, with its id
// and type as attributes so subscribers can filter and de-duplicate (or, in
// FormatPhase5, the replaced stage's completion message).
func (p *Publisher) PublishEvent(ctx context.Context, ev events.Event) error {
	data, attrs, err := encodeCompletion(p.Format, ev)
	if err != nil {
		return fmt.Errorf("encode event %s: %w", ev.ID, err)
	}
	return p.publish(ctx, p.completion, &pubsub.Message{Data: data, Attributes: attrs})
}

// PublishDeadLetter sends a dead letter: the raw message as data, the rest as
// attributes.
func (p *Publisher) PublishDeadLetter(ctx context.Context, d events.DeadLetter) error {
	return p.publish(ctx, p.dead, &pubsub.Message{Data: d.Raw, Attributes: map[string]string{
		"dead_letter_id": d.ID, "error_class": d.Class, "error": events.TruncateUTF8(d.Error, 1024),
		"raw_size": strconv.Itoa(d.RawSize), "raw_sha256": d.RawSHA256,
		"message_id": d.MessageID, "attempt": strconv.Itoa(d.Attempt), "batch_id": d.BatchID,
		"subscription": d.Subscription,
	}})
}

func (p *Publisher) publish(ctx context.Context, t *pubsub.Publisher, m *pubsub.Message) error {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	if _, err := t.Publish(ctx, m).Get(ctx); err != nil {
		return translate("publish to "+t.String(), err)
	}
	return nil
}

// translate names the operation and turns gRPC codes into the events
// sentinels: a missing topic, a missing permission or an invalid message is
// ErrRejected (retrying cannot help); a server that cannot be reached in
// time is ErrUnavailable. Nothing above this package reads gRPC codes.
func translate(op string, err error) error {
	switch status.Code(err) {
	case codes.NotFound, codes.PermissionDenied, codes.InvalidArgument, codes.FailedPrecondition, codes.Unauthenticated:
		return fmt.Errorf("%s: %w: %w", op, events.ErrRejected, err)
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted, codes.Internal:
		return fmt.Errorf("%s: %w: %w", op, events.ErrUnavailable, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w: %w", op, events.ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// DeadLetters stores dead letters locally (for listing and re-drive) and
// publishes each to the dead-letter topic until Pub/Sub confirms it.
type DeadLetters struct {
	events.DeadLetters
	Pub *Publisher
}

// Put implements events.DeadLetters: stored, then published unless an
// earlier call already published it.
func (d DeadLetters) Put(ctx context.Context, dl events.DeadLetter) (bool, error) {
	created, err := d.DeadLetters.Put(ctx, dl)
	if err != nil {
		return false, err
	}
	stored, err := d.DeadLetters.Get(ctx, dl.ID)
	if err != nil {
		return false, err
	}
	if stored.PublishedAt != nil {
		return created, nil
	}
	if err := d.Pub.PublishDeadLetter(ctx, stored); err != nil {
		return false, err
	}
	return created, d.DeadLetters.MarkPublished(ctx, dl.ID)
}

// Continuer publishes continuation messages to the batch-request topic.
type Continuer struct {
	topic   *pubsub.Publisher
	timeout time.Duration
}

// NewContinuer returns a continuer publishing to topic (id or full name).
func NewContinuer(client *pubsub.Client, topic string) *Continuer {
	return &Continuer{topic: client.Publisher(topic), timeout: 10 * time.Second}
}

// Continue publishes data with attrs and waits for the confirmation.
func (c *Continuer) Continue(ctx context.Context, data []byte, attrs map[string]string) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if _, err := c.topic.Publish(ctx, &pubsub.Message{Data: data, Attributes: attrs}).Get(ctx); err != nil {
		return translate("publish continuation to "+c.topic.String(), err)
	}
	return nil
}

// Stop flushes and stops the topic publisher.
func (c *Continuer) Stop() { c.topic.Stop() }

// CheckTopics verifies that each topic (an id in the client's project, or a
// full name) exists (for `worker doctor`).
func CheckTopics(ctx context.Context, client *pubsub.Client, topics ...string) error {
	var errs []error
	for _, t := range topics {
		name := t
		if !strings.HasPrefix(t, "projects/") {
			name = "projects/" + client.Project() + "/topics/" + t
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := client.TopicAdminClient.GetTopic(cctx, &pubsubpb.GetTopicRequest{Topic: name})
		cancel()
		if err != nil {
			errs = append(errs, translate("topic "+name, err))
		}
	}
	return errors.Join(errs...)
}
