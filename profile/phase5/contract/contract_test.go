package contract_test

import (
	"math"
	"slices"
	"testing"

	"github.com/predworker/predworker/profile/phase5/contract"
)

func TestFeatureSets(t *testing.T) {
	for set, n := range map[string]int{"v9": 34, "v12": 54, "v12_noveg": 50, "v16_noveg": 52, "v17_noveg": 55,
		"v13": 60, "v13_noveg": 56, "v15": 56, "v15_noveg": 52, "v18_experimental": 34} {
		if got := len(contract.FeatureSet(set)); got != n {
			t.Errorf("%s: %d names, want %d", set, got, n)
		}
	}
	noveg := contract.FeatureSet("v12_noveg")
	if slices.Contains(noveg, "vegas_points_line") || noveg[25] != "avg_points_vs_opponent" || noveg[49] != "line_vs_season_avg" {
		t.Errorf("v12_noveg = %v", noveg)
	}
	if !contract.IsV9Path("v9") || !contract.IsV9Path("v18_x") || contract.IsV9Path("v12_noveg") {
		t.Error("V9 path misread")
	}
}

func TestVector(t *testing.T) {
	named := map[string]float64{"points_avg_last_5": 21, "pct_mid_range": math.NaN(), "days_rest": math.NaN()}
	x := contract.Vector([]string{"points_avg_last_5", "pct_paint", "pct_mid_range", "days_rest", "usage_rate_last_5",
		"prop_line_delta", "has_shot_zone_data", "fg_pct_last_3"}, named, nil)
	want := []float64{21, math.NaN(), math.NaN(), 1, 20, math.NaN(), 0, math.NaN()}
	for i := range want {
		if !(x[i] == want[i] || math.IsNaN(x[i]) && math.IsNaN(want[i])) {
			t.Errorf("x[%d] = %v, want %v", i, x[i], want[i])
		}
	}
	named["pct_paint"] = 0.4
	if x := contract.Vector([]string{"has_shot_zone_data"}, named, x); x[0] != 1 {
		t.Errorf("has_shot_zone_data with zones = %v", x[0])
	}
}

func TestValidateNamed(t *testing.T) {
	named := map[string]float64{}
	for _, n := range contract.RequiredFeatures {
		named[n] = 0.5
	}
	named["opponent_def_rating"], named["fatigue_score"] = 110, 40
	if err := contract.ValidateNamed(named, 80, 50); err != nil {
		t.Fatal(err)
	}
	if err := contract.ValidateNamed(named, 49.9, 50); err == nil {
		t.Error("quality below the floor passed")
	}
	named["opponent_def_rating"] = 130
	if err := contract.ValidateNamed(named, 80, 50); err == nil {
		t.Error("opponent_def_rating 130 passed")
	}
	named["opponent_def_rating"] = 110
	delete(named, "team_win_pct")
	if err := contract.ValidateNamed(named, 80, 50); err == nil {
		t.Error("a missing required feature passed")
	}
}

func TestGate(t *testing.T) {
	if m := contract.GateMode("OVERNIGHT", "2026-01-15", "2026-01-15"); m != contract.ModeRetry {
		t.Errorf("OVERNIGHT → %s", m)
	}
	if m := contract.GateMode("PRE_GAME", "2026-01-15", "2026-01-15"); m != contract.ModeFirst {
		t.Errorf("PRE_GAME → %s", m)
	}
	if m := contract.GateMode("BACKFILL", "2026-01-16", "2026-01-15"); m != contract.ModeRetry {
		t.Errorf("BACKFILL of tomorrow → %s", m)
	}
	if m := contract.GateMode("BACKFILL", "2026-01-14", "2026-01-15"); m != contract.ModeBackfill {
		t.Errorf("BACKFILL of yesterday → %s", m)
	}
	fifty, zero, one := 49.0, int64(0), int64(1)
	for _, c := range []struct {
		row  *contract.GateRow
		mode string
		ok   bool
	}{
		{nil, contract.ModeRetry, false},
		{&contract.GateRow{Quality: 85}, contract.ModeRetry, true},
		{&contract.GateRow{Quality: 84.9}, contract.ModeRetry, false},
		{&contract.GateRow{Quality: 72}, contract.ModeLastCall, true},
		{&contract.GateRow{Quality: 95, AlertLevel: "red"}, contract.ModeBackfill, false},
		{&contract.GateRow{Quality: 95, MatchupQualityPct: &fifty}, contract.ModeRetry, false},
		{&contract.GateRow{Quality: 95, RequiredDefaultCount: &one}, contract.ModeRetry, false},
		{&contract.GateRow{Quality: 95, RequiredDefaultCount: &zero, DefaultFeatureCount: &one}, contract.ModeRetry, true},
		{&contract.GateRow{Quality: 95, DefaultFeatureCount: &one}, contract.ModeRetry, false},
	} {
		if ok, reason := contract.Gate(c.row, c.mode); ok != c.ok {
			t.Errorf("Gate(%+v, %s) = %v (%s)", c.row, c.mode, ok, reason)
		}
	}
}

