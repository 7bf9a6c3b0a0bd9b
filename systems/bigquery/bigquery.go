// Package bigquery is the BigQuery feature source (FEATURE_SOURCE=bigquery).
//
// One shared client per process; one parameterized query per chunk
// (@game_date, UNNEST(@players)); the table's project, dataset and name come
// from configuration and are validated as identifiers, so no user input ever
// reaches SQL text. Every call runs under a deadline. Transient failures (5xx,
// rateLimitExceeded, backendError, timeouts) are wrapped with
// systems.ErrUnavailable so the engine retries them and never reads them as
// "no features"; failures retrying cannot fix (a missing table, an invalid
// query) are wrapped with systems.ErrPermanent.
package bigquery

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/civil"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"

	"github.com/predworker/predworker/systems"
)

// Options configures the source.
type Options struct {
	Project string // project that runs (and pays for) the queries
	// Table is where features live: project, dataset, table.
	TableProject, Dataset, Table string
	// CallTimeout bounds each query, paging included (default 30 s).
	CallTimeout time.Duration
}

var (
	projectRe = regexp.MustCompile(`^[a-z][a-z0-9-]{4,28}[a-z0-9]$|^[a-z][a-z0-9.-]*:[a-z][a-z0-9-]{4,28}[a-z0-9]$`)
	datasetRe = regexp.MustCompile(`^[A-Za-z0-9_]{1,1000}$`)
	tableRe   = regexp.MustCompile(`^[A-Za-z0-9_-]{1,1000}$`)
)

// ValidProject reports whether p is a project id (the only form of one that
// may go into SQL text).
func ValidProject(p string) bool { return projectRe.MatchString(p) }

// ValidateIdentifiers checks the table coordinates; they are the only parts of
// the SQL text that come from configuration.
func (o Options) ValidateIdentifiers() error {
	switch {
	case !projectRe.MatchString(o.TableProject):
		return fmt.Errorf("BIGQUERY_FEATURES_PROJECT %q is not a project id", o.TableProject)
	case !datasetRe.MatchString(o.Dataset):
		return fmt.Errorf("BIGQUERY_FEATURES_DATASET %q is not a dataset id (letters, digits, _)", o.Dataset)
	case !tableRe.MatchString(o.Table):
		return fmt.Errorf("BIGQUERY_FEATURES_TABLE %q is not a table id (letters, digits, _, -)", o.Table)
	}
	return nil
}

// Source implements systems.FeatureSource.
type Source struct {
	client  *bigquery.Client
	opts    Options
	slateQ  string
	featsQ  string
	timeout time.Duration
}

var _ systems.FeatureSource = (*Source)(nil)

// New returns a source on client (shared by the process).
func New(client *bigquery.Client, o Options) (*Source, error) {
	if err := o.ValidateIdentifiers(); err != nil {
		return nil, err
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = 30 * time.Second
	}
	table := fmt.Sprintf("`%s.%s.%s`", o.TableProject, o.Dataset, o.Table)
	return &Source{client: client, opts: o, timeout: o.CallTimeout,
		slateQ: "SELECT DISTINCT player_lookup FROM " + table +
			" WHERE game_date = @game_date ORDER BY player_lookup",
		featsQ: "SELECT " + columns + " FROM " + table +
			" WHERE game_date = @game_date AND player_lookup IN UNNEST(@players)",
	}, nil
}

const columns = "player_lookup, game_id, team, opponent, points_avg_last_5, points_avg_last_10, " +
	"points_avg_season, points_std_last_10, games_played, games_in_last_7_days, fatigue_score, " +
	"paint_share, mid_share, three_share, ft_share, shot_zone_mismatch, opponent_def_rating, " +
	"opponent_tier, pace, pace_adjustment, usage_rate, usage_spike, home, back_to_back, rest_days, " +
	"form, line, quality, recent_games"

