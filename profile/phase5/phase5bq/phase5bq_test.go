package phase5bq_test

import (
	"context"
	"errors"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/predworker/predworker/internal/bqfake"
	"github.com/predworker/predworker/internal/stagefake"
	"github.com/predworker/predworker/profile/phase5/contract"
	"github.com/predworker/predworker/profile/phase5/phase5bq"
	"github.com/predworker/predworker/systems"
)

const date = "2026-01-15"

var created = time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC)

func f(v float64) *float64 { return &v }
func i(v int64) *int64     { return &v }

// storeRow is a feature row whose 60 values are plausible and whose
// required features are all present.
func storeRow(player, version string, quality, l5 float64) stagefake.Feature {
	r := stagefake.Feature{Player: player, Version: version, Quality: quality, RequiredDefaults: i(0)}
	for n := range r.Values {
		r.Values[n] = f(float64(n%5) / 10)
	}
	r.Values[0], r.Values[1], r.Values[2], r.Values[3] = f(l5), f(l5-1), f(l5-2), f(4.5)
	r.Values[5], r.Values[13], r.Values[15] = f(40), f(112), f(1)
	r.Values[25], r.Values[29] = nil, nil // no store line; no history against this opponent
	return r
}

func ctxRow(player string, minutes float64) stagefake.Context {
	return stagefake.Context{Player: player, UPID: "upid_" + player, GameID: "20260115_LAL_GSW", Team: "LAL", Opponent: "GSW",
		Home: true, ProductionReady: true, Minutes: minutes, DaysRest: 2, CreatedAt: created}
}

