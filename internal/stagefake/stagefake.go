// Package stagefake is a BigQuery double of the replaced pipeline stage's
// tables (ORIGIN.md §3, §4, §6): it answers the pipeline profile's tagged
// queries from rows a test fills in, with the semantics the SQL states
// (newest row per player, book priority, the quality gate's columns, the
// is_active statements applied to the committed rows of a bqfake.Write
// server). Tests use it; nothing else does.
package stagefake

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"math/big"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/civil"

	"github.com/predworker/predworker/internal/bqfake"
)

// Context is a row of upcoming_player_game_context.
type Context struct {
	Player, UPID, GameID, Team, Opponent, Status string
	Home, ProductionReady, HasLine               bool
	Minutes                                      float64
	DaysRest                                     int64
	CreatedAt                                    time.Time
}

// Feature is a row of ml_feature_store_v2 (Values[i] is feature_i_value;
// nil is NULL).
type Feature struct {
	Player, Version  string
	Values           [60]*float64
	Quality          float64
	AlertLevel       string
	MatchupPct       *float64
	RequiredDefaults *int64
	QualityReady     *bool
}

// Line is a row of odds_api_player_points_props or (with Active)
// bettingpros_player_points_props.
type Line struct {
	Player   string
	Value    float64
	Book     string
	Minutes  int64
	At       time.Time
	Inactive bool // bettingpros: is_active = FALSE
}

// Stage holds the tables. Fill them before the first query; Write holds
// the output table's committed rows.
type Stage struct {
	Project     string
	Date        string
	Context     []Context
	Features    []Feature
	Odds        []Line
	BettingPros []Line
	// Registry rows of model_registry, as TO_JSON_STRING would render them
	// (every row; the query's filter is applied here).
	Registry []map[string]any
	Write    *bqfake.Write

	mu     sync.Mutex
	fail   map[string]int // tag → queries to answer 503
	tables sync.RWMutex   // Handle reads the tables under it; Edit changes them
}

// Edit changes the tables while no query reads them.
func (s *Stage) Edit(fn func(s *Stage)) {
	s.tables.Lock()
	defer s.tables.Unlock()
	fn(s)
}

// FailNext answers the next n queries tagged tag with 503 backendError.
func (s *Stage) FailNext(tag string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail == nil {
		s.fail = map[string]int{}
	}
	s.fail[tag] = n
}

// Handle answers one query (bqfake.Query's handler).
func (s *Stage) Handle(req bqfake.Request) (*bqfake.Result, error) {
	tag := req.Tag()
	s.mu.Lock()
	if s.fail[tag] > 0 {
		s.fail[tag]--
		s.mu.Unlock()
		return nil, &bqfake.Error{Code: http.StatusServiceUnavailable, Reason: "backendError", Message: "injected"}
	}
	s.mu.Unlock()
	s.tables.RLock()
	defer s.tables.RUnlock()
	if d := req.Str("game_date"); d != "" && d != s.Date {
		return s.empty(tag)
	}
	switch tag {
	case "players":
		limit, _ := strconv.Atoi(req.Str("max_players"))
		return s.contextRows(nil, true, limit), nil
	case "context":
		return s.contextRows(req.List("players"), false, 0), nil
	case "gate":
		return s.gate(), nil
	case "version":
		res := &bqfake.Result{Fields: []bqfake.Field{{Name: "feature_version", Type: "STRING"}}}
		if len(s.Features) > 0 {
			res.Rows = [][]any{{s.Features[0].Version}}
		}
		return res, nil
	case "features":
		return s.features(req.Str("feature_version"), req.List("players")), nil
	case "odds":
		return s.lines(s.Odds, req.List("players"), true), nil
	case "bettingpros":
		return s.lines(s.BettingPros, req.List("players"), false), nil
	case "registry":
		return s.registry()
	case "active":
		return s.active(), nil
	case "count":
		return s.count(req.Str("batch_id"), req.List("players")), nil
	case "dedupe":
		return s.dedupe(), nil
	case "deactivate":
		return s.deactivate(), nil
	}
	return nil, fmt.Errorf("stagefake: untagged or unknown query %.120q", req.SQL)
}

