package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/predworker/predworker/state"
	statesqlite "github.com/predworker/predworker/state/sqlite"
)

// BenchmarkListAndSweepMemory: 500 batches of 5,000 players each in the
// state store; the real worker lists them three times (GET
// /v1/batches?limit=500) and sweeps (POST /v1/sweep); the metric is the
// process's peak resident memory (VmHWM), which must stay under 64 MiB
// because neither listing nor sweeping loads item lists.
//
//	go test -run '^$' -bench ListAndSweepMemory -benchtime 1x ./e2e
func BenchmarkListAndSweepMemory(b *testing.B) {
	c := newCluster(b, "sqlite", "MAX_RUNNING_BATCHES=1", "SWEEP_INTERVAL=1h", "CHUNK_SIZE=1000")
	st, err := statesqlite.New(b.Context(), filepath.Join(c.dataDir, "state.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	players := make([]string, 5000)
	for i := range players {
		players[i] = fmt.Sprintf("ghost%04d", i)
	}
	for i := range 500 {
		// As the engine stores it: the players are the items, not repeated in the request.
		req := state.Request{GameDate: "2025-01-15", Systems: []string{"moving_average"}, ChunkSize: 1000}
		if _, _, err := st.Create(b.Context(), state.Batch{ID: fmt.Sprintf("mem-%03d", i), Request: req, Items: players}); err != nil {
			b.Fatal(err)
		}
	}
	_ = st.Close()
	p := c.start()
	base := vmHWM(b, p)
	listed := 0
	b.ResetTimer()
	for range b.N {
		for range 3 {
			code, body, err := request(b, "GET", p.url("/v1/batches?limit=500"), "")
			if err != nil || code != 200 || strings.Count(string(body), `"total_items":5000`) != 500 {
				b.Fatalf("list = %d (%d bytes), %v", code, len(body), err)
			}
		}
		listed = vmHWM(b, p)
		if code, body, err := request(b, "POST", p.url("/v1/sweep"), ""); err != nil || code != 200 {
			b.Fatalf("sweep = %d %s %v", code, body, err)
		}
	}
	b.StopTimer()
	peak := vmHWM(b, p)
	b.ReportMetric(float64(base)/1024, "start-peak-RSS-MiB")
	b.ReportMetric(float64(listed)/1024, "listed-peak-RSS-MiB")
	b.ReportMetric(float64(peak)/1024, "peak-RSS-MiB")
}

// vmHWM is the process's peak resident set in KiB.
func vmHWM(b *testing.B, p *proc) int {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatal("no VmHWM")
	return 0
}
