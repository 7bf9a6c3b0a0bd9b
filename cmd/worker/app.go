package main

import (
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
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/api/idtoken"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/pubsub/v2"

	"github.com/predworker/predworker/api"
	"github.com/predworker/predworker/events"
	eventsfirestore "github.com/predworker/predworker/events/firestore"
	pspub "github.com/predworker/predworker/events/pubsub"
	eventssqlite "github.com/predworker/predworker/events/sqlite"
	"github.com/predworker/predworker/logging"
	"github.com/predworker/predworker/state"
	statefirestore "github.com/predworker/predworker/state/firestore"
	statesqlite "github.com/predworker/predworker/state/sqlite"
	"github.com/predworker/predworker/systems"
	bqsource "github.com/predworker/predworker/systems/bigquery"
	"github.com/predworker/predworker/systems/league"
	sinksqlite "github.com/predworker/predworker/systems/sqlite"
	"github.com/predworker/predworker/worker"
)

func parseLevel(s string) (slog.Level, error) {
	l, err := logging.ParseLevel(s)
	if err != nil {
		return l, fmt.Errorf("LOG_LEVEL: %w", err)
	}
	return l, nil
}

func newLogger(cfg *Config, w io.Writer, quiet bool) (*slog.Logger, error) {
	level, err := parseLevel(cfg.LogLevel)
	if err != nil {
		return nil, err
	}
	format := cfg.LogFormat
	if quiet { // a person at a terminal: warnings and errors, readable
		level, format = max(level, slog.LevelWarn), "text"
	}
	return logging.New(w, level, format)
}

// app is the wired program: backends, engine, metrics.
type app struct {
	store state.Store
	sink  systems.Sink
	// reader reads predictions back (the embedded sink); nil for BigQuery.
	reader    systems.PredictionReader
	closeSink func() error
	dead      deadLetterStore
	// deadLetters is dead (plus publication to the dead-letter topic with
	// EVENTS=pubsub); publisher delivers completion events.
	deadLetters events.DeadLetters
	publisher   worker.Publisher
	continuer   api.Continuer
	closeEvents func() error
	engine      *worker.Engine
	registry    *prometheus.Registry
	log         *slog.Logger
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

// newSink returns the configured prediction sink, its reader (nil when the
// sink cannot be read back) and its closer.
func newSink(ctx context.Context, cfg *Config) (systems.Sink, systems.PredictionReader, func() error, error) {
	if cfg.PredictionSink != "bigquery" {
		s, err := sinksqlite.New(ctx, filepath.Join(cfg.DataDir, "predictions.db"))
		if err != nil {
			return nil, nil, nil, err
		}
		return s, s, s.Close, nil
	}
	client, err := bigquery.NewClient(ctx, cfg.Project)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("bigquery client: %w", err)
	}
	s, err := bqsource.NewSink(client, bqsource.SinkOptions{Project: cfg.PredictionsProject, Dataset: cfg.PredictionsDataset,
		Staging: cfg.StagingTable, Final: cfg.PredictionsTable, CallTimeout: cfg.BigQueryTimeout})
	if err != nil {
		return nil, nil, nil, errors.Join(err, client.Close())
	}
	return s, nil, client.Close, nil
}

// newFeatureSource returns the configured feature source and its closer.
func newFeatureSource(ctx context.Context, cfg *Config) (systems.FeatureSource, func() error, error) {
	if cfg.FeatureSource != "bigquery" {
		return league.Lazy{}, func() error { return nil }, nil
	}
	client, err := bigquery.NewClient(ctx, cfg.Project) // one shared client per process
	if err != nil {
		return nil, nil, fmt.Errorf("bigquery client: %w", err)
	}
	src, err := bqsource.New(client, bqsource.Options{TableProject: cfg.FeaturesProject, Dataset: cfg.FeaturesDataset,
		Table: cfg.FeaturesTable, CallTimeout: cfg.BigQueryTimeout})
	if err != nil {
		return nil, nil, errors.Join(err, client.Close())
	}
	return src, client.Close, nil
}

func shortHash(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:4])
}

