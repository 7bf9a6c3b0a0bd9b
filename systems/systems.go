// Package systems owns what a prediction is made of and where it goes: the
// per-player Features a FeatureSource loads, the System interface every
// prediction system implements, the Registry with its fallback chains, the
// Prediction row and the Sink that stores rows idempotently.
//
// Systems live in subpackages (movingavg, zonematchup, …); feature sources and
// sinks too (league: the bundled synthetic league; sqlite: the embedded sink).
package systems

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"sync"
	"time"
)

// Errors a FeatureSource returns for requests that can never succeed. Any
// other error from a FeatureSource or Sink is treated as transient: it is
// retried, never taken to mean "no data".
var (
	// ErrNoGames: no game is scheduled on the requested date.
	ErrNoGames = errors.New("no games on that date")
	// ErrNoPlayers: games are scheduled, but no player is eligible (every
	// one gated out: injured, no features, below the quality floor).
	ErrNoPlayers = errors.New("no eligible players on that date")
	// ErrUnknownDate: the date is outside what the source covers.
	ErrUnknownDate = errors.New("date outside the feature store's season")
	// ErrDataIncomplete: the source has no features for the date yet (the
	// upstream pipeline is late, or there are no games: a feature table
	// alone cannot tell). Retried later, a bounded number of times.
	ErrDataIncomplete = errors.New("no features for that date yet")
	// ErrUnavailable: the feature source or sink could not be reached; retry.
	// Adapters wrap their transient failures (5xx, rate limits, timeouts)
	// with it so they are never mistaken for "no data".
	ErrUnavailable = errors.New("feature source or sink unavailable")
	// ErrPermanent: the feature source or sink failed in a way retrying
	// cannot fix (a missing table, an invalid query): the batch fails.
	ErrPermanent = errors.New("feature source or sink failed permanently")
)

// GameLog is one past game of a player, as the similarity systems see it.
type GameLog struct {
	Date     string  `json:"date"`
	OppTier  int     `json:"opp_tier"`  // 1 strongest defence … 3 weakest
	RestDays int     `json:"rest_days"` // days since the previous game, capped at 3
	Home     bool    `json:"home"`
	Form     string  `json:"form"` // hot, neutral or cold coming into the game
	Points   float64 `json:"points"`
}

