// Package e2e proves the guarantees from the outside: it builds the real
// binary, runs it as separate processes on loopback, kills them with SIGKILL,
// SIGTERM and SIGSTOP, and checks the results through the HTTP API and the
// log events.
package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/predworker/predworker/api"
	"github.com/predworker/predworker/internal/emulator"
	"github.com/predworker/predworker/state"
	statefirestore "github.com/predworker/predworker/state/firestore"
	statesqlite "github.com/predworker/predworker/state/sqlite"
	"github.com/predworker/predworker/systems"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "predworker-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "worker")
	build := exec.Command("go", "build", "-o", binary, "../cmd/worker")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build worker:", err)
		os.Exit(1)
	}
	firestoreEmu, err = emulator.StartFirestore()
	if err != nil {
		firestoreSkip = err.Error()
	}
	pubsubEmu, err = emulator.StartPubSub()
	if err != nil {
		pubsubSkip = err.Error()
	}
	code := m.Run()
	if firestoreEmu != nil {
		firestoreEmu.Stop()
	}
	if pubsubEmu != nil {
		pubsubEmu.Stop()
	}
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// firestoreSkip says why the Firestore emulator is unavailable ("" when it runs).
var (
	firestoreSkip string
	firestoreEmu  *emulator.Firestore
	pubsubSkip    string
	pubsubEmu     *emulator.PubSub
)

var prefixSeq atomic.Int64

// backends are the state stores every recovery test runs against.
var backends = []string{"sqlite", "firestore"}

// event is one JSON log line of the worker.
type event struct {
	Time     time.Time `json:"time"`
	Severity string    `json:"severity"`
	Message  string    `json:"message"`
	Event    string    `json:"event"`
	BatchID  string    `json:"batch_id"`
	Chunk    *int      `json:"chunk"`
	Epoch    int64     `json:"epoch"`
	Addr     string    `json:"addr"`
	Owner    string    `json:"owner"`
	Error    string    `json:"error"`
	Method   string    `json:"method"`
	Path     string    `json:"path"`
	Status   int       `json:"status"`
	Raw      string    `json:"-"`
	Instance int       `json:"-"` // which process wrote it
}

// proc is one running worker process.
type proc struct {
	t        testing.TB
	cmd      *exec.Cmd
	instance int
	addr     string
	owner    string
	mu       sync.Mutex
	events   []event
	exited   chan struct{}
	exitErr  error
}

// cluster starts worker processes on one data directory and keeps every log
// event they wrote, in order.
type cluster struct {
	t       testing.TB
	dataDir string
	backend string
	prefix  string
	port    int // 0: a free one per process
	env     []string
	mu      sync.Mutex
	procs   []*proc
}

func newCluster(t testing.TB, backend string, env ...string) *cluster {
	t.Helper()
	c := &cluster{t: t, dataDir: t.TempDir(), backend: backend, env: env}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		// Each worker's last words (access-log lines aside), to see why.
		c.mu.Lock()
		procs := append([]*proc(nil), c.procs...)
		c.mu.Unlock()
		for _, p := range procs {
			var said []event
			for _, e := range p.eventsSnapshot() {
				if e.Message != "request" {
					said = append(said, e)
				}
			}
			for _, e := range said[max(0, len(said)-40):] {
				t.Logf("worker %d: %s", e.Instance, e.Raw)
			}
		}
	})
	if backend == "firestore" {
		emulator.SkipOrFail(t, firestoreSkip)
		c.prefix = fmt.Sprintf("e2e%d_%d_", os.Getpid(), prefixSeq.Add(1))
		c.env = append([]string{"STATE_STORE=firestore", "GOOGLE_CLOUD_PROJECT=" + emulator.Project,
			"FIRESTORE_PREFIX=" + c.prefix}, c.env...)
	}
	return c
}

// openStore opens the cluster's state store from the test process, to look
// at what the workers left behind.
func (c *cluster) openStore() state.Store {
	c.t.Helper()
	var (
		s   state.Store
		err error
	)
	if c.backend == "firestore" {
		s, err = statefirestore.New(c.t.Context(), statefirestore.Options{Project: emulator.Project, Prefix: c.prefix})
	} else {
		s, err = statesqlite.New(c.t.Context(), filepath.Join(c.dataDir, "state.db"), nil)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = s.Close() })
	return s
}

