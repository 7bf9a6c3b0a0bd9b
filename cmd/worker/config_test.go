package main

import (
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/movingavg"
	"github.com/predworker/predworker/worker"
)

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c, err := LoadConfig(t.Context(), envconfig.MapLookuper(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Port != 8080 || c.Host != "127.0.0.1" || c.DataDir != "./data" || c.StateStore != "sqlite" ||
		c.ChunkSize != 50 || c.LeaseTTL != 30*time.Second || c.HeartbeatInterval != 10*time.Second ||
		c.SweepInterval != 15*time.Second || c.DrainTimeout != 8*time.Second || c.PushBudget != 540*time.Second ||
		c.SystemTimeout != 2*time.Second || c.LogFormat != "json" || c.LogLevel != "info" {
		t.Fatalf("defaults = %+v", c)
	}
	c, err = LoadConfig(t.Context(), envconfig.MapLookuper(map[string]string{"K_SERVICE": "predworker", "ALLOW_EMBEDDED_ON_CLOUD_RUN": "true",
		"PUSH_AUDIENCE": "https://svc/pubsub/push", "PUSH_SERVICE_ACCOUNTS": "push@p.iam.gserviceaccount.com",
		"OPERATOR_TOKEN": "0123456789abcdef0123"}))
	if err != nil || c.Host != "0.0.0.0" {
		t.Fatalf("on Cloud Run host = %q, %v; want 0.0.0.0", c.Host, err)
	}
}

func TestConfigRejects(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"HEARTBEAT_INTERVAL": "11s"}, "HEARTBEAT_INTERVAL must be at most LEASE_TTL/3"},
		{map[string]string{"LEASE_TTL": "3s", "HEARTBEAT_INTERVAL": "2s"}, "HEARTBEAT_INTERVAL must be at most LEASE_TTL/3"},
		{map[string]string{"CHUNK_SIZE": "0"}, "CHUNK_SIZE"},
		{map[string]string{"CHUNK_SIZE": "many"}, "CHUNK_SIZE"},
		{map[string]string{"LEASE_TTL": "soon"}, "LEASE_TTL"},
		{map[string]string{"SWEEP_INTERVAL": "-1s"}, "SWEEP_INTERVAL"},
		{map[string]string{"STATE_STORE": "postgres"}, "STATE_STORE must be one of"},
		{map[string]string{"STATE_STORE": "firestore"}, "GOOGLE_CLOUD_PROJECT must be set"},
		{map[string]string{"FIRESTORE_PREFIX": "a/b"}, "FIRESTORE_PREFIX"},
		{map[string]string{"STATE_STORE": "firestore", "GOOGLE_CLOUD_PROJECT": "p", "LEASE_TTL": "2s", "HEARTBEAT_INTERVAL": "500ms"}, "HEARTBEAT_INTERVAL must be at least 1s"},
		{map[string]string{"FEATURE_SOURCE": "csv"}, "FEATURE_SOURCE"},
		{map[string]string{"PREDICTION_SINK": "kafka"}, "PREDICTION_SINK"},
		{map[string]string{"EVENTS": "smoke"}, "EVENTS"},
		{map[string]string{"LOG_FORMAT": "xml"}, "LOG_FORMAT"},
		{map[string]string{"TRACES": "jaeger"}, "TRACES"},
		{map[string]string{"PROFILE": "phase4"}, "PROFILE"},
		{map[string]string{"PROFILE": "phase5"}, "GOOGLE_CLOUD_PROJECT must be set when PROFILE=phase5"},
		{map[string]string{"PROFILE": "phase5", "GOOGLE_CLOUD_PROJECT": "p", "SYSTEMS": "moving_average"}, "SYSTEMS is not read with PROFILE=phase5"},
		{map[string]string{"PROFILE": "phase5", "GOOGLE_CLOUD_PROJECT": "p", "MODEL_CACHE_TTL_SECONDS": "5"}, "MODEL_CACHE_TTL_SECONDS"},
		{map[string]string{"PROFILE": "phase5", "GOOGLE_CLOUD_PROJECT": "p", "PREDICTION_MIN_QUALITY_THRESHOLD": "101"}, "PREDICTION_MIN_QUALITY_THRESHOLD"},
		{map[string]string{"PROFILE": "phase5", "GOOGLE_CLOUD_PROJECT": "p", "SYSTEM_THRESHOLDS": "moving_average=1:50"}, "not read with PROFILE=phase5"},
		{map[string]string{"FEATURE_SOURCE": "phase5"}, "come with PROFILE=phase5"},
		{map[string]string{"PHASE5_PROJECT": "p"}, "PHASE5_PROJECT is read only with PROFILE=phase5"},
		{map[string]string{"TRACE_SAMPLE_RATIO": "1.5"}, "TRACE_SAMPLE_RATIO"},
		{map[string]string{"TRACES": "cloudtrace"}, "TRACES=cloudtrace"},
		{map[string]string{"LOG_LEVEL": "loud"}, "LOG_LEVEL"},
		{map[string]string{"FAULTS": "system=*,kind=boom,rate=1"}, "FAULTS"},
		{map[string]string{"SYSTEM_TIMEOUTS": "moving_average"}, "SYSTEM_TIMEOUTS"},
		{map[string]string{"PUSH_BUDGET": "11m"}, "PUSH_BUDGET"},
		{map[string]string{"PORT": "70000"}, "PORT"},
		{map[string]string{"K_SERVICE": "x", "DRAIN_TIMEOUT": "12s", "ALLOW_UNAUTHENTICATED": "true"}, "DRAIN_TIMEOUT"},
		{map[string]string{"K_SERVICE": "x"}, "need authentication"},
		{map[string]string{"K_SERVICE": "x", "PUSH_AUDIENCE": "https://a", "PUSH_SERVICE_ACCOUNTS": "sa@p.iam.gserviceaccount.com"}, "need authentication"},
		// On Cloud Run an instance's disk is memory: the embedded backends lose data.
		{map[string]string{"K_SERVICE": "x", "ALLOW_UNAUTHENTICATED": "true"}, "STATE_STORE=sqlite keeps data on the instance's in-memory disk"},
		{map[string]string{"K_SERVICE": "x", "ALLOW_UNAUTHENTICATED": "true", "STATE_STORE": "firestore", "GOOGLE_CLOUD_PROJECT": "p"}, "PREDICTION_SINK=sqlite keeps data"},
		{map[string]string{"PUSH_AUDIENCE": "https://a"}, "PUSH_SERVICE_ACCOUNTS"},
		{map[string]string{"OPERATOR_EMAILS": "a@b.c"}, "OPERATOR_AUDIENCE"},
		{map[string]string{"OPERATOR_TOKEN": "short"}, "OPERATOR_TOKEN"},
		{map[string]string{"OPERATOR_TOKEN": "0123456789abcdef0123,short"}, "every token"},
		{map[string]string{"MAX_DELIVERY_ATTEMPTS": "0"}, "MAX_DELIVERY_ATTEMPTS"},
		{map[string]string{"FEATURE_SOURCE": "bigquery"}, "GOOGLE_CLOUD_PROJECT must be set"},
		{map[string]string{"SYSTEM_BREAKERS": "xgboost_v1=many:30s"}, "SYSTEM_BREAKERS"},
		{map[string]string{"FEATURE_SOURCE": "bigquery", "GOOGLE_CLOUD_PROJECT": "my-project", "BIGQUERY_FEATURES_TABLE": "t`; DROP"}, "BIGQUERY_FEATURES_TABLE"},
	} {
		_, err := LoadConfig(t.Context(), envconfig.MapLookuper(tc.env))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want one naming %s", tc.env, err, tc.want)
		}
	}
}