// Features is everything the systems know about one player on one date.
type Features struct {
	PlayerLookup string `json:"player_lookup"`
	GameDate     string `json:"game_date"`
	GameID       string `json:"game_id"`
	Team         string `json:"team"`
	Opponent     string `json:"opponent"`

	PointsAvgL5     float64 `json:"points_avg_last_5"`
	PointsAvgL10    float64 `json:"points_avg_last_10"`
	PointsAvgSeason float64 `json:"points_avg_season"`
	PointsStdL10    float64 `json:"points_std_last_10"`
	// Minutes per game, last five and season; 0 where the source has no
	// minutes (the synthetic league, the BigQuery feature table).
	MinutesAvgL5     float64 `json:"minutes_avg_last_5,omitempty"`
	MinutesAvgSeason float64 `json:"minutes_avg_season,omitempty"`
	// Points per minute on the floor, last five and season (0 without
	// minutes).
	PointsPerMinL5     float64 `json:"points_per_minute_last_5,omitempty"`
	PointsPerMinSeason float64 `json:"points_per_minute_season,omitempty"`
	// TeammatesOut is the scoring missing from the team tonight: the
	// season points per game of teammates who played its previous game
	// and are not on tonight's slate (injured, rested, traded).
	TeammatesOut   float64 `json:"teammates_out_points,omitempty"`
	GamesPlayed    int     `json:"games_played"`
	GamesLast7Days int     `json:"games_in_last_7_days"`
	FatigueScore   float64 `json:"fatigue_score"` // 0-100, higher is more tired

	// Shot-zone mix: shares of the player's points from paint, mid-range,
	// three and free throws (they sum to 1).
	PaintShare float64 `json:"paint_share"`
	MidShare   float64 `json:"mid_share"`
	ThreeShare float64 `json:"three_share"`
	FTShare    float64 `json:"ft_share"`
	// ShotZoneMismatch: how well the player's zones attack the opponent's
	// weak zones, roughly -5 (bad matchup) … +5 (good).
	ShotZoneMismatch float64 `json:"shot_zone_mismatch"`

	OppDefRating   float64 `json:"opponent_def_rating"` // points allowed per 100 possessions
	OppTier        int     `json:"opponent_tier"`       // 1 strongest defence … 3 weakest
	Pace           float64 `json:"pace"`                // expected possessions
	PaceAdjustment float64 `json:"pace_adjustment"`     // Pace − league average
	Usage          float64 `json:"usage_rate"`          // season usage, percent
	UsageSpike     float64 `json:"usage_spike"`         // last-5 usage − season usage
	Home           bool    `json:"home"`
	BackToBack     bool    `json:"back_to_back"`
	RestDays       int     `json:"rest_days"`
	Form           string  `json:"form"`

	RecentGames []GameLog `json:"recent_games"` // newest first, at most 30

	Line    float64 `json:"line"` // prop line; valid only when HasLine
	HasLine bool    `json:"has_line"`
	Quality float64 `json:"quality"` // 0-100 data quality score

	// Named holds a feature store's inputs by name, for sources whose
	// models read more than the typed fields above (the pipeline
	// profile's 60 store features; NaN or absent = no value). Models
	// loaded from a registry build their vectors from it.
	Named map[string]float64 `json:"named,omitempty"`
	// Attrs are per-player columns a feature source hands through to its
	// sink unchanged (the pipeline profile's line, quality and identity
	// columns). The engine copies them to each of the player's rows.
	Attrs map[string]any `json:"attrs,omitempty"`
}

// Scope is what a batch's request says about where its data lives and how
// it runs, for sources and sinks that need it (the pipeline profile's
// prediction_run_mode and dataset_prefix). The engine puts it in the
// context of every feature source and sink call.
type Scope struct {
	RunMode       string
	DatasetPrefix string
}

type scopeKey struct{}

// WithScope returns ctx carrying s.
func WithScope(ctx context.Context, s Scope) context.Context {
	return context.WithValue(ctx, scopeKey{}, s)
}

// ScopeFrom returns the scope in ctx (zero when none).
func ScopeFrom(ctx context.Context) Scope {
	s, _ := ctx.Value(scopeKey{}).(Scope)
	return s
}

// FeatureValidator is a FeatureSource with its own validation of a
// player's features (its contract differs from Validate's); the engine
// uses it instead of Validate.
type FeatureValidator interface {
	ValidateFeatures(f *Features, minQuality float64) error
}

// Finisher is a Sink with work to do once a batch's last chunk is
// committed and before the batch is marked completed (the pipeline
// profile's is_active rule). Finish must be idempotent: a crash before the
// batch is marked completed runs it again.
type Finisher interface {
	Finish(ctx context.Context, batchID, gameDate string) error
}

// Combiner is a system computed from other systems' estimates for the same
// player (ensemble_v1). The engine runs its Inputs first (without writing
// rows for those not requested) and passes the estimates that succeeded.
type Combiner interface {
	System
	Inputs() []string
	Combine(ctx context.Context, f *Features, inputs map[string]Estimate) (Estimate, error)
}

// ErrInsufficientData: a system cannot predict from what it was given (too
// few similar games, too few inputs). The engine falls back.
var ErrInsufficientData = errors.New("insufficient data for this system")

// Recommendation against the prop line.
type Recommendation string

// Recommendations.
const (
	Over   Recommendation = "OVER"
	Under  Recommendation = "UNDER"
	Pass   Recommendation = "PASS"
	NoLine Recommendation = "NO_LINE"
)

// Estimate is what a system computes for one player.
type Estimate struct {
	Points         float64        // 0-60
	Confidence     float64        // 0-100
	Recommendation Recommendation // computed with the system's own thresholds
}

