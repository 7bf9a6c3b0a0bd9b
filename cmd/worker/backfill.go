package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/pubsub/v2"

	"github.com/predworker/predworker/api"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/worker"
)

// maxBackfillDays bounds one backfill (a season is about 175 days).
const maxBackfillDays = 400

// backfillFlags are the flags of `worker backfill`.
type backfillFlags struct {
	from, to time.Time
	request  func(date string) state.Request // the request of each date
	publish  string
	url      string
	poll     time.Duration
}

func parseBackfillFlags(cfg *Config, args []string, stderr io.Writer) (backfillFlags, error) {
	fs := flag.NewFlagSet("backfill", flag.ContinueOnError)
	fs.SetOutput(stderr)
	from := fs.String("from", "", "first date, YYYY-MM-DD (required)")
	to := fs.String("to", "", "last date, YYYY-MM-DD (required)")
	request := requestFlags(fs, cfg)
	publish := fs.String("publish", "", "publish the batch requests to this Pub/Sub topic (id or full name) for the service to run, then follow them")
	serviceURL := fs.String("url", "", "create the batches through the service's API at this URL (POST /v1/batches; OPERATOR_TOKEN is sent), then follow them there")
	poll := fs.Duration("poll", time.Second, "how often progress is read")
	if err := parseFlags(fs, args); err != nil {
		return backfillFlags{}, err
	}
	f := backfillFlags{request: request, publish: *publish,
		url: strings.TrimSuffix(*serviceURL, "/"), poll: *poll}
	if f.publish != "" && f.url != "" {
		return f, usageError{"backfill: --publish or --url, not both"}
	}
	if f.url != "" {
		if u, err := url.Parse(f.url); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return f, usageError{"backfill: --url must be an http(s) URL, e.g. https://predworker-abc-uc.a.run.app"}
		}
	}
	var err error
	if f.from, err = time.Parse(time.DateOnly, *from); err != nil {
		return f, usageError{"backfill: --from must be a date like 2024-10-22"}
	}
	if f.to, err = time.Parse(time.DateOnly, *to); err != nil {
		return f, usageError{"backfill: --to must be a date like 2025-04-13"}
	}
	switch days := int(f.to.Sub(f.from).Hours()/24) + 1; {
	case days < 1:
		return f, usageError{"backfill: --to is before --from"}
	case days > maxBackfillDays:
		return f, usageError{fmt.Sprintf("backfill: %d days; at most %d per command", days, maxBackfillDays)}
	case f.poll < 100*time.Millisecond:
		return f, usageError{"backfill: --poll must be at least 100ms"}
	}
	return f, nil
}

// backfillItem is one date's batch.
type backfillItem struct {
	req state.Request
	id  string
}

