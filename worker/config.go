package worker

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/predworker/predworker/systems"
)

// Config tunes the engine and the runner. The env tags name the variables
// the service reads them from (cmd/worker); DefaultConfig holds the one set
// of defaults, and zero values passed to New take them too.
type Config struct {
	// Owner is the lease owner id; NewOwnerID() when empty.
	Owner string
	// ChunkSize is the items per chunk of a request that names none.
	ChunkSize int `env:"CHUNK_SIZE"`
	// Concurrency bounds the parallel system calls inside a chunk; 0 means
	// 4 × GOMAXPROCS.
	Concurrency int `env:"CONCURRENCY"`
	// SystemTimeout is the default deadline of one system call;
	// SystemTimeouts overrides it per system.
	SystemTimeout  time.Duration `env:"SYSTEM_TIMEOUT"`
	SystemTimeouts Timeouts      `env:"SYSTEM_TIMEOUTS"`
	// BreakerFailures consecutive failures open a system's circuit breaker
	// for BreakerCooldown; Breakers overrides both per system.
	BreakerFailures uint32        `env:"BREAKER_FAILURES"`
	BreakerCooldown time.Duration `env:"BREAKER_COOLDOWN"`
	Breakers        Breakers      `env:"SYSTEM_BREAKERS"`
	// MaxAbandoned caps, per system, the calls abandoned at their deadline
	// that are still running (a system ignoring its context); beyond it,
	// calls fall back at once with reason "saturated", so at most
	// MaxAbandoned + Concurrency goroutines per system are ever stuck.
	// 0 means Concurrency.
	MaxAbandoned int `env:"MAX_ABANDONED_CALLS"`
	// Faults are injected into system calls, and into the feature source's
	// and the sink's calls (chaos tests, rehearsals, scaling tests).
	Faults Faults `env:"FAULTS"`
	// MinQuality is the feature quality score (0-100) below which a
	// player's row is not trusted: every system's row for him is a failure
	// record.
	MinQuality float64 `env:"MIN_FEATURE_QUALITY"`

	LeaseTTL          time.Duration `env:"LEASE_TTL"`
	HeartbeatInterval time.Duration `env:"HEARTBEAT_INTERVAL"`
	SweepInterval     time.Duration `env:"SWEEP_INTERVAL"`
	// DrainTimeout is the whole shutdown budget (SIGTERM to exit).
	DrainTimeout time.Duration `env:"DRAIN_TIMEOUT"`
	// MaxRunning caps the batches one process runs at once (its own and
	// pushed ones); 0 means 4 × GOMAXPROCS.
	MaxRunning int `env:"MAX_RUNNING_BATCHES"`

	// LocalOwners lets the engine replace, without waiting for expiry, a
	// lease whose owner is a process on this machine that no longer exists.
	// Only meaningful when every worker sharing the state store runs on this
	// machine (the embedded SQLite store).
	LocalOwners bool
	// RetryMaxInterval caps the backoff between in-place retries of
	// transient errors.
	RetryMaxInterval time.Duration
}

// Default values.
const (
	DefaultChunkSize         = 50
	DefaultSystemTimeout     = 2 * time.Second
	DefaultBreakerFailures   = 5
	DefaultBreakerCooldown   = 10 * time.Second
	DefaultLeaseTTL          = 30 * time.Second
	DefaultHeartbeatInterval = 10 * time.Second
	DefaultSweepInterval     = 15 * time.Second
	DefaultDrainTimeout      = 8 * time.Second
	DefaultRetryMaxInterval  = 5 * time.Second
	// MaxChunkSize bounds chunk sizes.
	MaxChunkSize = 1000
)

// DefaultConcurrency is 4 × GOMAXPROCS: system calls are short and mostly
// CPU; four per core keeps the cores busy while some calls wait.
func DefaultConcurrency() int { return 4 * runtime.GOMAXPROCS(0) }

// DefaultMaxRunning is 4 × GOMAXPROCS (GOMAXPROCS follows the vCPUs of the
// instance): enough batches to keep I/O-bound work moving, few enough that
// heartbeats are never starved of CPU.
func DefaultMaxRunning() int { return 4 * runtime.GOMAXPROCS(0) }

