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
	"unicode/utf8"
)

// Sentinel errors the dead-letter stores return (wrapped).
var (
	// ErrNotFound: no dead letter with that id.
	ErrNotFound = errors.New("dead letter not found")
	// ErrUnavailable: the store or the topic could not be reached; retry
	// later.
	ErrUnavailable = errors.New("events backend unavailable")
	// ErrRejected: the publisher refused the message in a way retrying
	// cannot fix (the topic does not exist, no permission, invalid message).
	ErrRejected = errors.New("message rejected by the publisher")
)

// DeadLetter is a message that failed permanently, kept with its raw bytes so
// an operator can inspect and re-drive it.
type DeadLetter struct {
	ID           string `json:"id"`
	Class        string `json:"error_class"`
	Error        string `json:"error"`
	MessageID    string `json:"message_id"`
	Subscription string `json:"subscription,omitempty"`
	Attempt      int    `json:"attempt"`
	BatchID      string `json:"batch_id,omitempty"`
	// Raw is the request body as received (base64 in JSON), cut to
	// MaxRaw bytes; RawSize and RawSHA256 describe the whole body.
	Raw       []byte     `json:"raw"`
	RawSize   int        `json:"raw_size"`
	RawSHA256 string     `json:"raw_sha256"`
	CreatedAt time.Time  `json:"created_at"`
	Retries   int        `json:"retries"`
	RetriedAt *time.Time `json:"retried_at"`
	// PublishedAt is when the dead-letter topic confirmed it (EVENTS=pubsub).
	PublishedAt *time.Time `json:"published_at"`
}

// MaxRaw bounds the body a dead letter keeps: a push body may be 1 MiB,
// which is also Firestore's whole document limit.
const MaxRaw = 256 << 10

// MaxError bounds a dead letter's error text.
const MaxError = 4 << 10

// TruncateUTF8 cuts s to at most n bytes without splitting a character, so
// what is left is still valid UTF-8 (Pub/Sub attributes and Firestore
// strings must be).
func TruncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// SetRaw keeps the first MaxRaw bytes of raw, and the size and SHA-256 of
// all of it.
func (d *DeadLetter) SetRaw(raw []byte) {
	sum := sha256.Sum256(raw)
	d.RawSize, d.RawSHA256 = len(raw), hex.EncodeToString(sum[:])
	d.Raw = raw[:min(len(raw), MaxRaw)]
}

// Truncated reports whether Raw is only the start of the body.
func (d *DeadLetter) Truncated() bool { return d.RawSize > len(d.Raw) }

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
