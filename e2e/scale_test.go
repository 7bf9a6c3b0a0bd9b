package e2e

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/predworker/predworker/internal/emulator"
	"github.com/predworker/predworker/state"
)

// scaleLatency models BigQuery: every feature read and every chunk write
// waits, and each system call a little, so a chunk costs about half a
// second of waiting and almost no CPU.
const scaleLatency = "target=features,kind=latency,latency=300ms,rate=1;target=sink,kind=latency,latency=200ms,rate=1;" +
	"system=*,kind=latency,latency=20ms,rate=1"

// scaleResult is what one backfill over n instances measured.
type scaleResult struct {
	instances   int
	push, kill  bool
	wall        time.Duration
	predictions int
	takeovers   int   // claims of a batch at an epoch above 1 (another owner's lease expired or was released)
	leaseLost   int   // runs that stopped on a lost lease
	rework      int   // chunk runs beyond one per chunk (the killed owner's unfinished chunks, run again)
	peakDocW    int   // most writes to one batch document in one second (claims, renewals, finish)
	cpu         int64 // clock ticks of CPU the workers used
}

// roundRobin is the load balancer in front of the instances (Cloud Run's):
// each push goes to the next live instance; one that cannot be reached
// answers 502, and Pub/Sub delivers the message again.
type roundRobin struct {
	mu      sync.Mutex
	targets []*httputil.ReverseProxy
	dead    map[int]bool
	next    atomic.Int64
}

func (rr *roundRobin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rr.mu.Lock()
	var live []int
	for i := range rr.targets {
		if !rr.dead[i] {
			live = append(live, i)
		}
	}
	rr.mu.Unlock()
	if len(live) == 0 {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	rr.targets[live[int(rr.next.Add(1))%len(live)]].ServeHTTP(w, r)
}

func (rr *roundRobin) kill(i int) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	rr.dead[i] = true
}

// replace points slot i at a new instance (Cloud Run replaces a crashed
// instance with a new one).
func (rr *roundRobin) replace(t *testing.T, i int, addr string) {
	rp := proxyTo(t, addr)
	rr.mu.Lock()
	defer rr.mu.Unlock()
	rr.targets[i], rr.dead[i] = rp, false
}