// DefaultConfig returns the defaults of every setting.
func DefaultConfig() Config {
	return Config{
		ChunkSize: DefaultChunkSize, Concurrency: DefaultConcurrency(),
		SystemTimeout: DefaultSystemTimeout, BreakerFailures: DefaultBreakerFailures, BreakerCooldown: DefaultBreakerCooldown,
		MinQuality: systems.DefaultMinQuality, LeaseTTL: DefaultLeaseTTL, HeartbeatInterval: DefaultHeartbeatInterval,
		SweepInterval: DefaultSweepInterval, DrainTimeout: DefaultDrainTimeout, RetryMaxInterval: DefaultRetryMaxInterval,
		MaxRunning: DefaultMaxRunning(),
	}
}

// resolved returns c with every zero value replaced by its default. A zero
// heartbeat interval derives from the lease: LEASE_TTL/3.
func (c Config) resolved() Config {
	d := DefaultConfig()
	if c.Owner == "" {
		c.Owner = NewOwnerID()
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = d.LeaseTTL
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = c.LeaseTTL / 3
	}
	setDefault(&c.ChunkSize, d.ChunkSize)
	setDefault(&c.Concurrency, d.Concurrency)
	setDefault(&c.MaxRunning, d.MaxRunning)
	setDefault(&c.MaxAbandoned, c.Concurrency)
	setDefault(&c.SystemTimeout, d.SystemTimeout)
	setDefault(&c.BreakerFailures, d.BreakerFailures)
	setDefault(&c.BreakerCooldown, d.BreakerCooldown)
	setDefault(&c.MinQuality, d.MinQuality)
	setDefault(&c.SweepInterval, d.SweepInterval)
	setDefault(&c.DrainTimeout, d.DrainTimeout)
	setDefault(&c.RetryMaxInterval, d.RetryMaxInterval)
	return c
}

func setDefault[T int | uint32 | float64 | time.Duration](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

// Validate rejects contradictory settings, and overrides naming systems that
// are not in ids, with a message naming the variable. A nil ids means the
// systems are not known before they load (a model registry's fleet): the
// names are not checked.
func (c Config) Validate(ids []string) error {
	positive := []struct {
		name string
		d    time.Duration
	}{
		{"SYSTEM_TIMEOUT", c.SystemTimeout}, {"LEASE_TTL", c.LeaseTTL}, {"HEARTBEAT_INTERVAL", c.HeartbeatInterval},
		{"SWEEP_INTERVAL", c.SweepInterval}, {"DRAIN_TIMEOUT", c.DrainTimeout}, {"BREAKER_COOLDOWN", c.BreakerCooldown},
	}
	for _, p := range positive {
		if p.d <= 0 {
			return fmt.Errorf("%s must be a positive duration (got %s)", p.name, p.d)
		}
	}
	switch {
	case c.LeaseTTL < 100*time.Millisecond:
		return errors.New("LEASE_TTL must be at least 100ms")
	case c.HeartbeatInterval > c.LeaseTTL/3:
		return fmt.Errorf("HEARTBEAT_INTERVAL must be at most LEASE_TTL/3 (got %s with LEASE_TTL %s)", c.HeartbeatInterval, c.LeaseTTL)
	case c.ChunkSize < 1 || c.ChunkSize > MaxChunkSize:
		return fmt.Errorf("CHUNK_SIZE must be from 1 to %d (got %d)", MaxChunkSize, c.ChunkSize)
	case c.Concurrency < 0 || c.Concurrency > 4096:
		return fmt.Errorf("CONCURRENCY must be from 1 to 4096, or 0 for 4 × GOMAXPROCS (got %d)", c.Concurrency)
	case c.MaxAbandoned < 0:
		return fmt.Errorf("MAX_ABANDONED_CALLS must be at least 1, or 0 for CONCURRENCY (got %d)", c.MaxAbandoned)
	case c.MaxRunning < 0 || c.MaxRunning > 1000:
		return fmt.Errorf("MAX_RUNNING_BATCHES must be from 1 to 1000, or 0 for 4 × GOMAXPROCS (got %d)", c.MaxRunning)
	case c.MinQuality < 0 || c.MinQuality > 100:
		return fmt.Errorf("MIN_FEATURE_QUALITY must be from 0 to 100 (got %g)", c.MinQuality)
	case c.BreakerFailures < 1:
		return fmt.Errorf("BREAKER_FAILURES must be at least 1 (got %d)", c.BreakerFailures)
	}
	known := func(name, id string) error {
		if ids != nil && !slices.Contains(ids, id) {
			return fmt.Errorf("%s names unknown system %q (running: %s)", name, id, strings.Join(ids, ", "))
		}
		return nil
	}
	for _, id := range slices.Sorted(maps.Keys(c.SystemTimeouts)) {
		if err := known("SYSTEM_TIMEOUTS", id); err != nil {
			return err
		}
	}
	for _, id := range slices.Sorted(maps.Keys(c.Breakers)) {
		if err := known("SYSTEM_BREAKERS", id); err != nil {
			return err
		}
	}
	for _, r := range c.Faults {
		if r.System != "*" && r.Target == "" {
			if err := known("FAULTS", r.System); err != nil {
				return err
			}
		}
	}
	return nil
}

// LogValue shows the resolved settings in human units.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Int("chunk_size", c.ChunkSize), slog.Int("concurrency", c.Concurrency), slog.Int("max_running_batches", c.MaxRunning),
		slog.String("system_timeout", c.SystemTimeout.String()), slog.String("system_timeouts", c.SystemTimeouts.String()),
		slog.Int("max_abandoned_calls", c.MaxAbandoned), slog.Int("breaker_failures", int(c.BreakerFailures)), slog.String("breaker_cooldown", c.BreakerCooldown.String()),
		slog.String("system_breakers", c.Breakers.String()), slog.String("faults", c.Faults.String()),
		slog.Float64("min_feature_quality", c.MinQuality),
		slog.String("lease_ttl", c.LeaseTTL.String()), slog.String("heartbeat_interval", c.HeartbeatInterval.String()),
		slog.String("sweep_interval", c.SweepInterval.String()), slog.String("drain_timeout", c.DrainTimeout.String()),
		slog.Bool("local_owners", c.LocalOwners),
	)
}