func newApp(ctx context.Context, cfg *Config, log *slog.Logger) (*app, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("DATA_DIR %s: %w", cfg.DataDir, err)
	}
	store, err := newStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	sink, reader, closeSink, err := newSink(ctx, cfg)
	if err != nil {
		return nil, errors.Join(err, store.Close())
	}
	dead, err := newDeadLetters(ctx, cfg)
	if err != nil {
		return nil, errors.Join(err, closeSink(), store.Close())
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registry, err := newRegistry(cfg)
	if err != nil {
		return nil, errors.Join(err, dead.Close(), closeSink(), store.Close())
	}
	features, closeFeatures, err := newFeatureSource(ctx, cfg)
	if err != nil {
		return nil, errors.Join(err, dead.Close(), closeSink(), store.Close())
	}
	engine, err := worker.New(cfg.engineConfig(), worker.Deps{
		Store: store, Features: features, Sink: sink, Registry: registry,
		Logger: log, Metrics: worker.NewMetrics(reg, store),
	})
	if err != nil {
		return nil, errors.Join(err, dead.Close(), closeSink(), store.Close())
	}
	a := &app{store: store, sink: sink, reader: reader, closeSink: closeSink, dead: dead, engine: engine, registry: reg, log: log,
		deadLetters: dead, publisher: worker.LogPublisher{Log: log}, closeEvents: closeFeatures}
	if cfg.Events == "pubsub" || cfg.ContinuationTopic != "" {
		client, err := pubsub.NewClient(ctx, cfg.Project)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("pubsub client: %w", err), a.Close())
		}
		var stops []func()
		if cfg.Events == "pubsub" {
			pub := pspub.New(client, cfg.CompletionTopic, cfg.DeadLetterTopic)
			a.publisher = pub
			a.deadLetters = pspub.DeadLetters{DeadLetters: dead, Pub: pub}
			stops = append(stops, pub.Stop)
		}
		if cfg.ContinuationTopic != "" {
			c := pspub.NewContinuer(client, cfg.ContinuationTopic)
			a.continuer = c
			stops = append(stops, c.Stop)
		}
		a.closeEvents = func() error {
			for _, stop := range stops {
				stop()
			}
			return errors.Join(client.Close(), closeFeatures())
		}
	}
	return a, nil
}

func newStore(ctx context.Context, cfg *Config) (state.Store, error) {
	switch cfg.StateStore {
	case "firestore":
		return statefirestore.New(ctx, statefirestore.Options{Project: cfg.Project,
			Database: cfg.FirestoreDatabase, Prefix: cfg.FirestorePrefix})
	default:
		return statesqlite.New(ctx, filepath.Join(cfg.DataDir, "state.db"), nil)
	}
}

func (a *app) Close() error {
	var closeEvents error
	if a.closeEvents != nil {
		closeEvents = a.closeEvents()
	}
	return errors.Join(closeEvents, a.dead.Close(), a.closeSink(), a.store.Close())
}

// newAuth builds the authentication policies from the configuration.
func newAuth(ctx context.Context, cfg *Config) (api.Auth, error) {
	a := api.Auth{OperatorToken: cfg.OperatorToken}
	if cfg.PushAudience != "" {
		a.Push = &api.OIDCPolicy{Audience: cfg.PushAudience, Emails: cfg.PushServiceAccounts}
	}
	if cfg.OperatorAudience != "" {
		a.Operator = &api.OIDCPolicy{Audience: cfg.OperatorAudience, Emails: cfg.OperatorEmails}
	}
	if a.Push != nil || a.Operator != nil {
		v, err := idtoken.NewValidator(ctx)
		if err != nil {
			return a, fmt.Errorf("ID token validator: %w", err)
		}
		a.Validator = v
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
			log.Error("close backends", logging.Err(err))
		}
	}()
	runner := worker.NewRunner(a.engine)
	auth, err := newAuth(ctx, cfg)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler: api.New(api.Options{Engine: a.engine, Runner: runner, Store: a.store, Predictions: a.reader,
			Metrics: promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{}), Logger: log, Project: cfg.Project,
			DeadLetters: a.deadLetters, PushBudget: cfg.PushBudget, MaxAttempts: cfg.MaxAttempts, Auth: auth, Continuer: a.continuer}).Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	if err != nil {
		return fmt.Errorf("listen on %s:%d: %w", cfg.Host, cfg.Port, err)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("serving", slog.String("addr", ln.Addr().String()), slog.String("owner", a.engine.Owner()))

	sweepCtx, stopSweep := context.WithCancel(context.Background())
	sweepDone := make(chan struct{})
	go func() { defer close(sweepDone); runner.SweepLoop(sweepCtx) }()
	outboxCtx, stopOutbox := context.WithCancel(context.Background())
	outboxDone := make(chan struct{})
	go func() { defer close(outboxDone); runner.OutboxLoop(outboxCtx, a.publisher, time.Second) }()
	defer func() { stopOutbox(); <-outboxDone }()

	select {
	case err := <-serveErr:
		stopSweep()
		<-sweepDone
		runner.Drain(cfg.DrainTimeout / 2)
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	stopSignals()
	start := time.Now()
	log.Info("drain started", logging.Event(logging.EventDrainStarted), slog.Any("batch_ids", runner.Active()),
		slog.Duration("budget", cfg.DrainTimeout))
	// Budget: the runs get most of it for their chunk in flight; releasing
	// leases and closing the listener need the rest.
	soft := cfg.DrainTimeout - min(cfg.DrainTimeout/4, 2*time.Second)
	shutdownDone := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
		defer cancel()
		shutdownDone <- srv.Shutdown(sctx)
	}()
	runner.Drain(soft)
	stopSweep()
	<-sweepDone
	if err := <-shutdownDone; err != nil {
		log.Warn("http shutdown", slog.String("error", err.Error()))
	}
	log.Info("drain completed", logging.Event(logging.EventDrainCompleted), slog.Duration("took", time.Since(start)))
	return nil
}
