package treemodel_test

import (
	"bytes"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/gbdt"
	"github.com/predworker/predworker/systems/league"
	"github.com/predworker/predworker/systems/systemstest"
	"github.com/predworker/predworker/systems/treemodel"
)

// The bundled model is exactly what `go run ./cmd/trainmodel` produces, and
// the file, evaluated by leaves, gives the fitted model's own outputs.
func TestBundledModelIsReproducibleAndFaithful(t *testing.T) {
	t.Parallel()
	ds, err := treemodel.Dataset(t.Context(), league.Default())
	if err != nil {
		t.Fatal(err)
	}
	m, err := gbdt.Train(ds.TrainX, ds.TrainY, gbdt.DefaultTrainConfig)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := m.WriteLightGBM(&buf, treemodel.FeatureNames); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), treemodel.Bundled()) {
		t.Fatal("the bundled model differs from a fresh fit: run go run ./cmd/trainmodel")
	}
	s, err := treemodel.LoadBundled()
	if err != nil {
		t.Fatal(err)
	}
	worst := 0.0
	for i := 0; i < len(ds.HoldoutX); i += 7 {
		worst = math.Max(worst, math.Abs(s.Raw(ds.HoldoutX[i])-m.Predict(ds.HoldoutX[i])))
	}
	if worst > 1e-9 {
		t.Fatalf("leaves and the fitted model disagree by up to %g", worst)
	}
	if mae, base := m.MAE(ds.HoldoutX, ds.HoldoutY), ds.BaselineHoldoutMAE(); mae >= base {
		t.Errorf("holdout MAE %.3f does not beat the season-average baseline %.3f", mae, base)
	}
}

// A hand-made model: one split, points_avg_last_5 <= 10 → 8, else 20.
var tiny = `tree
version=v3
num_class=1
num_tree_per_iteration=1
label_index=0
max_feature_idx=19
objective=regression
feature_names=` + strings.Join(treemodel.FeatureNames, " ") + `
feature_infos=none none none none none none none none none none none none none none none none none none none none
tree_sizes=1

Tree=0
num_leaves=2
num_cat=0
split_feature=0
threshold=10
decision_type=0
left_child=-1
right_child=-2
leaf_value=8 20
shrinkage=1


end of trees
`

func TestWorkedExamples(t *testing.T) {
	t.Parallel()
	s, err := treemodel.Load(strings.NewReader(tiny), "tiny")
	if err != nil {
		t.Fatal(err)
	}
	systemstest.RunExamples(t, s, []systemstest.Example{
		{
			// L5 15 > 10 → 20. Confidence 60 − 1.5·(7 − 5) = 57. Edge 20 − 17.5 = 2.5 > 1.5 and 57 > 55: OVER.
			Name:     "right leaf, over",
			Features: systems.Features{PointsAvgL5: 15, PointsStdL10: 7, GamesPlayed: 20, HasLine: true, Line: 17.5},
			Points:   20, Confidence: 57, Rec: systems.Over,
		},
		{
			// L5 9 → 8. Confidence 60 − 15 (3 games) = 45: under the floor, PASS.
			Name:     "left leaf, few games",
			Features: systems.Features{PointsAvgL5: 9, PointsStdL10: 4, GamesPlayed: 3, HasLine: true, Line: 12.5},
			Points:   8, Confidence: 45, Rec: systems.Pass,
		},
	})
}

// A model reads its inputs by the names in its file, in its order.
func TestInputsByName(t *testing.T) {
	t.Parallel()
	// One split on the model's first input, which is minutes_avg_season.
	names := append([]string{"minutes_avg_season"}, treemodel.FeatureNames...)
	body := strings.Replace(strings.Replace(tiny, strings.Join(treemodel.FeatureNames, " "), strings.Join(names, " "), 1),
		"max_feature_idx=19", "max_feature_idx=20", 1)
	s, err := treemodel.Load(strings.NewReader(body), "by-name")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		f    systems.Features
		want float64
	}{{systems.Features{MinutesAvgSeason: 34, PointsAvgL5: 5}, 20}, {systems.Features{MinutesAvgSeason: 8, PointsAvgL5: 30}, 8}} {
		if e, err := s.Predict(t.Context(), &c.f); err != nil || e.Points != c.want {
			t.Errorf("minutes %g, L5 %g: %v %v, want %g", c.f.MinutesAvgSeason, c.f.PointsAvgL5, e.Points, err, c.want)
		}
	}
	if got := s.Inputs(); !slices.Equal(got, names) {
		t.Errorf("inputs %v", got)
	}
}

func TestBounds(t *testing.T) {
	t.Parallel()
	s, err := treemodel.LoadBundled()
	if err != nil {
		t.Fatal(err)
	}
	systemstest.CheckBounds(t, s, 5, 5000)
}

func TestBadModelFiles(t *testing.T) {
	t.Parallel()
	for name, body := range map[string]string{
		"empty":         "",
		"garbage":       "this is not a model\n",
		"truncated":     tiny[:len(tiny)/2],
		"wrong version": strings.Replace(tiny, "version=v3", "version=v9", 1),
		"wrong width":   strings.Replace(tiny, "max_feature_idx=19", "max_feature_idx=4", 1),
		"unknown input": strings.Replace(tiny, "points_avg_last_5 ", "points_tomorrow ", 1),
		"fewer names":   strings.Replace(tiny, " rest_days\n", "\n", 1),
		"no names":      strings.Replace(tiny, "feature_names=", "feature_nicknames=", 1),
	} {
		if _, err := treemodel.Load(strings.NewReader(body), name); err == nil {
			t.Errorf("%s model loaded", name)
		}
	}
	u := treemodel.Unavailable{Err: errors.New("open model: no such file")}
	if _, err := u.Predict(t.Context(), &systems.Features{}); err == nil {
		t.Error("an unavailable model answered")
	}
}

func BenchmarkPredict(b *testing.B) {
	s, err := treemodel.LoadBundled()
	if err != nil {
		b.Fatal(err)
	}
	f := systems.Features{PointsAvgL5: 20, PointsAvgL10: 18, PointsAvgSeason: 16, PointsStdL10: 5, GamesPlayed: 30,
		OppDefRating: 112, OppTier: 2, Usage: 24, HasLine: true, Line: 17.5}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = s.Predict(b.Context(), &f)
	}
}