// start runs `worker serve` on a free port and waits until it serves.
func (c *cluster) start() *proc {
	c.t.Helper()
	c.mu.Lock()
	p := &proc{t: c.t, instance: len(c.procs), exited: make(chan struct{})}
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	p.cmd = exec.Command(binary, "serve")
	p.cmd.Env = append(os.Environ(), "PORT="+strconv.Itoa(c.port), "HOST=127.0.0.1", "DATA_DIR="+c.dataDir, "LOG_LEVEL=info", "LOG_FORMAT=json")
	p.cmd.Env = append(p.cmd.Env, c.env...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p.cmd.Stderr = os.Stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { p.signal(syscall.SIGKILL); <-p.exited })
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var e event
			if json.Unmarshal(sc.Bytes(), &e) != nil {
				continue
			}
			e.Instance = p.instance
			e.Raw = sc.Text()
			p.mu.Lock()
			p.events = append(p.events, e)
			if e.Message == "serving" && p.addr == "" {
				p.addr, p.owner = e.Addr, e.Owner
				close(ready)
			}
			p.mu.Unlock()
		}
		p.exitErr = p.cmd.Wait()
		close(p.exited)
	}()
	select {
	case <-ready:
	case <-p.exited:
		c.t.Fatalf("worker %d exited before serving: %v", p.instance, p.exitErr)
	case <-time.After(30 * time.Second):
		c.t.Fatalf("worker %d not serving after 30s", p.instance)
	}
	return p
}

func (p *proc) signal(sig syscall.Signal) {
	select {
	case <-p.exited:
	default:
		_ = syscall.Kill(-p.cmd.Process.Pid, sig) // the whole process group
	}
}

func (p *proc) url(path string) string { return "http://" + p.addr + path }

func (p *proc) eventsSnapshot() []event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]event(nil), p.events...)
}

// allEvents returns every event of every process, in process order.
func (c *cluster) allEvents() []event {
	c.mu.Lock()
	procs := append([]*proc(nil), c.procs...)
	c.mu.Unlock()
	var out []event
	for _, p := range procs {
		out = append(out, p.eventsSnapshot()...)
	}
	return out
}

// client's timeout is a liveness bound, generous because a CI machine with
// two cores may be compiling other packages and running two JVM emulators.
var client = &http.Client{Timeout: 30 * time.Second}

func request(t testing.TB, method, url, body string) (int, []byte, error) {
	t.Helper()
	return requestAs(t, "", method, url, body)
}

// requestAs is request with the bearer token of an operator ("" for none).
func requestAs(t testing.TB, token, method, url, body string) (int, []byte, error) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func status(t testing.TB, p *proc, id string) (api.Status, error) {
	t.Helper()
	code, body, err := request(t, "GET", p.url("/v1/batches/"+id), "")
	if err != nil {
		return api.Status{}, err
	}
	if code != 200 {
		return api.Status{}, fmt.Errorf("GET %s: %d %s", id, code, body)
	}
	var st api.Status
	return st, json.Unmarshal(body, &st)
}

func waitUntil(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// checkRows reads a batch's predictions and checks exactly one row per
// (player, system) for every item and system, and none failed.
func checkRows(t *testing.T, p *proc, st api.Status) {
	t.Helper()
	code, body, err := request(t, "GET", p.url("/v1/batches/"+st.BatchID+"/predictions"), "")
	if err != nil || code != 200 {
		t.Fatalf("predictions of %s: %d %v", st.BatchID, code, err)
	}
	seen := map[string]int{}
	players := map[string]bool{}
	for line := range bytes.Lines(body) {
		var r systems.Prediction
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("bad NDJSON line %q: %v", line, err)
		}
		seen[r.PlayerLookup+"/"+r.SystemID]++
		players[r.PlayerLookup] = true
		if r.Failed {
			t.Errorf("%s: failure record for %s/%s: %s", st.BatchID, r.PlayerLookup, r.SystemID, r.FailureReason)
		}
	}
	for key, n := range seen {
		if n != 1 {
			t.Errorf("%s: %d rows for %s", st.BatchID, n, key)
		}
	}
	want := st.TotalItems * len(st.Systems)
	if len(seen) != want || len(players) != st.TotalItems {
		t.Errorf("%s: %d distinct rows over %d players, want %d over %d", st.BatchID, len(seen), len(players), want, st.TotalItems)
	}
}