// System is one prediction system. Predict must honour ctx (return promptly
// once it is done) and must not keep f after returning.
type System interface {
	ID() string
	Version() string
	Predict(ctx context.Context, f *Features) (Estimate, error)
}

// Recommend applies the common rule: NO_LINE without a line; OVER or UNDER
// when the edge clears minEdge (strictly) and the confidence clears
// minConfidence (strictly); PASS otherwise.
func Recommend(points, confidence float64, f *Features, minEdge, minConfidence float64) Recommendation {
	if !f.HasLine {
		return NoLine
	}
	edge := points - f.Line
	if math.Abs(edge) <= minEdge || confidence <= minConfidence {
		return Pass
	}
	if edge > 0 {
		return Over
	}
	return Under
}

// Clamp limits v to [lo, hi]; NaN becomes lo.
func Clamp(v, lo, hi float64) float64 {
	if math.IsNaN(v) || v < lo {
		return lo
	}
	return min(v, hi)
}

// Registry holds the systems a worker may run and their fallbacks.
// It is safe for concurrent use: a model fleet registers the systems it
// loads while batches run.
type Registry struct {
	mu        sync.RWMutex
	systems   map[string]System
	fallbacks map[string]string
	loading   bool
}

// SetLoading marks the registry as still being filled (a model fleet that
// has not loaded yet): a system it lacks meanwhile may yet come, so the
// engine retries a batch naming one later instead of failing it.
func (r *Registry) SetLoading(loading bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.loading = loading
}

// Loading reports whether the registry is still being filled.
func (r *Registry) Loading() bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.loading
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{systems: map[string]System{}, fallbacks: map[string]string{}}
}

// Register adds s with an optional fallback system id ("" for none).
func (r *Registry) Register(s System, fallback string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.systems[s.ID()] = s
	if fallback != "" {
		r.fallbacks[s.ID()] = fallback
	}
}

// Validate checks that every fallback names a registered system and that no
// chain loops.
func (r *Registry) Validate() error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for id := range r.fallbacks {
		seen := map[string]bool{id: true}
		for cur := id; r.fallbacks[cur] != ""; {
			cur = r.fallbacks[cur]
			if _, ok := r.systems[cur]; !ok {
				return fmt.Errorf("system %s: fallback %q is not a registered system", id, cur)
			}
			if seen[cur] {
				return fmt.Errorf("system %s: fallback chain loops at %s", id, cur)
			}
			seen[cur] = true
		}
	}
	return nil
}

// Get returns a registered system.
func (r *Registry) Get(id string) (System, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	s, ok := r.systems[id]
	return s, ok
}

// Fallback returns the fallback of id, or "".
func (r *Registry) Fallback(id string) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.fallbacks[id]
}

