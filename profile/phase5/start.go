// Package phase5 is the pipeline profile (PROFILE=phase5): predworker in
// place of the "Phase 5" prediction stage of the NBA pipeline it replaces
// (ORIGIN.md). This file is the stage's trigger, POST /start, and its
// monitor, GET /status; the stage's inputs, models, output table and
// completion message are adapters elsewhere, switched on by the same
// setting. The core knows nothing of them.
package phase5

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"sort"
	"time"

	"github.com/predworker/predworker/logging"
	"github.com/predworker/predworker/profile/phase5/contract"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/worker"
)

// DefaultRunMode is prediction_run_mode when /start does not give one.
const DefaultRunMode = "OVERNIGHT"

// StartRequest is the body of POST /start (ORIGIN.md §1). Fields the stage
// ignored are accepted and ignored here too.
type StartRequest struct {
	GameDate              string `json:"game_date"`
	PredictionRunMode     string `json:"prediction_run_mode"`
	RequireRealLines      bool   `json:"require_real_lines"`
	Force                 bool   `json:"force"`
	MinMinutes            *int   `json:"min_minutes"`
	UseMultipleLines      bool   `json:"use_multiple_lines"`
	CorrelationID         string `json:"correlation_id"`
	ParentProcessor       string `json:"parent_processor"`
	DatasetPrefix         string `json:"dataset_prefix"`
	SkipCompletenessCheck bool   `json:"skip_completeness_check"`
	SkipPostponementCheck bool   `json:"skip_postponement_check"`
}

// Trigger serves POST /start and GET /status.
type Trigger struct {
	Runner   *worker.Runner
	Store    state.Store
	Features systems.FeatureSource
	// Systems are the systems a batch runs (the model fleet's ids); nil:
	// the engine's default, every registered system. A batch is refused
	// (503) while it returns none: a fleet that failed to load is an
	// outage, never a batch of zero models.
	Systems func() []string
	Now     func() time.Time // nil: time.Now
	Logger  *slog.Logger
}

var (
	eastern     = contract.Eastern()
	modePattern = regexp.MustCompile(`^[A-Za-z0-9_]{1,32}$`)
)

func (t *Trigger) now() time.Time {
	if t.Now != nil {
		return t.Now()
	}
	return time.Now()
}

func (t *Trigger) log(ctx context.Context) *slog.Logger {
	if t.Logger == nil {
		return logging.FromContext(ctx, slog.New(slog.DiscardHandler))
	}
	return logging.FromContext(ctx, t.Logger)
}

// ResolveDate turns game_date into a date: empty or TODAY is today in
// America/New_York, TOMORROW the day after (upper case only, as the stage
// had it); anything else must be YYYY-MM-DD.
func ResolveDate(s string, now time.Time) (string, error) {
	today := now.In(eastern)
	switch s {
	case "", "TODAY":
		return today.Format(time.DateOnly), nil
	case "TOMORROW":
		return today.AddDate(0, 0, 1).Format(time.DateOnly), nil
	}
	if _, err := time.Parse(time.DateOnly, s); err != nil {
		return "", fmt.Errorf("game_date %q is not YYYY-MM-DD, TODAY or TOMORROW", s)
	}
	return s, nil
}

// decodeStart reads the body leniently, as the stage did: an empty or
// unparsable body is {}; unknown fields are ignored.
func decodeStart(w http.ResponseWriter, r *http.Request) (StartRequest, bool) {
	var req StartRequest
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
	if err != nil || len(raw) == 0 {
		return req, err == nil
	}
	if err := json.Unmarshal(raw, &req); err != nil {
		return StartRequest{}, false
	}
	return req, true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func errorBody(msg string) map[string]any { return map[string]any{"status": "error", "message": msg} }

func randomID() string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand does not fail on supported platforms
	return hex.EncodeToString(b[:])
}

