package main

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/sethvargo/go-envconfig"

	bqsource "github.com/predworker/predworker/systems/bigquery"
	"github.com/predworker/predworker/worker"
)

// Config is the whole configuration, read from the environment once at start.
type Config struct {
	Port    int    `env:"PORT, default=8080"`
	Host    string `env:"HOST"`
	Service string `env:"K_SERVICE"` // set by Cloud Run

	DataDir        string `env:"DATA_DIR, default=./data"`
	StateStore     string `env:"STATE_STORE, default=sqlite"`
	FeatureSource  string `env:"FEATURE_SOURCE, default=local"`
	PredictionSink string `env:"PREDICTION_SINK, default=sqlite"`
	Events         string `env:"EVENTS, default=log"`
	Project        string `env:"GOOGLE_CLOUD_PROJECT"`
	// Firestore: database id and a collection prefix, so several deployments
	// or test runs can share one database.
	FirestoreDatabase string `env:"FIRESTORE_DATABASE, default=(default)"`
	FirestorePrefix   string `env:"FIRESTORE_PREFIX"`
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
	StagingTable       string `env:"BIGQUERY_STAGING_TABLE, default=predictions_staging"`
	// Pub/Sub topics for EVENTS=pubsub (ids in GOOGLE_CLOUD_PROJECT, or full names).
	CompletionTopic string `env:"COMPLETION_TOPIC, default=predworker-completions"`
	DeadLetterTopic string `env:"DEAD_LETTER_TOPIC, default=predworker-dead-letters"`
	// ContinuationTopic, when set, is where a push whose budget ran out
	// publishes the rest of its batch (usually the batch-request topic);
	// unset, such a push answers 503 and the redelivery resumes it.
	ContinuationTopic string `env:"PUSH_CONTINUATION_TOPIC"`

	ChunkSize         int           `env:"CHUNK_SIZE, default=50"`
	Concurrency       int           `env:"CONCURRENCY, default=0"` // 0: 4 × GOMAXPROCS
	SystemTimeout     time.Duration `env:"SYSTEM_TIMEOUT, default=2s"`
	SystemTimeouts    string        `env:"SYSTEM_TIMEOUTS"` // id=duration,id=duration
	LeaseTTL          time.Duration `env:"LEASE_TTL, default=30s"`
	HeartbeatInterval time.Duration `env:"HEARTBEAT_INTERVAL, default=10s"`
	SweepInterval     time.Duration `env:"SWEEP_INTERVAL, default=15s"`
	DrainTimeout      time.Duration `env:"DRAIN_TIMEOUT, default=8s"`
	PushBudget        time.Duration `env:"PUSH_BUDGET, default=540s"`
	MaxAttempts       int           `env:"MAX_DELIVERY_ATTEMPTS, default=5"`
	BreakerFailures   int           `env:"BREAKER_FAILURES, default=5"`
	BreakerCooldown   time.Duration `env:"BREAKER_COOLDOWN, default=10s"`
	Faults            string        `env:"FAULTS"`

	// Prediction systems: which run, their fallbacks and thresholds, the
	// tree model's file, the feature quality floor.
	Systems          []string `env:"SYSTEMS"`
	SystemFallbacks  string   `env:"SYSTEM_FALLBACKS, default=zone_matchup_v1=moving_average,similarity_balanced_v1=moving_average,xgboost_v1=moving_average,ensemble_v1=moving_average"`
	SystemThresholds string   `env:"SYSTEM_THRESHOLDS"` // id=edge:confidence,...
	SystemBreakers   string   `env:"SYSTEM_BREAKERS"`   // id=failures:cooldown,...
	ModelPath        string   `env:"XGBOOST_MODEL_PATH"`
	ModelOptional    bool     `env:"XGBOOST_MODEL_OPTIONAL, default=false"`
	MinQuality       float64  `env:"MIN_FEATURE_QUALITY, default=50"`

	// Authentication. Push: Pub/Sub's OIDC token for this audience from one
	// of these service accounts. Operator API: a static bearer token and/or
	// an ID token for OPERATOR_AUDIENCE from one of OPERATOR_EMAILS.
	PushAudience         string   `env:"PUSH_AUDIENCE"`
	PushServiceAccounts  []string `env:"PUSH_SERVICE_ACCOUNTS"`
	OperatorAudience     string   `env:"OPERATOR_AUDIENCE"`
	OperatorEmails       []string `env:"OPERATOR_EMAILS"`
	OperatorToken        string   `env:"OPERATOR_TOKEN"`
	AllowUnauthenticated bool     `env:"ALLOW_UNAUTHENTICATED, default=false"`

	LogLevel  string `env:"LOG_LEVEL, default=info"`
	LogFormat string `env:"LOG_FORMAT, default=json"`

	// Parsed forms.
	faults   []worker.FaultRule
	timeouts map[string]time.Duration
	breakers map[string]worker.BreakerSettings
}

