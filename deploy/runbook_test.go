package deploy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"

	"github.com/predworker/predworker/internal/emulator"
)

// fakeIDToken is what the stand-in gcloud prints for print-identity-token:
// JWT-shaped, so the stand-in front end can strip its signature the way
// Cloud Run does.
const fakeIDToken = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJydW5ib29rIn0.c2lnbmF0dXJlLW9mLXRoZS10ZXN0"

const runbookHost = "predworker-123456789012.us-central1.run.app"

// shBlocks returns the sh code blocks of a Markdown file, in order, and the
// level-2 headings each sits under.
func shBlocks(t *testing.T, path string) (blocks []string, sections map[string]int) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sections = map[string]int{}
	section, in, cur := "", false, []string{}
	for line := range strings.Lines(string(raw)) {
		switch {
		case !in && strings.HasPrefix(line, "## "):
			section = strings.TrimSpace(line[3:])
		case !in && strings.TrimSpace(line) == "```sh":
			in, cur = true, nil
		case in && strings.TrimSpace(line) == "```":
			in = false
			blocks = append(blocks, strings.Join(cur, ""))
			sections[section]++
		case in:
			cur = append(cur, line)
		}
	}
	if in {
		t.Fatalf("%s: an sh block is not closed", path)
	}
	return blocks, sections
}

