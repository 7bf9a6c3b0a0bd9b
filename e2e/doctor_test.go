package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"

	"github.com/predworker/predworker/internal/emulator"
)

// `worker doctor` against the real emulators, Firestore state and Pub/Sub
// events: a missing dead-letter topic fails the check that names it (and
// only that check) with exit 1; once the topic exists every check passes
// and it exits 0.
func TestDoctorFindsAMissingTopic(t *testing.T) {
	t.Parallel()
	emulator.SkipOrFail(t, firestoreSkip)
	emulator.SkipOrFail(t, pubsubSkip)
	ctx := t.Context()
	client := pubsubClient(t)
	suffix := fmt.Sprint(time.Now().UnixNano())
	completions, deadLetters := "doctor-completions-"+suffix, "doctor-dead-letters-"+suffix
	if _, err := client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: topicName(completions)}); err != nil {
		t.Fatal(err)
	}
	doctor := func() (string, int) {
		cmd := exec.CommandContext(ctx, binary, "doctor")
		cmd.Env = append(os.Environ(), "DATA_DIR="+t.TempDir(), "STATE_STORE=firestore", "EVENTS=pubsub",
			"GOOGLE_CLOUD_PROJECT="+emulator.Project, "FIRESTORE_PREFIX="+fmt.Sprintf("doctor%d_", os.Getpid()),
			"COMPLETION_TOPIC="+completions, "DEAD_LETTER_TOPIC="+deadLetters)
		var out bytes.Buffer
		cmd.Stdout = &out
		err := cmd.Run()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatal(err)
		}
		return out.String(), cmd.ProcessState.ExitCode()
	}

	out, code := doctor()
	var failed []string
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, "FAIL") {
			failed = append(failed, line)
		}
	}
	if code != 1 || len(failed) != 1 || !strings.Contains(failed[0], "topics/"+deadLetters) ||
		strings.Contains(failed[0], "topics/"+completions+":") || !strings.Contains(out, "ok   state store (firestore)") {
		t.Fatalf("doctor without the dead-letter topic exited %d:\n%s", code, out)
	}

	if _, err := client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: topicName(deadLetters)}); err != nil {
		t.Fatal(err)
	}
	out, code = doctor()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) < 5 {
		t.Fatalf("doctor with every topic exited %d:\n%s", code, out)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "ok ") {
			t.Errorf("doctor line %q", l)
		}
	}
}
