// Package contract is the replaced pipeline stage's rules, as ORIGIN.md
// states them: the feature store's index → name mapping, the feature sets
// of its models, defaults, checks and the quality gate, sportsbook lines,
// the fleet's calls and confidence, prediction ids and actionability, and
// the model registry's rows. Pure functions over plain values: the profile's
// adapters (phase5bq, fleet) and its trigger share them.
package contract

import (
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"
	_ "time/tzdata" // America/New_York without the host's zoneinfo (distroless)

	"github.com/google/uuid"
)

// StoreNames maps the feature store's columns feature_N_value (N = 0…59)
// to the names models know them by (ORIGIN.md §3.2). The order is the
// contract: new features are appended, never inserted.
var StoreNames = [60]string{
	"points_avg_last_5", "points_avg_last_10", "points_avg_season", "points_std_last_10", "games_in_last_7_days",
	"fatigue_score", "shot_zone_mismatch_score", "pace_score", "usage_spike_score", "rest_advantage",
	"injury_risk", "recent_trend", "minutes_change", "opponent_def_rating", "opponent_pace",
	"home_away", "back_to_back", "playoff_game", "pct_paint", "pct_mid_range",
	"pct_three", "pct_free_throw", "team_pace", "team_off_rating", "team_win_pct",
	"vegas_points_line", "vegas_opening_line", "vegas_line_move", "has_vegas_line", "avg_points_vs_opponent",
	"games_vs_opponent", "minutes_avg_last_10", "ppm_avg_last_10", "dnp_rate", "pts_slope_10g",
	"pts_vs_season_zscore", "breakout_flag", "star_teammates_out", "game_total_line", "days_rest",
	"minutes_load_last_7d", "spread_magnitude", "implied_team_total", "points_avg_last_3", "scoring_trend_slope",
	"deviation_from_avg_last3", "consecutive_games_below_avg", "teammate_usage_available", "usage_rate_last_5", "games_since_structural_change",
	"multi_book_line_std", "prop_over_streak", "prop_under_streak", "line_vs_season_avg", "prop_line_delta",
	"over_rate_last_10", "margin_vs_line_avg_last_5", "blowout_minutes_risk", "minutes_volatility_last_10", "opponent_pace_mismatch",
}

// DefaultFeatureVersion is the version read when the store names none for
// the date (§3.1).
const DefaultFeatureVersion = "v2_39features"

// RequiredFeatures are the names every prediction needs (§3.3): store
// features #0-#24.
var RequiredFeatures = StoreNames[:25]

// Defaults stand in for a feature with no value when a model's vector is
// built (the stage's feature contract); a name without a default becomes
// NaN, which the tree evaluators route down each split's missing branch.
var Defaults = map[string]float64{
	"points_avg_last_5": 10, "points_avg_last_10": 10, "points_avg_season": 10, "points_std_last_10": 5,
	"games_in_last_7_days": 3, "fatigue_score": 50, "shot_zone_mismatch_score": 0, "pace_score": 0,
	"usage_spike_score": 0, "rest_advantage": 0, "injury_risk": 0, "recent_trend": 0, "minutes_change": 0,
	"opponent_def_rating": 112, "opponent_pace": 100, "home_away": 0.5, "back_to_back": 0, "playoff_game": 0,
	"pct_free_throw": 0.15, "team_pace": 100, "team_off_rating": 112, "team_win_pct": 0.5,
	"vegas_line_move": 0, "has_vegas_line": 0, "games_vs_opponent": 0, "minutes_avg_last_10": 25,
	"ppm_avg_last_10": 0.4, "dnp_rate": 0, "pts_slope_10g": 0, "pts_vs_season_zscore": 0, "breakout_flag": 0,
	"star_teammates_out": 0, "game_total_line": 224, "days_rest": 1, "minutes_load_last_7d": 80,
	"spread_magnitude": 5, "implied_team_total": 112, "points_avg_last_3": 10, "scoring_trend_slope": 0,
	"deviation_from_avg_last3": 0, "consecutive_games_below_avg": 0, "teammate_usage_available": 0,
	"usage_rate_last_5": 20, "games_since_structural_change": 30, "multi_book_line_std": 0.5,
	"prop_over_streak": 0, "prop_under_streak": 0, "line_vs_season_avg": 0, "over_rate_last_10": 0.5,
}

// nanWhenMissing are the features a V12+ vector keeps as NaN rather than
// defaulting (the shot zones: a player without zone data is not average).
var nanWhenMissing = map[string]bool{"pct_paint": true, "pct_mid_range": true, "pct_three": true}

