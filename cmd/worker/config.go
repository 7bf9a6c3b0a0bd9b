package main

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/predworker/predworker/api"
	"github.com/predworker/predworker/logging"
	"github.com/predworker/predworker/systems"
	bqsource "github.com/predworker/predworker/systems/bigquery"
	"github.com/predworker/predworker/tracing"
	"github.com/predworker/predworker/worker"
)

// Config is the whole configuration, read from the environment once at
// start and validated before any backend is opened. Settings owned by a
// package take their defaults from it (worker.DefaultConfig, the api
// defaults); the rest have theirs in the tags.
type Config struct {
	Port    int    `env:"PORT, default=8080"`
	Host    string `env:"HOST"`
	Service string `env:"K_SERVICE"` // set by Cloud Run
	// HTTP server deadlines: reading a whole request (headers and body),
	// writing an answer (the push endpoint gets PUSH_BUDGET more; a
	// predictions stream gets this much per page), and keeping an idle
	// connection.
	HTTPReadTimeout  time.Duration `env:"HTTP_READ_TIMEOUT, default=30s"`
	HTTPWriteTimeout time.Duration `env:"HTTP_WRITE_TIMEOUT, default=60s"`
	HTTPIdleTimeout  time.Duration `env:"HTTP_IDLE_TIMEOUT, default=120s"`

	DataDir       string `env:"DATA_DIR, default=./data"`
	StateStore    string `env:"STATE_STORE, default=sqlite"`
	FeatureSource string `env:"FEATURE_SOURCE, default=local"`
	// Profile switches on a pipeline profile: "phase5" serves the replaced
	// stage's POST /start and GET /status, reads its tables, serves its
	// model registry's fleet, writes its output table and publishes its
	// completion message (ORIGIN.md, docs/migrating.md). FEATURE_SOURCE,
	// PREDICTION_SINK and SYSTEMS are then the profile's. Empty: none.
	Profile string `env:"PROFILE"`
	// The profile's settings: the project of the stage's datasets
	// (GCP_PROJECT_ID of the replaced services; default
	// GOOGLE_CLOUD_PROJECT), the fleet's refresh period, the feature
	// validation floor, and what goes into build_commit_sha and
	// deployment_revision.
	Phase5Project        string  `env:"PHASE5_PROJECT"`
	ModelCacheTTLSeconds int     `env:"MODEL_CACHE_TTL_SECONDS, default=14400"`
	MinQualityThreshold  float64 `env:"PREDICTION_MIN_QUALITY_THRESHOLD, default=50"`
	BuildCommit          string  `env:"BUILD_COMMIT"`
	Revision             string  `env:"K_REVISION"` // set by Cloud Run
	// BigQuery endpoints other than Google's (an emulator, a test double):
	// the REST API and the Storage Write API (host:port, plaintext).
	BigQueryEndpoint      string `env:"BIGQUERY_API_ENDPOINT"`
	BigQueryWriteEndpoint string `env:"BIGQUERY_WRITE_ENDPOINT"`
	PredictionSink        string `env:"PREDICTION_SINK, default=sqlite"`
	Events                string `env:"EVENTS, default=log"`
	Project               string `env:"GOOGLE_CLOUD_PROJECT"`
	// Firestore: database id and a collection prefix, so several deployments
	// or test runs can share one database.
	FirestoreDatabase string `env:"FIRESTORE_DATABASE, default=(default)"`
	FirestorePrefix   string `env:"FIRESTORE_PREFIX"`
	// Real game logs (FEATURE_SOURCE=gamelogs): the game-log file and an
	// optional file of points lines, CSV or gzipped CSV.
	GamelogPath string `env:"GAMELOG_PATH"`
	LinesPath   string `env:"LINES_PATH"`
	// CalibrationPath: a calibration file (worker score --calibration-out):
	// on rows with a line, confidence becomes the calibrated probability
	// of the side and only sides above the break-even are recommended.
	CalibrationPath string `env:"CALIBRATION_PATH"`
	// BigQuery feature table (FEATURE_SOURCE=bigquery); the project defaults
	// to GOOGLE_CLOUD_PROJECT.
	FeaturesProject string        `env:"BIGQUERY_FEATURES_PROJECT"`
	FeaturesDataset string        `env:"BIGQUERY_FEATURES_DATASET, default=nba_predictions"`
	FeaturesTable   string        `env:"BIGQUERY_FEATURES_TABLE, default=player_features"`
	BigQueryTimeout time.Duration `env:"BIGQUERY_TIMEOUT, default=30s"`
	// BigQuery prediction tables (PREDICTION_SINK=bigquery); the project
	// defaults to GOOGLE_CLOUD_PROJECT.
	PredictionsProject string `env:"BIGQUERY_PREDICTIONS_PROJECT"`
	PredictionsDataset string `env:"BIGQUERY_PREDICTIONS_DATASET, default=nba_predictions"`
	PredictionsTable   string `env:"BIGQUERY_PREDICTIONS_TABLE, default=predictions"`
	// Pub/Sub topics for EVENTS=pubsub (ids in GOOGLE_CLOUD_PROJECT, or full names).
	CompletionTopic string `env:"COMPLETION_TOPIC, default=predworker-completions"`
	DeadLetterTopic string `env:"DEAD_LETTER_TOPIC, default=predworker-dead-letters"`
	// ContinuationTopic, when set, is where a push whose budget ran out
	// publishes the rest of its batch (usually the batch-request topic);
	// unset, such a push answers 503 and the redelivery resumes it.
	ContinuationTopic string `env:"PUSH_CONTINUATION_TOPIC"`

	// The engine's settings (CHUNK_SIZE, CONCURRENCY, SYSTEM_TIMEOUT(S),
	// LEASE_TTL, HEARTBEAT_INTERVAL, SWEEP_INTERVAL, DRAIN_TIMEOUT,
	// BREAKER_*, SYSTEM_BREAKERS, FAULTS, MIN_FEATURE_QUALITY).
	worker.Config

	// The push endpoint's settings.
	PushBudget  time.Duration `env:"PUSH_BUDGET"`
	MaxAttempts int           `env:"MAX_DELIVERY_ATTEMPTS"`

	// Prediction systems: which run, their fallbacks and thresholds, the
	// tree model's file.
	Systems          []string           `env:"SYSTEMS"`
	SystemFallbacks  systems.Fallbacks  `env:"SYSTEM_FALLBACKS"`
	SystemThresholds systems.Thresholds `env:"SYSTEM_THRESHOLDS"`
	ModelPath        string             `env:"XGBOOST_MODEL_PATH"`
	ModelOptional    bool               `env:"XGBOOST_MODEL_OPTIONAL, default=false"`

	// Authentication. Push: Pub/Sub's OIDC token for this audience from one
	// of these service accounts. Operator API: a static bearer token and/or
	// an ID token for OPERATOR_AUDIENCE from one of OPERATOR_EMAILS.
	PushAudience         string   `env:"PUSH_AUDIENCE"`
	PushServiceAccounts  []string `env:"PUSH_SERVICE_ACCOUNTS"`
	OperatorAudience     string   `env:"OPERATOR_AUDIENCE"`
	OperatorEmails       []string `env:"OPERATOR_EMAILS"`
	OperatorTokens       []string `env:"OPERATOR_TOKEN"`
	AllowUnauthenticated bool     `env:"ALLOW_UNAUTHENTICATED, default=false"`
	// AllowEmbeddedOnCloudRun lets the service start on Cloud Run with
	// SQLite state or predictions, which live on the instance's in-memory
	// disk and vanish with it (demos only).
	AllowEmbeddedOnCloudRun bool `env:"ALLOW_EMBEDDED_ON_CLOUD_RUN, default=false"`

	LogLevel  string `env:"LOG_LEVEL, default=info"`
	LogFormat string `env:"LOG_FORMAT, default=json"`
	// Traces: off, stdout, otlp (OTEL_EXPORTER_OTLP_* say where) or
	// cloudtrace; the share of new traces recorded.
	Traces           string  `env:"TRACES, default=off"`
	TraceSampleRatio float64 `env:"TRACE_SAMPLE_RATIO, default=1"`
}

