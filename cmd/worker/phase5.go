package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/bigquery/storage/managedwriter"
	"google.golang.org/api/option"
	storage "google.golang.org/api/storage/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/predworker/predworker/profile/phase5/fleet"
	"github.com/predworker/predworker/profile/phase5/phase5bq"
	"github.com/predworker/predworker/systems"
)

// bigQuery returns the process's BigQuery clients (one each, shared by the
// feature source, the sink and the registry), pointed at
// BIGQUERY_API_ENDPOINT / BIGQUERY_WRITE_ENDPOINT when those are set.
func (a *app) bigQuery(ctx context.Context, cfg *Config) (*managedwriter.Client, *bigquery.Client, error) {
	if a.bq != nil {
		return a.writer, a.bq, nil
	}
	var qopts, wopts []option.ClientOption
	if cfg.BigQueryEndpoint != "" {
		qopts = append(qopts, option.WithEndpoint(cfg.BigQueryEndpoint), option.WithoutAuthentication())
	}
	if cfg.BigQueryWriteEndpoint != "" {
		wopts = append(wopts, option.WithEndpoint(cfg.BigQueryWriteEndpoint), option.WithoutAuthentication(),
			option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	}
	query, err := bigquery.NewClient(ctx, cfg.Project, qopts...)
	if err != nil {
		return nil, nil, fmt.Errorf("bigquery client: %w", err)
	}
	a.onClose(query.Close)
	writer, err := managedwriter.NewClient(ctx, cfg.Project, wopts...)
	if err != nil {
		return nil, nil, fmt.Errorf("bigquery storage write client: %w", err)
	}
	a.onClose(writer.Close)
	a.bq, a.writer = query, writer
	return writer, query, nil
}

// phase5Fleet is the model_registry's fleet (made once): models are read
// from Cloud Storage (STORAGE_EMULATOR_HOST is honoured) and registered in
// the app's systems as they load.
func (a *app) phase5Fleet(ctx context.Context, cfg *Config) (*fleet.Fleet, error) {
	if a.fleet != nil {
		return a.fleet, nil
	}
	_, query, err := a.bigQuery(ctx, cfg)
	if err != nil {
		return nil, err
	}
	reg, err := phase5bq.NewRegistry(query, cfg.Phase5Project, cfg.BigQueryTimeout)
	if err != nil {
		return nil, err
	}
	var opts []option.ClientOption
	if host := os.Getenv("STORAGE_EMULATOR_HOST"); host != "" { // an emulator (fake-gcs-server), as Google's clients honour it
		if !strings.Contains(host, "://") {
			host = "http://" + host
		}
		opts = append(opts, option.WithEndpoint(strings.TrimSuffix(host, "/")+"/storage/v1/"), option.WithoutAuthentication())
	}
	gcs, err := storage.NewService(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("cloud storage client: %w", err)
	}
	a.fleet = fleet.New(fleet.Options{Registry: reg, Files: fleet.GCS{Service: gcs}, Systems: a.systems,
		TTL: time.Duration(cfg.ModelCacheTTLSeconds) * time.Second, Logger: a.log, Metrics: a.registry})
	a.check("model fleet (model_registry, Cloud Storage): every enabled model loads", a.fleet.Check)
	return a.fleet, nil
}

// phase5Source is the stage's inputs as the feature source.
func (a *app) phase5Source(ctx context.Context, cfg *Config) (systems.FeatureSource, error) {
	f, err := a.phase5Fleet(ctx, cfg)
	if err != nil {
		return nil, err
	}
	_, query, err := a.bigQuery(ctx, cfg)
	if err != nil {
		return nil, err
	}
	src, err := phase5bq.New(query, phase5bq.Options{Project: cfg.Phase5Project, CallTimeout: cfg.BigQueryTimeout,
		MinQuality: cfg.MinQualityThreshold, ActiveSystems: f.IDs})
	if err != nil {
		return nil, err
	}
	a.check("feature source (phase5): the stage's input tables have the columns read", src.Check)
	return src, nil
}

// phase5Sink is the stage's output table.
func (a *app) phase5Sink(ctx context.Context, cfg *Config) (systems.Sink, error) {
	writer, query, err := a.bigQuery(ctx, cfg)
	if err != nil {
		return nil, err
	}
	sink, err := phase5bq.NewSink(writer, query, phase5bq.SinkOptions{Project: cfg.Phase5Project, CallTimeout: cfg.BigQueryTimeout,
		BuildCommit: cfg.BuildCommit, Revision: cfg.Revision})
	if err != nil {
		return nil, err
	}
	a.check("prediction sink (phase5): player_prop_predictions has the columns written", sink.Check)
	return sink, nil
}
