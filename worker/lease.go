package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jonboulle/clockwork"

	"github.com/predworker/predworker/state"
)

// Lease keeping: owner ids, the heartbeat that renews a run's lease, and the
// guard that stops a run before its lease can lapse (self-fencing). The
// invariants are in the package doc.

// NewOwnerID returns "host/pid/random": unique per process, and telling which
// machine and process holds a lease.
func NewOwnerID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), uuid.NewString()[:8])
}

// ownerGone reports whether owner is a process of this machine that no longer
// exists. Any doubt answers false.
func ownerGone(owner string) bool {
	parts := strings.Split(owner, "/")
	if len(parts) != 3 {
		return false
	}
	host, err := os.Hostname()
	if err != nil || host != parts[0] {
		return false
	}
	pid, err := strconv.Atoi(parts[1])
	if err != nil || pid <= 0 || pid == os.Getpid() {
		return false
	}
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// Lease keeping

// heartbeat renews the lease every HeartbeatInterval until ctx ends. A lost
// lease cancels the run at once; failed renewals are retried, and the guard's
// timer cancels the run if none succeeds before the lease is about to lapse.
func (e *Engine) heartbeat(ctx context.Context, cancel context.CancelCauseFunc, t clockwork.Ticker, id string, g *leaseGuard, log *slog.Logger) {
	defer t.Stop()
	var renewedAt time.Time // when the last successful renewal returned
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.Chan():
		}
		// A renewal slower than the interval leaves a tick queued; renewing
		// again at once would spend a write of the store's budget for
		// nothing.
		if !renewedAt.IsZero() && e.clock.Since(renewedAt) < e.cfg.HeartbeatInterval/2 {
			continue
		}
		sent := e.clock.Now()
		rctx, rcancel := context.WithTimeout(ctx, e.cfg.HeartbeatInterval)
		l, err := e.store.Renew(rctx, id, g.lease(), e.cfg.LeaseTTL)
		rcancel()
		switch {
		case err == nil:
			e.metrics.LeaseRenewals.WithLabelValues("ok").Inc()
			g.renewed(sent, l)
			renewedAt = e.clock.Now()
			log.Debug("lease renewed", slog.Time("expires_at", l.ExpiresAt))
		case errors.Is(err, state.ErrLeaseLost):
			e.metrics.LeaseRenewals.WithLabelValues("lost").Inc()
			cancel(fmt.Errorf("renew: %w", err))
			return
		case ctx.Err() != nil:
			return
		default:
			e.metrics.LeaseRenewals.WithLabelValues("error").Inc()
			e.metrics.Errors.WithLabelValues("renew", string(Classify(err))).Inc()
			log.Warn("lease renewal failed; retrying", WarnAttrs(err), slog.Time("valid_until", g.validUntil()))
		}
	}
}

// leaseGuard knows until when the lease is surely ours: the time the last
// successful renewal was *sent*, plus the TTL, minus a safety margin. When that
// passes without a renewal, it calls onExpire (self-fencing), so a worker that
// cannot reach the store stops before another owner may take over.
type leaseGuard struct {
	clock  clockwork.Clock
	ttl    time.Duration
	margin time.Duration
	mu     sync.Mutex
	l      state.Lease
	until  time.Time
	timer  clockwork.Timer
	expire func()
}

func newLeaseGuard(c clockwork.Clock, l state.Lease, sent time.Time, ttl time.Duration, onExpire func()) *leaseGuard {
	g := &leaseGuard{clock: c, ttl: ttl, margin: max(ttl/5, 50*time.Millisecond), l: l, expire: onExpire}
	g.until = sent.Add(ttl - g.margin)
	g.timer = c.AfterFunc(g.until.Sub(c.Now()), onExpire)
	return g
}

// renewed records a write that returned lease l and was sent at sent. The
// lease is ours until the earlier of sent+TTL and the stored expiry (a store
// may have skipped the extension), less the margin.
func (g *leaseGuard) renewed(sent time.Time, l state.Lease) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.l = l
	end := sent.Add(g.ttl)
	if !l.ExpiresAt.IsZero() && l.ExpiresAt.Before(end) {
		end = l.ExpiresAt
	}
	if u := end.Add(-g.margin); u.After(g.until) {
		g.until = u
		g.timer.Reset(u.Sub(g.clock.Now()))
	}
}

func (g *leaseGuard) lease() state.Lease {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.l
}

func (g *leaseGuard) validUntil() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.until
}

func (g *leaseGuard) valid() bool { return g.clock.Now().Before(g.validUntil()) }

func (g *leaseGuard) stop() { g.timer.Stop() }
