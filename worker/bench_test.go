package worker

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

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

// captureSink keeps the rows written to it, by batch, in write order.
type captureSink struct {
	mu   sync.Mutex
	rows map[string][][]systems.Prediction
}

func (c *captureSink) Write(_ context.Context, id string, _ int64, rows []systems.Prediction) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rows[id] = append(c.rows[id], slices.Clone(rows))
	return nil
}

// BenchmarkFloor runs ten full slates (2025-01-15, 425 players × the five
// bundled systems, chunk 50: 21,250 predictions) at once, twice per
// iteration on fresh SQLite stores: once through the engine (features,
// fan-out, rows, fenced checkpoints, heartbeats) and once as the storage
// floor: the same rows written in the same transactions, each chunk's
// rows then its checkpoint, slates concurrent, nothing computed. It reports
// both times and engine_of_floor, the floor's time over the engine's (1 =
// the engine costs nothing above its writes).
//
//	go test -run '^$' -bench Floor -benchtime 5x -count 3 ./worker
func BenchmarkFloor(b *testing.B) {
	const slates = 10
	req := state.Request{GameDate: "2025-01-15", ChunkSize: 50}
	// The rows, computed once: what the floor writes.
	capt := &captureSink{rows: map[string][][]systems.Prediction{}}
	{
		bd := setup(b, nil, allSystems(b))
		e, err := New(Config{}, Deps{Store: bd.store, Features: bd.features, Sink: capt, Registry: bd.registry})
		if err != nil {
			b.Fatal(err)
		}
		batch, _, err := e.Submit(context.Background(), "rows", req)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := e.Run(context.Background(), batch.ID, RunOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	chunks := capt.rows["rows"]
	var engineT, floorT time.Duration
	preds := 0
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		// The engine, on fresh stores.
		bd := setup(b, nil, allSystems(b))
		e, err := New(Config{LeaseTTL: 30 * time.Second, HeartbeatInterval: time.Second},
			Deps{Store: bd.store, Features: bd.features, Sink: bd.sink, Registry: bd.registry})
		if err != nil {
			b.Fatal(err)
		}
		var ids []string
		for s := range slates {
			id := fmt.Sprintf("engine-%d-%d", i, s)
			if _, _, err := e.Submit(context.Background(), id, req); err != nil {
				b.Fatal(err)
			}
			ids = append(ids, id)
		}
		b.StartTimer()
		start := time.Now()
		var g errgroup.Group
		var got atomic.Int64
		for _, id := range ids {
			g.Go(func() error {
				done, err := e.Run(context.Background(), id, RunOptions{})
				got.Add(int64(done.Predictions))
				return err
			})
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		engineT += time.Since(start)
		preds += int(got.Load())

		// The floor, on fresh stores: the same rows, the same transactions.
		b.StopTimer()
		fd := setup(b, nil, allSystems(b))
		var leases []state.Batch
		for s := range slates {
			id := fmt.Sprintf("floor-%d-%d", i, s)
			if _, _, err := fd.store.Create(context.Background(), state.Batch{ID: id, Request: req, Items: make([]string, 425)}); err != nil {
				b.Fatal(err)
			}
			claimed, err := fd.store.Claim(context.Background(), id, "floor", 30*time.Second, state.ClaimOptions{})
			if err != nil {
				b.Fatal(err)
			}
			leases = append(leases, claimed)
		}
		b.StartTimer()
		start = time.Now()
		var fg errgroup.Group
		for _, bt := range leases {
			fg.Go(func() error {
				lease, prog := bt.Lease, state.Progress{}
				for _, rows := range chunks {
					own := slices.Clone(rows)
					for r := range own {
						own[r].BatchID = bt.ID
					}
					if err := fd.sink.Write(context.Background(), bt.ID, lease.Epoch, own); err != nil {
						return err
					}
					prog = prog.Add(state.Progress{DoneChunks: 1, DoneItems: 50, Predictions: len(own)})
					l, err := fd.store.Checkpoint(context.Background(), bt.ID, lease, prog, 30*time.Second)
					if err != nil {
						return err
					}
					lease = l
				}
				return nil
			})
		}
		if err := fg.Wait(); err != nil {
			b.Fatal(err)
		}
		floorT += time.Since(start)
	}
	b.ReportMetric(engineT.Seconds()/float64(b.N), "engine_s")
	b.ReportMetric(floorT.Seconds()/float64(b.N), "floor_s")
	b.ReportMetric(floorT.Seconds()/engineT.Seconds(), "engine_of_floor")
	b.ReportMetric(float64(preds)/engineT.Seconds(), "predictions/s")
}