func proxyTo(t *testing.T, addr string) *httputil.ReverseProxy {
	t.Helper()
	target, err := url.Parse("http://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) }
	return rp
}

// scaleBackfill runs `worker backfill` over dates against n worker
// processes behind a round-robin balancer, with Firestore (emulator) state
// and injected I/O latency: with push, the batch requests are published to
// a topic whose push subscription (the official Pub/Sub emulator) targets
// the balancer; otherwise they are created through the balancer's API
// (--url) and instances without room leave them to the others' sweeps. With
// kill, one instance is SIGKILLed once half the dates completed, and a new
// one takes its place (as Cloud Run replaces a crashed instance).
func scaleBackfill(t *testing.T, n int, from, to string, push, kill bool) scaleResult {
	t.Helper()
	ctx := t.Context()
	client := pubsubClient(t)
	suffix := fmt.Sprintf("%d-%d", n, time.Now().UnixNano())
	requests := "scale-requests-" + suffix
	if _, err := client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: topicName(requests)}); err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, "firestore", "FEATURE_SOURCE=local", "CHUNK_SIZE=50", "FAULTS="+scaleLatency,
		"LEASE_TTL=15s", "HEARTBEAT_INTERVAL=3s", "SWEEP_INTERVAL=1s", "MAX_RUNNING_BATCHES=2", "PUSH_BUDGET=300s",
		"LOG_LEVEL=debug", "DRAIN_TIMEOUT=2s")
	rr := &roundRobin{dead: map[int]bool{}}
	var procs []*proc
	for range n {
		p := c.start()
		procs = append(procs, p)
		rr.targets = append(rr.targets, proxyTo(t, p.addr))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lb := &http.Server{Handler: rr, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = lb.Serve(ln) }()
	t.Cleanup(func() { _ = lb.Close() })
	args := []string{"backfill", "--from", from, "--to", to, "--chunk-size", "50", "--poll", "250ms", "--url", "http://" + ln.Addr().String()}
	if push {
		if _, err := client.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
			Name: subName("scale-push-" + suffix), Topic: topicName(requests), AckDeadlineSeconds: 600,
			PushConfig:  &pubsubpb.PushConfig{PushEndpoint: "http://" + ln.Addr().String() + "/pubsub/push"},
			RetryPolicy: &pubsubpb.RetryPolicy{MinimumBackoff: durationpb.New(time.Second), MaximumBackoff: durationpb.New(3 * time.Second)},
		}); err != nil {
			t.Fatal(err)
		}
		args = append(args[:len(args)-2], "--publish", requests)
	}

	// The backfill command, as an operator runs it.
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), "DATA_DIR="+t.TempDir(), "LOG_LEVEL=warn", "STATE_STORE=firestore",
		"GOOGLE_CLOUD_PROJECT="+emulator.Project, "FIRESTORE_PREFIX="+c.prefix)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	if kill {
		store := c.openStore()
		days := 0
		for d, _ := time.Parse(time.DateOnly, from); d.Format(time.DateOnly) <= to; d = d.AddDate(0, 0, 1) {
			days++
		}
		killed := false
		for !killed {
			select {
			case err := <-exited:
				t.Fatalf("backfill ended before the kill: %v\n%s\n%s", err, out.String(), errOut.String())
			case <-time.After(200 * time.Millisecond):
			}
			bs, err := store.List(ctx, state.ListFilter{Status: state.StatusCompleted, Limit: 500})
			if err == nil && len(bs) >= days/2 {
				rr.kill(1)
				procs[1].signal(syscall.SIGKILL)
				<-procs[1].exited
				killed = true
			}
		}
		replacement := c.start()
		rr.replace(t, 1, replacement.addr)
		procs = append(procs, replacement)
	}
	select {
	case err = <-exited:
	case <-time.After(10 * time.Minute):
		t.Fatalf("backfill over %d instances not done in 10 minutes:\n%s", n, errOut.String())
	}
	res := scaleResult{instances: n, wall: time.Since(start), push: push}
	if err != nil {
		t.Fatalf("backfill over %d instances: %v\n%s\n%s", n, err, out.String(), errOut.String())
	}

	// Every date's batch completed, with exactly one row per (player,
	// system), read back from a live instance.
	live := procs[0]
	for line := range strings.Lines(out.String()) {
		fields := strings.Fields(line)
		if len(fields) < 4 || fields[0] == "dates" {
			continue
		}
		st, err := status(t, live, fields[1])
		if err != nil || st.State != state.StatusCompleted {
			t.Errorf("%s: %+v, %v", fields[1], st, err)
			continue
		}
		checkRows(t, live, st)
		res.predictions += st.Predictions
	}
	for i, p := range procs {
		if i == 1 && kill {
			continue
		}
		res.cpu += cpuTicks(t, p)
	}
	res.measureEvents(c.allEvents())
	for _, e := range c.allEvents() {
		if e.Event == "lease_lost" || e.Severity == "ERROR" || (e.Severity == "WARNING" && e.Message != "request") {
			t.Logf("worker %d: %s", e.Instance, e.Raw)
		}
	}
	if os.Getenv("SCALE_TIMELINE") != "" { // when each batch ran where, and the pushes
		for _, e := range c.allEvents() {
			if e.Event == "batch_claimed" || e.Event == "batch_resumed" || e.Event == "batch_completed" || e.Event == "lease_lost" ||
				(e.Message == "request" && e.Path == "/pubsub/push") {
				t.Logf("%s worker %d %s %s %s %d", e.Time.Sub(start).Round(10*time.Millisecond), e.Instance, e.Event, e.BatchID, e.Path, e.Status)
			}
		}
	}
	return res
}

// measureEvents reads takeovers, lost leases, rework and the batch
// documents' write rate from the workers' logs.
func (r *scaleResult) measureEvents(evs []event) {
	started := map[string]map[int]int{}
	writes := map[string]map[int64]int{} // batch → second → writes to its document
	touch := func(id string, at time.Time) {
		if writes[id] == nil {
			writes[id] = map[int64]int{}
		}
		writes[id][at.Unix()]++
	}
	slices.SortStableFunc(evs, func(a, b event) int { return a.Time.Compare(b.Time) })
	for _, e := range evs {
		switch {
		case e.Event == "batch_claimed" || e.Event == "batch_resumed":
			if e.Epoch > 1 {
				r.takeovers++
			}
			touch(e.BatchID, e.Time)
		case e.Message == "lease renewed", e.Event == "batch_completed":
			touch(e.BatchID, e.Time)
		case e.Event == "lease_lost":
			r.leaseLost++
		case e.Event == "chunk_started" && e.Chunk != nil:
			if started[e.BatchID] == nil {
				started[e.BatchID] = map[int]int{}
			}
			if started[e.BatchID][*e.Chunk]++; started[e.BatchID][*e.Chunk] > 1 {
				r.rework++
			}
		}
	}
	for _, secs := range writes {
		for _, w := range secs {
			r.peakDocW = max(r.peakDocW, w)
		}
	}
}

