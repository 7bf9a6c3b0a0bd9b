package worker

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/predworker/predworker/state"
)

// Metrics are the engine's Prometheus instruments.
type Metrics struct {
	Predictions        *prometheus.CounterVec
	Fallbacks          *prometheus.CounterVec
	ChunkDuration      prometheus.Histogram
	CheckpointDuration prometheus.Histogram
	LeaseRenewals      *prometheus.CounterVec
	LeaseLost          prometheus.Counter
	BatchesFinished    *prometheus.CounterVec
	ActiveBatches      prometheus.Gauge
	Errors             *prometheus.CounterVec
}

// NewMetrics creates the instruments and registers them, with a collector of
// batches by state read from store at scrape time, on reg.
func NewMetrics(reg prometheus.Registerer, store state.Store) *Metrics {
	m := &Metrics{
		Predictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "predworker_predictions_total",
			Help: "Prediction rows computed, by requested system and outcome (ok, fallback, failed).",
		}, []string{"system", "outcome"}),
		Fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "predworker_fallbacks_total",
			Help: "System calls that failed and fell back, by system and reason.",
		}, []string{"system", "reason"}),
		ChunkDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "predworker_chunk_duration_seconds",
			Help:    "Time from chunk start to its committed checkpoint.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}),
		CheckpointDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "predworker_checkpoint_duration_seconds",
			Help:    "Latency of the fenced checkpoint write to the state store.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2.5, 12),
		}),
		LeaseRenewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "predworker_lease_renewals_total",
			Help: "Lease renewals by result (ok, error, lost).",
		}, []string{"result"}),
		LeaseLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "predworker_lease_lost_total",
			Help: "Runs stopped because their lease was lost or could not be renewed in time.",
		}),
		BatchesFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "predworker_batches_finished_total",
			Help: "Batches this process finished, by final state.",
		}, []string{"state"}),
		ActiveBatches: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "predworker_active_batches",
			Help: "Batches this process is running now.",
		}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "predworker_errors_total",
			Help: "Errors logged, by where they happened (op) and error class (validation, unavailable, internal, …; see worker.Class).",
		}, []string{"op", "class"}),
	}
	if reg != nil {
		reg.MustRegister(m.Predictions, m.Fallbacks, m.ChunkDuration, m.CheckpointDuration,
			m.LeaseRenewals, m.LeaseLost, m.BatchesFinished, m.ActiveBatches, m.Errors)
		if store != nil {
			reg.MustRegister(batchesCollector{store: store})
		}
	}
	return m
}

var batchesDesc = prometheus.NewDesc("predworker_batches",
	"Batches in the state store by state.", []string{"state"}, nil)

type batchesCollector struct{ store state.Store }

func (c batchesCollector) Describe(ch chan<- *prometheus.Desc) { ch <- batchesDesc }

func (c batchesCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	counts, err := c.store.CountByStatus(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(batchesDesc, err)
		return
	}
	for _, s := range []state.Status{state.StatusPending, state.StatusRunning, state.StatusCompleted, state.StatusFailed} {
		ch <- prometheus.MustNewConstMetric(batchesDesc, prometheus.GaugeValue, float64(counts[s]), string(s))
	}
}
