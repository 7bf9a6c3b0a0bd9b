// Package phase5bq is the pipeline profile's BigQuery side (PROFILE=phase5):
// the replaced stage's inputs as a feature source (the player list of
// upcoming_player_game_context, the sportsbook lines, ml_feature_store_v2),
// its model_registry, and its output table player_prop_predictions written
// through the exactly-once Storage Write path of systems/bigquery.
//
// Every query is parameterized (@game_date, UNNEST(@players), …) and runs
// under a deadline; the only text that is not constant is the project (a
// validated identifier) and the request's dataset_prefix (validated as
// letters, digits and _). Each query's first line is a tag
// ("-- predworker:players") that names it in logs and test doubles.
package phase5bq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/big"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/bigquery"
	"google.golang.org/api/iterator"

	"github.com/predworker/predworker/profile/phase5/contract"
	"github.com/predworker/predworker/systems"
	bq "github.com/predworker/predworker/systems/bigquery"
)

// Options configures the source.
type Options struct {
	// Project holds the stage's datasets (nba_predictions, nba_analytics,
	// nba_raw): GCP_PROJECT_ID of the replaced services.
	Project string
	// CallTimeout bounds each query (default 30 s).
	CallTimeout time.Duration
	// MinQuality is the validation floor of feature_quality_score
	// (PREDICTION_MIN_QUALITY_THRESHOLD, default 50).
	MinQuality float64
	// ActiveSystems returns the ids the fleet predicts with, for the
	// "predict once" rule (nil: the rule is off).
	ActiveSystems func() []string
	// MaxPlayers caps a slate (default 500, as the stage did).
	MaxPlayers int
	// Now is the clock (nil: time.Now); "today" is in America/New_York.
	Now func() time.Time
}

// Source implements systems.FeatureSource over the stage's tables.
type Source struct {
	client *bigquery.Client
	o      Options

	mu       sync.Mutex
	versions map[string]versionEntry // prefix|date → feature_version
}

type versionEntry struct {
	version string
	at      time.Time
}

var (
	_ systems.FeatureSource    = (*Source)(nil)
	_ systems.FeatureValidator = (*Source)(nil)
)