// Start handles POST /start (ORIGIN.md §1): one batch for the date, run in
// the background, answered as the stage answered.
func (t *Trigger) Start(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	req, parsed := decodeStart(w, r)
	if !parsed {
		t.log(ctx).Warn("POST /start body is not JSON: read as {} (as the replaced stage did)")
	}
	now := t.now()
	date, err := ResolveDate(req.GameDate, now)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody(err.Error()))
		return
	}
	mode := req.PredictionRunMode
	if mode == "" {
		mode = DefaultRunMode
	}
	if !modePattern.MatchString(mode) || !contract.ValidPrefix(req.DatasetPrefix) {
		writeJSON(w, http.StatusBadRequest, errorBody("prediction_run_mode must be 1-32 letters, digits or _, dataset_prefix up to 64"))
		return
	}
	corr := req.CorrelationID
	if corr == "" {
		corr = randomID()
	}
	if !req.Force {
		if open, err := t.openBatch(ctx, date); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, errorBody("state store: "+err.Error()))
			return
		} else if open != nil {
			writeJSON(w, http.StatusConflict, map[string]any{"status": "already_running", "batch_id": open.ID,
				"progress": progress(*open), "message": fmt.Sprintf("a batch for %s is still running; force to start another", date)})
			return
		}
	}
	var sys []string
	if t.Systems != nil {
		if sys = t.Systems(); len(sys) == 0 {
			w.Header().Set("Retry-After", "30")
			writeJSON(w, http.StatusServiceUnavailable, errorBody("no model of model_registry is loaded yet (see worker doctor and the model fleet's logs)"))
			return
		}
	}
	id := fmt.Sprintf("batch_%s_%d", date, now.Unix())
	out, err := t.Runner.Do(ctx, worker.Job{BatchID: id, Request: &state.Request{GameDate: date, CorrelationID: corr,
		RunMode: mode, DatasetPrefix: req.DatasetPrefix, Systems: sys}})
	switch {
	case errors.Is(err, systems.ErrNoGames):
		writeJSON(w, http.StatusOK, map[string]any{"status": "no_games_scheduled", "game_date": date,
			"message": "No games scheduled for " + date, "summary": map[string]any{"game_date": date, "total_games": 0}})
		return
	case errors.Is(err, systems.ErrNoPlayers):
		writeJSON(w, http.StatusNotFound, map[string]any{"status": "error", "message": "No players found for " + date,
			"summary": map[string]any{"game_date": date}})
		return
	case worker.Classify(err) == worker.ClassDataIncomplete && !req.SkipCompletenessCheck:
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "error", "error": "DATA_INCOMPLETE",
			"game_date": date, "message": err.Error(), "details": map[string]any{"is_complete": false}})
		return
	case err != nil:
		status := http.StatusInternalServerError
		if c := worker.Classify(err); c == worker.ClassUnavailable || c == worker.ClassDeadline || c == worker.ClassDataIncomplete {
			status = http.StatusServiceUnavailable
		}
		writeJSON(w, status, errorBody(err.Error()))
		return
	}
	summary, err := t.summary(ctx, out.Batch)
	if err != nil {
		t.log(ctx).Warn("POST /start: the summary could not be read", slog.String("error", err.Error()))
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"status": "started", "batch_id": out.Batch.ID, "game_date": date,
		"total_requests": out.Batch.ItemCount(), "published": out.Batch.ItemCount(), "summary": summary,
		"monitor_url": "/status?batch_id=" + out.Batch.ID, "correlation_id": corr})
}

// openBatch returns a batch of date that has not finished, if any.
func (t *Trigger) openBatch(ctx context.Context, date string) (*state.Batch, error) {
	for _, st := range []state.Status{state.StatusRunning, state.StatusPending} {
		bs, err := t.Store.List(ctx, state.ListFilter{Status: st, Limit: 200})
		if err != nil {
			return nil, err
		}
		for _, b := range bs {
			if b.Request.GameDate == date {
				return &b, nil
			}
		}
	}
	return nil, nil
}

func progress(b state.Batch) map[string]any {
	pct := 0.0
	if n := b.ItemCount(); n > 0 {
		pct = float64(int(10000*float64(b.DoneItems)/float64(n))) / 100
	}
	return map[string]any{"expected": b.ItemCount(), "completed": b.DoneItems, "pct": pct}
}

// summary describes the slate the way the stage's summary did (games,
// players, teams, line coverage), from the features of the batch's players.
func (t *Trigger) summary(ctx context.Context, b state.Batch) (map[string]any, error) {
	s := map[string]any{"game_date": b.Request.GameDate, "total_players": b.ItemCount()}
	feats, err := t.Features.Features(systems.WithScope(ctx, systems.Scope{RunMode: b.Request.RunMode,
		DatasetPrefix: b.Request.DatasetPrefix}), b.Request.GameDate, b.Items)
	if err != nil {
		return s, err
	}
	games, teams := map[string]bool{}, map[string]bool{}
	lines := 0
	for _, f := range feats {
		games[f.GameID] = true
		teams[f.Team] = true
		if f.HasLine {
			lines++
		}
	}
	names := make([]string, 0, len(teams))
	for n := range teams {
		names = append(names, n)
	}
	sort.Strings(names)
	s["total_games"], s["teams_playing"] = len(games), names
	s["prop_line_coverage"] = map[string]any{"players_with_lines": lines, "total_players": b.ItemCount()}
	return s, nil
}

// Status handles GET /status?batch_id=ID: the batch's progress as the
// stage's monitor showed it.
func (t *Trigger) Status(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("batch_id")
	if id == "" {
		writeJSON(w, http.StatusBadRequest, errorBody("batch_id is required"))
		return
	}
	b, err := t.Store.Get(r.Context(), id)
	switch {
	case errors.Is(err, state.ErrNotFound):
		writeJSON(w, http.StatusNotFound, errorBody("no batch "+id))
		return
	case err != nil:
		writeJSON(w, http.StatusServiceUnavailable, errorBody(err.Error()))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"batch_id": b.ID, "game_date": b.Request.GameDate, "state": b.Status,
		"is_complete": b.Status == state.StatusCompleted || b.Status == state.StatusFailed, "progress": progress(b),
		"total_predictions": b.Predictions, "failed_players": b.FailedPlayers, "correlation_id": b.Request.CorrelationID,
		"prediction_run_mode": b.Request.RunMode})
}
