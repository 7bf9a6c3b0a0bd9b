// Package events owns what the worker tells the outside world besides rows:
// completion events and their Publisher, dead letters (messages it could not
// process and will not retry) and the per-message attempt counts that bound
// retries when Pub/Sub does not send deliveryAttempt. It sits below the
// engine: the worker imports events, never the reverse.
package events

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"
)

// Sentinel errors the dead-letter stores return (wrapped).
var (
	// ErrNotFound: no dead letter with that id.
	ErrNotFound = errors.New("dead letter not found")
	// ErrUnavailable: the store could not be reached; retry later.
	ErrUnavailable = errors.New("dead-letter store unavailable")
)

// DeadLetter is a message that failed permanently, kept with its raw bytes so
// an operator can inspect and re-drive it.
type DeadLetter struct {
	ID           string     `json:"id"`
	Class        string     `json:"error_class"`
	Error        string     `json:"error"`
	MessageID    string     `json:"message_id"`
	Subscription string     `json:"subscription,omitempty"`
	Attempt      int        `json:"attempt"`
	BatchID      string     `json:"batch_id,omitempty"`
	Raw          []byte     `json:"raw"` // the request body as received (base64 in JSON)
	CreatedAt    time.Time  `json:"created_at"`
	Retries      int        `json:"retries"`
	RetriedAt    *time.Time `json:"retried_at"`
	// PublishedAt is when the dead-letter topic confirmed it (EVENTS=pubsub).
	PublishedAt *time.Time `json:"published_at"`
}

// DeadLetterID names a dead letter: one per Pub/Sub message id (so
// redeliveries of one poison message dead-letter it once), or per body when
// there is no message id.
func DeadLetterID(messageID string, raw []byte) string {
	var sum [32]byte
	if messageID != "" {
		sum = sha256.Sum256([]byte("msg:" + messageID))
	} else {
		sum = sha256.Sum256(append([]byte("raw:"), raw...))
	}
	return hex.EncodeToString(sum[:12])
}

// DeadLetters stores dead letters and attempt counts.
type DeadLetters interface {
	// Put stores d unless a dead letter with its id exists; it reports
	// whether this call stored it.
	Put(ctx context.Context, d DeadLetter) (bool, error)
	// List returns dead letters, newest first.
	List(ctx context.Context, limit int) ([]DeadLetter, error)
	// Get returns one, or ErrNotFound.
	Get(ctx context.Context, id string) (DeadLetter, error)
	// MarkRetried records a re-drive.
	MarkRetried(ctx context.Context, id string) error
	// MarkPublished records that the dead-letter topic confirmed it.
	MarkPublished(ctx context.Context, id string) error
	// Attempt counts one more delivery of messageID and returns the count
	// (under concurrent deliveries, a count at least as high as this one's).
	Attempt(ctx context.Context, messageID string) (int, error)
}
