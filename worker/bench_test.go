package worker

import (
	"context"
	"fmt"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/ensemble"
	"github.com/predworker/predworker/systems/movingavg"
	"github.com/predworker/predworker/systems/similarity"
	"github.com/predworker/predworker/systems/treemodel"
	"github.com/predworker/predworker/systems/zonematchup"
)

// Benchmarks (not timed tests). Run:
//
//	go test -run '^$' -bench . -benchtime 20x ./worker
//
// Each reports predictions/s; compare the Durability pair for the overhead of
// checkpoints, heartbeats and the SQLite sink.

func noop(id string) *stub {
	return &stub{id: id, fn: func(context.Context, *systems.Features) (systems.Estimate, error) {
		return systems.Estimate{Points: 10, Confidence: 50, Recommendation: systems.Pass}, nil
	}}
}

func sleepy(id string, d time.Duration) *stub {
	return &stub{id: id, fn: func(ctx context.Context, _ *systems.Features) (systems.Estimate, error) {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return systems.Estimate{Points: 10, Confidence: 50, Recommendation: systems.Pass}, nil
		case <-ctx.Done():
			return systems.Estimate{}, ctx.Err()
		}
	}}
}

// discardSink drops rows: persistence off.
type discardSink struct{}

func (discardSink) Write(context.Context, string, int64, []systems.Prediction) error { return nil }

// volatileStore keeps the batch in the SQLite store for claim and finish but
// skips the per-chunk checkpoint: persistence off.
type volatileStore struct{ state.Store }

func (volatileStore) Checkpoint(_ context.Context, _ string, l state.Lease, _ state.Progress, _ time.Duration) (state.Lease, error) {
	return l, nil
}

func runBench(b *testing.B, bd *bundle, store state.Store, sink systems.Sink, cfg Config, req state.Request) {
	b.Helper()
	runBenchTraced(b, bd, store, sink, cfg, req, nil)
}

// runBenchTraced is runBench with spans recorded by tp (nil: none).
func runBenchTraced(b *testing.B, bd *bundle, store state.Store, sink systems.Sink, cfg Config, req state.Request, tp trace.TracerProvider) {
	b.Helper()
	e, err := New(cfg, Deps{Store: store, Features: bd.features, Sink: sink, Registry: bd.registry, Tracer: tp})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var preds int
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		batch, _, err := e.Submit(ctx, fmt.Sprintf("bench-%d", i), req)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		done, err := e.Run(ctx, batch.ID, RunOptions{})
		if err != nil {
			b.Fatal(err)
		}
		preds += done.Predictions
	}
	b.ReportMetric(float64(preds)/b.Elapsed().Seconds(), "predictions/s")
}

// A full slate (2025-01-15: 425 players) × the bundled systems, embedded
// default: SQLite state and sink, synthetic features.
func BenchmarkFullSlate(b *testing.B) {
	bd := setup(b, nil, nil)
	runBench(b, bd, bd.store, bd.sink, Config{}, state.Request{GameDate: "2025-01-15"})
}

// BenchmarkFullSlateTraced is BenchmarkFullSlate with every span recorded
// and exported (to an exporter that drops them): the cost of TRACES=otlp or
// cloudtrace at a sample ratio of 1, exporter's network aside.
func BenchmarkFullSlateTraced(b *testing.B) {
	bd := setup(b, nil, nil)
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardSpans{}))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	runBenchTraced(b, bd, bd.store, bd.sink, Config{}, state.Request{GameDate: "2025-01-15"}, tp)
}

// allSystems registers the five bundled systems (ensemble_v1 over the
// four others, xgboost_v1 from the bundled model), each falling back to
// moving_average.
func allSystems(tb testing.TB) func(*systems.Registry) {
	tb.Helper()
	model, err := treemodel.LoadBundled()
	if err != nil {
		tb.Fatal(err)
	}
	return func(r *systems.Registry) {
		r.Register(movingavg.New(), "")
		r.Register(zonematchup.New(), movingavg.ID)
		r.Register(similarity.New(), movingavg.ID)
		r.Register(model, movingavg.ID)
		r.Register(ensemble.New(movingavg.ID, zonematchup.ID, similarity.ID, treemodel.ID), movingavg.ID)
	}
}

// discardSpans is an exporter that drops what it is given.
type discardSpans struct{}

func (discardSpans) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardSpans) Shutdown(context.Context) error                             { return nil }

// The same slate with all five bundled systems (ensemble_v1 over the four
// others, xgboost_v1 from the bundled model).
func BenchmarkFullSlateAllSystems(b *testing.B) {
	bd := setup(b, nil, allSystems(b))
	runBench(b, bd, bd.store, bd.sink, Config{}, state.Request{GameDate: "2025-01-15"})
}

// Engine throughput with five no-op systems: claim, features, fan-out,
// checkpoint; rows discarded so the sink is not what is measured.
func BenchmarkNoopSystems(b *testing.B) {
	bd := setup(b, nil, func(r *systems.Registry) {
		for i := range 5 {
			r.Register(noop(fmt.Sprintf("noop%d", i)), "")
		}
	})
	runBench(b, bd, bd.store, discardSink{}, Config{}, state.Request{GameDate: "2025-01-15", ChunkSize: 50})
}

// The durability pair: five 5 ms systems, chunk size 50, with persistence
// (fenced checkpoints, heartbeats, SQLite sink) and without.
func BenchmarkDurability(b *testing.B) {
	register := func(r *systems.Registry) {
		for i := range 5 {
			r.Register(sleepy(fmt.Sprintf("sys%d", i), 5*time.Millisecond), "")
		}
	}
	cfg := Config{LeaseTTL: 3 * time.Second, HeartbeatInterval: time.Second}
	req := state.Request{GameDate: "2025-01-15", ChunkSize: 50}
	b.Run("persistent", func(b *testing.B) {
		bd := setup(b, nil, register)
		runBench(b, bd, bd.store, bd.sink, cfg, req)
	})
	b.Run("volatile", func(b *testing.B) {
		bd := setup(b, nil, register)
		runBench(b, bd, volatileStore{bd.store}, discardSink{}, cfg, req)
	})
}