// Ranges are the inclusive checks of §3.3; other features are unchecked.
var Ranges = map[string][2]float64{
	"points_avg_season": {0, 60}, "points_avg_last_5": {0, 80}, "points_avg_last_10": {0, 80},
	"fatigue_score": {-1, 100}, "opponent_def_rating": {95, 125},
	"home_away": {0, 1}, "back_to_back": {0, 1}, "playoff_game": {0, 1},
}

// ValidateNamed applies §3.3 to a player's store features: the 25
// required features present and finite, the ranges, and the quality floor.
func ValidateNamed(named map[string]float64, quality, minQuality float64) error {
	var missing []string
	for _, n := range RequiredFeatures {
		if v, ok := named[n]; !ok || math.IsNaN(v) || math.IsInf(v, 0) {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("required features without a value: %s", strings.Join(missing, ", "))
	}
	for _, n := range slices.Sorted(maps.Keys(Ranges)) {
		r := Ranges[n]
		if v := named[n]; v < r[0] || v > r[1] {
			return fmt.Errorf("%s %g outside %g to %g", n, v, r[0], r[1])
		}
	}
	if math.IsNaN(quality) || quality < minQuality {
		return fmt.Errorf("feature_quality_score %g below %g", quality, minQuality)
	}
	return nil
}

var (
	vegas      = []string{"vegas_points_line", "vegas_opening_line", "vegas_line_move", "has_vegas_line"}
	v12        = StoreNames[:54]
	v12NoVegas = without(v12, vegas...)
	v16NoVegas = append(slices.Clone(v12NoVegas), "over_rate_last_10", "margin_vs_line_avg_last_5")
	v17NoVegas = append(slices.Clone(v16NoVegas), "blowout_minutes_risk", "minutes_volatility_last_10", "opponent_pace_mismatch")
	v13Extra   = []string{"fg_pct_last_3", "fg_pct_last_5", "fg_pct_vs_season_avg", "three_pct_last_3", "three_pct_last_5", "fg_cold_streak"}
	v15Extra   = []string{"ft_rate_season", "starter_rate_season"}
	v9         = append(slices.Clone(StoreNames[:33]), "has_shot_zone_data")
)

func without(in []string, drop ...string) []string {
	return slices.DeleteFunc(slices.Clone(in), func(s string) bool { return slices.Contains(drop, s) })
}

// v12Sets are the feature sets served on the V12 path.
var v12Sets = []string{"v12", "v12_noveg", "v16_noveg", "v17_noveg", "v13", "v13_noveg", "v15", "v15_noveg"}

// IsV9Path reports whether a feature_set is served on the V9 path: v9 and
// any set not listed in §6.4 (PASS below an edge of 1 or a confidence of
// 60, the V9 confidence bonuses).
func IsV9Path(set string) bool { return !slices.Contains(v12Sets, set) }

// FeatureSet returns the ordered input names of a registry feature_set
// (§6.4); any set not listed is read as v9 (33 store features and
// has_shot_zone_data), as the stage did.
func FeatureSet(name string) []string {
	switch name {
	case "v12":
		return slices.Clone(v12)
	case "v12_noveg":
		return slices.Clone(v12NoVegas)
	case "v16_noveg":
		return slices.Clone(v16NoVegas)
	case "v17_noveg":
		return slices.Clone(v17NoVegas)
	case "v13":
		return append(slices.Clone(v12), v13Extra...)
	case "v13_noveg":
		return append(slices.Clone(v12NoVegas), v13Extra...)
	case "v15":
		return append(slices.Clone(v12), v15Extra...)
	case "v15_noveg":
		return append(slices.Clone(v12NoVegas), v15Extra...)
	}
	return slices.Clone(v9)
}

// Vector builds a model's input vector in names order from the store
// features: a value when there is one, else the contract default, else NaN
// (the shot zones stay NaN; has_shot_zone_data is 1 when the zones are
// known).
func Vector(names []string, named map[string]float64, x []float64) []float64 {
	x = x[:0]
	for _, n := range names {
		v, ok := named[n]
		switch {
		case n == "has_shot_zone_data" && !ok:
			v = 0
			if p, has := named["pct_paint"]; has && !math.IsNaN(p) {
				v = 1
			}
		case ok && !math.IsNaN(v):
		case nanWhenMissing[n]:
			v = math.NaN()
		default:
			if d, has := Defaults[n]; has {
				v = d
			} else {
				v = math.NaN()
			}
		}
		x = append(x, v)
	}
	return x
}

var eastern = mustLocation("America/New_York")

func mustLocation(name string) *time.Location {
	l, err := time.LoadLocation(name)
	if err != nil {
		panic(err) // time/tzdata is linked in: cannot happen
	}
	return l
}

// Eastern is America/New_York, the stage's calendar.
func Eastern() *time.Location { return eastern }

// Today is the date of now in America/New_York.
func Today(now time.Time) string { return now.In(eastern).Format(time.DateOnly) }

var prefixRe = regexp.MustCompile(`^[A-Za-z0-9_]{0,64}$`)

// ValidPrefix reports whether a dataset_prefix may name datasets: up to 64
// letters, digits and _ (it goes into SQL text as part of a dataset id).
func ValidPrefix(p string) bool { return prefixRe.MatchString(p) }

// Gate modes (ORIGIN.md §1).
const (
	ModeFirst      = "FIRST"
	ModeRetry      = "RETRY"
	ModeFinalRetry = "FINAL_RETRY"
	ModeLastCall   = "LAST_CALL"
	ModeBackfill   = "BACKFILL"
	ModeLineCheck  = "LINE_CHECK"
	ModeLineUpdate = "LINE_UPDATE"
)

// GateMode maps prediction_run_mode to the quality gate's mode: the seven
// modes as they are, the legacy names to FIRST or RETRY, anything else to
// RETRY; BACKFILL of a date after today is RETRY.
func GateMode(runMode, date, today string) string {
	switch m := strings.ToUpper(runMode); m {
	case ModeFirst, ModeRetry, ModeFinalRetry, ModeLastCall, ModeLineCheck, ModeLineUpdate:
		return m
	case ModeBackfill:
		if date > today {
			return ModeRetry
		}
		return m
	case "EARLY", "PRE_GAME":
		return ModeFirst
	}
	return ModeRetry
}

// MinQuality is the feature_quality_score a gate mode requires.
func MinQuality(gateMode string) float64 {
	switch gateMode {
	case ModeFinalRetry:
		return 80
	case ModeLastCall, ModeBackfill:
		return 70
	}
	return 85
}

// GateRow is what the quality gate reads of a player's feature row.
type GateRow struct {
	Quality              float64
	AlertLevel           string
	MatchupQualityPct    *float64
	RequiredDefaultCount *int64
	DefaultFeatureCount  *int64
}

// Gate decides whether a player's feature row may be predicted in a gate
// mode: the mode's quality threshold and the hard floors of every mode (a
// red alert, matchup quality under 50 %, a required feature defaulted).
// It answers the reason when not.
func Gate(r *GateRow, gateMode string) (bool, string) {
	switch {
	case r == nil:
		return false, "no_feature_row"
	case strings.EqualFold(r.AlertLevel, "red"):
		return false, "quality_alert_red"
	case r.MatchupQualityPct != nil && *r.MatchupQualityPct < 50:
		return false, "matchup_quality_below_50"
	case r.RequiredDefaultCount != nil && *r.RequiredDefaultCount > 0:
		return false, "required_features_defaulted"
	case r.RequiredDefaultCount == nil && r.DefaultFeatureCount != nil && *r.DefaultFeatureCount > 0:
		return false, "features_defaulted"
	case r.Quality < MinQuality(gateMode):
		return false, fmt.Sprintf("quality_%.0f_below_%.0f", r.Quality, MinQuality(gateMode))
	}
	return true, ""
}

// NormalizeLine rounds a sportsbook line to 0.1 and moves exactly 20.0,
// which the pipeline reads as a placeholder everywhere, half a point in the
// direction the raw value leaned (20.5 when it was exactly 20).
func NormalizeLine(raw float64) float64 {
	v := math.Round(raw*10) / 10
	if v == 20 {
		if raw < 20 {
			return 19.5
		}
		return 20.5
	}
	return v
}

// Line sources of the output rows.
const (
	LineActual = "ACTUAL_PROP"
	LineNone   = "NO_PROP_LINE"
	APIOdds    = "ODDS_API"
	APIBetPros = "BETTINGPROS"
)

// bookPriority orders sportsbooks for the odds API line (§3.5).
var bookPriority = []string{"draftkings", "fanduel", "betmgm", "pointsbet", "caesars"}

// BookRank is a sportsbook's rank (lower is preferred; unknown books last).
func BookRank(book string) int {
	if i := slices.Index(bookPriority, strings.ToLower(book)); i >= 0 {
		return i
	}
	return len(bookPriority)
}

// Recommendations of the fleet (§4).
const (
	Hold   = "HOLD"
	NoLine = "NO_LINE"
)

// HoldEdge is the edge below which a line-bearing prediction is HOLD: 3
// points, 4 for quantile-loss models.
func HoldEdge(lossFunction string) float64 {
	if strings.Contains(strings.ToLower(lossFunction), "quantile") {
		return 4
	}
	return 3
}

// Confidence is the fleet's 0-100 score (§4): 75, plus a quality bonus
// (≥ 90: 10, ≥ 80: 7, ≥ 70: 5, else 2 on the V9 path) and a consistency
// bonus on points_std_last_10 (V12 path < 4: 10, < 6: 5; V9 path < 4: 10,
// < 6: 7, < 8: 5, else 2): 75 to 95.
func Confidence(quality, std float64, v9Path bool) float64 {
	c := 75.0
	switch {
	case quality >= 90:
		c += 10
	case quality >= 80:
		c += 7
	case quality >= 70:
		c += 5
	case v9Path:
		c += 2
	}
	switch {
	case std < 4:
		c += 10
	case std < 6 && v9Path:
		c += 7
	case std < 6:
		c += 5
	case v9Path && std < 8:
		c += 5
	case v9Path:
		c += 2
	}
	return c
}

// Recommend is the fleet's call (§4): NO_LINE without a line; on the V12
// path HOLD when the edge is under holdEdge; on the V9 path PASS when the
// edge is under 1 or the confidence under 60; else OVER or UNDER with the
// sign of the edge.
func Recommend(points, confidence float64, line *float64, v9Path bool, holdEdge float64) string {
	if line == nil {
		return NoLine
	}
	edge := points - *line
	switch {
	case v9Path && (math.Abs(edge) < 1 || confidence < 60):
		return "PASS"
	case !v9Path && math.Abs(edge) < holdEdge:
		return Hold
	case edge > 0:
		return "OVER"
	}
	return "UNDER"
}

// Round1 rounds to one decimal, Round2 to two.
func Round1(v float64) float64 { return math.Round(v*10) / 10 }

// Round2 rounds to two decimals.
func Round2(v float64) float64 { return math.Round(v*100) / 100 }

// predictionNamespace scopes prediction ids to this table's keys.
var predictionNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("predworker/phase5/player_prop_predictions"))

