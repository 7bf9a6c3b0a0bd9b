package fleet_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/fsouza/fake-gcs-server/fakestorage"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/api/option"
	storage "google.golang.org/api/storage/v1"

	"github.com/predworker/predworker/internal/stagefake"
	"github.com/predworker/predworker/profile/phase5/contract"
	"github.com/predworker/predworker/profile/phase5/fleet"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/gbdt"
)

// registry is an in-memory model_registry.
type registry struct {
	mu      sync.Mutex
	entries []contract.ModelEntry
	err     error
	calls   atomic.Int64
}

func (r *registry) Models(context.Context) ([]contract.ModelEntry, error) {
	r.calls.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]contract.ModelEntry(nil), r.entries...), r.err
}

func (r *registry) set(err error, entries ...contract.ModelEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries, r.err = entries, err
}

// LightGBMModel is a booster over v12_noveg's inputs, with its fitted model.
func LightGBMModel(t *testing.T) ([]byte, *gbdt.Model) {
	t.Helper()
	b, m, err := stagefake.LightGBMModel(contract.FeatureSet("v12_noveg"), 1)
	if err != nil {
		t.Fatal(err)
	}
	return b, m
}

// XGBoostModel: base 10, +5 when points_avg_last_5 is under 20, else +15.
var XGBoostModel = stagefake.XGBoostModel

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

type countingFiles struct {
	inner fleet.Files
	opens atomic.Int64
}

func (c *countingFiles) Open(ctx context.Context, path string) (io.ReadCloser, error) {
	c.opens.Add(1)
	return c.inner.Open(ctx, path)
}

// setup serves files in a fake GCS (fake-gcs-server, in process) and
// returns a fleet over reg.
func setup(t *testing.T, reg fleet.Registry, files map[string][]byte) (*fleet.Fleet, *systems.Registry, *countingFiles, *prometheus.Registry) {
	t.Helper()
	var objs []fakestorage.Object
	for name, b := range files {
		objs = append(objs, fakestorage.Object{ObjectAttrs: fakestorage.ObjectAttrs{BucketName: bucket, Name: name}, Content: b})
	}
	srv, err := fakestorage.NewServerWithOptions(fakestorage.Options{InitialObjects: objs, Host: "127.0.0.1", Scheme: "http", Port: 0})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	svc, err := storage.NewService(t.Context(), option.WithEndpoint(srv.URL()+"/storage/v1/"), option.WithoutAuthentication(),
		option.WithHTTPClient(srv.HTTPClient()))
	if err != nil {
		t.Fatal(err)
	}
	cf := &countingFiles{inner: fleet.GCS{Service: svc}}
	sysreg := systems.NewRegistry()
	m := prometheus.NewRegistry()
	return fleet.New(fleet.Options{Registry: reg, Files: cf, Systems: sysreg, Metrics: m}), sysreg, cf, m
}

const bucket = "nba-props-platform-models"

func gs(name string) string { return "gs://" + bucket + "/" + name }

// features are a player's store features for the fleet's models.
func features(l5 float64, line *float64) *systems.Features {
	named := map[string]float64{}
	for i, n := range contract.StoreNames {
		named[n] = float64(i % 7)
	}
	named["points_avg_last_5"] = l5
	f := &systems.Features{PlayerLookup: "p", Named: named, Quality: 92, PointsStdL10: 3.5}
	if line != nil {
		f.Line, f.HasLine = *line, true
	}
	return f
}