// New returns the source on client (shared by the process).
func New(client *bigquery.Client, o Options) (*Source, error) {
	if !bq.ValidProject(o.Project) {
		return nil, fmt.Errorf("GCP_PROJECT_ID %q is not a project id", o.Project)
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = 30 * time.Second
	}
	if o.MinQuality == 0 {
		o.MinQuality = 50
	}
	if o.MaxPlayers <= 0 {
		o.MaxPlayers = 500
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Source{client: client, o: o, versions: map[string]versionEntry{}}, nil
}

// table is the SQL name of one of the stage's tables; datasets other than
// nba_raw carry the request's dataset_prefix, as the stage's did.
func (s *Source) table(ctx context.Context, dataset, table string) (string, error) {
	return tableName(s.o.Project, systems.ScopeFrom(ctx).DatasetPrefix, dataset, table)
}

func tableName(project, prefix, dataset, table string) (string, error) {
	if !contract.ValidPrefix(prefix) {
		return "", fmt.Errorf("dataset_prefix %q is not letters, digits and _: %w", prefix, systems.ErrPermanent)
	}
	if prefix != "" && dataset != "nba_raw" {
		dataset = prefix + "_" + dataset
	}
	return fmt.Sprintf("`%s.%s.%s`", project, dataset, table), nil
}

// query runs a tagged query and hands each row to fn.
func (s *Source) query(ctx context.Context, op, sql string, params []bigquery.QueryParameter, fn func(map[string]bigquery.Value) error) error {
	return bq.RunQuery(ctx, s.client, s.o.CallTimeout, op, sql, params, func(it *bigquery.RowIterator) error {
		for {
			row := map[string]bigquery.Value{}
			err := it.Next(&row)
			if errors.Is(err, iterator.Done) {
				return nil
			}
			if err != nil {
				return err
			}
			if err := fn(row); err != nil {
				return err
			}
		}
	})
}

// contextRow is a player's newest row of upcoming_player_game_context.
type contextRow struct {
	player, upid, gameID, team, opponent string
	home, backToBack                     bool
	daysRest                             *int64
	minutes                              float64
}

const contextColumns = "player_lookup, universal_player_id, game_id, team_abbr, opponent_team_abbr, home_game, " +
	"days_rest, back_to_back, avg_minutes_per_game_last_7"

// playersSQL is the stage's player list (§3.6): the newest row per player,
// not OUT or DOUBTFUL, production-ready or with a line, most minutes
// first, capped.
const playersSQL = "-- predworker:players\nSELECT " + contextColumns + " FROM %s WHERE game_date = @game_date " +
	"QUALIFY ROW_NUMBER() OVER (PARTITION BY player_lookup ORDER BY created_at DESC) = 1 " +
	"AND UPPER(IFNULL(player_status, '')) NOT IN ('OUT', 'DOUBTFUL') " +
	"AND (IFNULL(is_production_ready, FALSE) OR IFNULL(has_prop_line, FALSE)) " +
	"ORDER BY avg_minutes_per_game_last_7 DESC, player_lookup LIMIT @max_players"

// contextSQL reads the newest context row of the given players.
const contextSQL = "-- predworker:context\nSELECT " + contextColumns + " FROM %s WHERE game_date = @game_date " +
	"AND player_lookup IN UNNEST(@players) " +
	"QUALIFY ROW_NUMBER() OVER (PARTITION BY player_lookup ORDER BY created_at DESC) = 1"

func (s *Source) contextRows(ctx context.Context, date string, players []string) ([]contextRow, error) {
	t, err := s.table(ctx, "nba_analytics", "upcoming_player_game_context")
	if err != nil {
		return nil, err
	}
	p, err := bq.DateParam(date)
	if err != nil {
		return nil, err
	}
	sql, params, op := fmt.Sprintf(playersSQL, t), []bigquery.QueryParameter{p, {Name: "max_players", Value: s.o.MaxPlayers}}, "player list of "+date
	if players != nil {
		sql, params, op = fmt.Sprintf(contextSQL, t), []bigquery.QueryParameter{p, {Name: "players", Value: players}},
			fmt.Sprintf("game context of %d players on %s", len(players), date)
	}
	var out []contextRow
	err = s.query(ctx, op, sql, params, func(r map[string]bigquery.Value) error {
		c := contextRow{player: str(r["player_lookup"]), upid: str(r["universal_player_id"]), gameID: str(r["game_id"]),
			team: str(r["team_abbr"]), opponent: str(r["opponent_team_abbr"]), home: boolean(r["home_game"]),
			backToBack: boolean(r["back_to_back"])}
		c.minutes, _ = num(r["avg_minutes_per_game_last_7"])
		if v, ok := r["days_rest"].(int64); ok {
			c.daysRest = &v
		}
		out = append(out, c)
		return nil
	})
	return out, err
}

// gateSQL reads what the quality gate needs of every feature row of the
// date (no version filter, as the stage's coordinator read it).
const gateSQL = "-- predworker:gate\nSELECT player_lookup, feature_quality_score, quality_alert_level, matchup_quality_pct, " +
	"required_default_count, default_feature_count FROM %s WHERE game_date = @game_date " +
	"QUALIFY ROW_NUMBER() OVER (PARTITION BY player_lookup ORDER BY feature_quality_score DESC, feature_version DESC) = 1"

// activeSQL lists, per player, the systems that already have an active
// row for the date ("predict once").
const activeSQL = "-- predworker:active\nSELECT player_lookup, ARRAY_AGG(DISTINCT system_id) AS systems FROM %s " +
	"WHERE game_date = @game_date AND is_active = TRUE GROUP BY player_lookup"

// Slate implements systems.FeatureSource: the stage's player list, less
// the players the quality gate of the run's mode stops and those every
// active system has already predicted (except in LINE_UPDATE).
func (s *Source) Slate(ctx context.Context, date string) ([]string, error) {
	rows, err := s.contextRows(ctx, date, nil)
	if err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("%s: no player in upcoming_player_game_context: %w", date, systems.ErrNoGames)
	}
	gate, err := s.gateRows(ctx, date)
	if err != nil {
		return nil, err
	}
	if len(gate) == 0 {
		return nil, fmt.Errorf("%s: ml_feature_store_v2 has no rows yet: %w", date, systems.ErrDataIncomplete)
	}
	mode := contract.GateMode(systems.ScopeFrom(ctx).RunMode, date, contract.Today(s.o.Now()))
	done := map[string][]string{}
	var active []string
	if s.o.ActiveSystems != nil && mode != contract.ModeLineUpdate {
		active = s.o.ActiveSystems()
		if done, err = s.activeRows(ctx, date); err != nil {
			return nil, err
		}
	}
	var out []string
	skipped := map[string]int{}
	for _, r := range rows {
		if ok, reason := contract.Gate(gate[r.player], mode); !ok {
			skipped[reason]++
			continue
		}
		if len(active) > 0 && !slices.ContainsFunc(active, func(id string) bool { return !slices.Contains(done[r.player], id) }) {
			skipped["already_predicted"]++
			continue
		}
		out = append(out, r.player)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: %d players, none eligible (%s): %w", date, len(rows), reasons(skipped), systems.ErrNoPlayers)
	}
	sort.Strings(out)
	return out, nil
}

