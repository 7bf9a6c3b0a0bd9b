package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"
)

// BenchmarkFirstDurableChunk starts the real binary on the embedded default
// (`worker run --date 2025-01-15` on a fresh DATA_DIR, five systems) and
// measures the time from the process's start to its first committed chunk
// (the chunk_committed log line: rows and checkpoint durable), and to the
// batch's completion. Medians over b.N starts, with the range.
//
//	go test -run '^$' -bench FirstDurableChunk -benchtime 10x -count 3 ./e2e
func BenchmarkFirstDurableChunk(b *testing.B) {
	var first, whole []time.Duration
	for range b.N {
		cmd := exec.Command(binary, "run", "--date", "2025-01-15")
		cmd.Env = append(os.Environ(), "DATA_DIR="+b.TempDir(), "LOG_FORMAT=json", "LOG_LEVEL=info")
		errPipe, err := cmd.StderrPipe()
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		sc := bufio.NewScanner(errPipe)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var got time.Duration
		for sc.Scan() {
			var e event
			if json.Unmarshal(sc.Bytes(), &e) == nil && e.Event == "chunk_committed" && got == 0 {
				got = time.Since(start)
			}
		}
		if err := cmd.Wait(); err != nil {
			b.Fatalf("worker run: %v", err)
		}
		if got == 0 {
			b.Fatal("no chunk_committed line")
		}
		first, whole = append(first, got), append(whole, time.Since(start))
	}
	slices.Sort(first)
	slices.Sort(whole)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(first[len(first)/2]), "first-chunk-median-ms")
	b.ReportMetric(ms(first[0]), "first-chunk-min-ms")
	b.ReportMetric(ms(first[len(first)-1]), "first-chunk-max-ms")
	b.ReportMetric(ms(whole[len(whole)/2]), "batch-median-ms")
}