// featureRow is one row of the feature table (the contract features-v1).
type featureRow struct {
	PlayerLookup     string               `bigquery:"player_lookup"`
	GameID           string               `bigquery:"game_id"`
	Team             string               `bigquery:"team"`
	Opponent         string               `bigquery:"opponent"`
	PointsAvgL5      float64              `bigquery:"points_avg_last_5"`
	PointsAvgL10     float64              `bigquery:"points_avg_last_10"`
	PointsAvgSeason  float64              `bigquery:"points_avg_season"`
	PointsStdL10     float64              `bigquery:"points_std_last_10"`
	GamesPlayed      int64                `bigquery:"games_played"`
	GamesLast7Days   int64                `bigquery:"games_in_last_7_days"`
	FatigueScore     float64              `bigquery:"fatigue_score"`
	PaintShare       float64              `bigquery:"paint_share"`
	MidShare         float64              `bigquery:"mid_share"`
	ThreeShare       float64              `bigquery:"three_share"`
	FTShare          float64              `bigquery:"ft_share"`
	ShotZoneMismatch float64              `bigquery:"shot_zone_mismatch"`
	OppDefRating     float64              `bigquery:"opponent_def_rating"`
	OppTier          int64                `bigquery:"opponent_tier"`
	Pace             float64              `bigquery:"pace"`
	PaceAdjustment   float64              `bigquery:"pace_adjustment"`
	Usage            float64              `bigquery:"usage_rate"`
	UsageSpike       float64              `bigquery:"usage_spike"`
	Home             bool                 `bigquery:"home"`
	BackToBack       bool                 `bigquery:"back_to_back"`
	RestDays         int64                `bigquery:"rest_days"`
	Form             string               `bigquery:"form"`
	Line             bigquery.NullFloat64 `bigquery:"line"`
	Quality          float64              `bigquery:"quality"`
	RecentGames      []gameRow            `bigquery:"recent_games"`
}

type gameRow struct {
	Date     civil.Date `bigquery:"date"`
	OppTier  int64      `bigquery:"opp_tier"`
	RestDays int64      `bigquery:"rest_days"`
	Home     bool       `bigquery:"home"`
	Form     string     `bigquery:"form"`
	Points   float64    `bigquery:"points"`
}

func (r *featureRow) features(date string) *systems.Features {
	f := &systems.Features{
		PlayerLookup: r.PlayerLookup, GameDate: date, GameID: r.GameID, Team: r.Team, Opponent: r.Opponent,
		PointsAvgL5: r.PointsAvgL5, PointsAvgL10: r.PointsAvgL10, PointsAvgSeason: r.PointsAvgSeason,
		PointsStdL10: r.PointsStdL10, GamesPlayed: int(r.GamesPlayed), GamesLast7Days: int(r.GamesLast7Days),
		FatigueScore: r.FatigueScore, PaintShare: r.PaintShare, MidShare: r.MidShare, ThreeShare: r.ThreeShare,
		FTShare: r.FTShare, ShotZoneMismatch: r.ShotZoneMismatch, OppDefRating: r.OppDefRating,
		OppTier: int(r.OppTier), Pace: r.Pace, PaceAdjustment: r.PaceAdjustment, Usage: r.Usage,
		UsageSpike: r.UsageSpike, Home: r.Home, BackToBack: r.BackToBack, RestDays: int(r.RestDays),
		Form: r.Form, Quality: r.Quality, Line: r.Line.Float64, HasLine: r.Line.Valid,
	}
	for _, g := range r.RecentGames {
		f.RecentGames = append(f.RecentGames, systems.GameLog{Date: g.Date.String(), OppTier: int(g.OppTier),
			RestDays: int(g.RestDays), Home: g.Home, Form: g.Form, Points: g.Points})
	}
	return f
}

func dateParam(date string) (bigquery.QueryParameter, error) {
	d, err := civil.ParseDate(date)
	if err != nil {
		return bigquery.QueryParameter{}, fmt.Errorf("date %q: %w", date, systems.ErrUnknownDate)
	}
	return bigquery.QueryParameter{Name: "game_date", Value: d}, nil
}

// classify wraps err so the engine knows whether to retry.
func classify(ctx context.Context, op string, err error) error {
	var ge *googleapi.Error
	switch {
	case errors.As(err, &ge):
		reason := ""
		if len(ge.Errors) > 0 {
			reason = ge.Errors[0].Reason
		}
		if ge.Code >= 500 || ge.Code == http.StatusTooManyRequests || reason == "rateLimitExceeded" ||
			reason == "backendError" || reason == "internalError" {
			return fmt.Errorf("%s: %w: %w", op, systems.ErrUnavailable, err)
		}
		return fmt.Errorf("%s: %w: %w", op, systems.ErrPermanent, err)
	case errors.Is(err, context.DeadlineExceeded), ctx.Err() != nil:
		return fmt.Errorf("%s: %w: %w", op, systems.ErrUnavailable, err)
	}
	// Network errors and anything unknown: transient.
	return fmt.Errorf("%s: %w: %w", op, systems.ErrUnavailable, err)
}