// backfillCommand runs (or publishes) one batch per date with games in the
// range and follows them all with one progress display. Batch ids derive
// from the requests, so running the same command again skips the dates
// completed and resumes the others. It fails, listing them, when a date
// failed.
func backfillCommand(ctx context.Context, stopSignals func(), cfg *Config, args []string, stdout, stderr io.Writer) error {
	flags, err := parseBackfillFlags(cfg, args, stderr)
	if err != nil {
		return err
	}
	log, err := newLogger(cfg, stderr, true)
	if err != nil {
		return err
	}
	a, err := newApp(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer func() { _ = a.Close() }()
	items, skipped, err := backfillDates(ctx, a.features, flags)
	if err != nil {
		return err
	}
	where := fmt.Sprintf("run here, %d at a time", cfg.MaxRunning)
	switch {
	case flags.publish != "":
		where = "published to " + flags.publish
	case flags.url != "":
		where = "created at " + flags.url
	}
	fmt.Fprintf(stderr, "backfill %s to %s: %d dates with games (%d without), %s\n", flags.from.Format(time.DateOnly),
		flags.to.Format(time.DateOnly), len(items), len(skipped), where)
	if len(items) == 0 {
		return fmt.Errorf("backfill: no date with games from %s to %s", flags.from.Format(time.DateOnly), flags.to.Format(time.DateOnly))
	}
	view := newBackfillView(stderr, isTerminal(stderr), items)
	switch {
	case flags.publish != "":
		err = publishBackfill(ctx, cfg, a.store, flags.publish, items, view)
		if err == nil {
			err = followBackfill(ctx, a.store, items, view, flags.poll)
		}
	case flags.url != "":
		svc := &serviceAPI{base: flags.url, client: &http.Client{Timeout: 30 * time.Second}}
		if len(cfg.OperatorTokens) > 0 {
			svc.token = cfg.OperatorTokens[0]
		}
		err = svc.create(ctx, items, view)
		if err == nil {
			err = followBackfill(ctx, svc, items, view, flags.poll)
		}
	default:
		err = runBackfill(ctx, stopSignals, cfg, a, items, view, flags.poll)
	}
	view.finish()
	if sumErr := view.summary(stdout); sumErr != nil {
		return sumErr
	}
	return err
}

// backfillDates lists the dates of the range that have games, as requests.
func backfillDates(ctx context.Context, src systems.FeatureSource, f backfillFlags) ([]backfillItem, []string, error) {
	var items []backfillItem
	var skipped []string
	for d := f.from; !d.After(f.to); d = d.AddDate(0, 0, 1) {
		date := d.Format(time.DateOnly)
		_, err := src.Slate(ctx, date)
		switch {
		case errors.Is(err, systems.ErrNoGames), errors.Is(err, systems.ErrUnknownDate), errors.Is(err, systems.ErrNoPlayers):
			skipped = append(skipped, date)
			continue
		case err != nil:
			return nil, nil, fmt.Errorf("backfill: slate of %s: %w", date, err)
		}
		req := f.request(date)
		items = append(items, backfillItem{req: req, id: worker.DeriveBatchID(req)})
	}
	return items, skipped, nil
}

// runBackfill runs the dates here, MAX_RUNNING_BATCHES at a time. Ctrl-C
// drains: running batches stop after their chunk with their leases
// released, and dates not started stay for the next run.
func runBackfill(ctx context.Context, stopSignals func(), cfg *Config, a *app, items []backfillItem, v *backfillView, poll time.Duration) error {
	runCtx, stop := drainOnSignal(ctx, stopSignals, a.runner, cfg.DrainTimeout)
	defer stop()
	sem := make(chan struct{}, max(cfg.MaxRunning, 1))
	var wg sync.WaitGroup
	ticker := time.NewTicker(poll)
	defer ticker.Stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
	dates:
		for _, it := range items {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				break dates
			}
			if ctx.Err() != nil {
				<-sem
				break
			}
			wg.Go(func() {
				defer func() { <-sem }()
				req := it.req
				out, err := a.runner.Do(runCtx, worker.Job{BatchID: it.id, Request: &req, Here: true,
					OnProgress: func(b state.Batch) { v.update(it.id, b, "") }})
				v.outcome(it.id, out, err)
			})
		}
		wg.Wait()
	}()
	for {
		select {
		case <-done:
			if ctx.Err() != nil {
				return fmt.Errorf("backfill stopped: %d of %d dates not finished; run the same command again to resume them",
					v.unfinished(), len(items))
			}
			if _, err := a.engine.DispatchOutbox(context.WithoutCancel(ctx), a.publisher); err != nil {
				fmt.Fprintf(v.w, "completion events not all published yet (the service's outbox will): %v\n", err)
			}
			if err := v.err(); err != nil {
				return err
			}
			if n := v.unfinished(); n > 0 {
				return fmt.Errorf("backfill: %d dates not finished here (another process holds them); run the same command again to resume", n)
			}
			return nil
		case <-ticker.C:
			v.render()
		}
	}
}

// publishBackfill publishes the request of each date not completed yet.
func publishBackfill(ctx context.Context, cfg *Config, store state.Store, topic string, items []backfillItem, v *backfillView) error {
	client, err := pubsub.NewClient(ctx, cfg.Project)
	if err != nil {
		return fmt.Errorf("pubsub client: %w", err)
	}
	defer func() { _ = client.Close() }()
	pub := client.Publisher(topic)
	defer pub.Stop()
	var results []*pubsub.PublishResult
	for _, it := range items {
		data, done, err := pendingRequest(ctx, store, it, v)
		if err != nil {
			return err
		}
		if done {
			continue
		}
		results = append(results, pub.Publish(ctx, &pubsub.Message{Data: data}))
	}
	for _, r := range results {
		if _, err := r.Get(ctx); err != nil {
			return fmt.Errorf("publish to %s: %w", topic, err)
		}
	}
	fmt.Fprintf(v.w, "published %d batch requests; following them (Ctrl-C stops following, not the batches)\n", len(results))
	return nil
}