func TestLinesAndCalls(t *testing.T) {
	for raw, want := range map[float64]float64{25.46: 25.5, 19.97: 19.5, 20.0: 20.5, 20.04: 20.5, 24.5: 24.5} {
		if got := contract.NormalizeLine(raw); got != want {
			t.Errorf("NormalizeLine(%v) = %v, want %v", raw, got, want)
		}
	}
	if contract.BookRank("DraftKings") != 0 || contract.BookRank("caesars") != 4 || contract.BookRank("bovada") != 5 {
		t.Error("book priority")
	}
	line := 24.5
	for _, c := range []struct {
		pts, conf float64
		line      *float64
		v9        bool
		hold      float64
		want      string
	}{
		{30, 80, nil, false, 3, "NO_LINE"},
		{26, 80, &line, false, 3, "HOLD"},
		{27.5, 80, &line, false, 3, "OVER"},
		{27.5, 80, &line, false, 4, "HOLD"},
		{20, 80, &line, false, 3, "UNDER"},
		{25, 80, &line, true, 3, "PASS"},
		{26, 55, &line, true, 3, "PASS"},
		{26, 80, &line, true, 3, "OVER"},
	} {
		if got := contract.Recommend(c.pts, c.conf, c.line, c.v9, c.hold); got != c.want {
			t.Errorf("Recommend(%+v) = %s", c, got)
		}
	}
	if contract.HoldEdge("Quantile:alpha=0.43") != 4 || contract.HoldEdge("MAE") != 3 {
		t.Error("hold edge")
	}
	for _, c := range []struct {
		q, std float64
		v9     bool
		want   float64
	}{{95, 3, false, 95}, {82, 5, false, 87}, {72, 7, false, 80}, {60, 7, false, 75}, {60, 7, true, 82}, {60, 9, true, 79}} {
		if got := contract.Confidence(c.q, c.std, c.v9); got != c.want {
			t.Errorf("Confidence(%v, %v, %v) = %v, want %v", c.q, c.std, c.v9, got, c.want)
		}
	}
}

func TestPredictionIDIsTheKey(t *testing.T) {
	a, b := 24.5, 25.5
	id := contract.PredictionID("20260115_LAL_GSW", "lebronjames", "lgbm_a", &a)
	if id != contract.PredictionID("20260115_LAL_GSW", "lebronjames", "lgbm_a", &a) {
		t.Error("not deterministic")
	}
	for _, other := range []string{
		contract.PredictionID("20260115_LAL_GSW", "lebronjames", "lgbm_a", &b),
		contract.PredictionID("20260115_LAL_GSW", "lebronjames", "lgbm_a", nil),
		contract.PredictionID("20260115_LAL_GSW", "lebronjames", "xgb_a", &a),
		contract.PredictionID("20260115_LAL_GSW", "anthonydavis", "lgbm_a", &a),
	} {
		if other == id {
			t.Error("two keys share an id")
		}
	}
}

func TestActionable(t *testing.T) {
	line, ready, notReady := 20.5, true, false
	for _, c := range []struct {
		a      contract.Actionability
		ok     bool
		reason string
		sane   bool
	}{
		{contract.Actionability{Predicted: 25, Confidence: 85, Line: &line, Recommendation: "OVER", QualityReady: &ready, Quality: 90}, true, "", true},
		{contract.Actionability{Predicted: 25, Confidence: 89, Line: &line, Recommendation: "OVER", Quality: 90}, false, "confidence_tier_88_90", true},
		{contract.Actionability{Predicted: 25, Confidence: 85, Line: &line, Recommendation: "OVER", QualityReady: &notReady, Quality: 90}, false, "not_quality_ready", true},
		{contract.Actionability{Predicted: 25, Confidence: 85, Line: &line, Recommendation: "OVER", Quality: 65}, false, "low_data_quality", true},
		{contract.Actionability{Predicted: 22, Confidence: 85, Line: &line, Recommendation: "HOLD", Quality: 90}, false, "", true},
		{contract.Actionability{Predicted: 45, Confidence: 85, Line: &line, Recommendation: "OVER", Quality: 90}, false, "sanity_check_failed: edge 24.5 beyond 20", false},
	} {
		ok, reason, sane := contract.Actionable(c.a)
		if ok != c.ok || reason != c.reason || sane != c.sane {
			t.Errorf("Actionable(%+v) = %v %q %v", c.a, ok, reason, sane)
		}
	}
}