// TestRunbook runs every sh block of docs/operations.md, in order, as one
// bash session, the way an operator would. gcloud and bq are the stand-ins
// (every command's flags checked against the installed CLI's help), except
// the Pub/Sub pulls, acks and publishes, which the real gcloud sends to the
// emulator. curl is real: it reaches a real worker through a stand-in for
// Cloud Run's front end, which lets in only the operator's ID token, taken
// from X-Serverless-Authorization, or from Authorization, whose signature it
// then strips (as Cloud Run does) so that the service refuses it. The
// dead letters, the batch and the revision the runbook acts on are real.
func TestRunbook(t *testing.T) {
	t.Parallel()
	realGcloud, err := exec.LookPath("gcloud")
	if err != nil {
		emulator.SkipOrFail(t, "gcloud is not installed: "+err.Error())
	}
	blocks, sections := shBlocks(t, "../docs/operations.md")
	for _, s := range []string{"Deploy", "Log in as an operator", "Look at batches and resume one", "Re-drive dead letters",
		"Roll back", "Alerts", "Rotate credentials"} {
		if sections[s] == 0 {
			t.Errorf("docs/operations.md: section %q has no sh block", s)
		}
	}
	ps, err := emulator.StartPubSub()
	if err != nil {
		emulator.SkipOrFail(t, err.Error())
	}
	t.Cleanup(ps.Stop)
	ctx := t.Context()
	client, err := pubsub.NewClient(ctx, emulator.Project)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	topic := func(id string) string { return "projects/" + emulator.Project + "/topics/" + id }
	sub := func(id string) string { return "projects/" + emulator.Project + "/subscriptions/" + id }
	for _, id := range []string{"predworker-requests", "predworker-completions", "predworker-dead-letters", "predworker-push-dlq"} {
		if _, err := client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: topic(id)}); err != nil {
			t.Fatal(err)
		}
	}
	for s, tp := range map[string]string{"predworker-dead-letters-audit": "predworker-dead-letters",
		"predworker-push-dlq-sub": "predworker-push-dlq", "requests-check": "predworker-requests"} {
		if _, err := client.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{Name: sub(s),
			Topic: topic(tp), AckDeadlineSeconds: 10}); err != nil {
			t.Fatal(err)
		}
	}
	// What Pub/Sub dead-letters after 10 unanswered deliveries: the request
	// with its attributes, plus Pub/Sub's own.
	pushDLQ := `{"game_date": "2025-01-15", "players": ["aaronadams"], "systems": ["moving_average"]}`
	if _, err := client.Publisher("predworker-push-dlq").Publish(ctx, &pubsub.Message{Data: []byte(pushDLQ),
		Attributes: map[string]string{"batch_id": "redriven-1", "correlation_id": "run,42",
			"CloudPubSubDeadLetterSourceSubscription": "predworker-push"}}).Get(ctx); err != nil {
		t.Fatal(err)
	}

	// The worker: first without zone_matchup_v1, so a push asking for it is
	// dead-lettered; then redeployed with it, so the re-drive succeeds.
	dir := t.TempDir()
	bin := filepath.Join(dir, "worker")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/worker").CombinedOutput(); err != nil {
		t.Fatalf("build worker: %v\n%s", err, out)
	}
	workerEnv := []string{"DATA_DIR=" + filepath.Join(dir, "data"), "HOST=127.0.0.1", "LOG_LEVEL=warn",
		"OPERATOR_TOKEN=" + fakeIDToken, "EVENTS=pubsub", "GOOGLE_CLOUD_PROJECT=" + emulator.Project,
		"COMPLETION_TOPIC=predworker-completions", "DEAD_LETTER_TOPIC=predworker-dead-letters"}
	w := startWorker(t, bin, append(workerEnv, "SYSTEMS=moving_average"))
	api := func(method, path, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, w.url+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+fakeIDToken)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		return resp.StatusCode, readAll(t, resp)
	}
	poison, _ := json.Marshal(map[string]any{"subscription": sub("predworker-push"), "message": map[string]any{
		"messageId": "m-1", "data": []byte(`{"game_date": "2025-01-15", "players": ["aaronadams"], "systems": ["zone_matchup_v1"]}`)}})
	if code, body := api("POST", "/pubsub/push", string(poison)); code/100 != 2 {
		t.Fatalf("push for a system not deployed: %d %s", code, body)
	}
	if code, body := api("POST", "/v1/batches", `{"batch_id": "runbook-1", "game_date": "2025-01-15", "players": ["aaronadams"], "systems": ["moving_average"]}`); code != 202 {
		t.Fatalf("create batch: %d %s", code, body)
	}
	_, body := api("GET", "/v1/dead-letters", "")
	var dl struct {
		DeadLetters []struct{ ID, Class string } `json:"dead_letters"`
	}
	if err := json.Unmarshal([]byte(body), &dl); err != nil || len(dl.DeadLetters) != 1 {
		t.Fatalf("dead letters: %s (%v)", body, err)
	}
	waitFor(t, "batch runbook-1 completed", func() bool {
		_, b := api("GET", "/v1/batches/runbook-1", "")
		return strings.Contains(b, `"state":"completed"`)
	})
	w.stop(t)
	w = startWorker(t, bin, workerEnv)

	front := newFrontEnd(t, w.url)
	curlHome := filepath.Join(dir, "curl")
	if err := os.Mkdir(curlHome, 0o755); err != nil {
		t.Fatal(err)
	}
	rc := fmt.Sprintf("connect-to = \"%s:443:127.0.0.1:%s\"\ncacert = \"%s\"\n", runbookHost, front.port, front.caFile)
	if err := os.WriteFile(filepath.Join(curlHome, ".curlrc"), []byte(rc), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "access-token")
	if err := os.WriteFile(tokenFile, []byte("emulator-needs-none"), 0o600); err != nil {
		t.Fatal(err)
	}

	st := newStandIns(t)
	script := filepath.Join(dir, "runbook.sh")
	if err := os.WriteFile(script, []byte("set -euo pipefail\n"+strings.Join(blocks, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", script)
	cmd.Dir = ".."
	cmd.Env = append(st.env(), "FAKE_ID_TOKEN="+fakeIDToken, "REAL_GCLOUD="+realGcloud,
		"CLOUDSDK_CONFIG="+filepath.Join(dir, "gcloud"), "CLOUDSDK_CORE_PROJECT="+emulator.Project,
		"CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB=http://"+os.Getenv("PUBSUB_EMULATOR_HOST")+"/",
		"CLOUDSDK_AUTH_ACCESS_TOKEN_FILE="+tokenFile, "CURL_HOME="+curlHome,
		"PROJECT_ID="+emulator.Project, "REGION=us-central1", "BATCH=runbook-1", "DLID="+dl.DeadLetters[0].ID,
		"REVISION=predworker-00001-xyz", "LEAVER=leaver@example.com",
		"OPERATOR_EMAILS=oncall@example.com,leaver@example.com,predworker-scheduler@"+emulator.Project+".iam.gserviceaccount.com")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the runbook stopped: %v\n%s", err, out)
	}

	// Every gcloud and bq command is one the installed CLI knows.
	calls := st.calls()
	for _, c := range calls {
		checkFlags(t, c)
	}
	checkRunbookCalls(t, calls)

	// Every API call got in and reached a handler: none refused, none
	// unknown; the re-drive started its batch.
	seen := map[string]int{}
	for _, r := range front.log() {
		seen[r.method+" "+r.path] = r.status
		if r.status == 401 || r.status == 403 || r.status == 404 || r.status == 405 || r.status >= 500 {
			t.Errorf("%s %s answered %d", r.method, r.path, r.status)
		}
	}
	for call, want := range map[string]int{"GET /v1/doctor": 200, "GET /v1/batches": 200, "GET /v1/batches/runbook-1": 200,
		"POST /v1/batches/runbook-1/resume": 200, "POST /v1/sweep": 200, "GET /v1/dead-letters": 200,
		"POST /v1/dead-letters/" + dl.DeadLetters[0].ID + "/retry": 202} {
		if seen[call] != want {
			t.Errorf("%s: %d, want %d (the runbook's calls: %v)", call, seen[call], want, seen)
		}
	}

	// Pub/Sub's dead letter went back to the requests topic with its own
	// attributes (Pub/Sub's removed) and was acknowledged; the audit copies
	// of ours were acknowledged.
	msgs := pull(t, client, sub("requests-check"))
	if len(msgs) != 1 || string(msgs[0].Message.Data) != pushDLQ ||
		!maps.Equal(msgs[0].Message.Attributes, map[string]string{"batch_id": "redriven-1", "correlation_id": "run,42"}) {
		t.Errorf("re-driven messages: %v", msgs)
	}
	for _, s := range []string{"predworker-push-dlq-sub", "predworker-dead-letters-audit"} {
		if left := pull(t, client, sub(s)); len(left) != 0 {
			t.Errorf("%s still holds %d messages", s, len(left))
		}
	}
}

// checkRunbookCalls checks what the runbook asked gcloud for: an ID token
// of the operator account for the service's URL with its e-mail, and Cloud
// Build substitutions that survive the commas of OPERATOR_EMAILS.
func checkRunbookCalls(t *testing.T, calls [][]string) {
	t.Helper()
	var tokens, builds int
	for _, c := range calls {
		switch {
		case isCall(c, "gcloud", "auth", "print-identity-token"):
			tokens++
			sa, _ := flagValue(c, "impersonate-service-account")
			aud, _ := flagValue(c, "audiences")
			_, email := flagValue(c, "include-email")
			if sa != "predworker-operator@"+emulator.Project+".iam.gserviceaccount.com" || aud != "https://"+runbookHost || !email {
				t.Errorf("identity token asked with %v", c)
			}
		case isCall(c, "gcloud", "builds", "submit") && slices.Contains(c, "--config=cloudbuild.yaml"):
			builds++
			v, _ := flagValue(c, "substitutions")
			subs := gcloudDict(v)
			emails := strings.Split(subs["_OPERATOR_EMAILS"], ",")
			if subs["_REGION"] != "us-central1" || len(emails) < 2 || slices.Contains(emails, "") {
				t.Errorf("cloud build substitutions %q read as %v", v, subs)
			}
		}
	}
	if tokens == 0 || builds < 2 {
		t.Errorf("%d identity tokens and %d Cloud Builds asked for; want a token, a deploy and the redeploy without the leaver", tokens, builds)
	}
}

// gcloudDict parses a KEY=VALUE list flag the way gcloud does: comma
// separated, or separated by X after a "^X^" prefix.
func gcloudDict(v string) map[string]string {
	sep := ","
	if m := regexp.MustCompile(`^\^(.+?)\^`).FindStringSubmatch(v); m != nil {
		sep, v = m[1], v[len(m[0]):]
	}
	out := map[string]string{}
	for kv := range strings.SplitSeq(v, sep) {
		k, val, _ := strings.Cut(kv, "=")
		out[k] = val
	}
	return out
}

// pull takes (and acknowledges) what a subscription holds now.
func pull(t *testing.T, client *pubsub.Client, sub string) []*pubsubpb.ReceivedMessage {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	resp, err := client.SubscriptionAdminClient.Pull(ctx, &pubsubpb.PullRequest{Subscription: sub, MaxMessages: 100})
	if err != nil {
		if ctx.Err() != nil {
			return nil // nothing arrived
		}
		t.Fatalf("pull %s: %v", sub, err)
	}
	var ids []string
	for _, m := range resp.ReceivedMessages {
		ids = append(ids, m.AckId)
	}
	if len(ids) > 0 {
		if err := client.SubscriptionAdminClient.Acknowledge(t.Context(), &pubsubpb.AcknowledgeRequest{Subscription: sub, AckIds: ids}); err != nil {
			t.Fatal(err)
		}
	}
	return resp.ReceivedMessages
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// runningWorker is a worker process serving on url.
type runningWorker struct {
	cmd  *exec.Cmd
	url  string
	done chan error
}

// startWorker runs `worker serve` with env on a free port and waits until
// it answers /health.
func startWorker(t *testing.T, bin string, env []string) *runningWorker {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	w := &runningWorker{cmd: exec.Command(bin, "serve"), url: fmt.Sprintf("http://127.0.0.1:%d", port), done: make(chan error, 1)}
	w.cmd.Env = append(append(os.Environ(), env...), fmt.Sprintf("PORT=%d", port))
	w.cmd.Stdout, w.cmd.Stderr = os.Stderr, os.Stderr
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { w.done <- w.cmd.Wait() }()
	t.Cleanup(func() { _ = syscall.Kill(-w.cmd.Process.Pid, syscall.SIGKILL) })
	waitFor(t, "the worker to serve", func() bool {
		resp, err := http.Get(w.url + "/health")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == 200
	})
	return w
}

// stop sends SIGTERM and waits for the exit.
func (w *runningWorker) stop(t *testing.T) {
	t.Helper()
	_ = syscall.Kill(-w.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case err := <-w.done:
		if err != nil {
			t.Fatalf("the worker's drain ended with %v, want exit 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the worker did not stop on SIGTERM")
	}
}

// frontEnd stands in for Cloud Run's front end of an IAM-private service.
type frontEnd struct {
	port, caFile string
	mu           sync.Mutex
	requests     []frontRequest
}

type frontRequest struct {
	method, path string
	status       int
}

func (f *frontEnd) log() []frontRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) { s.status = code; s.ResponseWriter.WriteHeader(code) }

// newFrontEnd serves HTTPS for runbookHost (a certificate of a CA of its
// own, in caFile) and proxies to backend what the IAM check lets in.
func newFrontEnd(t *testing.T, backend string) *frontEnd {
	t.Helper()
	target, err := url.Parse(backend)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	f := &frontEnd{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, status: 200}
		defer func() {
			f.mu.Lock()
			f.requests = append(f.requests, frontRequest{r.Method, r.URL.Path, sw.status})
			f.mu.Unlock()
		}()
		iam, fromAuthorization := r.Header.Get("X-Serverless-Authorization"), false
		if iam == "" {
			iam, fromAuthorization = r.Header.Get("Authorization"), true
		}
		if iam != "Bearer "+fakeIDToken {
			http.Error(sw, "the caller is not an invoker", http.StatusForbidden)
			return
		}
		r.Header.Del("X-Serverless-Authorization")
		if fromAuthorization { // Cloud Run strips the signature of the token it checked
			r.Header.Set("Authorization", "Bearer "+fakeIDToken[:strings.LastIndex(fakeIDToken, ".")+1])
		}
		proxy.ServeHTTP(sw, r)
	}))
	cert, caPEM := testCertificate(t, runbookHost)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	f.caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(f.caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	_, f.port, _ = net.SplitHostPort(srv.Listener.Addr().String())
	return f
}

// testCertificate makes a CA and a certificate it signs for host.
func testCertificate(t *testing.T, host string) (tls.Certificate, []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "runbook test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
}