// defaultConfig holds the defaults the packages own; LoadConfig overwrites
// each with its variable when that is set.
func defaultConfig() Config {
	return Config{
		Config:          worker.DefaultConfig(),
		PushBudget:      api.DefaultPushBudget,
		MaxAttempts:     api.DefaultMaxAttempts,
		SystemFallbacks: defaultFallbacks(),
	}
}

// LoadConfig reads and validates the configuration from lookup (the process
// environment in production, a map in tests). Nothing is opened.
func LoadConfig(ctx context.Context, lookup envconfig.Lookuper) (*Config, error) {
	c := defaultConfig()
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: &c, Lookuper: lookup, DefaultOverwrite: true}); err != nil {
		return nil, fmt.Errorf("configuration: %s", withVariableNames(err.Error()))
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	return &c, nil
}

// withVariableNames rewrites the struct field names envconfig puts in its
// errors ("Config: LeaseTTL: time: invalid duration") into the variable
// names a user sets ("LEASE_TTL is invalid: time: invalid duration").
func withVariableNames(msg string) string {
	msg = strings.TrimPrefix(msg, "Config: ") // the embedded engine settings
	for _, t := range []reflect.Type{reflect.TypeFor[Config](), reflect.TypeFor[worker.Config]()} {
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
			if name != "" && strings.HasPrefix(msg, f.Name+":") {
				return name + " is invalid:" + strings.TrimPrefix(msg, f.Name+":")
			}
		}
	}
	return msg
}

var prefixPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{0,64}$`)

func oneOf(name, v string, allowed ...string) error {
	if slices.Contains(allowed, v) {
		return nil
	}
	return fmt.Errorf("%s must be one of %s (got %q)", name, strings.Join(allowed, ", "), v)
}

// validate checks every setting, cross-field rules included, and resolves
// the derived ones (HOST, the projects, CONCURRENCY=0).
func (c *Config) validate() error {
	if c.Host == "" {
		c.Host = "127.0.0.1"
		if c.Service != "" {
			c.Host = "0.0.0.0"
		}
	}
	for _, check := range []func() error{c.validateServer, c.validateBackends, c.validateAuth, c.validateCloudRun, c.validateSystems} {
		if err := check(); err != nil {
			return err
		}
	}
	if c.Concurrency == 0 {
		c.Concurrency = worker.DefaultConcurrency()
	}
	if c.MaxRunning == 0 {
		c.MaxRunning = worker.DefaultMaxRunning()
	}
	if c.MaxAbandoned == 0 {
		c.MaxAbandoned = c.Concurrency
	}
	return nil
}

func (c *Config) validateServer() error {
	switch {
	case c.Port < 0 || c.Port > 65535:
		return fmt.Errorf("PORT must be from 0 to 65535 (got %d)", c.Port)
	case c.HTTPReadTimeout <= 0 || c.HTTPWriteTimeout <= 0 || c.HTTPIdleTimeout <= 0:
		return fmt.Errorf("HTTP_READ_TIMEOUT, HTTP_WRITE_TIMEOUT and HTTP_IDLE_TIMEOUT must be positive durations")
	case c.DrainTimeout > 9*time.Second && c.Service != "":
		return fmt.Errorf("DRAIN_TIMEOUT must be under 10s on Cloud Run, which kills 10s after SIGTERM (got %s)", c.DrainTimeout)
	case c.PushBudget <= 0 || c.PushBudget > 600*time.Second:
		return fmt.Errorf("PUSH_BUDGET must be positive and at most 600s, Pub/Sub's longest ack deadline (got %s)", c.PushBudget)
	case c.MaxAttempts < 1 || c.MaxAttempts > 100:
		return fmt.Errorf("MAX_DELIVERY_ATTEMPTS must be from 1 to 100 (got %d)", c.MaxAttempts)
	case c.DataDir == "":
		return fmt.Errorf("DATA_DIR must not be empty")
	}
	if _, err := logging.ParseLevel(c.LogLevel); err != nil {
		return fmt.Errorf("LOG_LEVEL: %w", err)
	}
	if c.TraceSampleRatio < 0 || c.TraceSampleRatio > 1 {
		return fmt.Errorf("TRACE_SAMPLE_RATIO must be from 0 to 1 (got %g)", c.TraceSampleRatio)
	}
	if err := oneOf("TRACES", c.Traces, tracing.Modes...); err != nil {
		return err
	}
	return oneOf("LOG_FORMAT", c.LogFormat, "json", "text")
}

func (c *Config) validateBackends() error {
	if err := oneOf("PROFILE", c.Profile, "", "phase5"); err != nil {
		return err
	}
	if err := c.validateProfile(); err != nil {
		return err
	}
	for _, e := range []error{
		oneOf("STATE_STORE", c.StateStore, "sqlite", "firestore"),
		oneOf("FEATURE_SOURCE", c.FeatureSource, "local", "bigquery", "gamelogs", "phase5"),
		oneOf("PREDICTION_SINK", c.PredictionSink, "sqlite", "bigquery", "phase5"),
		oneOf("EVENTS", c.Events, "log", "pubsub"),
	} {
		if e != nil {
			return e
		}
	}
	if c.Profile == "" && (c.FeatureSource == "phase5" || c.PredictionSink == "phase5") {
		return fmt.Errorf("FEATURE_SOURCE=phase5 and PREDICTION_SINK=phase5 come with PROFILE=phase5")
	}
	needsProject := map[string]bool{
		"STATE_STORE=firestore": c.StateStore == "firestore", "EVENTS=pubsub": c.Events == "pubsub",
		"PROFILE=phase5":          c.Profile == "phase5",
		"FEATURE_SOURCE=bigquery": c.FeatureSource == "bigquery", "PREDICTION_SINK=bigquery": c.PredictionSink == "bigquery",
		"PUSH_CONTINUATION_TOPIC is": c.ContinuationTopic != "", "TRACES=cloudtrace": c.Traces == "cloudtrace",
	}
	for _, why := range slices.Sorted(maps.Keys(needsProject)) {
		if needsProject[why] && c.Project == "" {
			return fmt.Errorf("GOOGLE_CLOUD_PROJECT must be set when %s", why)
		}
	}
	if c.FeatureSource == "bigquery" {
		if c.FeaturesProject == "" {
			c.FeaturesProject = c.Project
		}
		if err := (bqsource.Options{TableProject: c.FeaturesProject, Dataset: c.FeaturesDataset, Table: c.FeaturesTable}).ValidateIdentifiers(); err != nil {
			return err
		}
	}
	switch {
	case c.FeatureSource == "gamelogs" && c.GamelogPath == "":
		return fmt.Errorf("GAMELOG_PATH must name a game-log file when FEATURE_SOURCE=gamelogs")
	case c.FeatureSource != "gamelogs" && (c.GamelogPath != "" || c.LinesPath != ""):
		return fmt.Errorf("GAMELOG_PATH and LINES_PATH are read only with FEATURE_SOURCE=gamelogs")
	}
	if (c.FeatureSource == "bigquery" || c.PredictionSink == "bigquery") && c.BigQueryTimeout <= 0 {
		return fmt.Errorf("BIGQUERY_TIMEOUT must be a positive duration (got %s)", c.BigQueryTimeout)
	}
	if c.PredictionSink == "bigquery" {
		if c.PredictionsProject == "" {
			c.PredictionsProject = c.Project
		}
		if err := (bqsource.Options{TableProject: c.PredictionsProject, Dataset: c.PredictionsDataset, Table: c.PredictionsTable}).ValidateIdentifiers(); err != nil {
			return fmt.Errorf("BIGQUERY_PREDICTIONS_TABLE: %w", err)
		}
	}
	if c.StateStore == "firestore" && c.HeartbeatInterval < time.Second {
		return fmt.Errorf("HEARTBEAT_INTERVAL must be at least 1s with STATE_STORE=firestore (one write per second per document; got %s)", c.HeartbeatInterval)
	}
	if !prefixPattern.MatchString(c.FirestorePrefix) {
		return fmt.Errorf("FIRESTORE_PREFIX must be up to 64 characters of A-Z, a-z, 0-9, _ and - (got %q)", c.FirestorePrefix)
	}
	return nil
}

// validateProfile resolves PROFILE=phase5: the stage's tables are the
// feature source and the sink, its registry the systems.
func (c *Config) validateProfile() error {
	if c.Profile != "phase5" {
		if c.Phase5Project != "" {
			return fmt.Errorf("PHASE5_PROJECT is read only with PROFILE=phase5")
		}
		return nil
	}
	switch {
	case len(c.Systems) > 0:
		return fmt.Errorf("SYSTEMS is not read with PROFILE=phase5: the systems are the model_registry's fleet")
	case c.ModelCacheTTLSeconds < 60:
		return fmt.Errorf("MODEL_CACHE_TTL_SECONDS must be at least 60 (got %d)", c.ModelCacheTTLSeconds)
	case c.MinQualityThreshold < 0 || c.MinQualityThreshold > 100:
		return fmt.Errorf("PREDICTION_MIN_QUALITY_THRESHOLD must be from 0 to 100 (got %g)", c.MinQualityThreshold)
	case c.BigQueryTimeout <= 0:
		return fmt.Errorf("BIGQUERY_TIMEOUT must be a positive duration (got %s)", c.BigQueryTimeout)
	}
	c.FeatureSource, c.PredictionSink = "phase5", "phase5"
	c.Phase5Project = cmp.Or(c.Phase5Project, c.Project)
	return nil
}

func (c *Config) validateAuth() error {
	switch {
	case c.PushAudience != "" && len(c.PushServiceAccounts) == 0:
		return fmt.Errorf("PUSH_SERVICE_ACCOUNTS must name the push subscription's service account when PUSH_AUDIENCE is set")
	case c.PushAudience == "" && len(c.PushServiceAccounts) > 0:
		return fmt.Errorf("PUSH_AUDIENCE must be set when PUSH_SERVICE_ACCOUNTS is")
	case c.OperatorAudience != "" && len(c.OperatorEmails) == 0:
		return fmt.Errorf("OPERATOR_EMAILS must list the allowed identities when OPERATOR_AUDIENCE is set")
	case c.OperatorAudience == "" && len(c.OperatorEmails) > 0:
		return fmt.Errorf("OPERATOR_AUDIENCE must be set when OPERATOR_EMAILS is")
	case slices.ContainsFunc(c.OperatorTokens, func(t string) bool { return len(t) < 16 }):
		return fmt.Errorf("OPERATOR_TOKEN: every token (comma-separated) must be at least 16 characters")
	}
	pushOpen := c.PushAudience == ""
	opsOpen := c.OperatorAudience == "" && len(c.OperatorTokens) == 0
	if c.Service != "" && (pushOpen || opsOpen) && !c.AllowUnauthenticated {
		return fmt.Errorf("on Cloud Run (K_SERVICE is set) the push endpoint and the operator API need authentication: " +
			"set PUSH_AUDIENCE and PUSH_SERVICE_ACCOUNTS, and OPERATOR_TOKEN or OPERATOR_AUDIENCE with OPERATOR_EMAILS; " +
			"or set ALLOW_UNAUTHENTICATED=true to run without")
	}
	return nil
}

// validateCloudRun refuses the embedded backends on Cloud Run: an instance's
// disk is memory, lost when the instance is recycled, while Firestore (or
// another instance) would consider the chunks written there done.
func (c *Config) validateCloudRun() error {
	if c.Service == "" || c.AllowEmbeddedOnCloudRun {
		return nil
	}
	for _, b := range [][2]string{{"STATE_STORE", c.StateStore}, {"PREDICTION_SINK", c.PredictionSink}} {
		if b[1] == "sqlite" {
			return fmt.Errorf("on Cloud Run (K_SERVICE is set) %s=sqlite keeps data on the instance's in-memory disk, "+
				"which is lost when the instance is recycled: use STATE_STORE=firestore and PREDICTION_SINK=bigquery, "+
				"or set ALLOW_EMBEDDED_ON_CLOUD_RUN=true for a demo", b[0])
		}
	}
	return nil
}

// validateSystems checks every setting that names systems against the
// systems this build has and the ones SYSTEMS enables, and the engine's
// settings, before anything is opened or loaded.
func (c *Config) validateSystems() error {
	if c.Profile == "phase5" {
		// The fleet's ids are known once the registry is read: settings
		// naming systems are checked against it then, not here.
		if len(c.SystemFallbacks) > 0 && !maps.Equal(c.SystemFallbacks, defaultFallbacks()) || len(c.SystemThresholds) > 0 {
			return fmt.Errorf("SYSTEM_FALLBACKS and SYSTEM_THRESHOLDS are not read with PROFILE=phase5 (the fleet has no fallbacks; its calls are the stage's)")
		}
		c.SystemFallbacks = nil
		return c.Config.Validate(nil)
	}
	enabled, err := c.enabledSystems()
	if err != nil {
		return err
	}
	for _, id := range slices.Sorted(maps.Keys(c.SystemFallbacks)) {
		if !slices.Contains(allSystems, id) {
			return fmt.Errorf("SYSTEM_FALLBACKS names unknown system %q (known: %s)", id, strings.Join(allSystems, ", "))
		}
	}
	for id := range c.SystemThresholds {
		if !slices.Contains(allSystems, id) {
			return fmt.Errorf("SYSTEM_THRESHOLDS names unknown system %q (known: %s)", id, strings.Join(allSystems, ", "))
		}
	}
	return c.Config.Validate(enabled)
}

// enabledSystems is SYSTEMS, or every system of this build.
func (c *Config) enabledSystems() ([]string, error) {
	if len(c.Systems) == 0 {
		return allSystems, nil
	}
	for _, id := range c.Systems {
		if !slices.Contains(allSystems, id) {
			return nil, fmt.Errorf("SYSTEMS names unknown system %q (known: %s)", id, strings.Join(allSystems, ", "))
		}
	}
	return c.Systems, nil
}

// engineConfig is the engine's part of the configuration, with what the
// backends imply.
func (c *Config) engineConfig() worker.Config {
	ec := c.Config
	// Every process sharing a SQLite file runs on this machine, so a lease
	// whose owner process is gone can be taken over at once.
	ec.LocalOwners = c.StateStore == "sqlite"
	return ec
}

// LogValue logs the resolved configuration in human units (it holds no
// secrets: tokens are logged as whether they are set).
func (c *Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("host", c.Host), slog.Int("port", c.Port), slog.String("data_dir", c.DataDir),
		slog.String("http_read_timeout", c.HTTPReadTimeout.String()), slog.String("http_write_timeout", c.HTTPWriteTimeout.String()),
		slog.String("http_idle_timeout", c.HTTPIdleTimeout.String()),
		slog.String("state_store", c.StateStore), slog.String("project", c.Project),
		slog.String("firestore_database", c.FirestoreDatabase), slog.String("firestore_prefix", c.FirestorePrefix),
		slog.String("feature_source", c.FeatureSource), slog.String("prediction_sink", c.PredictionSink),
		slog.String("events", c.Events), slog.Any("engine", c.engineConfig()),
		slog.Any("systems", c.Systems), slog.String("system_fallbacks", c.SystemFallbacks.String()),
		slog.String("system_thresholds", c.SystemThresholds.String()), slog.String("model_path", c.ModelPath),
		slog.Bool("push_auth", c.PushAudience != ""), slog.Bool("operator_oidc", c.OperatorAudience != ""),
		slog.Int("operator_tokens", len(c.OperatorTokens)), slog.Bool("allow_unauthenticated", c.AllowUnauthenticated),
		slog.Bool("allow_embedded_on_cloud_run", c.AllowEmbeddedOnCloudRun),
		slog.String("push_budget", c.PushBudget.String()), slog.Int("max_delivery_attempts", c.MaxAttempts),
		slog.String("bigquery_timeout", c.BigQueryTimeout.String()), slog.String("profile", c.Profile),
		slog.String("phase5_project", c.Phase5Project), slog.Int("model_cache_ttl_seconds", c.ModelCacheTTLSeconds),
	)
}
