package e2e

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/predworker/predworker/state"
)

// TestSlowClientsCostRunningBatchesNothing: clients that request a large
// predictions stream and never read it, and a client that trickles its
// request body a byte at a time, against the real binary. Another batch
// still runs to completion, the trickler is cut off at HTTP_READ_TIMEOUT,
// and the stalled streams end at HTTP_WRITE_TIMEOUT.
func TestSlowClientsCostRunningBatchesNothing(t *testing.T) {
	t.Parallel()
	c := newCluster(t, "sqlite", append(fastLeases("sqlite"), "HTTP_READ_TIMEOUT=2s", "HTTP_WRITE_TIMEOUT=3s")...)
	p := c.start()
	// 5,000 players without features × 5 systems: 25,000 failure rows, far
	// more than the socket buffers between a server and a client that does
	// not read hold.
	ghosts := make([]string, 5000)
	for i := range ghosts {
		ghosts[i] = fmt.Sprintf(`"ghost%04d"`, i)
	}
	code, body, err := request(t, "POST", p.url("/v1/batches"),
		`{"batch_id": "big", "game_date": "2025-01-15", "chunk_size": 1000, "players": [`+strings.Join(ghosts, ",")+`]}`)
	if err != nil || code != 202 {
		t.Fatalf("create big = %d %s %v", code, body, err)
	}
	waitUntil(t, 2*time.Minute, "the big batch", func() bool {
		st, err := status(t, p, "big")
		return err == nil && st.State == state.StatusCompleted
	})
	dial := func() net.Conn {
		t.Helper()
		conn, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return conn
	}
	for range 4 { // never read
		conn := dial()
		if _, err := fmt.Fprintf(conn, "GET /v1/batches/big/predictions HTTP/1.1\r\nHost: worker\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	trickler := dial()
	if _, err := fmt.Fprintf(trickler, "POST /v1/batches HTTP/1.1\r\nHost: worker\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	cut := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		for range 200 {
			if _, err := trickler.Write([]byte(" ")); err != nil {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		cut <- time.Since(start)
	}()
	time.Sleep(500 * time.Millisecond) // the readers are stalled now
	submitted := time.Now()
	submit(t, p, "meanwhile", "2025-01-16")
	waitUntil(t, 60*time.Second, "the other batch, with stalled readers", func() bool {
		st, err := status(t, p, "meanwhile")
		return err == nil && st.State == state.StatusCompleted
	})
	t.Logf("another batch completed %v after it was submitted, beside 4 stalled readers", time.Since(submitted).Round(time.Millisecond))
	select {
	case d := <-cut:
		t.Logf("the trickling client was cut off after %v", d.Round(time.Millisecond))
		if d > 20*time.Second {
			t.Errorf("the trickling client stayed connected %v with HTTP_READ_TIMEOUT=2s", d)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the trickling client is still connected after 30s with HTTP_READ_TIMEOUT=2s")
	}
}