// pendingRequest is the batch request of it as JSON, or done when its
// batch completed already (shown as such).
func pendingRequest(ctx context.Context, store batchGetter, it backfillItem, v *backfillView) ([]byte, bool, error) {
	if b, err := store.Get(ctx, it.id); err == nil && b.Status == state.StatusCompleted {
		v.update(it.id, b, "")
		return nil, true, nil
	}
	data, err := json.Marshal(api.BatchRequest{BatchID: it.id, GameDate: it.req.GameDate, Players: it.req.Players,
		Systems: it.req.Systems, ChunkSize: it.req.ChunkSize, CorrelationID: "backfill-" + it.req.GameDate})
	return data, false, err
}

// batchGetter reads a batch: the state store, or the service's API.
type batchGetter interface {
	Get(ctx context.Context, id string) (state.Batch, error)
}

// serviceAPI is the service's operator API, for --url.
type serviceAPI struct {
	base, token string
	client      *http.Client
}

func (s *serviceAPI) do(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, s.base+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, raw, err
}

// create posts each date's batch request (those completed already are
// skipped), retrying the service's 429 and 503 answers a few times.
func (s *serviceAPI) create(ctx context.Context, items []backfillItem, v *backfillView) error {
	created := 0
	for _, it := range items {
		body, done, err := pendingRequest(ctx, s, it, v)
		if err != nil {
			return err
		}
		if done {
			continue
		}
		for attempt := 1; ; attempt++ {
			code, raw, err := s.do(ctx, http.MethodPost, "/v1/batches", body)
			if err == nil && (code == http.StatusOK || code == http.StatusAccepted) {
				created++
				break
			}
			switch {
			case err != nil && attempt == 5:
				return fmt.Errorf("create the batch of %s at %s: %w", it.req.GameDate, s.base, err)
			case err == nil && (code != http.StatusTooManyRequests && code != http.StatusServiceUnavailable || attempt == 5):
				return fmt.Errorf("create the batch of %s at %s: %d %s", it.req.GameDate, s.base, code, bytes.TrimSpace(raw))
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(attempt) * time.Second):
			}
		}
	}
	fmt.Fprintf(v.w, "created %d batches at %s; following them (Ctrl-C stops following, not the batches)\n", created, s.base)
	return nil
}

// Get implements batchGetter through GET /v1/batches/{id}.
func (s *serviceAPI) Get(ctx context.Context, id string) (state.Batch, error) {
	code, raw, err := s.do(ctx, http.MethodGet, "/v1/batches/"+url.PathEscape(id), nil)
	switch {
	case err != nil:
		return state.Batch{}, err
	case code == http.StatusNotFound:
		return state.Batch{}, state.ErrNotFound
	case code != http.StatusOK:
		return state.Batch{}, fmt.Errorf("GET /v1/batches/%s: %d %s", id, code, bytes.TrimSpace(raw))
	}
	var st api.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		return state.Batch{}, fmt.Errorf("GET /v1/batches/%s: %w", id, err)
	}
	return state.Batch{ID: st.BatchID, Status: st.State, Error: st.Error,
		Progress: state.Progress{Predictions: st.Predictions, DoneChunks: st.DoneChunks}}, nil
}

// followBackfill reads the batches' state until every one is finished, or
// ctx ends (Ctrl-C: the batches go on; the same command follows them again).
func followBackfill(ctx context.Context, store batchGetter, items []backfillItem, v *backfillView, poll time.Duration) error {
	ticker := time.NewTicker(poll)
	defer ticker.Stop()
	for {
		for _, it := range items {
			b, err := store.Get(ctx, it.id)
			switch {
			case errors.Is(err, state.ErrNotFound): // not picked up yet
			case err != nil && ctx.Err() == nil:
				fmt.Fprintf(v.w, "read %s: %v\n", it.id, err)
			case err == nil:
				v.update(it.id, b, "")
			}
		}
		v.render()
		if v.unfinished() == 0 {
			return v.err()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped following: %d of %d dates not finished; they run on in the service (run the same command to follow them again)",
				v.unfinished(), len(items))
		case <-ticker.C:
		}
	}
}