func reasons(m map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func (s *Source) gateRows(ctx context.Context, date string) (map[string]*contract.GateRow, error) {
	t, err := s.table(ctx, "nba_predictions", "ml_feature_store_v2")
	if err != nil {
		return nil, err
	}
	p, err := bq.DateParam(date)
	if err != nil {
		return nil, err
	}
	out := map[string]*contract.GateRow{}
	err = s.query(ctx, "quality gate of "+date, fmt.Sprintf(gateSQL, t), []bigquery.QueryParameter{p}, func(r map[string]bigquery.Value) error {
		g := &contract.GateRow{AlertLevel: str(r["quality_alert_level"]), RequiredDefaultCount: intPtr(r["required_default_count"]),
			DefaultFeatureCount: intPtr(r["default_feature_count"])}
		g.Quality, _ = num(r["feature_quality_score"])
		if v, ok := num(r["matchup_quality_pct"]); ok {
			g.MatchupQualityPct = &v
		}
		out[str(r["player_lookup"])] = g
		return nil
	})
	return out, err
}

func (s *Source) activeRows(ctx context.Context, date string) (map[string][]string, error) {
	t, err := s.table(ctx, "nba_predictions", "player_prop_predictions")
	if err != nil {
		return nil, err
	}
	p, err := bq.DateParam(date)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	err = s.query(ctx, "active predictions of "+date, fmt.Sprintf(activeSQL, t), []bigquery.QueryParameter{p}, func(r map[string]bigquery.Value) error {
		if l, ok := r["systems"].([]bigquery.Value); ok {
			for _, v := range l {
				out[str(r["player_lookup"])] = append(out[str(r["player_lookup"])], str(v))
			}
		}
		return nil
	})
	return out, err
}

// versionSQL detects the date's feature_version (any one, as the stage did).
const versionSQL = "-- predworker:version\nSELECT feature_version FROM %s WHERE game_date = @game_date LIMIT 1"

// versionTTL is how long a date's detected version is kept: 5 minutes, as
// the stage cached a same-day read.
const versionTTL = 5 * time.Minute

func (s *Source) version(ctx context.Context, t, date string, p bigquery.QueryParameter) (string, error) {
	key := t + "|" + date
	s.mu.Lock()
	e, ok := s.versions[key]
	s.mu.Unlock()
	if ok && s.o.Now().Sub(e.at) < versionTTL {
		return e.version, nil
	}
	v := ""
	err := s.query(ctx, "feature version of "+date, fmt.Sprintf(versionSQL, t), []bigquery.QueryParameter{p}, func(r map[string]bigquery.Value) error {
		v = str(r["feature_version"])
		return nil
	})
	if err != nil {
		return "", err
	}
	if v == "" {
		v = contract.DefaultFeatureVersion
	}
	s.mu.Lock()
	s.versions[key] = versionEntry{version: v, at: s.o.Now()}
	s.mu.Unlock()
	return v, nil
}

// featureColumns are the feature store's columns the source reads.
var featureColumns = func() string {
	cols := []string{"player_lookup", "feature_version"}
	for i := range contract.StoreNames {
		cols = append(cols, fmt.Sprintf("feature_%d_value", i))
	}
	return strings.Join(append(cols, "feature_quality_score", "days_rest", "is_home", "data_source",
		"expected_games_count", "actual_games_count", "completeness_percentage", "missing_games_count",
		"is_production_ready", "backfill_bootstrap_mode", "processing_decision_reason", "matchup_data_status",
		"is_quality_ready", "quality_tier", "quality_alert_level", "matchup_quality_pct", "default_feature_count",
		"required_default_count", "default_feature_indices"), ", ")
}()

const featuresSQL = "-- predworker:features\nSELECT %s FROM %s WHERE game_date = @game_date " +
	"AND feature_version = @feature_version AND player_lookup IN UNNEST(@players)"

// Line queries (§3.5): the best line of each player, books in priority
// order, then the newest; lines under 5 are not lines.
const bookOrder = "CASE LOWER(bookmaker) WHEN 'draftkings' THEN 0 WHEN 'fanduel' THEN 1 WHEN 'betmgm' THEN 2 " +
	"WHEN 'pointsbet' THEN 3 WHEN 'caesars' THEN 4 ELSE 5 END"

const oddsSQL = "-- predworker:odds\nSELECT player_lookup, points_line, bookmaker, minutes_before_tipoff FROM %s " +
	"WHERE game_date = @game_date AND player_lookup IN UNNEST(@players) AND points_line >= 5.0 " +
	"QUALIFY ROW_NUMBER() OVER (PARTITION BY player_lookup ORDER BY " + bookOrder + ", snapshot_timestamp DESC) = 1"

const bettingProsSQL = "-- predworker:bettingpros\nSELECT player_lookup, points_line, bookmaker FROM %s " +
	"WHERE game_date = @game_date AND player_lookup IN UNNEST(@players) AND points_line >= 5.0 " +
	"AND market_type = 'points' AND bet_side = 'over' AND is_active = TRUE " +
	"QUALIFY ROW_NUMBER() OVER (PARTITION BY player_lookup ORDER BY " + bookOrder + ", created_at DESC) = 1"

// line is a player's sportsbook line.
type line struct {
	value   float64
	api     string
	book    string
	minutes *int64
}

func (s *Source) lines(ctx context.Context, date string, p bigquery.QueryParameter, players []string) (map[string]line, error) {
	out := map[string]line{}
	for _, src := range []struct{ table, sql, api string }{
		{"odds_api_player_points_props", oddsSQL, contract.APIOdds},
		{"bettingpros_player_points_props", bettingProsSQL, contract.APIBetPros},
	} {
		var rest []string
		for _, pl := range players {
			if _, ok := out[pl]; !ok {
				rest = append(rest, pl)
			}
		}
		if len(rest) == 0 {
			break
		}
		t, err := s.table(ctx, "nba_raw", src.table)
		if err != nil {
			return nil, err
		}
		err = s.query(ctx, fmt.Sprintf("%s lines of %d players on %s", src.api, len(rest), date), fmt.Sprintf(src.sql, t),
			[]bigquery.QueryParameter{p, {Name: "players", Value: rest}}, func(r map[string]bigquery.Value) error {
				v, ok := num(r["points_line"])
				if !ok {
					return nil
				}
				out[str(r["player_lookup"])] = line{value: contract.NormalizeLine(v), api: src.api,
					book: strings.ToUpper(str(r["bookmaker"])), minutes: intPtr(r["minutes_before_tipoff"])}
				return nil
			})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Features implements systems.FeatureSource: the feature rows of the
// date's version, the game context and the lines of the chunk's players.
// A player without a context row has no game (absent); without a feature
// row, no features (absent: a failure record).
func (s *Source) Features(ctx context.Context, date string, players []string) (map[string]*systems.Features, error) {
	p, err := bq.DateParam(date)
	if err != nil {
		return nil, err
	}
	if players == nil {
		players = []string{}
	}
	t, err := s.table(ctx, "nba_predictions", "ml_feature_store_v2")
	if err != nil {
		return nil, err
	}
	version, err := s.version(ctx, t, date, p)
	if err != nil {
		return nil, err
	}
	stored := map[string]map[string]bigquery.Value{}
	err = s.query(ctx, fmt.Sprintf("features of %d players on %s", len(players), date), fmt.Sprintf(featuresSQL, featureColumns, t),
		[]bigquery.QueryParameter{p, {Name: "feature_version", Value: version}, {Name: "players", Value: players}},
		func(r map[string]bigquery.Value) error {
			stored[str(r["player_lookup"])] = r
			return nil
		})
	if err != nil {
		return nil, err
	}
	ctxRows, err := s.contextRows(ctx, date, players)
	if err != nil {
		return nil, err
	}
	lines, err := s.lines(ctx, date, p, players)
	if err != nil {
		return nil, err
	}
	mode := systems.ScopeFrom(ctx).RunMode
	out := make(map[string]*systems.Features, len(ctxRows))
	for _, c := range ctxRows {
		r, ok := stored[c.player]
		if !ok {
			continue
		}
		var l *line
		if v, ok := lines[c.player]; ok {
			l = &v
		}
		out[c.player] = build(date, mode, version, c, r, l)
	}
	return out, nil
}

// build makes a player's Features from the store row, the context and the
// line, with the stage's overrides (§3.4).
func build(date, runMode, version string, c contextRow, r map[string]bigquery.Value, l *line) *systems.Features {
	named := make(map[string]float64, len(contract.StoreNames))
	for i, n := range contract.StoreNames {
		if v, ok := num(r[fmt.Sprintf("feature_%d_value", i)]); ok {
			named[n] = v
		}
	}
	if v, ok := r["days_rest"].(int64); ok { // the column overrides feature #39
		named["days_rest"] = float64(v)
	}
	fsLine, fsHasLine := named["vegas_points_line"]
	vegasSource := "none"
	switch {
	case l != nil:
		named["vegas_points_line"], named["vegas_opening_line"], named["vegas_line_move"], named["has_vegas_line"] = l.value, l.value, 0, 1
		vegasSource = "coordinator_actual"
	case fsHasLine && !math.IsNaN(fsLine):
		named["has_vegas_line"] = 1
		vegasSource = "feature_store"
	default:
		delete(named, "vegas_points_line")
		delete(named, "vegas_opening_line")
		delete(named, "vegas_line_move")
		named["has_vegas_line"] = 0
	}
	if _, ok := named["avg_points_vs_opponent"]; !ok {
		if v, has := named["points_avg_season"]; has {
			named["avg_points_vs_opponent"] = v
		}
	}
	if _, ok := named["games_vs_opponent"]; !ok {
		named["games_vs_opponent"] = 0
	}
	if _, ok := named["minutes_avg_last_10"]; !ok {
		named["minutes_avg_last_10"] = 30
	}
	if _, ok := named["ppm_avg_last_10"]; !ok && named["minutes_avg_last_10"] > 0 {
		if l10, has := named["points_avg_last_10"]; has {
			named["ppm_avg_last_10"] = l10 / named["minutes_avg_last_10"]
		}
	}
	quality, _ := num(r["feature_quality_score"])
	f := &systems.Features{PlayerLookup: c.player, GameDate: date, GameID: c.gameID, Team: c.team, Opponent: c.opponent,
		PointsAvgL5: named["points_avg_last_5"], PointsAvgL10: named["points_avg_last_10"],
		PointsAvgSeason: named["points_avg_season"], PointsStdL10: named["points_std_last_10"],
		GamesLast7Days: int(named["games_in_last_7_days"]), FatigueScore: named["fatigue_score"],
		OppDefRating: named["opponent_def_rating"], Home: c.home, BackToBack: c.backToBack,
		RestDays: int(named["days_rest"]), Quality: quality, Named: named}
	if l != nil {
		f.Line, f.HasLine = l.value, true
	}
	tier, adj := contract.ScoringTier(named["points_avg_season"])
	snapshot, _ := json.Marshal(map[string]any{"feature_version": version, "feature_quality_score": quality,
		"fs_vegas_points_line": nullable(fsLine, fsHasLine), "fs_has_vegas_line": fsHasLine, "vegas_source": vegasSource})
	a := map[string]any{
		"universal_player_id": nonEmpty(c.upid), "prediction_run_mode": runMode, "feature_quality_score": quality,
		"low_quality_flag": quality < 70, "scoring_tier": tier, "tier_adjustment": adj,
		"features_snapshot": string(snapshot), "has_prop_line": l != nil, "line_source": contract.LineNone,
	}
	if l != nil {
		a["line_source"], a["line_source_api"], a["sportsbook"] = contract.LineActual, l.api, nonEmpty(l.book)
		a["was_line_fallback"] = !strings.EqualFold(l.book, "draftkings")
		if l.minutes != nil {
			a["line_minutes_before_game"] = *l.minutes
		}
	}
	for _, col := range []string{"matchup_data_status", "quality_alert_level", "processing_decision_reason"} {
		if v := str(r[col]); v != "" {
			a[col] = v
		}
	}
	for _, col := range []string{"matchup_quality_pct", "completeness_percentage"} {
		if v, ok := num(r[col]); ok {
			a[col] = v
		}
	}
	for _, col := range []string{"default_feature_count", "expected_games_count", "actual_games_count", "missing_games_count"} {
		if v := intPtr(r[col]); v != nil {
			a[col] = *v
		}
	}
	for _, col := range []string{"is_quality_ready", "is_production_ready", "backfill_bootstrap_mode"} {
		if v, ok := r[col].(bool); ok {
			a[col] = v
		}
	}
	if l, ok := r["default_feature_indices"].([]bigquery.Value); ok {
		idx := []int64{}
		for _, v := range l {
			if n, ok := v.(int64); ok {
				idx = append(idx, n)
			}
		}
		a["default_feature_indices"] = idx
	}
	f.Attrs = a
	return f
}

// ValidateFeatures implements systems.FeatureValidator with the stage's
// checks (§3.3) in place of the generic contract's.
func (s *Source) ValidateFeatures(f *systems.Features, minQuality float64) error {
	return contract.ValidateNamed(f.Named, f.Quality, max(minQuality, s.o.MinQuality))
}

func str(v bigquery.Value) string {
	s, _ := v.(string)
	return s
}

func nonEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func nullable(v float64, ok bool) any {
	if !ok || math.IsNaN(v) {
		return nil
	}
	return v
}

func boolean(v bigquery.Value) bool {
	b, _ := v.(bool)
	return b
}

// num reads a FLOAT64, INT64 or NUMERIC value (NULL: false).
func num(v bigquery.Value) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, !math.IsNaN(x)
	case int64:
		return float64(x), true
	case *big.Rat:
		f, _ := x.Float64()
		return f, true
	}
	return 0, false
}

func intPtr(v bigquery.Value) *int64 {
	switch x := v.(type) {
	case int64:
		return &x
	case float64:
		n := int64(x)
		return &n
	}
	return nil
}

// checkTables are the input tables and the columns every query of the
// source needs of each (for `worker doctor`).
var checkTables = []struct {
	dataset, table string
	columns        []string
}{
	{"nba_analytics", "upcoming_player_game_context", append(strings.Split(contextColumns, ", "), "game_date", "created_at",
		"player_status", "is_production_ready", "has_prop_line")},
	{"nba_predictions", "ml_feature_store_v2", []string{"player_lookup", "game_date", "feature_version", "feature_0_value",
		"feature_quality_score", "quality_alert_level", "matchup_quality_pct", "required_default_count", "default_feature_count"}},
	{"nba_raw", "odds_api_player_points_props", []string{"player_lookup", "game_date", "points_line", "bookmaker",
		"minutes_before_tipoff", "snapshot_timestamp"}},
	{"nba_raw", "bettingpros_player_points_props", []string{"player_lookup", "game_date", "points_line", "bookmaker",
		"market_type", "bet_side", "is_active", "created_at"}},
}

// Check verifies that the stage's input tables exist with the columns the
// source reads (for `worker doctor`), naming what is missing.
func (s *Source) Check(ctx context.Context) error {
	var errs []error
	for _, c := range checkTables {
		dataset := c.dataset
		name := s.o.Project + "." + dataset + "." + c.table
		cctx, cancel := context.WithTimeout(ctx, s.o.CallTimeout)
		md, err := s.client.DatasetInProject(s.o.Project, dataset).Table(c.table).Metadata(cctx)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		have := map[string]bool{}
		for _, f := range md.Schema {
			have[f.Name] = true
		}
		var missing []string
		for _, col := range c.columns {
			if !have[col] {
				missing = append(missing, col)
			}
		}
		if len(missing) > 0 {
			errs = append(errs, fmt.Errorf("%s lacks %s", name, strings.Join(missing, ", ")))
		}
	}
	return errors.Join(errs...)
}