func (s *Stage) empty(tag string) (*bqfake.Result, error) {
	switch tag {
	case "dedupe", "deactivate":
		return &bqfake.Result{}, nil
	}
	return &bqfake.Result{Fields: []bqfake.Field{{Name: "player_lookup", Type: "STRING"}}}, nil
}

var contextFields = []bqfake.Field{{Name: "player_lookup", Type: "STRING"}, {Name: "universal_player_id", Type: "STRING"},
	{Name: "game_id", Type: "STRING"}, {Name: "team_abbr", Type: "STRING"}, {Name: "opponent_team_abbr", Type: "STRING"},
	{Name: "home_game", Type: "BOOLEAN"}, {Name: "days_rest", Type: "INTEGER"}, {Name: "back_to_back", Type: "BOOLEAN"},
	{Name: "avg_minutes_per_game_last_7", Type: "FLOAT"}}

// newest is the newest context row of each player.
func (s *Stage) newest() map[string]Context {
	out := map[string]Context{}
	for _, c := range s.Context {
		if old, ok := out[c.Player]; !ok || c.CreatedAt.After(old.CreatedAt) {
			out[c.Player] = c
		}
	}
	return out
}

func (s *Stage) contextRows(players []string, gate bool, limit int) *bqfake.Result {
	var rows []Context
	for _, c := range s.newest() {
		if players != nil && !slices.Contains(players, c.Player) {
			continue
		}
		st := strings.ToUpper(c.Status)
		if gate && (st == "OUT" || st == "DOUBTFUL" || !c.ProductionReady && !c.HasLine) {
			continue
		}
		rows = append(rows, c)
	}
	slices.SortFunc(rows, func(a, b Context) int {
		return cmp.Or(cmp.Compare(b.Minutes, a.Minutes), cmp.Compare(a.Player, b.Player))
	})
	if limit > 0 && len(rows) > limit {
		rows = rows[:limit]
	}
	res := &bqfake.Result{Fields: contextFields}
	for _, c := range rows {
		res.Rows = append(res.Rows, []any{c.Player, c.UPID, c.GameID, c.Team, c.Opponent, c.Home, c.DaysRest, false, c.Minutes})
	}
	return res
}