// backfillView is the one progress display over the range: dates done,
// predictions, rate, ETA, failures.
type backfillView struct {
	w     io.Writer
	tty   bool
	start time.Time
	mu    sync.Mutex
	order []string
	dates map[string]string // id → date
	byID  map[string]state.Batch
	errs  map[string]string // id → why it failed
	first map[string]int    // predictions already there when first seen
}

func newBackfillView(w io.Writer, tty bool, items []backfillItem) *backfillView {
	v := &backfillView{w: w, tty: tty, start: time.Now(), dates: map[string]string{}, byID: map[string]state.Batch{},
		errs: map[string]string{}, first: map[string]int{}}
	for _, it := range items {
		v.order = append(v.order, it.id)
		v.dates[it.id] = it.req.GameDate
	}
	return v
}

func (v *backfillView) update(id string, b state.Batch, failure string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, seen := v.first[id]; !seen {
		v.first[id] = b.Predictions
		if b.Status != state.StatusCompleted && b.Status != state.StatusFailed {
			v.first[id] = 0
		}
	}
	v.byID[id] = b
	if b.Status == state.StatusFailed && failure == "" {
		failure = b.Error
	}
	if failure != "" {
		v.errs[id] = failure
	}
}

// outcome records how a local run of id ended.
func (v *backfillView) outcome(id string, out worker.Outcome, err error) {
	switch {
	case err != nil && out.Batch.ID == "":
		v.mu.Lock()
		v.errs[id] = err.Error()
		v.mu.Unlock()
	case out.Kind == worker.Failed:
		v.update(id, out.Batch, out.Batch.Error)
	default:
		v.update(id, out.Batch, "")
	}
}

func (v *backfillView) finished(id string) bool {
	b, ok := v.byID[id]
	return v.errs[id] != "" || ok && (b.Status == state.StatusCompleted || b.Status == state.StatusFailed)
}

func (v *backfillView) unfinished() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for _, id := range v.order {
		if !v.finished(id) {
			n++
		}
	}
	return n
}

// line is the display's one line.
func (v *backfillView) line() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	done, failed, preds, fresh := 0, 0, 0, 0
	for _, id := range v.order {
		b := v.byID[id]
		preds += b.Predictions
		fresh += b.Predictions - v.first[id]
		if v.finished(id) {
			done++
		}
		if v.errs[id] != "" {
			failed++
		}
	}
	elapsed := time.Since(v.start)
	rate := float64(fresh) / max(elapsed.Seconds(), 1e-9)
	eta := "-"
	if done > 0 && done < len(v.order) {
		eta = (time.Duration(float64(elapsed) / float64(done) * float64(len(v.order)-done))).Round(time.Second).String()
	}
	return fmt.Sprintf("dates %d/%d done, %d failed, %d predictions, %.0f/s, elapsed %s, eta %s", done, len(v.order), failed,
		preds, rate, elapsed.Round(100*time.Millisecond), eta)
}

func (v *backfillView) render() {
	if v.tty {
		fmt.Fprintf(v.w, "\r\033[K%s", v.line())
		return
	}
	fmt.Fprintln(v.w, v.line())
}

func (v *backfillView) finish() {
	if v.tty {
		fmt.Fprintln(v.w)
	}
}

// err lists the failed dates, or nil.
func (v *backfillView) err() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	var failed []string
	for id, why := range v.errs {
		failed = append(failed, fmt.Sprintf("%s (%s): %s", v.dates[id], id, why))
	}
	if len(failed) == 0 {
		return nil
	}
	sort.Strings(failed)
	return fmt.Errorf("backfill: %d dates failed:\n  %s\nafter fixing the cause, run the same command again", len(failed),
		strings.Join(failed, "\n  "))
}

// summary prints one line per date and the totals.
func (v *backfillView) summary(w io.Writer) error {
	line := v.line()
	v.mu.Lock()
	ids := slices.Clone(v.order)
	v.mu.Unlock()
	for _, id := range ids {
		v.mu.Lock()
		b, why := v.byID[id], v.errs[id]
		v.mu.Unlock()
		st := string(b.Status)
		if st == "" {
			st = "not started"
		}
		if why != "" {
			st = "failed: " + why
		}
		if _, err := fmt.Fprintf(w, "%s %s %s %d predictions\n", v.dates[id], id, st, b.Predictions); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintln(w, line)
	return err
}
