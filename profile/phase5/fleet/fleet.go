// Package fleet serves the pipeline profile's models (PROFILE=phase5): the
// rows of the stage's model_registry (ORIGIN.md §6), each a prediction
// system named by its model_id, loaded from its file (a GCS object) and
// evaluated in process: LightGBM text boosters by
// github.com/dmitryikh/leaves (the evaluator of the bundled xgboost_v1),
// XGBoost JSON boosters by systems/xgbjson.
//
// The fleet is refreshed every TTL (MODEL_CACHE_TTL_SECONDS). A refresh
// that fails keeps the last good set; a model that cannot be loaded (a
// CatBoost .cbm file, a checksum that does not match, a file that does not
// parse or whose inputs do not match its feature_set) is logged, counted
// and reported by `worker doctor`, and left out: never replaced by
// anything else. Registry and file calls run under deadlines and behind a
// circuit breaker.
package fleet

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dmitryikh/leaves"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"

	"github.com/predworker/predworker/profile/phase5/contract"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/xgbjson"
)

// Registry lists the fleet's rows.
type Registry interface {
	Models(ctx context.Context) ([]contract.ModelEntry, error)
}

// Files opens a model file by its registry path (gs://bucket/object).
type Files interface {
	Open(ctx context.Context, path string) (io.ReadCloser, error)
}

// Options configures a fleet.
type Options struct {
	Registry Registry
	Files    Files
	// Systems is where loaded models are registered, by model_id.
	Systems *systems.Registry
	// TTL is how often the registry is read again (default 4 h); while no
	// model is loaded, a failed read is retried every RetryEmpty (30 s).
	TTL, RetryEmpty time.Duration
	// CallTimeout bounds a registry query and a file read (default 60 s).
	CallTimeout time.Duration
	// MaxModelBytes refuses larger files (default 256 MiB).
	MaxModelBytes int64
	Logger        *slog.Logger
	Metrics       prometheus.Registerer
}

// Skipped is a registry row that is not served, and why.
type Skipped struct {
	ModelID, Path, Reason string
	Kind                  string // unsupported_format, download, checksum, parse, shape
}

// Fleet is the loaded set.
type Fleet struct {
	o       Options
	breaker *gobreaker.CircuitBreaker[any]

	mu      sync.RWMutex
	current []string          // ids of the last good set, registry order
	models  map[string]*model // every model ever loaded, by id (a batch may still ask for one the registry dropped)
	skipped []Skipped
	lastErr error
	loaded  bool

	refreshes *prometheus.CounterVec
	failures  *prometheus.CounterVec
	gauge     *prometheus.GaugeVec
}

// New returns an empty fleet; Refresh loads it.
func New(o Options) *Fleet {
	if o.TTL <= 0 {
		o.TTL = 4 * time.Hour
	}
	if o.RetryEmpty <= 0 {
		o.RetryEmpty = 30 * time.Second
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = 60 * time.Second
	}
	if o.MaxModelBytes <= 0 {
		o.MaxModelBytes = 256 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	f := &Fleet{o: o, models: map[string]*model{},
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "predworker_fleet_refreshes_total",
			Help: "Reads of the model registry, by outcome (ok, failed)."}, []string{"outcome"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "predworker_fleet_model_load_failures_total",
			Help: "Registry models that could not be loaded, by kind (unsupported_format, download, checksum, parse, shape)."},
			[]string{"kind"}),
		gauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "predworker_fleet_models",
			Help: "Models of the registry's fleet, by state (loaded, skipped)."}, []string{"state"}),
	}
	// Until the first read, batches naming the fleet's models wait instead
	// of failing for want of them.
	o.Systems.SetLoading(true)
	f.breaker = gobreaker.NewCircuitBreaker[any](gobreaker.Settings{Name: "model-registry", Timeout: 30 * time.Second,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= 5 }})
	if o.Metrics != nil {
		for _, c := range []prometheus.Collector{f.refreshes, f.failures, f.gauge} {
			if err := o.Metrics.Register(c); err != nil {
				o.Logger.Warn("fleet metrics not registered", slog.String("error", err.Error()))
			}
		}
	}
	return f
}