// runQuery runs sql with params under timeout and hands the rows to each
// (nil for statements without rows); every error leaves classified.
func runQuery(ctx context.Context, client *bigquery.Client, timeout time.Duration, op, sql string,
	params []bigquery.QueryParameter, each func(it *bigquery.RowIterator) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	q := client.Query(sql)
	q.Parameters = params
	it, err := q.Read(ctx) // returns once the query or statement finished
	if err != nil {
		return classify(ctx, op, err)
	}
	if each != nil {
		if err := each(it); err != nil {
			return classify(ctx, op, err)
		}
	}
	return nil
}

func (s *Source) read(ctx context.Context, op, sql string, params []bigquery.QueryParameter, each func(it *bigquery.RowIterator) error) error {
	return runQuery(ctx, s.client, s.timeout, op, sql, params, each)
}

// Slate implements systems.FeatureSource.
func (s *Source) Slate(ctx context.Context, date string) ([]string, error) {
	p, err := dateParam(date)
	if err != nil {
		return nil, err
	}
	var out []string
	err = s.read(ctx, "slate of "+date, s.slateQ, []bigquery.QueryParameter{p}, func(it *bigquery.RowIterator) error {
		for {
			var row struct {
				PlayerLookup string `bigquery:"player_lookup"`
			}
			err := it.Next(&row)
			if errors.Is(err, iterator.Done) {
				return nil
			}
			if err != nil {
				return err
			}
			out = append(out, row.PlayerLookup)
		}
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		// The feature table cannot tell "no games" from "not loaded yet":
		// retried a bounded number of times, never taken as "no data".
		return nil, fmt.Errorf("%s: no rows in the feature table: %w", date, systems.ErrDataIncomplete)
	}
	return out, nil
}

// Features implements systems.FeatureSource: one query for the chunk.
func (s *Source) Features(ctx context.Context, date string, players []string) (map[string]*systems.Features, error) {
	p, err := dateParam(date)
	if err != nil {
		return nil, err
	}
	if players == nil {
		players = []string{}
	}
	out := make(map[string]*systems.Features, len(players))
	err = s.read(ctx, fmt.Sprintf("features of %d players on %s", len(players), date), s.featsQ,
		[]bigquery.QueryParameter{p, {Name: "players", Value: players}}, func(it *bigquery.RowIterator) error {
			for {
				var row featureRow
				err := it.Next(&row)
				if errors.Is(err, iterator.Done) {
					return nil
				}
				if err != nil {
					return err
				}
				out[row.PlayerLookup] = row.features(date)
			}
		})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// featureColumns are the columns the feature and slate queries read.
func featureColumns() []string {
	return append(strings.Split(columns, ", "), "game_date")
}

// Check verifies that the feature table exists and has every column the
// feature query reads (for `worker doctor`).
func (s *Source) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	md, err := s.client.DatasetInProject(s.opts.TableProject, s.opts.Dataset).Table(s.opts.Table).Metadata(ctx)
	if err != nil {
		return classify(ctx, fmt.Sprintf("feature table %s.%s.%s", s.opts.TableProject, s.opts.Dataset, s.opts.Table), err)
	}
	have := map[string]bool{}
	for _, f := range md.Schema {
		have[f.Name] = true
	}
	var missing []string
	for _, c := range featureColumns() {
		if !have[c] {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("feature table %s.%s.%s lacks columns %s: %w", s.opts.TableProject, s.opts.Dataset, s.opts.Table,
			strings.Join(missing, ", "), systems.ErrPermanent)
	}
	return nil
}

// RunQuery runs a parameterized query under timeout and hands its rows to
// each (nil for a statement): errors leave classified as this package's
// are (systems.ErrUnavailable or systems.ErrPermanent). For other adapters
// on the same client (the pipeline profile's).
func RunQuery(ctx context.Context, client *bigquery.Client, timeout time.Duration, op, sql string,
	params []bigquery.QueryParameter, each func(it *bigquery.RowIterator) error) error {
	return runQuery(ctx, client, timeout, op, sql, params, each)
}

// DateParam is the @game_date parameter of date (systems.ErrUnknownDate
// when it is not a date).
func DateParam(date string) (bigquery.QueryParameter, error) { return dateParam(date) }
