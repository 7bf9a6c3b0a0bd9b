// Package firestore keeps dead letters and delivery attempts in Firestore, so
// every instance of a Cloud Run service sees the same dead letters (the
// embedded SQLite file is per instance there). Used with STATE_STORE=firestore.
package firestore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"cloud.google.com/go/firestore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/predworker/predworker/events"
)

// Store implements events.DeadLetters.
type Store struct {
	client  *firestore.Client
	prefix  string
	timeout time.Duration
}

var _ events.DeadLetters = (*Store)(nil)

// New connects (FIRESTORE_EMULATOR_HOST is honoured by the client).
func New(ctx context.Context, project, database, prefix string) (*Store, error) {
	if database == "" {
		database = firestore.DefaultDatabaseID
	}
	c, err := firestore.NewClientWithDatabase(ctx, project, database)
	if err != nil {
		return nil, fmt.Errorf("firestore client: %w", err)
	}
	return &Store{client: c, prefix: prefix, timeout: 10 * time.Second}, nil
}

// Close closes the client.
func (s *Store) Close() error { return s.client.Close() }

type doc struct {
	ID           string     `firestore:"id"`
	Class        string     `firestore:"class"`
	Error        string     `firestore:"error"`
	MessageID    string     `firestore:"message_id"`
	Subscription string     `firestore:"subscription"`
	Attempt      int64      `firestore:"attempt"`
	BatchID      string     `firestore:"batch_id"`
	Raw          []byte     `firestore:"raw"`
	RawSize      int64      `firestore:"raw_size"`
	RawSHA256    string     `firestore:"raw_sha256"`
	CreatedAt    time.Time  `firestore:"created_at"`
	Retries      int64      `firestore:"retries"`
	RetriedAt    *time.Time `firestore:"retried_at"`
	PublishedAt  *time.Time `firestore:"published_at"`
	// ExpireAt drives the TTL policy on dead_letters (firestore.indexes.json).
	ExpireAt time.Time `firestore:"expire_at"`
}

// Retention of dead letters and of delivery-attempt counts: the TTL policies
// on expire_at delete them after it (Firestore's TTL can lag by a day).
const (
	deadLetterRetention = 30 * 24 * time.Hour
	attemptRetention    = 7 * 24 * time.Hour
)

// wrap names the operation and translates the gRPC codes that mean "not
// reachable now" into events.ErrUnavailable, so nothing above this package
// reads gRPC codes.
func wrap(op string, err error) error {
	switch status.Code(err) {
	case codes.OK:
		return nil
	case codes.NotFound:
		return fmt.Errorf("%s: %w", op, events.ErrNotFound)
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted, codes.Internal, codes.Unknown:
		return fmt.Errorf("%s: %w: %w", op, events.ErrUnavailable, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w: %w", op, events.ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

func (s *Store) ref(id string) *firestore.DocumentRef {
	return s.client.Collection(s.prefix + "dead_letters").Doc(id)
}

func (d *doc) deadLetter() events.DeadLetter {
	return events.DeadLetter{ID: d.ID, Class: d.Class, Error: d.Error, MessageID: d.MessageID,
		Subscription: d.Subscription, Attempt: int(d.Attempt), BatchID: d.BatchID, Raw: d.Raw,
		RawSize: int(d.RawSize), RawSHA256: d.RawSHA256,
		CreatedAt: d.CreatedAt.UTC(), Retries: int(d.Retries), RetriedAt: d.RetriedAt, PublishedAt: d.PublishedAt}
}

// Put implements events.DeadLetters: Create fails on an existing id.
func (s *Store) Put(ctx context.Context, d events.DeadLetter) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if d.CreatedAt.IsZero() {
		d.CreatedAt = time.Now()
	}
	_, err := s.ref(d.ID).Create(ctx, &doc{ID: d.ID, Class: d.Class, Error: d.Error, MessageID: d.MessageID,
		Subscription: d.Subscription, Attempt: int64(d.Attempt), BatchID: d.BatchID, Raw: d.Raw,
		RawSize: int64(d.RawSize), RawSHA256: d.RawSHA256, CreatedAt: d.CreatedAt, ExpireAt: d.CreatedAt.Add(deadLetterRetention)})
	switch status.Code(err) {
	case codes.OK:
		return true, nil
	case codes.AlreadyExists:
		return false, nil
	}
	return false, wrap("store dead letter "+d.ID, err)
}

// List implements events.DeadLetters.
func (s *Store) List(ctx context.Context, limit int) ([]events.DeadLetter, error) {
	if limit <= 0 {
		limit = 50
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	snaps, err := s.client.Collection(s.prefix+"dead_letters").OrderBy("created_at", firestore.Desc).
		Limit(limit).Documents(ctx).GetAll()
	if err != nil {
		return nil, wrap("list dead letters", err)
	}
	out := []events.DeadLetter{}
	for _, snap := range snaps {
		var d doc
		if err := snap.DataTo(&d); err != nil {
			return nil, fmt.Errorf("decode dead letter %s: %w", snap.Ref.ID, err)
		}
		out = append(out, d.deadLetter())
	}
	return out, nil
}

// Get implements events.DeadLetters.
func (s *Store) Get(ctx context.Context, id string) (events.DeadLetter, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	snap, err := s.ref(id).Get(ctx)
	if err != nil {
		return events.DeadLetter{}, wrap("get dead letter "+id, err)
	}
	var d doc
	if err := snap.DataTo(&d); err != nil {
		return events.DeadLetter{}, fmt.Errorf("decode dead letter %s: %w", id, err)
	}
	return d.deadLetter(), nil
}

func (s *Store) update(ctx context.Context, op, id string, u []firestore.Update) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	_, err := s.ref(id).Update(ctx, u)
	return wrap(op+" "+id, err)
}

// MarkRetried implements events.DeadLetters.
func (s *Store) MarkRetried(ctx context.Context, id string) error {
	return s.update(ctx, "mark dead letter retried", id, []firestore.Update{
		{Path: "retries", Value: firestore.Increment(1)}, {Path: "retried_at", Value: time.Now()}})
}

// MarkPublished implements events.DeadLetters.
func (s *Store) MarkPublished(ctx context.Context, id string) error {
	return s.update(ctx, "mark dead letter published", id, []firestore.Update{{Path: "published_at", Value: time.Now()}})
}

// Attempt implements events.DeadLetters: a server-side increment of a
// counter per message id, then a read. Concurrent deliveries of one message
// never lose an increment (no transaction to contend on); each reads a count
// at least as high as its own, which is what bounding retries needs.
func (s *Store) Attempt(ctx context.Context, messageID string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	sum := sha256.Sum256([]byte(messageID))
	ref := s.client.Collection(s.prefix + "push_attempts").Doc(hex.EncodeToString(sum[:12]))
	if _, err := ref.Set(ctx, map[string]any{"attempts": firestore.Increment(1), "message_id": messageID,
		"updated_at": time.Now(), "expire_at": time.Now().Add(attemptRetention)}, firestore.MergeAll); err != nil {
		return 0, wrap("count attempt of message "+messageID, err)
	}
	snap, err := ref.Get(ctx)
	if err != nil {
		return 0, wrap("read attempts of message "+messageID, err)
	}
	v, err := snap.DataAt("attempts")
	if err != nil {
		return 0, fmt.Errorf("read attempts of message %s: %w", messageID, err)
	}
	n, ok := v.(int64)
	if !ok {
		return 0, errors.New("attempts is not an integer")
	}
	return int(n), nil
}