// PredictionID is the row's id, the same for the same (game, player,
// system, line) whatever batch or attempt computed it (a name-based UUID),
// so a replay or a re-run at the same line never makes a second one.
func PredictionID(gameID, player, systemID string, line *float64) string {
	l := "none"
	if line != nil {
		l = fmt.Sprintf("%.1f", *line)
	}
	return uuid.NewSHA1(predictionNamespace, []byte(gameID+"\x00"+player+"\x00"+systemID+"\x00"+l)).String()
}

// ScoringTier and its adjustment from the season average (§4 derived).
func ScoringTier(seasonAvg float64) (string, float64) {
	switch {
	case seasonAvg >= 25:
		return "star", 9
	case seasonAvg >= 15:
		return "starter", 3
	case seasonAvg >= 5:
		return "role", -1.5
	}
	return "bench", -5.5
}

// Actionability is what downstream best-bets readers filter on.
type Actionability struct {
	Predicted, Confidence float64
	Line                  *float64
	Recommendation        string
	QualityReady          *bool
	Quality               float64
	DefaultFeatureCount   int64
}

// Actionable answers is_actionable and filter_reason (§4) for the rules
// that depend on the row alone: the sanity check (0-80 points, edge ≤ 20),
// confidence 88-90, an edge under 3, a feature row not quality-ready, low
// data quality (< 70) and defaulted features. It also answers whether the
// row passes the sanity check (a row that fails it is never active).
func Actionable(a Actionability) (actionable bool, reason string, sane bool) {
	edge := math.NaN()
	if a.Line != nil {
		edge = a.Predicted - *a.Line
	}
	switch {
	case a.Predicted < 0 || a.Predicted > 80:
		return false, fmt.Sprintf("sanity_check_failed: predicted_points %.1f outside 0-80", a.Predicted), false
	case !math.IsNaN(edge) && math.Abs(edge) > 20:
		return false, fmt.Sprintf("sanity_check_failed: edge %.1f beyond 20", edge), false
	case a.Recommendation != "OVER" && a.Recommendation != "UNDER":
		return false, "", true // nothing to act on: HOLD, PASS, NO_LINE
	case a.Confidence >= 88 && a.Confidence < 90:
		return false, "confidence_tier_88_90", true
	case math.Abs(edge) < 3:
		return false, "low_edge", true
	case a.QualityReady != nil && !*a.QualityReady:
		return false, "not_quality_ready", true
	case a.Quality < 70:
		return false, "low_data_quality", true
	case a.DefaultFeatureCount > 0:
		return false, "has_default_features", true
	}
	return true, "", true
}
