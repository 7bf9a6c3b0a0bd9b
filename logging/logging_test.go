package logging_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/predworker/predworker/logging"
)

type stackErr struct{}

func (stackErr) Error() string      { return "boom" }
func (stackErr) StackTrace() string { return "goroutine 1 [running]:\nhere" }

func TestCloudLoggingFields(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log, err := logging.New(&buf, slog.LevelDebug, "json")
	if err != nil {
		t.Fatal(err)
	}
	log.Warn("careful", logging.Event(logging.EventLeaseLost), slog.String("batch_id", "b1"))
	log.Error("failed", logging.Err(fmt.Errorf("wrapped: %w", stackErr{})))
	log.Error("plain", logging.Err(errors.New("no stack of its own")))
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines", len(lines))
	}
	var recs []map[string]any
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not JSON: %s", l)
		}
		recs = append(recs, m)
	}
	if recs[0]["severity"] != "WARNING" || recs[0]["message"] != "careful" || recs[0]["event"] != "lease_lost" ||
		recs[0]["batch_id"] != "b1" || recs[0]["time"] == nil || recs[0]["level"] != nil || recs[0]["msg"] != nil {
		t.Errorf("warning record = %v", recs[0])
	}
	if recs[1]["severity"] != "ERROR" || recs[1]["error"] != "wrapped: boom" || recs[1]["stack_trace"] != "goroutine 1 [running]:\nhere" {
		t.Errorf("error record = %v", recs[1])
	}
	if st, _ := recs[2]["stack_trace"].(string); !strings.Contains(st, "logging_test") {
		t.Errorf("an error without a stack should carry the logging site's: %v", recs[2])
	}
	if _, err := logging.New(&buf, slog.LevelInfo, "xml"); err == nil {
		t.Error("unknown format accepted")
	}
	if _, err := logging.ParseLevel("loud"); err == nil {
		t.Error("unknown level accepted")
	}
}
