package deploy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/predworker/predworker/internal/emulator"
	"github.com/predworker/predworker/internal/indexfile"
)

// standIn is a gcloud (or bq) that records each call as one JSON line, keeps
// a copy of every service definition it is asked to apply, and answers what
// the real one would where setup.sh reads an answer.
const standIn = `#!/usr/bin/env bash
set -euo pipefail
prog="$(basename "$0")"
python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "$prog" "$@" >> "$FAKE_LOG"
args=" $* "
case "$args" in
  *" projects describe "*) echo 123456789012 ;;
  *" monitoring channels create "*) echo "projects/p/notificationChannels/42" ;;
  *" config get-value account "*) echo oncall@example.com ;;
  *" auth print-identity-token "*) echo "${FAKE_ID_TOKEN:-}" ;;
  *" run revisions list "*) printf 'predworker-00002-abc\npredworker-00001-xyz\n' ;;
esac
# Messages really move: these go to the real gcloud (and the Pub/Sub
# emulator) when the test provides one.
if [ "$prog" = gcloud ] && [ -n "${REAL_GCLOUD:-}" ] && [ "${1:-}" = pubsub ]; then
  case "${2:-} ${3:-}" in
    "subscriptions pull"|"subscriptions ack"|"topics publish") exec "$REAL_GCLOUD" "$@" ;;
  esac
fi
if [ "$prog" = gcloud ] && [ "${1:-}" = run ] && [ "${2:-}" = services ] && [ "${3:-}" = replace ]; then
  n=$(ls "$FAKE_DIR" | grep -c '^service-' || true)
  cp "$4" "$FAKE_DIR/service-$n.yaml"
fi
`

// runSetup runs deploy/setup.sh with stand-ins for gcloud and bq on PATH and
// returns the commands it ran, in order, and the service definitions it
// applied.
func runSetup(t *testing.T, env ...string) ([][]string, []service) {
	t.Helper()
	st := newStandIns(t)
	cmd := exec.Command("bash", "setup.sh")
	cmd.Env = append(st.env(), "PROJECT_ID=my-project", "REGION=us-central1",
		"IMAGE=us-central1-docker.pkg.dev/my-project/predworker/worker:b1",
		"OPERATOR_EMAILS=oncall@example.com", "ALERT_EMAIL=oncall@example.com")
	cmd.Env = append(cmd.Env, env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("setup.sh: %v\n%s", err, out)
	}
	return st.calls(), st.services()
}

// standIns is a directory with the stand-in gcloud and bq, their call log
// and the service definitions they were asked to apply.
type standIns struct {
	t   *testing.T
	dir string
}

