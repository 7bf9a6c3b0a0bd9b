package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/bigquery/storage/managedwriter"
	"cloud.google.com/go/pubsub/v2"

	"github.com/predworker/predworker/api"
	"github.com/predworker/predworker/api/googleid"
	"github.com/predworker/predworker/events"
	eventsfirestore "github.com/predworker/predworker/events/firestore"
	pspub "github.com/predworker/predworker/events/pubsub"
	eventssqlite "github.com/predworker/predworker/events/sqlite"
	"github.com/predworker/predworker/logging"
	"github.com/predworker/predworker/profile/phase5"
	"github.com/predworker/predworker/profile/phase5/fleet"
	"github.com/predworker/predworker/state"
	statefirestore "github.com/predworker/predworker/state/firestore"
	statesqlite "github.com/predworker/predworker/state/sqlite"
	"github.com/predworker/predworker/systems"
	bqsource "github.com/predworker/predworker/systems/bigquery"
	"github.com/predworker/predworker/systems/gamelogs"
	"github.com/predworker/predworker/systems/league"
	sinksqlite "github.com/predworker/predworker/systems/sqlite"
	"github.com/predworker/predworker/tracing"
	"github.com/predworker/predworker/worker"
)

func newLogger(cfg *Config, w io.Writer, quiet bool) (*slog.Logger, error) {
	level, err := logging.ParseLevel(cfg.LogLevel)
	if err != nil {
		return nil, fmt.Errorf("LOG_LEVEL: %w", err)
	}
	format := cfg.LogFormat
	if quiet { // a person at a terminal: warnings and errors, readable
		level, format = max(level, slog.LevelWarn), "text"
	}
	return logging.New(w, level, format)
}

// app is the wired program: backends, engine, runner, metrics.
type app struct {
	store state.Store
	// reader reads predictions back (the embedded sink); nil for BigQuery.
	reader systems.PredictionReader
	// deadLetters stores dead letters (and, with EVENTS=pubsub, publishes
	// them to the dead-letter topic); publisher delivers completion events.
	deadLetters events.DeadLetters
	publisher   events.Publisher
	continuer   api.Continuer
	engine      *worker.Engine
	runner      *worker.Runner
	registry    *prometheus.Registry
	closers     []func() error // run in reverse order by Close
	// checks verify every configured dependency (GET /v1/doctor, worker
	// doctor).
	checks   []api.Check
	tracer   *tracing.Provider
	features systems.FeatureSource
	systems  *systems.Registry
	log      *slog.Logger
	// The pipeline profile's shared clients and fleet (PROFILE=phase5).
	bq     *bigquery.Client
	writer *managedwriter.Client
	fleet  *fleet.Fleet
}

func (a *app) check(name string, run func(ctx context.Context) error) {
	a.checks = append(a.checks, api.Check{Name: name, Run: run})
}

func (a *app) onClose(f func() error) { a.closers = append(a.closers, f) }

// Close closes what newApp opened, the last opened first.
func (a *app) Close() error {
	var errs []error
	for _, f := range slices.Backward(a.closers) {
		errs = append(errs, f())
	}
	return errors.Join(errs...)
}