type env struct {
	stage *stagefake.Stage
	query *bqfake.Query
	src   *phase5bq.Source
	sink  *phase5bq.Sink
	fleet []string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	w, addr := bqfake.ServeWrite(t)
	st := &stagefake.Stage{Project: "nba-props-platform", Date: date, Write: w}
	q, url := bqfake.ServeQuery(t, st.Handle)
	client := bqfake.QueryClient(t, url)
	e := &env{stage: st, query: q, fleet: []string{"lgbm_a", "xgb_b"}}
	now := func() time.Time { return time.Date(2026, 1, 15, 15, 0, 0, 0, time.UTC) }
	var err error
	e.src, err = phase5bq.New(client, phase5bq.Options{Project: "nba-props-platform", CallTimeout: 5 * time.Second,
		ActiveSystems: func() []string { return e.fleet }, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	e.sink, err = phase5bq.NewSink(bqfake.WriteClient(t, addr), client, phase5bq.SinkOptions{Project: "nba-props-platform",
		CallTimeout: 5 * time.Second, BuildCommit: "abc123", Revision: "predworker-00042"})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func scoped(ctx context.Context, mode, prefix string) context.Context {
	return systems.WithScope(ctx, systems.Scope{RunMode: mode, DatasetPrefix: prefix})
}

// The slate is the stage's player list (newest row per player, OUT and
// DOUBTFUL excluded, production-ready or lined), less what the run mode's
// quality gate stops and what every fleet system already predicted.
func TestSlateIsThePlayerListThroughTheGate(t *testing.T) {
	e := newEnv(t)
	out := ctxRow("outguy", 30)
	out.Status = "OUT"
	doubtful := ctxRow("doubtful", 29)
	doubtful.Status = "doubtful"
	unready := ctxRow("unready", 28)
	unready.ProductionReady = false
	lined := ctxRow("linedonly", 27)
	lined.ProductionReady, lined.HasLine = false, true
	back := ctxRow("backnow", 26) // was OUT earlier today
	back.CreatedAt = created.Add(time.Hour)
	wasOut := ctxRow("backnow", 26)
	wasOut.Status = "OUT"
	e.stage.Context = []stagefake.Context{out, doubtful, unready, lined, back, wasOut, ctxRow("star", 36),
		ctxRow("lowq", 25), ctxRow("red", 24), ctxRow("nofeatures", 23), ctxRow("defaulted", 22), ctxRow("done", 21)}
	red := storeRow("red", "v2_54features", 95, 20)
	red.AlertLevel = "red"
	defaulted := storeRow("defaulted", "v2_54features", 95, 20)
	defaulted.RequiredDefaults = i(2)
	e.stage.Features = []stagefake.Feature{storeRow("outguy", "v2_54features", 95, 20), storeRow("linedonly", "v2_54features", 90, 20),
		storeRow("backnow", "v2_54features", 90, 20), storeRow("star", "v2_54features", 99, 30), storeRow("lowq", "v2_54features", 72, 20),
		red, defaulted, storeRow("done", "v2_54features", 90, 20)}

	got, err := e.src.Slate(scoped(t.Context(), "OVERNIGHT", ""), date)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"backnow", "done", "linedonly", "star"}; !slices.Equal(got, want) {
		t.Errorf("RETRY slate = %v, want %v", got, want)
	}
	got, _ = e.src.Slate(scoped(t.Context(), "LAST_CALL", ""), date) // threshold 70
	if !slices.Contains(got, "lowq") || slices.Contains(got, "red") || slices.Contains(got, "defaulted") {
		t.Errorf("LAST_CALL slate = %v", got)
	}

	// "Predict once": done has an active row of every fleet system.
	line := 20.5
	rows := []systems.Prediction{pred("done", "lgbm_a", &line, 24), pred("done", "xgb_b", &line, 22), pred("star", "lgbm_a", &line, 31)}
	commit(t, e, "batch_early", rows)
	got, _ = e.src.Slate(scoped(t.Context(), "RETRY", ""), date)
	if slices.Contains(got, "done") || !slices.Contains(got, "star") {
		t.Errorf("after done was predicted by every system: %v", got)
	}
	got, _ = e.src.Slate(scoped(t.Context(), "LINE_UPDATE", ""), date)
	if !slices.Contains(got, "done") {
		t.Errorf("LINE_UPDATE skipped a predicted player: %v", got)
	}

	// No context rows: no games. Context but no feature rows yet: data
	// incomplete. Everyone gated: no players, with the reasons.
	if _, err := e.src.Slate(t.Context(), "2026-01-16"); !errors.Is(err, systems.ErrNoGames) {
		t.Errorf("a date without context rows: %v", err)
	}
	feats := e.stage.Features
	e.stage.Features = nil
	if _, err := e.src.Slate(t.Context(), date); !errors.Is(err, systems.ErrDataIncomplete) {
		t.Errorf("no feature rows: %v", err)
	}
	e.stage.Features = []stagefake.Feature{red}
	if _, err := e.src.Slate(t.Context(), date); !errors.Is(err, systems.ErrNoPlayers) || !strings.Contains(err.Error(), "quality_alert_red 1") {
		t.Errorf("everyone gated: %v", err)
	}
	e.stage.Features = feats
}

func pred(player, system string, line *float64, points float64) systems.Prediction {
	return systems.Prediction{BatchID: "b", GameDate: date, GameID: "20260115_LAL_GSW", PlayerLookup: player, SystemID: system,
		PredictedPoints: points, Confidence: 85, Recommendation: systems.Recommendation(contract.Recommend(points, 85, line, false, 3)),
		Line: line, CreatedAt: created, ModelVersion: "v1@abc",
		Attrs: map[string]any{"prediction_run_mode": "RETRY", "feature_quality_score": 90.0, "is_quality_ready": true,
			"line_source": "ACTUAL_PROP", "has_prop_line": line != nil, "universal_player_id": "upid_" + player}}
}

// commit stages and commits rows for batch, as the engine does.
func commit(t *testing.T, e *env, batch string, rows []systems.Prediction) {
	t.Helper()
	var players []string
	for n := range rows {
		rows[n].BatchID = batch
		players = append(players, rows[n].PlayerLookup)
	}
	ctx := scoped(t.Context(), "RETRY", "")
	token, err := e.sink.Stage(ctx, batch, 1, rows)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.sink.Commit(ctx, batch, token, systems.SortedUnique(players), len(rows)); err != nil {
		t.Fatal(err)
	}
}

// Features are the store row of the date's version mapped to names, with
// the stage's overrides, the line by the stage's priority, and the output
// row's columns in Attrs.
func TestFeaturesAreTheStagesInputs(t *testing.T) {
	e := newEnv(t)
	e.stage.Context = []stagefake.Context{ctxRow("dk", 34), ctxRow("bp", 30), ctxRow("none", 28), ctxRow("twenty", 26), ctxRow("old", 25)}
	stale := storeRow("dk", "v2_39features", 99, 5) // another version: never read
	withLine := storeRow("none", "v2_54features", 90, 12)
	withLine.Values[25] = f(11.5)
	e.stage.Features = []stagefake.Feature{storeRow("dk", "v2_54features", 92, 28), stale, storeRow("bp", "v2_54features", 88, 18),
		withLine, storeRow("twenty", "v2_54features", 88, 18)}
	e.stage.Odds = []stagefake.Line{
		{Player: "dk", Value: 27.5, Book: "fanduel", Minutes: 30, At: created.Add(time.Hour)},
		{Player: "dk", Value: 26.5, Book: "draftkings", Minutes: 90, At: created},
		{Player: "dk", Value: 25.5, Book: "draftkings", Minutes: 60, At: created.Add(30 * time.Minute)},
		{Player: "bp", Value: 4.5, Book: "draftkings", At: created}, // under 5: not a line
		{Player: "twenty", Value: 20.0, Book: "betmgm", At: created},
	}
	e.stage.BettingPros = []stagefake.Line{{Player: "bp", Value: 17.5, Book: "caesars", At: created},
		{Player: "bp", Value: 16.5, Book: "caesars", At: created.Add(time.Hour), Inactive: true}}

	got, err := e.src.Features(scoped(t.Context(), "FIRST", ""), date, []string{"dk", "bp", "none", "twenty", "old"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got["old"] != nil {
		t.Fatalf("features of %d players (old has no feature row): %v", len(got), slices.Sorted(mapsKeys(got)))
	}
	dk := got["dk"]
	if !dk.HasLine || dk.Line != 25.5 || dk.Named["points_avg_last_5"] != 28 || dk.Quality != 92 || dk.GameID != "20260115_LAL_GSW" {
		t.Errorf("dk: line %v/%v, l5 %v, quality %v", dk.HasLine, dk.Line, dk.Named["points_avg_last_5"], dk.Quality)
	}
	if dk.Named["vegas_points_line"] != 25.5 || dk.Named["vegas_opening_line"] != 25.5 || dk.Named["vegas_line_move"] != 0 || dk.Named["has_vegas_line"] != 1 {
		t.Errorf("dk vegas overrides: %v %v %v %v", dk.Named["vegas_points_line"], dk.Named["vegas_opening_line"],
			dk.Named["vegas_line_move"], dk.Named["has_vegas_line"])
	}
	if dk.Named["avg_points_vs_opponent"] != 26 || dk.Named["days_rest"] != 0.4 {
		t.Errorf("dk: avg_points_vs_opponent %v (season average when NULL), days_rest %v", dk.Named["avg_points_vs_opponent"], dk.Named["days_rest"])
	}
	a := dk.Attrs
	if a["line_source"] != "ACTUAL_PROP" || a["line_source_api"] != "ODDS_API" || a["sportsbook"] != "DRAFTKINGS" ||
		a["was_line_fallback"] != false || a["line_minutes_before_game"] != int64(60) || a["prediction_run_mode"] != "FIRST" ||
		a["universal_player_id"] != "upid_dk" || a["scoring_tier"] != "star" || !strings.Contains(a["features_snapshot"].(string), `"vegas_source":"coordinator_actual"`) {
		t.Errorf("dk attrs: %v", a)
	}
	if bp := got["bp"]; !bp.HasLine || bp.Line != 17.5 || bp.Attrs["line_source_api"] != "BETTINGPROS" || bp.Attrs["was_line_fallback"] != true {
		t.Errorf("bp: %v %v %v", bp.HasLine, bp.Line, bp.Attrs)
	}
	none := got["none"]
	if none.HasLine || none.Attrs["line_source"] != "NO_PROP_LINE" || none.Named["vegas_points_line"] != 11.5 || none.Named["has_vegas_line"] != 1 ||
		!strings.Contains(none.Attrs["features_snapshot"].(string), `"vegas_source":"feature_store"`) {
		t.Errorf("none: has line %v, attrs %v, store line %v", none.HasLine, none.Attrs, none.Named["vegas_points_line"])
	}
	if tw := got["twenty"]; tw.Line != 20.5 {
		t.Errorf("a 20.0 line is read as %v, want 20.5", tw.Line)
	}
	if _, ok := got["twenty"].Named["vegas_opening_line"]; !ok {
		t.Error("twenty lost its opening line")
	}
	if err := e.src.ValidateFeatures(dk, 0); err != nil {
		t.Errorf("dk invalid: %v", err)
	}
	dk.Named["opponent_def_rating"] = math.NaN()
	if err := e.src.ValidateFeatures(dk, 0); err == nil {
		t.Error("a required feature without a value passed")
	}
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// No value reaches SQL text; the prefix picks the datasets (nba_raw
// excepted); a bad prefix is refused; an outage is transient.
func TestQueriesAreParameterizedAndScoped(t *testing.T) {
	e := newEnv(t)
	hostile := "o'neil\"; DROP TABLE x; --"
	e.stage.Context = []stagefake.Context{ctxRow("a", 30)}
	e.stage.Features = []stagefake.Feature{storeRow("a", "v2_54features", 90, 20)}
	if _, err := e.src.Features(scoped(t.Context(), "RETRY", "test"), date, []string{"a", hostile}); err != nil {
		t.Fatal(err)
	}
	reqs := e.query.Requests()
	if len(reqs) != 5 {
		t.Errorf("%d queries for a chunk, want 5 (version, features, context, two line tables)", len(reqs))
	}
	for _, r := range reqs {
		for _, leaked := range []string{date, "o'neil", "DROP", "RETRY"} {
			if strings.Contains(r.SQL, leaked) {
				t.Errorf("%s query holds %q: %s", r.Tag(), leaked, r.SQL)
			}
		}
		switch r.Tag() {
		case "features", "version":
			if !strings.Contains(r.SQL, "`nba-props-platform.test_nba_predictions.ml_feature_store_v2`") {
				t.Errorf("%s: %s", r.Tag(), r.SQL)
			}
		case "context":
			if !strings.Contains(r.SQL, "`nba-props-platform.test_nba_analytics.upcoming_player_game_context`") {
				t.Errorf("context: %s", r.SQL)
			}
		case "odds", "bettingpros":
			if !strings.Contains(r.SQL, "`nba-props-platform.nba_raw.") {
				t.Errorf("%s: %s", r.Tag(), r.SQL)
			}
		}
		if r.Tag() == "features" && (!slices.Contains(r.List("players"), hostile) || r.Str("feature_version") != "v2_54features") {
			t.Errorf("features parameters %v", r.Params)
		}
	}
	if _, err := e.src.Features(scoped(t.Context(), "RETRY", "x; DROP"), date, []string{"a"}); !errors.Is(err, systems.ErrPermanent) {
		t.Errorf("a bad prefix: %v", err)
	}
	e.stage.FailNext("players", 1) // the client retries a 503 by itself
	if _, err := e.src.Slate(t.Context(), date); err != nil {
		t.Errorf("one 503: %v", err)
	}
	e.stage.FailNext("players", 1000)
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if _, err := e.src.Slate(ctx, date); !errors.Is(err, systems.ErrUnavailable) {
		t.Errorf("an outage: %v", err)
	}
}

func TestRegistryReadsTheFleet(t *testing.T) {
	e := newEnv(t)
	e.stage.Registry = []map[string]any{
		{"model_id": "lgbm_a", "model_type": "lightgbm", "gcs_path": "gs://m/a.txt", "feature_count": 50, "feature_set": "v12_noveg",
			"status": "active", "enabled": true, "is_production": false, "loss_function": "MAE", "sha256_hash": "ab12"},
		{"model_id": "xgb_b", "model_type": "xgboost", "gcs_path": "gs://m/b.json", "feature_count": 2, "status": "shadow",
			"enabled": true, "is_production": false, "features_json": `["points_avg_last_5", "home_away"]`},
		{"model_id": "xgb_c", "gcs_path": "gs://m/c.json", "status": "blocked", "enabled": true, "is_production": false,
			"features_json": []any{"points_avg_last_5"}},
		{"model_id": "champion", "status": "active", "enabled": true, "is_production": true},
		{"model_id": "off", "status": "active", "enabled": false, "is_production": false},
		{"model_id": "old", "status": "deprecated", "enabled": true, "is_production": false},
	}
	reg, err := phase5bq.NewRegistry(bqfake.QueryClient(t, serveStage(t, e.stage)), "nba-props-platform", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got, err := reg.Models(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].ModelID != "lgbm_a" || got[0].FeatureCount != 50 || got[0].SHA256 != "ab12" ||
		!slices.Equal(got[1].Features, []string{"points_avg_last_5", "home_away"}) || !slices.Equal(got[2].Features, []string{"points_avg_last_5"}) ||
		got[2].Framework() != contract.XGBoost {
		t.Errorf("fleet = %+v", got)
	}
}

func serveStage(t *testing.T, st *stagefake.Stage) string {
	_, url := bqfake.ServeQuery(t, st.Handle)
	return url
}

// The output rows carry §4's semantics; failure records are not rows; a
// re-run at the same line replaces the row, at another line leaves one
// active row per key, the newest.
func TestOutputRowsAndTheActiveRule(t *testing.T) {
	e := newEnv(t)
	line, other := 20.5, 22.5
	failed := pred("nofeat", "lgbm_a", nil, 0)
	failed.Failed, failed.FailureReason = true, "no_features"
	rows := []systems.Prediction{pred("a", "lgbm_a", &line, 24.04), pred("a", "xgb_b", &line, 21), pred("b", "lgbm_a", nil, 12),
		pred("c", "lgbm_a", &line, 45), failed}
	ctx := scoped(t.Context(), "RETRY", "")
	for n := range rows {
		rows[n].BatchID = "batch_1"
	}
	token, err := e.sink.Stage(ctx, "batch_1", 1, rows)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(token, "#4") {
		t.Errorf("token %q does not carry the 4 rows of 5 predictions", token)
	}
	e.stage.Write.Forget(strings.TrimSuffix(token, "#4"))
	if err := e.sink.Commit(ctx, "batch_1", token, []string{"a", "b", "c", "nofeat"}, 5); !errors.Is(err, systems.ErrStagedRowsLost) {
		t.Errorf("a forgotten stream with none of its 4 rows in the table: %v", err)
	}
	commit(t, e, "batch_1", rows)
	if err := e.sink.Finish(ctx, "batch_1", date); err != nil {
		t.Fatal(err)
	}
	out := e.stage.Output()
	if len(out) != 4 {
		t.Fatalf("%d rows, want 4 (the failure record is not a row)", len(out))
	}
	by := map[string]stagefake.OutputRow{}
	for _, r := range out {
		by[r.Player+"/"+r.SystemID] = r
	}
	a := by["a/lgbm_a"]
	if a.Points != 24 || a.Confidence != 85 || a.Line == nil || *a.Line != 20.5 || a.Recommendation != "OVER" || !a.Active ||
		!a.Actionable || a.RunMode != "RETRY" || a.LineSource != "ACTUAL_PROP" || a.BatchID != "batch_1" ||
		a.PredictionID != contract.PredictionID("20260115_LAL_GSW", "a", "lgbm_a", &line) || a.Raw["build_commit_sha"] != "abc123" ||
		a.Raw["prediction_version"] != int64(1) {
		t.Errorf("a/lgbm_a = %+v", a)
	}
	if r := by["a/xgb_b"]; r.Recommendation != "HOLD" || r.Actionable {
		t.Errorf("a/xgb_b = %+v", r)
	}
	if r := by["b/lgbm_a"]; r.Recommendation != "NO_LINE" || r.Line != nil || r.Actionable {
		t.Errorf("b/lgbm_a = %+v", r)
	}
	if r := by["c/lgbm_a"]; r.Active || !strings.HasPrefix(r.FilterReason, "sanity_check_failed") {
		t.Errorf("c/lgbm_a (edge 24.5) = %+v", r)
	}

	// A re-run at the same line: one row per prediction id, the newer.
	again := []systems.Prediction{pred("a", "lgbm_a", &line, 25)}
	again[0].CreatedAt = created.Add(time.Hour)
	commit(t, e, "batch_2", again)
	// A re-run at another line: a second row of the key; the newer active.
	moved := []systems.Prediction{pred("a", "xgb_b", &other, 21)}
	moved[0].CreatedAt = created.Add(2 * time.Hour)
	commit(t, e, "batch_3", moved)
	for range 2 { // idempotent
		if err := e.sink.Finish(ctx, "batch_3", date); err != nil {
			t.Fatal(err)
		}
	}
	out = e.stage.Output()
	ids, active := map[string]int{}, map[string]int{}
	for _, r := range out {
		ids[r.PredictionID]++
		if r.Active {
			active[r.GameID+"/"+r.Player+"/"+r.SystemID]++
		}
	}
	for id, n := range ids {
		if n != 1 {
			t.Errorf("prediction %s has %d rows", id, n)
		}
	}
	if len(out) != 5 {
		t.Errorf("%d rows after the re-runs, want 5", len(out))
	}
	for k, n := range active {
		if n != 1 {
			t.Errorf("%s has %d active rows", k, n)
		}
	}
	for _, r := range out {
		switch {
		case r.Player == "a" && r.SystemID == "lgbm_a" && (r.BatchID != "batch_2" || r.Points != 25):
			t.Errorf("a/lgbm_a kept %+v, want batch_2's", r)
		case r.Player == "a" && r.SystemID == "xgb_b" && r.Active != (r.Line != nil && *r.Line == 22.5):
			t.Errorf("a/xgb_b at line %v active=%v", *r.Line, r.Active)
		}
	}
}

func TestSinkRefusesABadProject(t *testing.T) {
	if _, err := phase5bq.NewSink(nil, nil, phase5bq.SinkOptions{Project: "x"}); err == nil {
		t.Error("project x accepted")
	}
}

// The migration guide lists every column the sink writes, and the DDL it
// points to adds the one column the stage's table lacks.
func TestMigrationGuideNamesEveryColumn(t *testing.T) {
	guide, err := os.ReadFile("../../../docs/migrating.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range phase5bq.OutputSchema {
		if !strings.Contains(string(guide), "`"+f.Name+"`") {
			t.Errorf("docs/migrating.md does not name column %s", f.Name)
		}
	}
	ddl, err := os.ReadFile("../../../deploy/bigquery/phase5_output.sql")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(ddl), "ADD COLUMN IF NOT EXISTS batch_id STRING") {
		t.Errorf("phase5_output.sql does not add batch_id:\n%s", ddl)
	}
}