func newStandIns(t *testing.T) *standIns {
	t.Helper()
	st := &standIns{t: t, dir: t.TempDir()}
	if err := os.Mkdir(filepath.Join(st.dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, prog := range []string{"gcloud", "bq"} {
		if err := os.WriteFile(filepath.Join(st.dir, "bin", prog), []byte(standIn), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// env is the environment of a command that finds the stand-ins first.
func (st *standIns) env() []string {
	return append(os.Environ(), "PATH="+filepath.Join(st.dir, "bin")+":"+os.Getenv("PATH"),
		"FAKE_LOG="+filepath.Join(st.dir, "calls.jsonl"), "FAKE_DIR="+st.dir, "TMPDIR="+st.dir)
}

// calls returns every recorded call, in order.
func (st *standIns) calls() [][]string {
	st.t.Helper()
	raw, err := os.ReadFile(filepath.Join(st.dir, "calls.jsonl"))
	if err != nil {
		st.t.Fatal(err)
	}
	var calls [][]string
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var c []string
		if err := json.Unmarshal([]byte(line), &c); err != nil {
			st.t.Fatal(err)
		}
		calls = append(calls, c)
	}
	return calls
}

// services returns the service definitions applied, in order.
func (st *standIns) services() []service {
	st.t.Helper()
	var svcs []service
	for i := 0; ; i++ {
		b, err := os.ReadFile(filepath.Join(st.dir, fmt.Sprintf("service-%d.yaml", i)))
		if err != nil {
			break
		}
		if strings.Contains(string(b), "${") {
			st.t.Errorf("applied service definition still has a placeholder:\n%s", b)
		}
		var s service
		if err := yaml.Unmarshal(b, &s); err != nil {
			st.t.Fatal(err)
		}
		svcs = append(svcs, s)
	}
	return svcs
}

// has reports whether call has the flag --name=value (or, value "", --name).
func flagValue(call []string, name string) (string, bool) {
	for _, a := range call {
		if a == "--"+name {
			return "", true
		}
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func isCall(call []string, words ...string) bool {
	for i, w := range words {
		if i >= len(call) || call[i] != w {
			return false
		}
	}
	return true
}

// cliHelp caches the installed CLI's help per command path.
var (
	cliHelpMu sync.Mutex
	cliHelp   = map[string]string{}
)

// checkFlags checks the flags of one executed command against the installed
// gcloud or bq.
func checkFlags(t *testing.T, call []string) {
	t.Helper()
	var path, flags []string
	for _, w := range call[1:] {
		switch {
		case strings.HasPrefix(w, "--"):
			flags = append(flags, flagRe.FindStringSubmatch(w)[1])
		case len(flags) == 0 && regexp.MustCompile(`^[a-z][a-z-]*$`).MatchString(w):
			path = append(path, w)
		}
	}
	cliHelpMu.Lock()
	defer cliHelpMu.Unlock()
	var text string
	if call[0] == "gcloud" {
		for len(path) > 0 {
			key := "gcloud " + strings.Join(path, " ")
			if h, ok := cliHelp[key]; ok {
				text = h
				break
			}
			out, err := exec.Command("gcloud", append(path, "--help")...).CombinedOutput()
			if err == nil {
				text = string(out)
				cliHelp[key] = text
				break
			}
			path = path[:len(path)-1]
		}
	} else {
		var sub string
		for _, w := range call[1:] {
			if !strings.HasPrefix(w, "--") {
				sub = w
				break
			}
		}
		key := "bq " + sub
		if h, ok := cliHelp[key]; ok {
			text = h
		} else {
			out, _ := exec.Command("bq", "help", sub).CombinedOutput() // bq help exits 1 even when it helps
			text = string(out)
			cliHelp[key] = text
		}
	}
	if text == "" {
		t.Errorf("%s: not a command of the installed CLI", strings.Join(call, " "))
		return
	}
	for _, f := range flags {
		if call[0] == "bq" && (f == "project_id" || f == "location") {
			continue // global bq flags
		}
		if !strings.Contains(text, "--"+f) && !strings.Contains(text, "--[no]"+f) {
			t.Errorf("%s: the installed CLI has no --%s", strings.Join(call[:min(len(call), 4)], " "), f)
		}
	}
}

// TestSetupRunsEndToEnd runs deploy/setup.sh against stand-ins for gcloud
// and bq and checks what it did: every command's flags against the installed
// CLI, a first revision that can start (its audiences and operators set), no
// subscription that can expire, a subscription on every topic that receives
// dead letters, the Firestore indexes and TTL policies with and without a
// collection prefix, the alert policies, and roles scoped to what needs them.
func TestSetupRunsEndToEnd(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("gcloud"); err != nil {
		emulator.SkipOrFail(t, "gcloud is not installed: "+err.Error())
	}
	calls, svcs := runSetup(t)
	for _, c := range calls {
		checkFlags(t, c)
	}
	const url = "https://predworker-123456789012.us-central1.run.app"

	// One service definition, applied once, complete from the first revision.
	if len(svcs) != 1 {
		t.Fatalf("%d service definitions applied, want 1", len(svcs))
	}
	env := map[string]string{}
	for _, e := range svcs[0].Spec.Template.Spec.Containers[0].Env {
		if strings.TrimSpace(e.Value) == "" {
			t.Errorf("service env %s is empty in the applied definition", e.Name)
		}
		env[e.Name] = e.Value
	}
	if env["PUSH_AUDIENCE"] != url+"/pubsub/push" || env["OPERATOR_AUDIENCE"] != url ||
		!strings.Contains(env["OPERATOR_EMAILS"], "predworker-scheduler@my-project.iam.gserviceaccount.com") ||
		!strings.Contains(env["OPERATOR_EMAILS"], "oncall@example.com") || env["PUSH_CONTINUATION_TOPIC"] == "" {
		t.Errorf("applied env: %v", env)
	}
	if sa := svcs[0].Spec.Template.Spec.ServiceAccountName; sa != "predworker-run@my-project.iam.gserviceaccount.com" {
		t.Errorf("service account %q", sa)
	}

	// Order: the service exists before anything points at its URL.
	replaced := -1
	for i, c := range calls {
		switch {
		case isCall(c, "gcloud", "run", "services", "describe"):
			t.Errorf("call %d reads the service URL back (%v): it is computed", i, c)
		case isCall(c, "gcloud", "run", "services", "replace"):
			replaced = i
		case isCall(c, "gcloud", "pubsub", "subscriptions", "create"), isCall(c, "gcloud", "scheduler", "jobs", "create"),
			isCall(c, "gcloud", "run", "services", "add-iam-policy-binding"):
			if replaced < 0 {
				t.Errorf("call %d (%v) comes before the service exists", i, c[:5])
			}
			if v, ok := flagValue(c, "push-endpoint"); ok && v != url+"/pubsub/push" {
				t.Errorf("push endpoint %q", v)
			}
		}
	}

	// Subscriptions never expire; every dead-letter topic has one.
	subscribed := map[string]bool{}
	deadLetterTopics := []string{"predworker-dead-letters"} // the service's own (DEAD_LETTER_TOPIC)
	for _, c := range calls {
		if !isCall(c, "gcloud", "pubsub", "subscriptions", "create") {
			continue
		}
		if v, _ := flagValue(c, "expiration-period"); v != "never" {
			t.Errorf("subscription %s can expire (--expiration-period=%q)", c[4], v)
		}
		topic, _ := flagValue(c, "topic")
		subscribed[topic] = true
		if dlt, ok := flagValue(c, "dead-letter-topic"); ok {
			deadLetterTopics = append(deadLetterTopics, dlt)
		}
	}
	for _, topic := range deadLetterTopics {
		if !subscribed[topic] {
			t.Errorf("dead letters go to %s, which has no subscription: they would be lost", topic)
		}
	}

	// Roles: nothing project-wide that a dataset or a topic would do; every
	// operator may invoke the service.
	invokers := map[string]bool{}
	for _, c := range calls {
		role, _ := flagValue(c, "role")
		member, _ := flagValue(c, "member")
		if isCall(c, "gcloud", "projects", "add-iam-policy-binding") &&
			(strings.HasPrefix(role, "roles/bigquery.data") || strings.HasPrefix(role, "roles/pubsub.")) {
			t.Errorf("project-wide %s for %s", role, member)
		}
		if isCall(c, "gcloud", "run", "services", "add-iam-policy-binding") && role == "roles/run.invoker" {
			invokers[member] = true
		}
	}
	for _, who := range []string{"user:oncall@example.com", "serviceAccount:predworker-push@my-project.iam.gserviceaccount.com",
		"serviceAccount:predworker-scheduler@my-project.iam.gserviceaccount.com"} {
		if !invokers[who] {
			t.Errorf("%s may not invoke the service", who)
		}
	}

	// Alert policies: every file applied, each parses.
	files, _ := filepath.Glob("alerts/*.json")
	applied := 0
	for _, c := range calls {
		if isCall(c, "gcloud", "alpha", "monitoring", "policies", "create") {
			if v, ok := flagValue(c, "notification-channels"); !ok || v == "" {
				t.Errorf("alert policy without the notification channel: %v", c)
			}
			applied++
		}
	}
	if len(files) < 5 || applied != len(files) {
		t.Errorf("%d alert policy files, %d applied", len(files), applied)
	}

	checkIndexCommands(t, calls, "")
	calls, _ = runSetup(t, "FIRESTORE_PREFIX=staging_")
	checkIndexCommands(t, calls, "staging_")
}

// group applies the collection prefix (chunks is a subcollection: never).
func group(prefix, g string) string {
	if g == "chunks" {
		return g
	}
	return prefix + g
}

// checkIndexCommands checks that setup.sh creates every composite index,
// TTL policy and exemption of firestore.indexes.json, under prefix.
func checkIndexCommands(t *testing.T, calls [][]string, prefix string) {
	t.Helper()
	var composites, ttls, exemptions []string
	for _, c := range calls {
		g, _ := flagValue(c, "collection-group")
		switch {
		case isCall(c, "gcloud", "firestore", "indexes", "composite", "create"):
			var fields []string
			for _, a := range c {
				if v, ok := strings.CutPrefix(a, "--field-config="); ok {
					fields = append(fields, strings.ToLower(v))
				}
			}
			composites = append(composites, g+":"+strings.Join(fields, ";"))
		case isCall(c, "gcloud", "firestore", "fields", "ttls", "update"):
			ttls = append(ttls, g+"."+c[5])
		case isCall(c, "gcloud", "firestore", "indexes", "fields", "update"):
			if _, ok := flagValue(c, "disable-indexes"); ok {
				exemptions = append(exemptions, g+"."+c[5])
			}
		}
	}
	f := indexfile.Read(t, "..")
	for _, ix := range f.Indexes {
		var fields []string
		for _, fl := range ix.Fields {
			fields = append(fields, strings.ToLower("field-path="+fl.FieldPath+",order="+fl.Order))
		}
		want := group(prefix, ix.CollectionGroup) + ":" + strings.Join(fields, ";")
		if !slices.Contains(composites, want) {
			t.Errorf("prefix %q: setup.sh does not create the index %s (it creates %v)", prefix, want, composites)
		}
	}
	for _, o := range f.FieldOverrides {
		want := group(prefix, o.CollectionGroup) + "." + o.FieldPath
		switch {
		case o.TTL && !slices.Contains(ttls, want):
			t.Errorf("prefix %q: no TTL policy on %s", prefix, want)
		case !o.TTL && len(o.Indexes) == 0 && !slices.Contains(exemptions, want):
			t.Errorf("prefix %q: %s is not exempted from indexing", prefix, want)
		}
	}
	for _, g := range []string{"batches", "chunks", "outbox", "dead_letters", "push_attempts"} {
		if !slices.Contains(ttls, group(prefix, g)+".expire_at") {
			t.Errorf("prefix %q: collection %s has no TTL policy", prefix, group(prefix, g))
		}
	}
}

// The alert policies query metrics the service really exports, and each
// says what to do.
func TestAlertPoliciesUseRealMetrics(t *testing.T) {
	t.Parallel()
	src, err := os.ReadFile("../worker/metrics.go")
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, m := range regexp.MustCompile(`"(predworker_[a-z_]+)"`).FindAllStringSubmatch(string(src), -1) {
		exported[m[1]] = true
	}
	files, _ := filepath.Glob("alerts/*.json")
	if len(files) < 5 {
		t.Fatalf("%d alert policies", len(files))
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var p struct {
			DisplayName string `json:"displayName"`
			Conditions  []struct {
				PromQL struct {
					Query string `json:"query"`
				} `json:"conditionPrometheusQueryLanguage"`
			} `json:"conditions"`
			Documentation struct {
				Content string `json:"content"`
			} `json:"documentation"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if p.DisplayName == "" || len(p.Conditions) == 0 || len(p.Documentation.Content) < 40 {
			t.Errorf("%s: name, conditions or documentation missing", f)
		}
		for _, c := range p.Conditions {
			if c.PromQL.Query == "" {
				t.Errorf("%s: a condition without a PromQL query", f)
			}
			for _, m := range regexp.MustCompile(`predworker_[a-z_]+`).FindAllString(c.PromQL.Query, -1) {
				name := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_count"), "_sum"), "_bucket")
				if !exported[name] {
					t.Errorf("%s: %s is not a metric the service exports", f, m)
				}
			}
		}
	}
}

// cloudbuild.yaml tags with a value every build has, runs the emulator
// tests for real, and deploys deploy/service.yaml.
func TestCloudBuild(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../cloudbuild.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cb struct {
		Steps []struct {
			ID   string   `yaml:"id"`
			Name string   `yaml:"name"`
			Env  []string `yaml:"env"`
			Args []string `yaml:"args"`
		} `yaml:"steps"`
		Images []string `yaml:"images"`
	}
	if err := yaml.Unmarshal(raw, &cb); err != nil {
		t.Fatal(err)
	}
	var used []string // what the build runs, comments aside
	for _, s := range cb.Steps {
		used = append(used, s.Args...)
	}
	if strings.Contains(strings.Join(append(used, cb.Images...), " "), "SHORT_SHA") || !strings.Contains(cb.Images[0], ":$BUILD_ID") {
		t.Errorf("images are tagged %v; $SHORT_SHA exists only in triggered builds", cb.Images)
	}
	steps := map[string]string{}
	for _, s := range cb.Steps {
		steps[s.ID] = s.Name + " " + strings.Join(s.Env, " ") + " " + strings.Join(s.Args, " ")
	}
	if !strings.Contains(steps["test"], "google-cloud-cli") || strings.Contains(steps["test"], "slim") ||
		!strings.Contains(steps["test"], "PREDWORKER_REQUIRE_EMULATORS=1") || !strings.Contains(steps["test"], "--- SKIP") {
		t.Errorf("the test step does not run the emulator tests for real: %s", steps["test"])
	}
	if !strings.Contains(steps["deploy"], "run services replace") || !strings.Contains(steps["deploy"], "deploy/service.yaml") ||
		strings.Contains(steps["deploy"], "--image") {
		t.Errorf("the deploy step does not apply deploy/service.yaml: %s", steps["deploy"])
	}
}

// Without IMAGE, setup.sh has Cloud Build build the first image into the
// repository it has just made, and deploys that image; every deploy sends
// all traffic to the new revision (ending any rollback).
func TestSetupBuildsTheFirstImage(t *testing.T) {
	t.Parallel()
	calls, svcs := runSetup(t, "IMAGE=")
	repo, built, replaced, tag := -1, -1, -1, ""
	for i, c := range calls {
		switch {
		case isCall(c, "gcloud", "artifacts", "repositories", "create"):
			repo = i
		case isCall(c, "gcloud", "builds", "submit"):
			built = i
			tag, _ = flagValue(c, "tag")
		case isCall(c, "gcloud", "run", "services", "replace"):
			replaced = i
		}
	}
	if repo < 0 || built < repo || replaced < built ||
		!regexp.MustCompile(`^us-central1-docker\.pkg\.dev/my-project/predworker/worker:setup-\d{14}$`).MatchString(tag) {
		t.Fatalf("repository at call %d, build at %d (tag %q), deploy at %d", repo, built, tag, replaced)
	}
	if len(svcs) != 1 || svcs[0].Spec.Template.Spec.Containers[0].Image != tag {
		t.Fatalf("deployed %+v, want the image just built", svcs)
	}
	if tr := svcs[0].Spec.Traffic; len(tr) != 1 || !tr[0].LatestRevision || tr[0].Percent != 100 {
		t.Fatalf("traffic %+v, want all of it on the latest revision", tr)
	}
}
