package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/predworker/predworker/api"
	"github.com/predworker/predworker/state"
)

// TestLoad puts one instance under a mix of status reads (70 %), list
// reads (20 %) and batch creates (10 %) with vegeta while four long
// batches run on it, and reports sustained requests/s and p50/p99 per kind
// (LOAD_RATE and LOAD_SECONDS widen it: see the README's load benchmark).
// It asserts what must hold under load, not speed: no server error, every
// batch completes, and no run loses its lease (the heartbeats kept up).
func TestLoad(t *testing.T) {
	t.Parallel()
	rate, seconds := 150, 8
	if v, err := strconv.Atoi(os.Getenv("LOAD_RATE")); err == nil && v > 0 {
		rate = v
	}
	if v, err := strconv.Atoi(os.Getenv("LOAD_SECONDS")); err == nil && v > 0 {
		seconds = v
	}
	const token = "load-test-operator-token-0123"
	c := newCluster(t, "sqlite", "CHUNK_SIZE=5", "LEASE_TTL=3s", "HEARTBEAT_INTERVAL=1s",
		"FAULTS=target=features,kind=latency,latency=300ms,rate=1", "OPERATOR_TOKEN="+token, "MAX_RUNNING_BATCHES=8")
	p := c.start()
	auth := http.Header{"Authorization": {"Bearer " + token}, "Content-Type": {"application/json"}}
	post := func(body string) (int, error) {
		code, _, err := requestAs(t, token, http.MethodPost, p.url("/v1/batches"), body)
		return code, err
	}
	long := []string{"load-a", "load-b", "load-c", "load-d"}
	for i, id := range long {
		if code, err := post(fmt.Sprintf(`{"batch_id": %q, "game_date": "2025-01-%02d"}`, id, 15+i)); err != nil || code != http.StatusAccepted {
			t.Fatalf("create %s: %d %v", id, code, err)
		}
	}

	var seq atomic.Int64
	targeter := func(tgt *vegeta.Target) error {
		n := seq.Add(1)
		tgt.Header = auth.Clone()
		switch {
		case n%10 < 7:
			tgt.Method, tgt.URL = http.MethodGet, p.url("/v1/batches/"+long[n%4])
		case n%10 < 9:
			tgt.Method, tgt.URL = http.MethodGet, p.url("/v1/batches?limit=50")
		default:
			tgt.Method, tgt.URL = http.MethodPost, p.url("/v1/batches")
			tgt.Body = fmt.Appendf(nil, `{"batch_id": "load-small-%d", "game_date": "2025-01-22", "players": ["aaronadams"], "systems": ["moving_average"]}`, n)
		}
		return nil
	}
	atk := vegeta.NewAttacker(vegeta.Workers(16), vegeta.MaxWorkers(128), vegeta.KeepAlive(true), vegeta.Timeout(10*time.Second))
	metrics := map[string]*vegeta.Metrics{"status": {}, "list": {}, "create": {}, "all": {}}
	for res := range atk.Attack(targeter, vegeta.Rate{Freq: rate, Per: time.Second}, time.Duration(seconds)*time.Second, "load") {
		kind := "status"
		switch {
		case res.Method == http.MethodPost:
			kind = "create"
		case strings.Contains(res.URL, "?limit="):
			kind = "list"
		}
		metrics[kind].Add(res)
		metrics["all"].Add(res)
		if res.Code >= 500 || res.Code == 0 {
			t.Errorf("%s %s: %d %s", res.Method, res.URL, res.Code, res.Error)
		}
	}
	for _, m := range metrics {
		m.Close()
	}
	stateOf := func(id string) state.Status {
		var st api.Status
		if _, raw, err := requestAs(t, token, http.MethodGet, p.url("/v1/batches/"+id), ""); err == nil {
			_ = json.Unmarshal(raw, &st)
		}
		return st.State
	}
	running := 0
	for _, id := range long {
		if stateOf(id) == state.StatusRunning {
			running++
		}
	}
	waitUntil(t, 2*time.Minute, "the long batches completed", func() bool {
		for _, id := range long {
			if stateOf(id) != state.StatusCompleted {
				return false
			}
		}
		return true
	})
	for _, e := range c.allEvents() {
		if e.Event == "lease_lost" {
			t.Errorf("a run lost its lease under load: %s", e.Raw)
		}
	}
	t.Logf("one instance, %d req/s offered for %ds (70%% status, 20%% list of 50, 10%% create), %d long batches running throughout (%d still running at the end)",
		rate, seconds, len(long), running)
	t.Logf("kind     requests  req/s    success  p50       p99       max")
	for _, k := range []string{"status", "list", "create", "all"} {
		m := metrics[k]
		t.Logf("%-7s  %8d  %7.1f  %6.1f%%  %-8s  %-8s  %s", k, m.Requests, m.Throughput, 100*m.Success,
			m.Latencies.P50.Round(10*time.Microsecond), m.Latencies.P99.Round(10*time.Microsecond), m.Latencies.Max.Round(10*time.Microsecond))
	}
}