// call runs fn under the breaker and the call deadline.
func call[T any](ctx context.Context, f *Fleet, fn func(ctx context.Context) (T, error)) (T, error) {
	var zero T
	v, err := f.breaker.Execute(func() (any, error) {
		ctx, cancel := context.WithTimeout(ctx, f.o.CallTimeout)
		defer cancel()
		return fn(ctx)
	})
	if err != nil {
		return zero, err
	}
	return v.(T), nil
}

// IDs are the model ids of the current set, in registry order.
func (f *Fleet) IDs() []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return slices.Clone(f.current)
}

// Skipped lists the registry rows the last refresh left out.
func (f *Fleet) Skipped() []Skipped {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return slices.Clone(f.skipped)
}

// Refresh reads the registry and loads what changed. On failure the last
// good set stays; the error says why.
func (f *Fleet) Refresh(ctx context.Context) error {
	entries, err := call(ctx, f, f.o.Registry.Models)
	if err != nil {
		f.refreshes.WithLabelValues("failed").Inc()
		err = fmt.Errorf("model registry: %w", err)
		f.mu.Lock()
		f.lastErr = err
		kept := len(f.current)
		f.mu.Unlock()
		f.o.Logger.Warn("model registry could not be read; the last good fleet stays", slog.String("error", err.Error()),
			slog.Int("models_kept", kept))
		return err
	}
	next := map[string]*model{}
	var ids []string
	var skipped []Skipped
	for _, e := range entries {
		if e.ModelID == "" || next[e.ModelID] != nil {
			continue
		}
		m, err := f.reuseOrLoad(ctx, e)
		if err != nil {
			s := Skipped{ModelID: e.ModelID, Path: e.GCSPath, Reason: err.Error(), Kind: kindOf(err)}
			skipped = append(skipped, s)
			f.failures.WithLabelValues(s.Kind).Inc()
			f.o.Logger.Warn("model not loaded; left out of the fleet", slog.String("model_id", e.ModelID),
				slog.String("gcs_path", e.GCSPath), slog.String("kind", s.Kind), slog.String("error", s.Reason))
			continue
		}
		next[e.ModelID] = m
		ids = append(ids, e.ModelID)
	}
	if len(ids) == 0 && len(entries) > 0 {
		f.refreshes.WithLabelValues("failed").Inc()
		err := fmt.Errorf("none of the registry's %d models could be loaded", len(entries))
		f.mu.Lock()
		f.lastErr, f.skipped = err, skipped
		f.mu.Unlock()
		f.gauge.WithLabelValues("skipped").Set(float64(len(skipped)))
		f.o.Logger.Error("model fleet refresh loaded nothing; the last good fleet stays", slog.String("error", err.Error()))
		return err
	}
	f.mu.Lock()
	for id, m := range next {
		if _, had := f.models[id]; !had {
			f.o.Systems.Register(&slot{id: id, fleet: f}, "")
		}
		f.models[id] = m
	}
	f.current, f.skipped, f.lastErr, f.loaded = ids, skipped, nil, true
	f.mu.Unlock()
	f.o.Systems.SetLoading(false)
	f.refreshes.WithLabelValues("ok").Inc()
	f.gauge.WithLabelValues("loaded").Set(float64(len(ids)))
	f.gauge.WithLabelValues("skipped").Set(float64(len(skipped)))
	f.o.Logger.Info("model fleet refreshed", slog.Int("models", len(ids)), slog.Int("skipped", len(skipped)),
		slog.String("model_ids", strings.Join(ids, ",")))
	return nil
}

// Run refreshes every TTL (every RetryEmpty while nothing is loaded) until
// ctx ends.
func (f *Fleet) Run(ctx context.Context) {
	for {
		wait := f.o.TTL
		f.mu.RLock()
		if !f.loaded {
			wait = f.o.RetryEmpty
		}
		f.mu.RUnlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		_ = f.Refresh(ctx) // logged and counted inside
	}
}