func TestConfigOfThePipelineProfile(t *testing.T) {
	t.Parallel()
	c, err := LoadConfig(t.Context(), envconfig.MapLookuper(map[string]string{"PROFILE": "phase5",
		"GOOGLE_CLOUD_PROJECT": "run-project", "SYSTEM_TIMEOUTS": "lgbm_v12_noveg_a=2s"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.FeatureSource != "phase5" || c.PredictionSink != "phase5" || c.Phase5Project != "run-project" ||
		c.ModelCacheTTLSeconds != 14400 || c.MinQualityThreshold != 50 || len(c.SystemFallbacks) != 0 {
		t.Errorf("profile config = %+v", c)
	}
}

func TestConfigParsesFaultsAndTimeouts(t *testing.T) {
	t.Parallel()
	c, err := LoadConfig(t.Context(), envconfig.MapLookuper(map[string]string{
		"FAULTS":          "system=*,kind=latency,latency=20ms,rate=1;system=zone_matchup_v1,kind=hang,rate=0.05",
		"SYSTEM_TIMEOUTS": "zone_matchup_v1=500ms, moving_average=1s",
		"SYSTEM_BREAKERS": "xgboost_v1=3:30s",
	}))
	if err != nil {
		t.Fatal(err)
	}
	ec := c.engineConfig()
	if len(ec.Faults) != 2 || ec.SystemTimeouts["zone_matchup_v1"] != 500*time.Millisecond || !ec.LocalOwners ||
		ec.Breakers["xgboost_v1"].Failures != 3 || ec.Breakers["xgboost_v1"].Cooldown != 30*time.Second {
		t.Fatalf("engine config = %+v", ec)
	}
}

func TestSystemPolicy(t *testing.T) {
	t.Parallel()
	load := func(env map[string]string) (*Config, error) {
		return LoadConfig(t.Context(), envconfig.MapLookuper(env))
	}
	c, err := load(nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := newRegistry(c)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.IDs(), ","); got != "ensemble_v1,moving_average,similarity_balanced_v1,xgboost_v1,zone_matchup_v1" {
		t.Fatalf("default systems = %s", got)
	}
	if r.Fallback("xgboost_v1") != "moving_average" || r.Fallback("moving_average") != "" {
		t.Fatalf("default fallbacks wrong")
	}
	bad := filepath.Join(t.TempDir(), "corrupt.txt")
	if err := os.WriteFile(bad, []byte("tree\nversion=v3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"SYSTEMS": "moving_average,gpt5"}, "SYSTEMS names unknown system"},
		{map[string]string{"SYSTEM_FALLBACKS": "moving_average=zone_matchup_v1,zone_matchup_v1=moving_average"}, "loops"},
		{map[string]string{"SYSTEM_FALLBACKS": "oracle=moving_average"}, "unknown system"},
		{map[string]string{"SYSTEMS": "zone_matchup_v1", "SYSTEM_FALLBACKS": "zone_matchup_v1=moving_average"}, "not a registered system"},
		{map[string]string{"SYSTEM_THRESHOLDS": "moving_average=high"}, "edge:confidence"},
		{map[string]string{"XGBOOST_MODEL_PATH": bad}, "XGBOOST_MODEL_PATH"},
		{map[string]string{"XGBOOST_MODEL_PATH": filepath.Join(t.TempDir(), "missing.txt")}, "XGBOOST_MODEL_PATH"},
	} {
		c, err := load(tc.env)
		if err == nil {
			_, err = newRegistry(c)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error with %q", tc.env, err, tc.want)
		}
	}
	// Optional model: a missing file gives a stand-in whose rows fall back.
	c, err = load(map[string]string{"XGBOOST_MODEL_PATH": filepath.Join(t.TempDir(), "missing.txt"), "XGBOOST_MODEL_OPTIONAL": "true"})
	if err != nil {
		t.Fatal(err)
	}
	r, err = newRegistry(c)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := r.Get("xgboost_v1")
	if _, err := s.Predict(t.Context(), &systems.Features{}); err == nil || s.Version() != "xgboost_v1-unavailable" {
		t.Fatalf("optional missing model = %s, %v", s.Version(), err)
	}
	// Thresholds apply.
	c, err = load(map[string]string{"SYSTEMS": "moving_average", "SYSTEM_THRESHOLDS": "moving_average=0:0"})
	if err != nil {
		t.Fatal(err)
	}
	if r, err = newRegistry(c); err != nil {
		t.Fatal(err)
	}
	ma, _ := r.Get("moving_average")
	// 10 − 0.5 away = 9.5 against 9.0: edge 0.5 > 0 and confidence 70 > 0: OVER (PASS with the default 2.0:45).
	est, err := ma.Predict(t.Context(), &systems.Features{PointsAvgL5: 10, PointsAvgL10: 10, PointsAvgSeason: 10, GamesPlayed: 20, HasLine: true, Line: 9})
	if err != nil || est.Recommendation != systems.Over {
		t.Fatalf("thresholds 0:0 gave %+v, %v", est, err)
	}
}

// Every setting that names a system is checked when the configuration is
// loaded, before any backend is opened: LoadConfig itself refuses them.
func TestConfigRefusesUnknownSystemsBeforeOpeningAnything(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"SYSTEM_TIMEOUTS": "oracle_v9=1s"}, `SYSTEM_TIMEOUTS names unknown system "oracle_v9"`},
		{map[string]string{"SYSTEM_BREAKERS": "oracle_v9=3:30s"}, `SYSTEM_BREAKERS names unknown system "oracle_v9"`},
		{map[string]string{"FAULTS": "system=oracle_v9,kind=error,rate=1"}, `FAULTS names unknown system "oracle_v9"`},
		{map[string]string{"SYSTEMS": "moving_average", "SYSTEM_TIMEOUTS": "xgboost_v1=1s"}, `SYSTEM_TIMEOUTS names unknown system "xgboost_v1"`},
		{map[string]string{"SYSTEM_THRESHOLDS": "oracle_v9=1:50"}, `SYSTEM_THRESHOLDS names unknown system "oracle_v9"`},
		{map[string]string{"SYSTEM_FALLBACKS": "oracle_v9=moving_average"}, `SYSTEM_FALLBACKS names unknown system "oracle_v9"`},
	} {
		_, err := LoadConfig(t.Context(), envconfig.MapLookuper(tc.env))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: LoadConfig = %v, want an error with %s", tc.env, err, tc.want)
		}
	}
}