// newApp wires the program. The systems (and the tree model's file) come
// first: a configuration that cannot run fails before any backend is opened.
func newApp(ctx context.Context, cfg *Config, log *slog.Logger) (_ *app, err error) {
	registry, err := newRegistry(cfg)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("DATA_DIR %s: %w", cfg.DataDir, err)
	}
	a := &app{registry: prometheus.NewRegistry(), publisher: events.LogPublisher{Log: log}, systems: registry, log: log}
	defer func() {
		if err != nil {
			err = errors.Join(err, a.Close())
		}
	}()
	service := cmp.Or(cfg.Service, "predworker")
	if a.tracer, err = tracing.Setup(ctx, tracing.Options{Mode: cfg.Traces, SampleRatio: cfg.TraceSampleRatio,
		Project: cfg.Project, Service: service, Version: buildID, Stdout: os.Stdout, Logger: log}); err != nil {
		return nil, err
	}
	a.onClose(func() error { // closed last: flushes the spans of everything closed before
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return a.tracer.Shutdown(ctx)
	})
	if a.store, err = newStore(ctx, cfg); err != nil {
		return nil, err
	}
	a.onClose(a.store.Close)
	sink, err := a.openSink(ctx, cfg)
	if err != nil {
		return nil, err
	}
	dead, err := newDeadLetters(ctx, cfg)
	if err != nil {
		return nil, err
	}
	a.onClose(dead.Close)
	a.deadLetters = dead
	features, err := a.openFeatureSource(ctx, cfg)
	a.features = features
	if err != nil {
		return nil, err
	}
	a.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.engine, err = worker.New(cfg.engineConfig(), worker.Deps{
		Store: a.store, Features: features, Sink: sink, Registry: registry,
		Logger: log, Metrics: worker.NewMetrics(a.registry, a.store), Tracer: a.tracer,
	})
	if err != nil {
		return nil, err
	}
	a.runner = worker.NewRunner(a.engine)
	if err := a.openPubSub(ctx, cfg, dead); err != nil {
		return nil, err
	}
	a.check("state store ("+cfg.StateStore+"): reachable, every query's index usable", func(ctx context.Context) error {
		if err := a.store.Ping(ctx); err != nil {
			return err
		}
		if fs, ok := a.store.(*statefirestore.Store); ok {
			return fs.CheckIndexes(ctx)
		}
		return nil
	})
	a.check("dead-letter store: readable", func(ctx context.Context) error { _, err := dead.List(ctx, 1); return err })
	if cfg.Profile != "phase5" { // the fleet's check loads and names its models
		a.check("prediction systems: "+strings.Join(registry.IDs(), ", ")+" answer", func(ctx context.Context) error {
			return systemsAnswer(ctx, registry)
		})
	}
	return a, nil
}