// ---------------------------------------------------------------------------
// The small languages of the configuration

// Timeouts are per-system call deadlines: SYSTEM_TIMEOUTS
// "zone_matchup_v1=500ms,moving_average=1s".
type Timeouts map[string]time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (t *Timeouts) UnmarshalText(b []byte) error {
	ps, err := systems.ParsePairs(string(b), "zone_matchup_v1=500ms")
	if err != nil {
		return err
	}
	out := Timeouts{}
	for _, p := range ps {
		d, err := time.ParseDuration(p[1])
		if err != nil || d <= 0 {
			return fmt.Errorf("%s: %q is not a positive duration like 500ms", p[0], p[1])
		}
		out[p[0]] = d
	}
	*t = out
	return nil
}

func (t Timeouts) String() string {
	var parts []string
	for _, id := range slices.Sorted(maps.Keys(t)) {
		parts = append(parts, id+"="+t[id].String())
	}
	return strings.Join(parts, ",")
}

// BreakerSettings tunes one system's circuit breaker.
type BreakerSettings struct {
	Failures uint32        // consecutive failures that open it
	Cooldown time.Duration // how long it stays open
}

// Breakers are per-system breaker settings: SYSTEM_BREAKERS
// "xgboost_v1=3:30s" (consecutive failures : cooldown).
type Breakers map[string]BreakerSettings

// UnmarshalText implements encoding.TextUnmarshaler.
func (br *Breakers) UnmarshalText(b []byte) error {
	ps, err := systems.ParsePairs(string(b), "xgboost_v1=3:30s")
	if err != nil {
		return err
	}
	out := Breakers{}
	for _, p := range ps {
		n, d, ok := strings.Cut(p[1], ":")
		failures, err1 := strconv.ParseUint(n, 10, 32)
		cooldown, err2 := time.ParseDuration(d)
		if !ok || err1 != nil || err2 != nil || failures < 1 || cooldown <= 0 {
			return fmt.Errorf("%s: %q must be failures:cooldown, e.g. 3:30s", p[0], p[1])
		}
		out[p[0]] = BreakerSettings{Failures: uint32(failures), Cooldown: cooldown}
	}
	*br = out
	return nil
}

func (br Breakers) String() string {
	var parts []string
	for _, id := range slices.Sorted(maps.Keys(br)) {
		parts = append(parts, fmt.Sprintf("%s=%d:%s", id, br[id].Failures, br[id].Cooldown))
	}
	return strings.Join(parts, ",")
}