// IDs returns the registered system ids, sorted.
func (r *Registry) IDs() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	ids := make([]string, 0, len(r.systems))
	for id := range r.systems {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Has reports whether id is registered.
func (r *Registry) Has(id string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.systems[id]
	return ok
}

// FeatureSource loads features.
type FeatureSource interface {
	// Slate returns the sorted player lookups with a game on date, or
	// ErrNoGames / ErrUnknownDate.
	Slate(ctx context.Context, date string) ([]string, error)
	// Features returns the features of the given players on date. Players
	// without a game that date are absent from the map.
	Features(ctx context.Context, date string, players []string) (map[string]*Features, error)
}

// Prediction is one output row, keyed on (BatchID, PlayerLookup, SystemID).
type Prediction struct {
	BatchID         string         `json:"batch_id"`
	GameDate        string         `json:"game_date"`
	GameID          string         `json:"game_id"`
	PlayerLookup    string         `json:"player_lookup"`
	SystemID        string         `json:"system_id"`
	PredictedPoints float64        `json:"predicted_points"`
	Confidence      float64        `json:"confidence"`
	Recommendation  Recommendation `json:"recommendation"`
	Line            *float64       `json:"line"`
	// Fallback is true when SystemID could not answer and ProducedBy did.
	Fallback       bool   `json:"fallback"`
	FallbackFrom   string `json:"fallback_from"`   // the system that failed (SystemID)
	FallbackReason string `json:"fallback_reason"` // timeout, error, panic, circuit_open, …
	ProducedBy     string `json:"produced_by"`     // the system whose estimate this is
	// Failed marks an explicit per-item failure: no system in the chain
	// produced an estimate (or the player had no features).
	Failed        bool      `json:"failed"`
	FailureReason string    `json:"failure_reason,omitempty"`
	ModelVersion  string    `json:"model_version"`
	CreatedAt     time.Time `json:"created_at"`
	// Attrs are the player's Features.Attrs, for sinks that store them.
	Attrs map[string]any `json:"attrs,omitempty"`
}

// Sink stores prediction rows. Write must be idempotent by key: writing a row
// whose key exists leaves the stored row as it is. Sinks that can, fence
// writes by epoch: once rows were written with epoch E for a batch, a write
// with an epoch below E fails with state.ErrLeaseLost.
type Sink interface {
	Write(ctx context.Context, batchID string, epoch int64, rows []Prediction) error
}

// Stager is a Sink whose writes are durable but invisible until committed
// (the BigQuery sink: one pending write stream per chunk). The engine stages a
// chunk's rows, records the token in the chunk's checkpoint, then commits it;
// a resumed run commits the last checkpointed token again before going on.
// So only the rows of checkpointed chunks ever become visible: a chunk that
// was staged but not checkpointed (a crash, a stale owner) is never
// committed, and its replay stages new rows. The rows that become visible
// are exactly those the checkpoints counted.
type Stager interface {
	// Stage writes rows durably but invisibly and returns the token that
	// commits them.
	Stage(ctx context.Context, batchID string, epoch int64, rows []Prediction) (token string, err error)
	// Commit makes the staged rows of token visible. It is idempotent:
	// rows already committed are success. rows tells a sink that must
	// verify what it holds (the chunk's row count) and players are the
	// chunk's players. ErrStagedRowsLost when the rows were neither
	// committed nor can be any more.
	Commit(ctx context.Context, batchID, token string, players []string, rows int) error
}

// ErrStagedRowsLost: a checkpointed chunk's staged rows were never committed
// and the sink no longer has them (the pending stream expired while the
// batch sat unclaimed). The batch fails, naming the chunk; nothing is
// duplicated.
var ErrStagedRowsLost = errors.New("staged rows of a checkpointed chunk were lost before they were committed")

// PredictionReader streams the stored rows of a batch in key order.
type PredictionReader interface {
	ReadPredictions(ctx context.Context, batchID string, fn func(*Prediction) error) error
}

// SortedUnique returns the sorted distinct values of in.
func SortedUnique(in []string) []string {
	out := slices.Clone(in)
	slices.Sort(out)
	return slices.Compact(out)
}

// WithThresholds returns s recomputing its recommendation with the given
// edge and confidence thresholds (per-system policy from configuration).
func WithThresholds(s System, minEdge, minConfidence float64) System {
	t := thresholded{System: s, edge: minEdge, conf: minConfidence}
	if c, ok := s.(Combiner); ok {
		return thresholdedCombiner{thresholded: t, c: c}
	}
	return t
}

type thresholded struct {
	System
	edge, conf float64
}

func (t thresholded) apply(f *Features, e Estimate, err error) (Estimate, error) {
	if err == nil {
		e.Recommendation = Recommend(e.Points, e.Confidence, f, t.edge, t.conf)
	}
	return e, err
}

func (t thresholded) Predict(ctx context.Context, f *Features) (Estimate, error) {
	e, err := t.System.Predict(ctx, f)
	return t.apply(f, e, err)
}

type thresholdedCombiner struct {
	thresholded
	c Combiner
}

func (t thresholdedCombiner) Inputs() []string { return t.c.Inputs() }

func (t thresholdedCombiner) Combine(ctx context.Context, f *Features, in map[string]Estimate) (Estimate, error) {
	e, err := t.c.Combine(ctx, f, in)
	return t.apply(f, e, err)
}