// The startup line shows the resolved configuration in human units: the
// concurrency actually used, durations as "30s", not nanoseconds.
func TestConfigLogsResolvedValuesInHumanUnits(t *testing.T) {
	t.Parallel()
	c, err := LoadConfig(t.Context(), envconfig.MapLookuper(map[string]string{"SYSTEM_TIMEOUTS": "zone_matchup_v1=500ms"}))
	if err != nil {
		t.Fatal(err)
	}
	var buf strings.Builder
	log, err := newLogger(c, &buf, false)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("starting", slog.Any("config", c))
	line := buf.String()
	for _, want := range []string{`"lease_ttl":"30s"`, `"heartbeat_interval":"10s"`, `"push_budget":"9m0s"`,
		`"system_timeouts":"zone_matchup_v1=500ms"`, fmt.Sprintf(`"concurrency":%d`, worker.DefaultConcurrency())} {
		if !strings.Contains(line, want) {
			t.Errorf("config line lacks %s: %s", want, line)
		}
	}
	if strings.Contains(line, `"concurrency":0`) || strings.Contains(line, "30000000000") {
		t.Errorf("config line shows unresolved values or nanoseconds: %s", line)
	}
}

// CALIBRATION_PATH: every system's confidence on a lined row becomes the
// calibrated probability of its side; a bad file stops startup.
func TestCalibrationPath(t *testing.T) {
	c := systems.NewCalibration()
	for i := range 100 {
		c.Add(movingavg.ID, 3, i < 70)
	}
	var buf strings.Builder
	if err := c.Write(&buf); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "cal.json")
	if err := os.WriteFile(path, []byte(buf.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(t.Context(), envconfig.MapLookuper(map[string]string{"CALIBRATION_PATH": path, "SYSTEMS": "moving_average"}))
	if err != nil {
		t.Fatal(err)
	}
	r, err := newRegistry(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := r.Get(movingavg.ID)
	f := &systems.Features{PointsAvgL5: 24, PointsAvgL10: 24, PointsAvgSeason: 24, GamesPlayed: 20, Home: true,
		HasLine: true, Line: 21}
	e, err := s.Predict(t.Context(), f)
	if err != nil || e.Confidence != math.Round(1000*c.Prob(movingavg.ID, e.Points-21))/10 || e.Recommendation != systems.Over {
		t.Fatalf("calibrated estimate %+v, %v", e, err)
	}
	if err := os.WriteFile(path, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := newRegistry(cfg); err == nil || !strings.Contains(err.Error(), "CALIBRATION_PATH") {
		t.Fatalf("a bad calibration file: %v", err)
	}
}
