package worker

import (
	"fmt"
	"log/slog"

	"github.com/jonboulle/clockwork"
	"go.opentelemetry.io/otel/trace"
	nooptrace "go.opentelemetry.io/otel/trace/noop"

	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
)

// Deps are the engine's collaborators.
type Deps struct {
	Store    state.Store
	Features systems.FeatureSource
	Sink     systems.Sink
	Registry *systems.Registry
	Clock    clockwork.Clock // nil: real clock
	// Logger is the base logger; a run logs through the logger in its
	// context (logging.WithLogger) when there is one, so lines carry the
	// request that started the run. nil: discard.
	Logger  *slog.Logger
	Metrics *Metrics // nil: unregistered instruments
	// Tracer provides the spans of runs (trace.go). nil: none recorded.
	Tracer trace.TracerProvider
}

// Engine runs batches: submission (submit.go), the chunk loop (run.go), the
// fan-out to systems (fanout.go) and lease keeping (lease.go). Runner
// (runner.go, lifecycle.go) owns the runs of a serving process.
type Engine struct {
	cfg      Config
	store    state.Store
	features systems.FeatureSource
	sink     systems.Sink
	registry *systems.Registry
	clock    clockwork.Clock
	log      *slog.Logger
	metrics  *Metrics
	tracer   trace.Tracer
	fanout   *fanout
}

// New builds an engine. Zero settings in cfg take their defaults; the
// settings are validated against the registry's systems.
func New(cfg Config, d Deps) (*Engine, error) {
	cfg = cfg.resolved()
	if err := d.Registry.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.Validate(d.Registry.IDs()); err != nil {
		return nil, fmt.Errorf("engine configuration: %w", err)
	}
	if d.Clock == nil {
		d.Clock = clockwork.NewRealClock()
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Metrics == nil {
		d.Metrics = NewMetrics(nil, nil)
	}
	if d.Tracer == nil {
		d.Tracer = nooptrace.NewTracerProvider()
	}
	tracer := d.Tracer.Tracer(TracerName)
	d.Features, d.Sink = withSourceFaults(d.Features, cfg.Faults), withSinkFaults(d.Sink, cfg.Faults)
	return &Engine{cfg: cfg, store: d.Store, features: d.Features, sink: d.Sink, registry: d.Registry,
		clock: d.Clock, log: d.Logger, metrics: d.Metrics, tracer: tracer,
		fanout: newFanout(cfg, d.Registry, d.Features, d.Metrics, d.Logger, tracer)}, nil
}

// Owner is the engine's lease owner id.
func (e *Engine) Owner() string { return e.cfg.Owner }
