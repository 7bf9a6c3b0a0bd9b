package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"github.com/fsouza/fake-gcs-server/fakestorage"

	"github.com/predworker/predworker/internal/bqfake"
	"github.com/predworker/predworker/internal/emulator"
	"github.com/predworker/predworker/internal/stagefake"
	"github.com/predworker/predworker/profile/phase5/contract"
	"github.com/predworker/predworker/profile/phase5/phase5bq"
)

const (
	stageProject  = "nba-props-platform"
	stageDate     = "2026-01-15"
	operatorToken = "e2e-operator-token-0123456789"
)

func fp(v float64) *float64 { return &v }

// stageTables fills the stage's tables for stageDate: players p00-p29 with
// complete feature rows (points_avg_last_5 = 10 + i), lines from the odds
// API (p00-p09, p05's exactly 20.0), from BettingPros (p10-p14) and none
// for the rest; an OUT player; a player the FIRST gate stops (quality 60);
// and one whose feature row lacks a required feature (a failure record,
// never a row).
func stageTables(st *stagefake.Stage) {
	at := time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC)
	add := func(player string, minutes, quality, l5 float64) *stagefake.Feature {
		st.Context = append(st.Context, stagefake.Context{Player: player, UPID: "upid_" + player, GameID: "20260115_LAL_GSW",
			Team: "LAL", Opponent: "GSW", Home: true, ProductionReady: true, Minutes: minutes, DaysRest: 1, CreatedAt: at})
		f := stagefake.Feature{Player: player, Version: "v2_54features", Quality: quality, RequiredDefaults: new(int64)}
		for n := range f.Values {
			f.Values[n] = fp(float64(n%5) / 10)
		}
		f.Values[0], f.Values[1], f.Values[2], f.Values[3] = fp(l5), fp(l5), fp(l5-1), fp(3)
		f.Values[5], f.Values[13], f.Values[15] = fp(40), fp(110), fp(1)
		st.Features = append(st.Features, f)
		return &st.Features[len(st.Features)-1]
	}
	for i := range 30 {
		p := fmt.Sprintf("p%02d", i)
		add(p, 40-float64(i)/2, 92, 10+float64(i))
		switch {
		case i < 10:
			v := 10 + float64(i) + 3.5
			if i == 5 {
				v = 20
			}
			st.Odds = append(st.Odds, stagefake.Line{Player: p, Value: v, Book: "draftkings", Minutes: 45, At: at})
		case i < 15:
			st.BettingPros = append(st.BettingPros, stagefake.Line{Player: p, Value: 10 + float64(i) - 4.5, Book: "fanduel", At: at})
		}
	}
	add("lowq", 20, 60, 15)
	add("broken", 19, 90, 15).Values[24] = nil // team_win_pct: required
	add("injured", 18, 95, 15)
	st.Context[len(st.Context)-1].Status = "OUT"
}