// systemsAnswer asks every system for one prediction on plausible features:
// a model file that did not load (XGBOOST_MODEL_OPTIONAL) answers with its
// error.
func systemsAnswer(ctx context.Context, r *systems.Registry) error {
	f := &systems.Features{PlayerLookup: "doctor", GameDate: "2025-01-15", PointsAvgL5: 20, PointsAvgL10: 19,
		PointsAvgSeason: 18, PointsStdL10: 5, GamesPlayed: 30, PaintShare: 0.4, MidShare: 0.2, ThreeShare: 0.3,
		FTShare: 0.1, OppDefRating: 112, OppTier: 2, Pace: 100, Usage: 25, RestDays: 1, Form: "neutral", Quality: 90}
	var errs []error
	for _, id := range r.IDs() {
		s, _ := r.Get(id)
		if _, ok := s.(systems.Combiner); ok {
			continue // combines the others' answers
		}
		if _, err := s.Predict(ctx, f); err != nil && !errors.Is(err, systems.ErrInsufficientData) {
			errs = append(errs, fmt.Errorf("%s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

func newStore(ctx context.Context, cfg *Config) (state.Store, error) {
	if cfg.StateStore == "firestore" {
		return statefirestore.New(ctx, statefirestore.Options{Project: cfg.Project,
			Database: cfg.FirestoreDatabase, Prefix: cfg.FirestorePrefix})
	}
	return statesqlite.New(ctx, filepath.Join(cfg.DataDir, "state.db"), nil)
}

type deadLetterStore interface {
	events.DeadLetters
	Close() error
}

// newDeadLetters keeps dead letters where every instance sees them: in
// Firestore with STATE_STORE=firestore, in DATA_DIR/events.db otherwise.
func newDeadLetters(ctx context.Context, cfg *Config) (deadLetterStore, error) {
	if cfg.StateStore == "firestore" {
		return eventsfirestore.New(ctx, cfg.Project, cfg.FirestoreDatabase, cfg.FirestorePrefix)
	}
	return eventssqlite.New(ctx, filepath.Join(cfg.DataDir, "events.db"))
}

// openSink opens the configured prediction sink (and its reader, when the
// sink can be read back).
func (a *app) openSink(ctx context.Context, cfg *Config) (systems.Sink, error) {
	if cfg.PredictionSink == "phase5" {
		return a.phase5Sink(ctx, cfg)
	}
	if cfg.PredictionSink != "bigquery" {
		s, err := sinksqlite.New(ctx, filepath.Join(cfg.DataDir, "predictions.db"))
		if err != nil {
			return nil, err
		}
		a.onClose(s.Close)
		a.reader = s
		a.check("prediction sink (sqlite): reachable", s.Ping)
		return s, nil
	}
	writer, query, err := a.bigQuery(ctx, cfg)
	if err != nil {
		return nil, err
	}
	sink, err := bqsource.NewSink(writer, query, bqsource.SinkOptions{Project: cfg.PredictionsProject, Dataset: cfg.PredictionsDataset,
		Table: cfg.PredictionsTable, CallTimeout: cfg.BigQueryTimeout})
	if err != nil {
		return nil, err
	}
	a.check("prediction sink (bigquery): the predictions table has its schema", sink.Check)
	return sink, nil
}

// openFeatureSource opens the configured feature source.
func (a *app) openFeatureSource(ctx context.Context, cfg *Config) (systems.FeatureSource, error) {
	switch cfg.FeatureSource {
	case "gamelogs":
		src, err := gamelogs.Load(gamelogs.Options{Games: cfg.GamelogPath, Lines: cfg.LinesPath})
		if err != nil {
			return nil, fmt.Errorf("FEATURE_SOURCE=gamelogs: %w", err)
		}
		dates := src.Dates()
		a.check(fmt.Sprintf("feature source (game logs %s): %d dates, %s to %s", cfg.GamelogPath, len(dates),
			dates[0], dates[len(dates)-1]), func(ctx context.Context) error {
			_, err := src.Slate(ctx, dates[len(dates)-1])
			return err
		})
		return src, nil
	case "phase5":
		return a.phase5Source(ctx, cfg)
	case "local":
		a.check("feature source (the bundled league): has a slate", func(ctx context.Context) error {
			_, err := league.Lazy{}.Slate(ctx, "2025-01-15")
			return err
		})
		return league.Lazy{}, nil
	}
	_, client, err := a.bigQuery(ctx, cfg)
	if err != nil {
		return nil, err
	}
	src, err := bqsource.New(client, bqsource.Options{TableProject: cfg.FeaturesProject, Dataset: cfg.FeaturesDataset,
		Table: cfg.FeaturesTable, CallTimeout: cfg.BigQueryTimeout})
	if err != nil {
		return nil, err
	}
	a.check("feature source (bigquery): the feature table has every column", src.Check)
	return src, nil
}

// openPubSub connects the completion and dead-letter topics (EVENTS=pubsub)
// and the continuation topic, when configured.
func (a *app) openPubSub(ctx context.Context, cfg *Config, dead events.DeadLetters) error {
	if cfg.Events != "pubsub" && cfg.ContinuationTopic == "" {
		return nil
	}
	client, err := pubsub.NewClient(ctx, cfg.Project)
	if err != nil {
		return fmt.Errorf("pubsub client: %w", err)
	}
	a.onClose(client.Close)
	if cfg.Events == "pubsub" {
		pub := pspub.New(client, cfg.CompletionTopic, cfg.DeadLetterTopic)
		if cfg.Profile == "phase5" {
			pub.Format = pspub.FormatPhase5
		}
		a.onClose(func() error { pub.Stop(); return nil })
		a.publisher = pub
		a.deadLetters = pspub.DeadLetters{DeadLetters: dead, Pub: pub}
	}
	topics := []string{}
	if cfg.Events == "pubsub" {
		topics = append(topics, cfg.CompletionTopic, cfg.DeadLetterTopic)
	}
	if cfg.ContinuationTopic != "" {
		topics = append(topics, cfg.ContinuationTopic)
	}
	a.check("pub/sub: topics "+strings.Join(topics, ", ")+" exist", func(ctx context.Context) error {
		return pspub.CheckTopics(ctx, client, topics...)
	})
	if cfg.ContinuationTopic != "" {
		c := pspub.NewContinuer(client, cfg.ContinuationTopic)
		a.onClose(func() error { c.Stop(); return nil })
		a.continuer = c
	}
	return nil
}

func shortHash(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:4])
}

// newAuth builds the authentication policies from the configuration.
func newAuth(ctx context.Context, cfg *Config) (api.Auth, error) {
	a := api.Auth{OperatorTokens: cfg.OperatorTokens}
	if cfg.PushAudience != "" {
		a.Push = &api.OIDCPolicy{Audience: cfg.PushAudience, Emails: cfg.PushServiceAccounts}
	}
	if cfg.OperatorAudience != "" {
		a.Operator = &api.OIDCPolicy{Audience: cfg.OperatorAudience, Emails: cfg.OperatorEmails}
	}
	if a.Push != nil || a.Operator != nil {
		v, err := googleid.New(ctx)
		if err != nil {
			return a, err
		}
		a.Verifier = v
	}
	return a, nil
}

// serve runs the HTTP service until ctx ends, then drains.
func serve(ctx context.Context, stopSignals func(), cfg *Config, log *slog.Logger) error {
	a, err := newApp(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := a.Close(); err != nil {
			log.Error("close backends", worker.ErrorAttrs(err))
		}
	}()
	auth, err := newAuth(ctx, cfg)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler: api.New(api.Options{Runner: a.runner, Store: a.store, Predictions: a.reader,
			Metrics: promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{}), Logger: log, Project: cfg.Project,
			DeadLetters: a.deadLetters, PushBudget: cfg.PushBudget, MaxAttempts: cfg.MaxAttempts, Auth: auth,
			Continuer: a.continuer, WriteTimeout: cfg.HTTPWriteTimeout, Checks: a.checks, Tracer: a.tracer,
			Routes: a.profileRoutes(cfg, log)}).Handler(),
		// A client that trickles its request, or never reads its answer,
		// holds a connection for a bounded time. The write deadline is set
		// per request by the api package (longer for a push's run).
		ReadHeaderTimeout: min(10*time.Second, cfg.HTTPReadTimeout),
		ReadTimeout:       cfg.HTTPReadTimeout,
		IdleTimeout:       cfg.HTTPIdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	if err != nil {
		return fmt.Errorf("listen on %s:%d: %w", cfg.Host, cfg.Port, err)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("serving", slog.String("addr", ln.Addr().String()), slog.String("owner", a.engine.Owner()))

	if a.fleet != nil { // the model registry's fleet: loaded now, refreshed every MODEL_CACHE_TTL_SECONDS
		go func() {
			_ = a.fleet.Refresh(ctx) // logged inside; /start answers 503 until a model is loaded
			a.fleet.Run(ctx)
		}()
	}
	sweepCtx, stopSweep := context.WithCancel(context.Background())
	sweepDone := make(chan struct{})
	go func() { defer close(sweepDone); a.runner.SweepLoop(sweepCtx) }()
	outboxCtx, stopOutbox := context.WithCancel(context.Background())
	outboxDone := make(chan struct{})
	go func() { defer close(outboxDone); a.runner.OutboxLoop(outboxCtx, a.publisher, time.Second) }()
	defer func() { stopOutbox(); <-outboxDone }()

	select {
	case err := <-serveErr:
		stopSweep()
		<-sweepDone
		a.runner.Drain(cfg.DrainTimeout)
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	stopSignals()
	start := time.Now()
	log.Info("drain started", logging.Event(logging.EventDrainStarted), slog.Any("batch_ids", a.runner.Active()),
		slog.String("budget", cfg.DrainTimeout.String()))
	shutdownDone := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
		defer cancel()
		shutdownDone <- srv.Shutdown(sctx)
	}()
	a.runner.Drain(cfg.DrainTimeout)
	stopSweep()
	<-sweepDone
	if err := <-shutdownDone; err != nil {
		log.Warn("http shutdown", worker.WarnAttrs(err))
	}
	log.Info("drain completed", logging.Event(logging.EventDrainCompleted), slog.Int64("took_ms", time.Since(start).Milliseconds()))
	return nil
}

// profileRoutes are the pipeline profile's endpoints (PROFILE=phase5: the
// replaced stage's POST /start and GET /status).
func (a *app) profileRoutes(cfg *Config, log *slog.Logger) []api.Route {
	if cfg.Profile != "phase5" {
		return nil
	}
	t := &phase5.Trigger{Runner: a.runner, Store: a.store, Features: a.features, Logger: log}
	if a.fleet != nil {
		t.Systems = a.fleet.IDs
	}
	return []api.Route{{Method: http.MethodPost, Path: "/start", Handler: t.Start},
		{Method: http.MethodGet, Path: "/status", Handler: t.Status}}
}