// cpuTicks is the CPU a process used so far (utime + stime, in clock ticks).
func cpuTicks(t *testing.T, p *proc) int64 {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return utime + stime
}

// TestScaleOut backfills a range through the service's API over 1 and 2
// instances (SCALE_INSTANCES, e.g. 1,2,4, and SCALE_TO widen it: see the
// README's scaling benchmark), then again over the widest count with one
// instance SIGKILLed half-way and replaced, then through a push
// subscription of the official Pub/Sub emulator over 2 instances with a
// kill. Every batch completes exactly once (one row per player and system);
// no run loses its lease (the killed instance's runs end without a word);
// the rework is at most one chunk per batch the killed instance ran; no
// batch document sees more than 3 writes in a second. Wall times, rates,
// speed-ups and CPU are logged, not asserted.
//
// The emulator delivers at most two pushes of a subscription at a time (a
// third batch starts only when one of two running ones answers), so push
// cannot show more than two batches in flight here; the scaling runs create
// the batches through the API, which exercises the same claims, leases and
// sweeps.
func TestScaleOut(t *testing.T) {
	t.Parallel()
	emulator.SkipOrFail(t, firestoreSkip)
	emulator.SkipOrFail(t, pubsubSkip)
	from, to := "2025-01-06", "2025-01-11"
	if v := os.Getenv("SCALE_TO"); v != "" {
		to = v
	}
	counts := []int{1, 2}
	if v := os.Getenv("SCALE_INSTANCES"); v != "" {
		counts = nil
		for _, s := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n < 1 {
				t.Fatalf("SCALE_INSTANCES=%q", v)
			}
			counts = append(counts, n)
		}
	}
	type run struct {
		n          int
		push, kill bool
	}
	var runs []run
	for _, n := range counts {
		runs = append(runs, run{n: n})
	}
	if os.Getenv("SCALE_NO_KILL") == "" {
		runs = append(runs, run{n: max(slices.Max(counts), 2), kill: true}, run{n: 2, push: true, kill: true})
	}
	var results []scaleResult
	for _, r := range runs {
		res := scaleBackfill(t, r.n, from, to, r.push, r.kill)
		res.kill = r.kill
		results = append(results, res)
		if res.leaseLost > 0 {
			t.Errorf("%d instances: %d runs lost their lease (the killed instance's runs end without a word)", r.n, res.leaseLost)
		}
		if r.kill && res.rework > 2 { // MAX_RUNNING_BATCHES: one chunk per batch the killed instance ran
			t.Errorf("%d instances: %d chunks redone after one kill", r.n, res.rework)
		}
		if res.peakDocW > 3 {
			t.Errorf("%d instances: %d writes to one batch document in a second", r.n, res.peakDocW)
		}
	}
	base := results[0]
	t.Logf("backfill %s to %s, chunk 50, latency %s", from, to, scaleLatency)
	t.Logf("via   instances  kill  wall      predictions  pred/s   speed-up  takeovers  lease_lost  rework  peak writes/s/doc  worker CPU")
	for _, r := range results {
		t.Logf("%-4s  %9d  %-4s  %-8s  %11d  %7.0f  %7.2fx  %9d  %10d  %6d  %17d  %.1fs (%.0f%% of %d cores)",
			map[bool]string{true: "push", false: "api"}[r.push], r.instances, map[bool]string{true: "yes", false: "no"}[r.kill],
			r.wall.Round(10*time.Millisecond), r.predictions, float64(r.predictions)/r.wall.Seconds(),
			base.wall.Seconds()/r.wall.Seconds(), r.takeovers, r.leaseLost, r.rework, r.peakDocW,
			float64(r.cpu)/100, 100*float64(r.cpu)/100/r.wall.Seconds()/2, 2)
	}
}