func TestFleetServesLightGBMAndXGBoostAndReportsWhatItLeavesOut(t *testing.T) {
	lgb, fitted := LightGBMModel(t)
	names := contract.FeatureSet("v12_noveg")
	xgb := XGBoostModel(names)
	reg := &registry{}
	reg.set(nil,
		contract.ModelEntry{ModelID: "lgbm_v12_noveg_a", ModelType: "lightgbm", GCSPath: gs("lgbm_a.txt"), FeatureSet: "v12_noveg",
			FeatureCount: 50, SHA256: sum(lgb), LossFunction: "MAE", ModelVersion: "v12a"},
		contract.ModelEntry{ModelID: "xgb_v12_noveg_b", GCSPath: gs("xgb_b.json"), FeatureSet: "v12_noveg", SHA256: sum(xgb)[:16]},
		contract.ModelEntry{ModelID: "catboost_v12_noveg_c", ModelType: "catboost", GCSPath: gs("catboost_c.cbm"), FeatureSet: "v12_noveg"},
		contract.ModelEntry{ModelID: "lgbm_tampered", ModelType: "lightgbm", GCSPath: gs("lgbm_a.txt"), FeatureSet: "v12_noveg",
			SHA256: strings.Repeat("ab", 32)},
		contract.ModelEntry{ModelID: "lgbm_wrong_set", ModelType: "lightgbm", GCSPath: gs("lgbm_a.txt"), FeatureSet: "v12"},
		contract.ModelEntry{ModelID: "xgb_missing", ModelType: "xgboost", GCSPath: gs("nope.json"), FeatureSet: "v12_noveg"},
	)
	f, sysreg, _, metrics := setup(t, reg, map[string][]byte{"lgbm_a.txt": lgb, "xgb_b.json": xgb, "catboost_c.cbm": []byte("CBM1")})
	if !sysreg.Loading() {
		t.Error("the systems registry is not marked loading before the first read")
	}
	if err := f.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if sysreg.Loading() {
		t.Error("the systems registry is still loading after the fleet loaded")
	}
	if got := f.IDs(); len(got) != 2 || got[0] != "lgbm_v12_noveg_a" || got[1] != "xgb_v12_noveg_b" {
		t.Fatalf("fleet = %v", got)
	}
	if ids := sysreg.IDs(); len(ids) != 2 {
		t.Fatalf("registered %v", ids)
	}
	kinds := map[string]string{}
	for _, s := range f.Skipped() {
		kinds[s.ModelID] = s.Kind
	}
	want := map[string]string{"catboost_v12_noveg_c": "unsupported_format", "lgbm_tampered": "checksum",
		"lgbm_wrong_set": "shape", "xgb_missing": "download"}
	for id, k := range want {
		if kinds[id] != k {
			t.Errorf("%s skipped as %q, want %q (all: %v)", id, kinds[id], k, f.Skipped())
		}
	}
	if n := counter(t, metrics, "predworker_fleet_model_load_failures_total", "unsupported_format"); n != 1 {
		t.Errorf("unsupported_format failures = %v", n)
	}
	err := f.Check(t.Context())
	if err == nil || !strings.Contains(err.Error(), "CatBoost models (.cbm) are not supported yet") || !strings.Contains(err.Error(), "lgbm_tampered") {
		t.Errorf("doctor check = %v", err)
	}

	// The LightGBM system answers what the fitted model computes on the
	// feature_set's vector; the XGBoost one what its tree says.
	line := 20.5
	ft := features(26, &line)
	lsys, _ := sysreg.Get("lgbm_v12_noveg_a")
	est, err := lsys.Predict(t.Context(), ft)
	if err != nil {
		t.Fatal(err)
	}
	want1 := contract.Round1(systems.Clamp(fitted.Predict(contract.Vector(names, ft.Named, nil)), 0, 60))
	if est.Points != want1 || est.Confidence != 95 {
		t.Errorf("lightgbm estimate %+v, want %.1f points at 95", est, want1)
	}
	xsys, _ := sysreg.Get("xgb_v12_noveg_b")
	for _, c := range []struct {
		l5   float64
		line *float64
		pts  float64
		rec  string
	}{{26, &line, 25, "OVER"}, {12, &line, 15, "UNDER"}, {12, nil, 15, "NO_LINE"}, {26, ptr(23.5), 25, "HOLD"}} {
		est, err := xsys.Predict(t.Context(), features(c.l5, c.line))
		if err != nil || est.Points != c.pts || string(est.Recommendation) != c.rec {
			t.Errorf("xgboost on l5=%v: %+v %v, want %v %s", c.l5, est, err, c.pts, c.rec)
		}
	}
	if v := xsys.Version(); !strings.HasPrefix(v, "xgb_v12_noveg_b@") {
		t.Errorf("version %q", v)
	}
}

func ptr(v float64) *float64 { return &v }

// counter is the value of the counter name{…=label} in g.
func counter(t *testing.T, g prometheus.Gatherer, name, label string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if mf.GetName() == name && l.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{%s}", name, label)
	return 0
}

// A refresh that cannot read the registry, or loads nothing, keeps the last
// good set serving; an unchanged model is not downloaded again; a changed
// file is.
func TestRefreshKeepsTheLastGoodSet(t *testing.T) {
	names := contract.FeatureSet("v12_noveg")
	xgb := XGBoostModel(names)
	entry := contract.ModelEntry{ModelID: "xgb_a", GCSPath: gs("xgb_a.json"), FeatureSet: "v12_noveg", SHA256: sum(xgb)}
	reg := &registry{}
	reg.set(nil, entry)
	f, sysreg, files, _ := setup(t, reg, map[string][]byte{"xgb_a.json": xgb, "broken.json": []byte("{")})
	if err := f.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := f.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := files.opens.Load(); n != 1 {
		t.Errorf("an unchanged model was downloaded %d times", n)
	}
	reg.set(errors.New("backend error"))
	if err := f.Refresh(t.Context()); err == nil {
		t.Fatal("a failed registry read refreshed")
	}
	reg.set(nil, contract.ModelEntry{ModelID: "xgb_a", GCSPath: gs("broken.json"), FeatureSet: "v12_noveg"})
	if err := f.Refresh(t.Context()); err == nil || !strings.Contains(err.Error(), "none of the registry's 1 models") {
		t.Fatalf("a refresh loading nothing: %v", err)
	}
	s, ok := sysreg.Get("xgb_a")
	if got := f.IDs(); !ok || len(got) != 1 {
		t.Fatalf("after failed refreshes the fleet is %v", got)
	}
	if est, err := s.Predict(t.Context(), features(26, nil)); err != nil || est.Points != 25 {
		t.Errorf("the last good model answers %+v, %v", est, err)
	}
	if err := f.Check(t.Context()); err == nil {
		t.Error("doctor passed after a failed refresh")
	}
}

// A registry that keeps failing opens the breaker: later refreshes fail at
// once without calling it.
func TestRegistryBreaker(t *testing.T) {
	reg := &registry{}
	reg.set(errors.New("503"))
	f, _, _, _ := setup(t, reg, nil)
	for range 8 {
		_ = f.Refresh(t.Context())
	}
	if n := reg.calls.Load(); n != 5 {
		t.Errorf("registry called %d times by 8 refreshes, want 5 (then the breaker opens)", n)
	}
}