// TestPipelineProfile drives PROFILE=phase5 as the replaced stage's callers
// would: the official Pub/Sub emulator for the completion topic, the stage's
// BigQuery tables in a double (queries over REST, rows through the Storage
// Write API), the model registry's files in fake-gcs-server. POST /start
// makes a batch; the worker is SIGKILLed in the middle of it and restarted;
// the output rows then carry ORIGIN.md §4's semantics exactly once, the
// completion message has exactly §5.3's fields, and a forced second /start
// for the date re-predicts at a moved line, leaving one active row per key.
func TestPipelineProfile(t *testing.T) {
	t.Parallel()
	emulator.SkipOrFail(t, pubsubSkip)
	ctx := t.Context()

	// The stage's tables and its output table.
	write, writeAddr := bqfake.ServeWrite(t)
	st := &stagefake.Stage{Project: stageProject, Date: stageDate, Write: write}
	stageTables(st)
	names := contract.FeatureSet("v12_noveg")
	lgb, _, err := stagefake.LightGBMModel(names, 7)
	if err != nil {
		t.Fatal(err)
	}
	xgb := stagefake.XGBoostModel(names)
	// The client reads objects at http://HOST/bucket/object, which the
	// fake serves for its public host: the address it listens on.
	gcsPort := freePort(t)
	gcsHost := fmt.Sprintf("127.0.0.1:%d", gcsPort)
	gcs, err := fakestorage.NewServerWithOptions(fakestorage.Options{Host: "127.0.0.1", Port: uint16(gcsPort), Scheme: "http",
		PublicHost: gcsHost,
		InitialObjects: []fakestorage.Object{
			{ObjectAttrs: fakestorage.ObjectAttrs{BucketName: "nba-props-platform-models", Name: "v12/lgbm_v12_noveg_a.txt"}, Content: lgb},
			{ObjectAttrs: fakestorage.ObjectAttrs{BucketName: "nba-props-platform-models", Name: "v12/xgb_v12_noveg_b.json"}, Content: xgb},
			{ObjectAttrs: fakestorage.ObjectAttrs{BucketName: "nba-props-platform-models", Name: "v12/catboost_v12_c.cbm"}, Content: []byte("CBM")},
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gcs.Stop)
	st.Registry = []map[string]any{
		{"model_id": "lgbm_v12_noveg_a", "model_type": "lightgbm", "model_version": "v12a", "gcs_path": "gs://nba-props-platform-models/v12/lgbm_v12_noveg_a.txt",
			"feature_count": 50, "feature_set": "v12_noveg", "status": "active", "enabled": true, "is_production": false,
			"loss_function": "MAE", "model_family": "lgbm", "training_end_date": "2026-01-01", "sha256_hash": sha(lgb)},
		{"model_id": "xgb_v12_noveg_b", "model_type": "xgboost", "model_version": "v12b", "gcs_path": "gs://nba-props-platform-models/v12/xgb_v12_noveg_b.json",
			"feature_count": 50, "feature_set": "v12_noveg", "status": "shadow", "enabled": true, "is_production": false, "model_family": "xgb"},
		{"model_id": "catboost_v12_c", "model_type": "catboost", "gcs_path": "gs://nba-props-platform-models/v12/catboost_v12_c.cbm",
			"feature_count": 50, "feature_set": "v12_noveg", "status": "active", "enabled": true, "is_production": false, "model_family": "catboost"},
	}
	var output []bqfake.Field
	for _, f := range phase5bq.OutputSchema {
		mode := map[bool]string{true: "REQUIRED", false: "NULLABLE"}[f.Required]
		if f.Repeated {
			mode = "REPEATED"
		}
		output = append(output, bqfake.Field{Name: f.Name, Type: string(f.Type), Mode: mode})
	}
	tables := map[string][]bqfake.Field{stageProject + ".nba_predictions.player_prop_predictions": output}
	for table, cols := range map[string]string{
		"nba_analytics.upcoming_player_game_context": "player_lookup universal_player_id game_id team_abbr opponent_team_abbr home_game " +
			"days_rest back_to_back avg_minutes_per_game_last_7 game_date created_at player_status is_production_ready has_prop_line",
		"nba_predictions.ml_feature_store_v2": "player_lookup game_date feature_version feature_0_value feature_quality_score " +
			"quality_alert_level matchup_quality_pct required_default_count default_feature_count",
		"nba_raw.odds_api_player_points_props":    "player_lookup game_date points_line bookmaker minutes_before_tipoff snapshot_timestamp",
		"nba_raw.bettingpros_player_points_props": "player_lookup game_date points_line bookmaker market_type bet_side is_active",
	} {
		for _, col := range strings.Fields(cols) {
			tables[stageProject+"."+table] = append(tables[stageProject+"."+table], bqfake.Field{Name: col, Type: "STRING"})
		}
	}
	_, queryURL := bqfake.ServeQuery(t, st.Handle, tables)

	// The completion topic on the Pub/Sub emulator.
	ps := pubsubClient(t)
	suffix := fmt.Sprint(time.Now().UnixNano())
	complete, dead := "nba-phase5-predictions-complete-"+suffix, "p5-dead-"+suffix
	for _, id := range []string{complete, dead} {
		if _, err := ps.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: topicName(id)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ps.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{Name: subName("p5-sub-" + suffix),
		Topic: topicName(complete), AckDeadlineSeconds: 60}); err != nil {
		t.Fatal(err)
	}

	c := newCluster(t, "sqlite", "PROFILE=phase5", "GOOGLE_CLOUD_PROJECT="+emulator.Project, "PHASE5_PROJECT="+stageProject,
		"BIGQUERY_API_ENDPOINT="+queryURL, "BIGQUERY_WRITE_ENDPOINT="+writeAddr, "STORAGE_EMULATOR_HOST=http://"+gcsHost,
		"EVENTS=pubsub", "COMPLETION_TOPIC="+complete, "DEAD_LETTER_TOPIC="+dead, "OPERATOR_TOKEN="+operatorToken,
		"CHUNK_SIZE=4", "FAULTS=system=*,kind=latency,latency=250ms,rate=1", "LEASE_TTL=5s", "HEARTBEAT_INTERVAL=1s",
		"SWEEP_INTERVAL=1s", "BUILD_COMMIT=e2e-sha")
	// `worker doctor`: every check passes but the fleet's, which names the
	// CatBoost model it leaves out, and the input tables', which names the
	// column the BettingPros table lacks.
	doctor := exec.CommandContext(ctx, binary, "doctor")
	doctor.Env = append(append(os.Environ(), "DATA_DIR="+t.TempDir()), c.env...)
	out, _ := doctor.Output()
	var failed []string
	for line := range strings.Lines(string(out)) {
		if strings.HasPrefix(line, "FAIL") {
			failed = append(failed, line)
		}
	}
	slices.Sort(failed)
	if doctor.ProcessState.ExitCode() != 1 || len(failed) != 2 || !strings.Contains(failed[1], "model fleet") ||
		!strings.Contains(failed[1], "catboost_v12_c") || !strings.Contains(failed[1], "not supported yet") ||
		!strings.Contains(failed[0], "feature source (phase5)") ||
		!strings.Contains(failed[0], stageProject+".nba_raw.bettingpros_player_points_props lacks created_at") ||
		!strings.Contains(string(out), "ok   prediction sink (phase5)") {
		t.Errorf("worker doctor exited %d:\n%s", doctor.ProcessState.ExitCode(), out)
	}
	t.Logf("worker doctor:\n%s", out)

	p := c.start()
	waitUntil(t, 30*time.Second, "the model fleet loaded", func() bool {
		return slices.ContainsFunc(p.eventsSnapshot(), func(e event) bool { return e.Message == "model fleet refreshed" })
	})

	// The stage's scheduler body, unauthenticated: refused.
	body := `{"game_date": "` + stageDate + `", "prediction_run_mode": "FIRST", "correlation_id": "corr-e2e", "trigger_source": "scheduler"}`
	if code, _ := startCall(t, p, body, ""); code != http.StatusUnauthorized {
		t.Errorf("/start without a token answered %d, want 401", code)
	}
	code, started := startCall(t, p, body, operatorToken)
	if code != http.StatusAccepted || started["status"] != "started" {
		t.Fatalf("/start answered %d %v", code, started)
	}
	batch1, _ := started["batch_id"].(string)
	if !strings.HasPrefix(batch1, "batch_"+stageDate+"_") || started["total_requests"] != float64(31) ||
		started["monitor_url"] != "/status?batch_id="+batch1 {
		t.Errorf("/start body %v: want batch_%s_<unix>, 31 players (30, and one with a missing feature)", started, stageDate)
	}
	// The same date again, not forced, while it runs: 409.
	if code, again := startCall(t, p, body, operatorToken); code != http.StatusConflict || again["status"] != "already_running" ||
		again["batch_id"] != batch1 {
		t.Errorf("a second /start while %s runs answered %d %v", batch1, code, again)
	}

	// SIGKILL in the middle of the batch; a new process resumes it.
	waitUntil(t, time.Minute, "two chunks of "+batch1, func() bool {
		s := monitor(t, p, batch1)
		done, _ := s["progress"].(map[string]any)["completed"].(float64)
		return done >= 8 && s["state"] == "running"
	})
	p.signal(syscall.SIGKILL)
	<-p.exited
	p = c.start()
	waitUntil(t, 2*time.Minute, batch1+" completed", func() bool { return monitor(t, p, batch1)["state"] == "completed" })

	// §4: one row per (player, system) for the 30 predictable players;
	// none for the gated, the OUT and the failed one.
	rows := st.Output()
	checkOutput(t, rows, batch1, 30)

	// §5.3: exactly the stage's fields, a truthful status.
	msgs := drain(t, ps, "p5-sub-"+suffix, 1)
	if len(msgs) != 1 {
		t.Fatalf("%d completion messages, want 1", len(msgs))
	}
	checkCompletion(t, msgs[0].Data, msgs[0].Attributes, batch1, 31, 30, 60)

	// A forced LINE_UPDATE run after p00's line moved: p00's rows at the
	// old line become inactive, the new line's are active; every other
	// row is replaced in place (same prediction_id).
	st.Edit(func(s *stagefake.Stage) {
		s.Odds = append(s.Odds, stagefake.Line{Player: "p00", Value: 16.5, Book: "draftkings", Minutes: 10,
			At: time.Date(2026, 1, 15, 20, 0, 0, 0, time.UTC)})
	})
	time.Sleep(1100 * time.Millisecond) // batch ids are per second
	body2 := `{"game_date": "` + stageDate + `", "prediction_run_mode": "LINE_UPDATE", "force": true, "correlation_id": "corr-e2e-2"}`
	code, started = startCall(t, p, body2, operatorToken)
	batch2, _ := started["batch_id"].(string)
	if code != http.StatusAccepted || batch2 == batch1 {
		t.Fatalf("forced /start answered %d %v", code, started)
	}
	waitUntil(t, 2*time.Minute, batch2+" completed", func() bool { return monitor(t, p, batch2)["state"] == "completed" })
	rows = st.Output()
	ids, active := map[string]int{}, map[string][]stagefake.OutputRow{}
	for _, r := range rows {
		ids[r.PredictionID]++
		if r.Active {
			k := r.GameID + "/" + r.Player + "/" + r.SystemID
			active[k] = append(active[k], r)
		}
	}
	for id, n := range ids {
		if n != 1 {
			t.Errorf("prediction_id %s has %d rows", id, n)
		}
	}
	if len(rows) != 62 || len(active) != 60 {
		t.Errorf("after the line update: %d rows, %d active keys; want 62 (p00's old-line rows kept, inactive) and 60", len(rows), len(active))
	}
	for k, rs := range active {
		if len(rs) != 1 || rs[0].BatchID != batch2 || rs[0].RunMode != "LINE_UPDATE" {
			t.Errorf("%s: active rows %+v, want one of %s", k, rs, batch2)
		}
		if strings.HasPrefix(k, "20260115_LAL_GSW/p00/") && (rs[0].Line == nil || *rs[0].Line != 16.5) {
			t.Errorf("p00's active row is at line %v, want the moved 16.5", rs[0].Line)
		}
	}
	msgs = drain(t, ps, "p5-sub-"+suffix, 1)
	if len(msgs) != 1 {
		t.Fatalf("%d completion messages for the second batch, want 1", len(msgs))
	}
	checkCompletion(t, msgs[0].Data, msgs[0].Attributes, batch2, 31, 30, 60)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

func sha(b []byte) string { return stagefake.SHA256(b) }

// startCall posts body to /start with token (none when empty).
func startCall(t *testing.T, p *proc, body, token string) (int, map[string]any) {
	t.Helper()
	code, raw, err := requestAs(t, token, http.MethodPost, p.url("/start"), body)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return code, out
}

// monitor is GET /status?batch_id= (the stage's monitor_url).
func monitor(t *testing.T, p *proc, id string) map[string]any {
	t.Helper()
	out := map[string]any{}
	if _, raw, err := requestAs(t, operatorToken, http.MethodGet, p.url("/status?batch_id="+id), ""); err == nil {
		_ = json.Unmarshal(raw, &out)
	}
	return out
}

// checkOutput checks batch's rows in the output table against §4.
func checkOutput(t *testing.T, rows []stagefake.OutputRow, batch string, players int) {
	t.Helper()
	seen := map[string]int{}
	var recs []string
	for _, r := range rows {
		if r.BatchID != batch {
			continue
		}
		seen[r.Player+"/"+r.SystemID]++
		recs = append(recs, r.Recommendation)
		var idx int
		if _, err := fmt.Sscanf(r.Player, "p%02d", &idx); err != nil {
			t.Errorf("a row for %s, which is gated, OUT or invalid", r.Player)
			continue
		}
		if r.PredictionID != contract.PredictionID(r.GameID, r.Player, r.SystemID, r.Line) {
			t.Errorf("%s/%s: prediction_id %s is not the key's", r.Player, r.SystemID, r.PredictionID)
		}
		switch {
		case idx < 10 && (r.LineSource != "ACTUAL_PROP" || r.Raw["line_source_api"] != "ODDS_API"),
			idx >= 10 && idx < 15 && (r.LineSource != "ACTUAL_PROP" || r.Raw["line_source_api"] != "BETTINGPROS"),
			idx >= 15 && (r.LineSource != "NO_PROP_LINE" || r.Line != nil || r.Recommendation != "NO_LINE"):
			t.Errorf("%s/%s: line source %s/%v, line %v, call %s", r.Player, r.SystemID, r.LineSource, r.Raw["line_source_api"], r.Line, r.Recommendation)
		}
		if idx == 5 && (r.Line == nil || *r.Line != 20.5) {
			t.Errorf("p05's 20.0 line stored as %v, want 20.5", r.Line)
		}
		if r.Line != nil {
			if want := contract.Recommend(r.Points, r.Confidence, r.Line, false, 3); r.Recommendation != want {
				t.Errorf("%s/%s: %.1f against %.1f called %s, want %s", r.Player, r.SystemID, r.Points, *r.Line, r.Recommendation, want)
			}
			if m, _ := r.Raw["line_margin"].([]byte); m == nil {
				t.Errorf("%s/%s: no line_margin", r.Player, r.SystemID)
			}
		}
		if r.SystemID == "xgb_v12_noveg_b" && r.Points != map[bool]float64{true: 15, false: 25}[idx < 10] {
			t.Errorf("%s: xgboost predicted %.1f", r.Player, r.Points)
		}
		if r.Confidence < 75 || r.Confidence > 95 || r.RunMode != "FIRST" || !r.Active || r.Raw["build_commit_sha"] != "e2e-sha" {
			t.Errorf("%s/%s: confidence %.2f, mode %q, active %v, commit %v", r.Player, r.SystemID, r.Confidence, r.RunMode, r.Active, r.Raw["build_commit_sha"])
		}
	}
	if len(seen) != players*2 {
		t.Errorf("%d (player, system) keys for %s, want %d", len(seen), batch, players*2)
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("%s: %d rows for %s after the kill", batch, n, k)
		}
	}
	sort.Strings(recs)
	for _, want := range []string{"HOLD", "NO_LINE", "OVER", "UNDER"} {
		if !slices.Contains(recs, want) {
			t.Errorf("no %s among %s's calls", want, batch)
		}
	}
}

// checkCompletion checks a completion message field by field against §5.3.
func checkCompletion(t *testing.T, data []byte, attrs map[string]string, batch string, expected, completed, predictions int) {
	t.Helper()
	if len(attrs) != 0 {
		t.Errorf("completion message attributes %v, want none", attrs)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("completion message %s: %v", data, err)
	}
	keys := slices.Sorted(maps.Keys(m))
	want := []string{"correlation_id", "duration_seconds", "execution_id", "game_date", "metadata", "output_dataset",
		"output_table", "phase", "processor_name", "record_count", "records_failed", "status", "timestamp", "trigger_source"}
	if !slices.Equal(keys, want) {
		t.Errorf("completion message keys %v, want %v", keys, want)
	}
	meta, _ := m["metadata"].(map[string]any)
	mkeys := slices.Sorted(maps.Keys(meta))
	if !slices.Equal(mkeys, []string{"batch_id", "completed_players", "completed_predictions", "completion_pct", "expected_players", "total_predictions"}) {
		t.Errorf("metadata keys %v", mkeys)
	}
	pct := math.Round(10000*float64(completed)/float64(expected)) / 100
	checks := map[string][2]any{
		"processor_name": {m["processor_name"], "PredictionCoordinator"}, "phase": {m["phase"], "phase_5_predictions"},
		"execution_id": {m["execution_id"], batch}, "game_date": {m["game_date"], stageDate},
		"output_table": {m["output_table"], "player_prop_predictions"}, "output_dataset": {m["output_dataset"], "nba_predictions"},
		"status": {m["status"], "partial"}, "record_count": {m["record_count"], float64(completed)},
		"records_failed": {m["records_failed"], float64(expected - completed)}, "trigger_source": {m["trigger_source"], "automatic"},
		"metadata.batch_id": {meta["batch_id"], batch}, "metadata.expected_players": {meta["expected_players"], float64(expected)},
		"metadata.completed_players":     {meta["completed_players"], float64(completed)},
		"metadata.completed_predictions": {meta["completed_predictions"], float64(completed)},
		"metadata.total_predictions":     {meta["total_predictions"], float64(predictions)},
		"metadata.completion_pct":        {meta["completion_pct"], pct},
	}
	for name, c := range checks {
		if c[0] != c[1] {
			t.Errorf("completion %s = %v, want %v", name, c[0], c[1])
		}
	}
	if corr, _ := m["correlation_id"].(string); !strings.HasPrefix(corr, "corr-e2e") {
		t.Errorf("correlation_id %v", m["correlation_id"])
	}
	if ts, _ := m["timestamp"].(string); ts == "" {
		t.Error("no timestamp")
	} else if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
		t.Errorf("timestamp %q: %v", ts, err)
	}
	if d, _ := m["duration_seconds"].(float64); d <= 0 {
		t.Errorf("duration_seconds %v", m["duration_seconds"])
	}
}