// Check is the fleet's `worker doctor` check: the registry is readable,
// at least one model is loaded, and none was left out (each one that was
// is named with its reason).
func (f *Fleet) Check(ctx context.Context) error {
	f.mu.RLock()
	loaded := f.loaded
	f.mu.RUnlock()
	if !loaded {
		if err := f.Refresh(ctx); err != nil {
			return err
		}
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	var errs []error
	if f.lastErr != nil {
		errs = append(errs, f.lastErr)
	}
	for _, s := range f.skipped {
		errs = append(errs, fmt.Errorf("%s (%s) not loaded: %s", s.ModelID, s.Path, s.Reason))
	}
	return errors.Join(errs...)
}

// errKind tags a load error with its metric kind.
type errKind struct {
	kind string
	err  error
}

func (e *errKind) Error() string { return e.err.Error() }
func (e *errKind) Unwrap() error { return e.err }

func kinded(kind string, format string, args ...any) error {
	return &errKind{kind: kind, err: fmt.Errorf(format, args...)}
}

func kindOf(err error) string {
	var k *errKind
	if errors.As(err, &k) {
		return k.kind
	}
	return "download"
}

// reuseOrLoad keeps a loaded model whose file and inputs did not change,
// and loads the others.
func (f *Fleet) reuseOrLoad(ctx context.Context, e contract.ModelEntry) (*model, error) {
	f.mu.RLock()
	old := f.models[e.ModelID]
	f.mu.RUnlock()
	if old != nil && old.entry.GCSPath == e.GCSPath && old.entry.SHA256 == e.SHA256 &&
		slices.Equal(old.entry.Inputs(), e.Inputs()) && old.entry.LossFunction == e.LossFunction {
		return old, nil
	}
	return f.load(ctx, e)
}

// load fetches, verifies and parses one model.
func (f *Fleet) load(ctx context.Context, e contract.ModelEntry) (*model, error) {
	fw := e.Framework()
	if fw == contract.CatBoost {
		return nil, kinded("unsupported_format", "CatBoost models (.cbm) are not supported yet; this one is left out (LightGBM .txt and XGBoost .json are served)")
	}
	raw, err := call(ctx, f, func(ctx context.Context) ([]byte, error) {
		rc, err := f.o.Files.Open(ctx, e.GCSPath)
		if err != nil {
			return nil, err
		}
		defer func() { _ = rc.Close() }()
		b, err := io.ReadAll(io.LimitReader(rc, f.o.MaxModelBytes+1))
		if err == nil && int64(len(b)) > f.o.MaxModelBytes {
			err = fmt.Errorf("larger than %d bytes", f.o.MaxModelBytes)
		}
		return b, err
	})
	if err != nil {
		return nil, kinded("download", "read %s: %w", e.GCSPath, err)
	}
	sum := sha256.Sum256(raw)
	got := hex.EncodeToString(sum[:])
	if want := strings.ToLower(strings.TrimSpace(e.SHA256)); want != "" {
		if len(want) < 16 || !strings.HasPrefix(got, want) {
			return nil, kinded("checksum", "sha256 of %s is %s, the registry says %s", e.GCSPath, got, want)
		}
	}
	inputs := e.Inputs()
	v9Width := contract.IsV9Path(e.FeatureSet) && e.FeatureCount == len(inputs)-1 // a V9 model trained without the 34th value
	if e.FeatureCount > 0 && e.FeatureCount != len(inputs) && !v9Width {
		return nil, kinded("shape", "feature_count %d, but feature_set %q has %d inputs", e.FeatureCount, e.FeatureSet, len(inputs))
	}
	m := &model{entry: e, sha: got, v9: contract.IsV9Path(e.FeatureSet),
		hold: contract.HoldEdge(e.LossFunction), anchor: e.Anchor()}
	var width int
	var fileNames []string
	switch fw {
	case contract.LightGBM:
		ens, err := leaves.LGEnsembleFromReader(bufio.NewReader(bytes.NewReader(raw)), false)
		if err != nil {
			return nil, kinded("parse", "LightGBM model %s: %w", e.GCSPath, err)
		}
		if ens.NOutputGroups() != 1 {
			return nil, kinded("shape", "LightGBM model %s has %d outputs; one (regression) is served", e.GCSPath, ens.NOutputGroups())
		}
		width, fileNames = ens.NFeatures(), lightGBMNames(raw)
		m.eval = func(x []float64) float64 { return ens.PredictSingle(x, 0) }
	case contract.XGBoost:
		b, err := xgbjson.Load(bytes.NewReader(raw))
		if err != nil {
			return nil, kinded("parse", "XGBoost model %s: %w", e.GCSPath, err)
		}
		width, fileNames = b.NumFeatures(), b.FeatureNames()
		m.eval = b.Predict
	}
	switch {
	case width == len(inputs):
	case m.v9 && width == len(inputs)-1 && inputs[width] == "has_shot_zone_data": // the V9 path's 34th value, for a model trained on 33
		inputs = inputs[:width]
	default:
		return nil, kinded("shape", "model %s takes %d inputs, feature_set %q has %d", e.GCSPath, width, e.FeatureSet, len(inputs))
	}
	if len(fileNames) == len(inputs) && allKnown(fileNames) && !slices.Equal(fileNames, inputs) {
		return nil, kinded("shape", "model %s names its inputs %s, in another order than feature_set %q", e.GCSPath,
			strings.Join(fileNames, ","), e.FeatureSet)
	}
	m.inputs = inputs
	f.o.Logger.Info("model loaded", slog.String("model_id", e.ModelID), slog.String("framework", fw),
		slog.String("gcs_path", e.GCSPath), slog.String("sha256", got[:16]), slog.Int("inputs", len(inputs)))
	return m, nil
}

// lightGBMNames reads a LightGBM text model's feature_names= line.
func lightGBMNames(raw []byte) []string {
	for line := range bytes.Lines(raw) {
		if v, ok := bytes.CutPrefix(bytes.TrimRight(line, "\r\n"), []byte("feature_names=")); ok {
			return strings.Fields(string(v))
		}
		if bytes.HasPrefix(line, []byte("Tree=")) {
			break
		}
	}
	return nil
}

// allKnown reports whether names are the contract's (a file trained from a
// data frame of the feature store), not generic (Column_0, f0).
func allKnown(names []string) bool {
	known := map[string]bool{"has_shot_zone_data": true}
	for _, n := range contract.StoreNames {
		known[n] = true
	}
	for _, set := range []string{"v13", "v15"} {
		for _, n := range contract.FeatureSet(set) {
			known[n] = true
		}
	}
	for _, n := range names {
		if !known[n] {
			return false
		}
	}
	return true
}

// model is one loaded registry model.
type model struct {
	entry  contract.ModelEntry
	sha    string
	inputs []string
	eval   func([]float64) float64
	v9     bool
	hold   float64
	anchor bool
}

func (m *model) version() string {
	v := m.entry.ModelVersion
	if v == "" {
		v = m.entry.ModelID
	}
	return v + "@" + m.sha[:12]
}

// slot is the system registered for a model id: it serves whichever
// model of that id the fleet holds now.
type slot struct {
	id    string
	fleet *Fleet
}

func (s *slot) model() (*model, error) {
	s.fleet.mu.RLock()
	defer s.fleet.mu.RUnlock()
	m, ok := s.fleet.models[s.id]
	if !ok {
		return nil, fmt.Errorf("model %s is not loaded", s.id)
	}
	return m, nil
}

// ID implements systems.System.
func (s *slot) ID() string { return s.id }

// Version implements systems.System: the registry's model_version and the
// file's checksum.
func (s *slot) Version() string {
	m, err := s.model()
	if err != nil {
		return "unloaded"
	}
	return m.version()
}

// Predict implements systems.System: the model on the input vector of
// its feature_set, clamped to 0-60 and rounded to 0.1, with the fleet's
// confidence and call (§4). An anchor model's output is a deviation from
// the line: no line, no prediction.
func (s *slot) Predict(ctx context.Context, f *systems.Features) (systems.Estimate, error) {
	m, err := s.model()
	if err != nil {
		return systems.Estimate{}, err
	}
	if err := ctx.Err(); err != nil {
		return systems.Estimate{}, err
	}
	raw := m.eval(contract.Vector(m.inputs, f.Named, make([]float64, 0, len(m.inputs))))
	if m.anchor {
		if !f.HasLine {
			return systems.Estimate{}, fmt.Errorf("%s predicts a deviation from the line: %w", s.id, systems.ErrInsufficientData)
		}
		raw += f.Line
	}
	points := contract.Round1(systems.Clamp(raw, 0, 60))
	conf := contract.Confidence(f.Quality, f.PointsStdL10, m.v9)
	var line *float64
	if f.HasLine {
		line = &f.Line
	}
	return systems.Estimate{Points: points, Confidence: conf,
		Recommendation: systems.Recommendation(contract.Recommend(points, conf, line, m.v9, m.hold))}, nil
}