// LoadConfig reads and validates the configuration from lookup (the process
// environment in production, a map in tests).
func LoadConfig(ctx context.Context, lookup envconfig.Lookuper) (*Config, error) {
	var c Config
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: &c, Lookuper: lookup}); err != nil {
		return nil, fmt.Errorf("configuration: %s", withVariableNames(err.Error()))
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	return &c, nil
}

// withVariableNames rewrites the struct field names envconfig puts in its
// errors ("LeaseTTL: time: invalid duration") into the variable names a user
// sets ("LEASE_TTL: time: invalid duration").
func withVariableNames(msg string) string {
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		if name != "" && strings.HasPrefix(msg, f.Name+":") {
			return name + " is invalid:" + strings.TrimPrefix(msg, f.Name+":")
		}
	}
	return msg
}

var prefixPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{0,64}$`)

func oneOf(name, v string, allowed ...string) error {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return fmt.Errorf("%s must be one of %s (got %q)", name, strings.Join(allowed, ", "), v)
}

func (c *Config) validate() error {
	if c.Host == "" {
		c.Host = "127.0.0.1"
		if c.Service != "" {
			c.Host = "0.0.0.0"
		}
	}
	positive := []struct {
		name string
		d    time.Duration
	}{
		{"SYSTEM_TIMEOUT", c.SystemTimeout}, {"LEASE_TTL", c.LeaseTTL}, {"HEARTBEAT_INTERVAL", c.HeartbeatInterval},
		{"SWEEP_INTERVAL", c.SweepInterval}, {"DRAIN_TIMEOUT", c.DrainTimeout}, {"PUSH_BUDGET", c.PushBudget},
		{"BREAKER_COOLDOWN", c.BreakerCooldown},
	}
	for _, p := range positive {
		if p.d <= 0 {
			return fmt.Errorf("%s must be a positive duration (got %s)", p.name, p.d)
		}
	}
	switch {
	case c.Port < 0 || c.Port > 65535:
		return fmt.Errorf("PORT must be from 0 to 65535 (got %d)", c.Port)
	case c.ChunkSize < 1 || c.ChunkSize > worker.MaxChunkSize:
		return fmt.Errorf("CHUNK_SIZE must be from 1 to %d (got %d)", worker.MaxChunkSize, c.ChunkSize)
	case c.Concurrency < 0 || c.Concurrency > 4096:
		return fmt.Errorf("CONCURRENCY must be from 1 to 4096, or 0 for 4 × GOMAXPROCS (got %d)", c.Concurrency)
	case c.HeartbeatInterval > c.LeaseTTL/3:
		return fmt.Errorf("HEARTBEAT_INTERVAL must be at most LEASE_TTL/3 (got %s with LEASE_TTL %s)", c.HeartbeatInterval, c.LeaseTTL)
	case c.DrainTimeout > 9*time.Second && c.Service != "":
		return fmt.Errorf("DRAIN_TIMEOUT must be under 10s on Cloud Run, which kills 10s after SIGTERM (got %s)", c.DrainTimeout)
	case c.PushBudget > 600*time.Second:
		return fmt.Errorf("PUSH_BUDGET must be at most 600s, Pub/Sub's longest ack deadline (got %s)", c.PushBudget)
	case c.MaxAttempts < 1 || c.MaxAttempts > 100:
		return fmt.Errorf("MAX_DELIVERY_ATTEMPTS must be from 1 to 100 (got %d)", c.MaxAttempts)
	case c.MinQuality < 0 || c.MinQuality > 100:
		return fmt.Errorf("MIN_FEATURE_QUALITY must be from 0 to 100 (got %g)", c.MinQuality)
	case c.BreakerFailures < 1:
		return fmt.Errorf("BREAKER_FAILURES must be at least 1 (got %d)", c.BreakerFailures)
	}
	if c.DataDir == "" {
		return fmt.Errorf("DATA_DIR must not be empty")
	}
	for _, e := range []error{
		oneOf("STATE_STORE", c.StateStore, "sqlite", "firestore"),
		oneOf("FEATURE_SOURCE", c.FeatureSource, "local", "bigquery"),
		oneOf("PREDICTION_SINK", c.PredictionSink, "sqlite", "bigquery"),
		oneOf("EVENTS", c.Events, "log", "pubsub"),
		oneOf("LOG_FORMAT", c.LogFormat, "json", "text"),
	} {
		if e != nil {
			return e
		}
	}
	if c.StateStore == "firestore" && c.Project == "" {
		return fmt.Errorf("GOOGLE_CLOUD_PROJECT must be set when STATE_STORE=firestore")
	}
	if c.Events == "pubsub" && c.Project == "" {
		return fmt.Errorf("GOOGLE_CLOUD_PROJECT must be set when EVENTS=pubsub")
	}
	if c.FeatureSource == "bigquery" {
		if c.Project == "" {
			return fmt.Errorf("GOOGLE_CLOUD_PROJECT must be set when FEATURE_SOURCE=bigquery")
		}
		if c.FeaturesProject == "" {
			c.FeaturesProject = c.Project
		}
		if err := (bqsource.Options{TableProject: c.FeaturesProject, Dataset: c.FeaturesDataset, Table: c.FeaturesTable}).ValidateIdentifiers(); err != nil {
			return err
		}
		if c.BigQueryTimeout <= 0 {
			return fmt.Errorf("BIGQUERY_TIMEOUT must be a positive duration")
		}
	}
	if c.PredictionSink == "bigquery" {
		if c.Project == "" {
			return fmt.Errorf("GOOGLE_CLOUD_PROJECT must be set when PREDICTION_SINK=bigquery")
		}
		if c.PredictionsProject == "" {
			c.PredictionsProject = c.Project
		}
		for name, v := range map[string]string{"BIGQUERY_PREDICTIONS_TABLE": c.PredictionsTable, "BIGQUERY_STAGING_TABLE": c.StagingTable} {
			if err := (bqsource.Options{TableProject: c.PredictionsProject, Dataset: c.PredictionsDataset, Table: v}).ValidateIdentifiers(); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	if c.ContinuationTopic != "" && c.Project == "" {
		return fmt.Errorf("GOOGLE_CLOUD_PROJECT must be set when PUSH_CONTINUATION_TOPIC is")
	}
	if c.StateStore == "firestore" && c.HeartbeatInterval < time.Second {
		return fmt.Errorf("HEARTBEAT_INTERVAL must be at least 1s with STATE_STORE=firestore (one write per second per document; got %s)", c.HeartbeatInterval)
	}
	if !prefixPattern.MatchString(c.FirestorePrefix) {
		return fmt.Errorf("FIRESTORE_PREFIX must be up to 64 characters of A-Z, a-z, 0-9, _ and - (got %q)", c.FirestorePrefix)
	}
	switch {
	case c.PushAudience != "" && len(c.PushServiceAccounts) == 0:
		return fmt.Errorf("PUSH_SERVICE_ACCOUNTS must name the push subscription's service account when PUSH_AUDIENCE is set")
	case c.PushAudience == "" && len(c.PushServiceAccounts) > 0:
		return fmt.Errorf("PUSH_AUDIENCE must be set when PUSH_SERVICE_ACCOUNTS is")
	case c.OperatorAudience != "" && len(c.OperatorEmails) == 0:
		return fmt.Errorf("OPERATOR_EMAILS must list the allowed identities when OPERATOR_AUDIENCE is set")
	case c.OperatorAudience == "" && len(c.OperatorEmails) > 0:
		return fmt.Errorf("OPERATOR_AUDIENCE must be set when OPERATOR_EMAILS is")
	case c.OperatorToken != "" && len(c.OperatorToken) < 16:
		return fmt.Errorf("OPERATOR_TOKEN must be at least 16 characters")
	}
	pushOpen := c.PushAudience == ""
	opsOpen := c.OperatorAudience == "" && c.OperatorToken == ""
	if c.Service != "" && (pushOpen || opsOpen) && !c.AllowUnauthenticated {
		return fmt.Errorf("on Cloud Run (K_SERVICE is set) the push endpoint and the operator API need authentication: " +
			"set PUSH_AUDIENCE and PUSH_SERVICE_ACCOUNTS, and OPERATOR_TOKEN or OPERATOR_AUDIENCE with OPERATOR_EMAILS; " +
			"or set ALLOW_UNAUTHENTICATED=true to run without")
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	var err error
	if c.faults, err = worker.ParseFaults(c.Faults); err != nil {
		return fmt.Errorf("FAULTS: %w", err)
	}
	c.breakers = map[string]worker.BreakerSettings{}
	for _, kv := range strings.Split(c.SystemBreakers, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		id, v, ok := strings.Cut(kv, "=")
		n, d, ok2 := strings.Cut(v, ":")
		failures, err1 := strconv.Atoi(n)
		cooldown, err2 := time.ParseDuration(d)
		if !ok || !ok2 || err1 != nil || err2 != nil || failures < 1 || cooldown <= 0 {
			return fmt.Errorf("SYSTEM_BREAKERS must be id=failures:cooldown pairs, e.g. xgboost_v1=3:30s (bad: %q)", kv)
		}
		c.breakers[id] = worker.BreakerSettings{Failures: uint32(failures), Cooldown: cooldown}
	}
	c.timeouts = map[string]time.Duration{}
	for _, kv := range strings.Split(c.SystemTimeouts, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		id, v, ok := strings.Cut(kv, "=")
		d, err := time.ParseDuration(v)
		if !ok || err != nil || d <= 0 {
			return fmt.Errorf("SYSTEM_TIMEOUTS must be id=duration pairs separated by commas (bad: %q)", kv)
		}
		c.timeouts[id] = d
	}
	return nil
}

// engineConfig maps the configuration onto the engine's.
func (c *Config) engineConfig() worker.Config {
	return worker.Config{
		DefaultChunkSize:  c.ChunkSize,
		Concurrency:       c.Concurrency,
		SystemTimeout:     c.SystemTimeout,
		SystemTimeouts:    c.timeouts,
		LeaseTTL:          c.LeaseTTL,
		HeartbeatInterval: c.HeartbeatInterval,
		SweepInterval:     c.SweepInterval,
		Faults:            c.faults,
		BreakerFailures:   uint32(c.BreakerFailures),
		BreakerCooldown:   c.BreakerCooldown,
		MinQuality:        c.MinQuality,
		Breakers:          c.breakers,
		// Every process sharing a SQLite file runs on this machine, so a
		// lease whose owner process is gone can be taken over at once.
		LocalOwners: c.StateStore == "sqlite",
	}
}

// LogValue logs the resolved configuration (it holds no secrets).
func (c *Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("host", c.Host), slog.Int("port", c.Port), slog.String("data_dir", c.DataDir),
		slog.String("state_store", c.StateStore), slog.String("project", c.Project),
		slog.String("firestore_database", c.FirestoreDatabase), slog.String("firestore_prefix", c.FirestorePrefix), slog.String("feature_source", c.FeatureSource),
		slog.String("prediction_sink", c.PredictionSink), slog.String("events", c.Events),
		slog.Int("chunk_size", c.ChunkSize), slog.Int("concurrency", c.Concurrency),
		slog.Duration("system_timeout", c.SystemTimeout), slog.String("system_timeouts", c.SystemTimeouts),
		slog.Duration("lease_ttl", c.LeaseTTL), slog.Duration("heartbeat_interval", c.HeartbeatInterval),
		slog.Duration("sweep_interval", c.SweepInterval), slog.Duration("drain_timeout", c.DrainTimeout),
		slog.Bool("push_auth", c.PushAudience != ""), slog.Bool("operator_oidc", c.OperatorAudience != ""),
		slog.Bool("operator_token", c.OperatorToken != ""), slog.Bool("allow_unauthenticated", c.AllowUnauthenticated),
		slog.Duration("push_budget", c.PushBudget), slog.Int("max_delivery_attempts", c.MaxAttempts), slog.String("faults", c.Faults),
	)
}