func ptrVal[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

func (s *Stage) gate() *bqfake.Result {
	res := &bqfake.Result{Fields: []bqfake.Field{{Name: "player_lookup", Type: "STRING"},
		{Name: "feature_quality_score", Type: "NUMERIC"}, {Name: "quality_alert_level", Type: "STRING"},
		{Name: "matchup_quality_pct", Type: "FLOAT"}, {Name: "required_default_count", Type: "INTEGER"},
		{Name: "default_feature_count", Type: "INTEGER"}}}
	best := map[string]Feature{}
	for _, f := range s.Features {
		if old, ok := best[f.Player]; !ok || f.Quality > old.Quality {
			best[f.Player] = f
		}
	}
	for _, p := range slices.Sorted(maps.Keys(best)) {
		f := best[p]
		res.Rows = append(res.Rows, []any{f.Player, strconv.FormatFloat(f.Quality, 'f', 2, 64), f.AlertLevel,
			ptrVal(f.MatchupPct), ptrVal(f.RequiredDefaults), ptrVal(f.RequiredDefaults)})
	}
	return res
}

func jsonText(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

func (s *Stage) features(version string, players []string) *bqfake.Result {
	res := &bqfake.Result{Fields: []bqfake.Field{{Name: "player_lookup", Type: "STRING"}, {Name: "feature_version", Type: "STRING"}}}
	for i := range 60 {
		res.Fields = append(res.Fields, bqfake.Field{Name: fmt.Sprintf("feature_%d_value", i), Type: "FLOAT"})
	}
	res.Fields = append(res.Fields, bqfake.Field{Name: "feature_quality_score", Type: "NUMERIC"},
		bqfake.Field{Name: "quality_alert_level", Type: "STRING"}, bqfake.Field{Name: "is_quality_ready", Type: "BOOLEAN"},
		bqfake.Field{Name: "matchup_quality_pct", Type: "FLOAT"}, bqfake.Field{Name: "default_feature_indices", Type: "INTEGER", Mode: "REPEATED"})
	for _, f := range s.Features {
		if f.Version != version || !slices.Contains(players, f.Player) {
			continue
		}
		row := []any{f.Player, f.Version}
		for _, v := range f.Values {
			row = append(row, ptrVal(v))
		}
		row = append(row, strconv.FormatFloat(f.Quality, 'f', 2, 64), f.AlertLevel, ptrVal(f.QualityReady), ptrVal(f.MatchupPct), []int64{})
		res.Rows = append(res.Rows, row)
	}
	return res
}

var bookRank = map[string]int{"draftkings": 0, "fanduel": 1, "betmgm": 2, "pointsbet": 3, "caesars": 4}

func rank(book string) int {
	if r, ok := bookRank[strings.ToLower(book)]; ok {
		return r
	}
	return 5
}

func (s *Stage) lines(table []Line, players []string, odds bool) *bqfake.Result {
	res := &bqfake.Result{Fields: []bqfake.Field{{Name: "player_lookup", Type: "STRING"}, {Name: "points_line", Type: "FLOAT"},
		{Name: "bookmaker", Type: "STRING"}}}
	if odds {
		res.Fields = append(res.Fields, bqfake.Field{Name: "minutes_before_tipoff", Type: "INTEGER"})
	}
	best := map[string]Line{}
	for _, l := range table {
		if !slices.Contains(players, l.Player) || l.Value < 5 || l.Inactive {
			continue
		}
		old, ok := best[l.Player]
		if !ok || rank(l.Book) < rank(old.Book) || rank(l.Book) == rank(old.Book) && l.At.After(old.At) {
			best[l.Player] = l
		}
	}
	for _, p := range slices.Sorted(maps.Keys(best)) {
		l := best[p]
		row := []any{l.Player, l.Value, l.Book}
		if odds {
			row = append(row, l.Minutes)
		}
		res.Rows = append(res.Rows, row)
	}
	return res
}

func (s *Stage) registry() (*bqfake.Result, error) {
	res := &bqfake.Result{Fields: []bqfake.Field{{Name: "row", Type: "STRING"}}}
	for _, r := range s.Registry {
		st, _ := r["status"].(string)
		if r["enabled"] != true || r["is_production"] == true || (st != "active" && st != "shadow" && st != "blocked") {
			continue
		}
		b, err := jsonText(r)
		if err != nil {
			return nil, err
		}
		res.Rows = append(res.Rows, []any{b})
	}
	return res, nil
}

// OutputRow is a committed output row, decoded.
type OutputRow struct {
	PredictionID, SystemID, Player, GameID, Recommendation, BatchID, LineSource, RunMode, FilterReason string
	Points, Confidence                                                                                 float64
	Line                                                                                               *float64
	Active, Actionable                                                                                 bool
	CreatedAt                                                                                          time.Time
	Raw                                                                                                map[string]any
}

// Output decodes the committed output rows.
func (s *Stage) Output() []OutputRow {
	var out []OutputRow
	for _, r := range s.Write.Rows() {
		o := OutputRow{Raw: r}
		o.PredictionID, _ = r["prediction_id"].(string)
		o.SystemID, _ = r["system_id"].(string)
		o.Player, _ = r["player_lookup"].(string)
		o.GameID, _ = r["game_id"].(string)
		o.Recommendation, _ = r["recommendation"].(string)
		o.BatchID, _ = r["batch_id"].(string)
		o.LineSource, _ = r["line_source"].(string)
		o.RunMode, _ = r["prediction_run_mode"].(string)
		o.FilterReason, _ = r["filter_reason"].(string)
		o.Active, _ = r["is_active"].(bool)
		o.Actionable, _ = r["is_actionable"].(bool)
		if us, ok := r["created_at"].(int64); ok {
			o.CreatedAt = time.UnixMicro(us).UTC()
		}
		o.Points = numeric(r["predicted_points"])
		o.Confidence = numeric(r["confidence_score"])
		if _, ok := r["current_points_line"]; ok {
			v := numeric(r["current_points_line"])
			o.Line = &v
		}
		out = append(out, o)
	}
	return out
}

// numeric decodes a NUMERIC written as the Storage Write API's bytes.
func numeric(v any) float64 {
	b, ok := v.([]byte)
	if !ok || len(b) == 0 {
		return 0
	}
	be := make([]byte, len(b))
	for i := range b {
		be[len(b)-1-i] = b[i]
	}
	n := new(big.Int).SetBytes(be)
	if be[0]&0x80 != 0 {
		n.Sub(n, new(big.Int).Lsh(big.NewInt(1), uint(8*len(be))))
	}
	f, _ := new(big.Rat).SetFrac(n, big.NewInt(1e9)).Float64()
	return f
}

func (s *Stage) dateDays() int32 {
	d, _ := civil.ParseDate(s.Date)
	return int32(d.DaysSince(civil.Date{Year: 1970, Month: 1, Day: 1}))
}

func (s *Stage) active() *bqfake.Result {
	res := &bqfake.Result{Fields: []bqfake.Field{{Name: "player_lookup", Type: "STRING"}, {Name: "systems", Type: "STRING", Mode: "REPEATED"}}}
	by := map[string][]string{}
	for _, r := range s.Write.Rows() {
		if r["game_date"] == s.dateDays() && r["is_active"] == true {
			p, _ := r["player_lookup"].(string)
			sys, _ := r["system_id"].(string)
			if !slices.Contains(by[p], sys) {
				by[p] = append(by[p], sys)
			}
		}
	}
	for _, p := range slices.Sorted(maps.Keys(by)) {
		res.Rows = append(res.Rows, []any{p, by[p]})
	}
	return res
}

func (s *Stage) count(batch string, players []string) *bqfake.Result {
	n := 0
	for _, r := range s.Write.Rows() {
		p, _ := r["player_lookup"].(string)
		if r["batch_id"] == batch && slices.Contains(players, p) {
			n++
		}
	}
	return &bqfake.Result{Fields: []bqfake.Field{{Name: "n", Type: "INTEGER"}}, Rows: [][]any{{int64(n)}}}
}

func str(r map[string]any, k string) string { v, _ := r[k].(string); return v }

func micros(r map[string]any) int64 { v, _ := r["created_at"].(int64); return v }

// dedupe applies the sink's DELETE: the newest row of each prediction_id.
func (s *Stage) dedupe() *bqfake.Result {
	var n int64
	day := s.dateDays()
	s.Write.Update(func(rows []map[string]any) []map[string]any {
		return slices.DeleteFunc(rows, func(t map[string]any) bool {
			if t["game_date"] != day {
				return false
			}
			for _, o := range rows {
				if o["game_date"] == day && str(o, "prediction_id") == str(t, "prediction_id") &&
					(micros(o) > micros(t) || micros(o) == micros(t) && str(o, "batch_id") > str(t, "batch_id")) {
					n++
					return true
				}
			}
			return false
		})
	})
	return &bqfake.Result{Affected: n}
}

// deactivate applies the sink's UPDATE: one active row per key, the newest.
func (s *Stage) deactivate() *bqfake.Result {
	var n int64
	day := s.dateDays()
	s.Write.Update(func(rows []map[string]any) []map[string]any {
		var off []int
		for i, t := range rows {
			if t["game_date"] != day || t["is_active"] != true {
				continue
			}
			for _, o := range rows {
				if o["game_date"] == day && o["is_active"] == true && str(o, "game_id") == str(t, "game_id") &&
					str(o, "player_lookup") == str(t, "player_lookup") && str(o, "system_id") == str(t, "system_id") &&
					(micros(o) > micros(t) || micros(o) == micros(t) && str(o, "prediction_id") > str(t, "prediction_id")) {
					off = append(off, i)
					break
				}
			}
		}
		for _, i := range off {
			rows[i]["is_active"] = false
			rows[i]["updated_at"] = time.Now().UnixMicro()
			n++
		}
		return rows
	})
	return &bqfake.Result{Affected: n}
}
