package xgbjson_test

import (
	"math"
	"strings"
	"testing"

	"github.com/predworker/predworker/systems/xgbjson"
)

// booster is a two-tree model written as XGBoost 2.x saves it (default_left
// as 0/1, base_score a scalar string). Tree 0 splits on feature 0 at 10
// (missing goes right), then on feature 1 at 0.5 (missing goes left);
// tree 1 splits on feature 1 at 2 (missing goes right).
const booster = `{"learner": {
  "attributes": {}, "feature_names": ["points_avg_last_5", "home_away"], "feature_types": ["float", "float"],
  "gradient_booster": {"name": "gbtree", "model": {"gbtree_model_param": {"num_trees": "2"}, "tree_info": [0, 0],
    "trees": [
      {"id": 0, "left_children": [1, 3, -1, -1, -1], "right_children": [2, 4, -1, -1, -1],
       "split_indices": [0, 1, 0, 0, 0], "split_conditions": [10, 0.5, 4, -1, 1],
       "default_left": [0, 1, 0, 0, 0], "split_type": [0, 0, 0, 0, 0], "base_weights": [0, 0, 4, -1, 1]},
      {"id": 1, "left_children": [1, -1, -1], "right_children": [2, -1, -1],
       "split_indices": [1, 0, 0], "split_conditions": [2, 0.25, -0.25],
       "default_left": [0, 0, 0], "split_type": [0, 0, 0], "base_weights": [0, 0.25, -0.25]}
    ]}},
  "learner_model_param": {"base_score": "1.5E1", "num_class": "0", "num_feature": "2", "num_target": "1"},
  "objective": {"name": "reg:squarederror", "reg_loss_param": {"scale_pos_weight": "1"}}},
 "version": [2, 0, 3]}`

func TestPredict(t *testing.T) {
	m, err := xgbjson.Load(strings.NewReader(booster))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.FeatureNames(); len(got) != 2 || got[1] != "home_away" || m.NumFeatures() != 2 {
		t.Fatalf("names %v, width %d", got, m.NumFeatures())
	}
	nan := math.NaN()
	for _, c := range []struct {
		x    []float64
		want float64
	}{
		{[]float64{5, 0}, 15 - 1 + 0.25},       // left, left (0 < 0.5); tree 1: 0 < 2 left
		{[]float64{5, 1}, 15 + 1 + 0.25},       // left, right
		{[]float64{10, 3}, 15 + 4 - 0.25},      // 10 is not < 10: right; tree 1: 3 >= 2 right
		{[]float64{nan, 0}, 15 + 4 + 0.25},     // missing feature 0 goes right
		{[]float64{5, nan}, 15 - 1 - 0.25},     // missing feature 1: left in tree 0, right in tree 1
		{[]float64{9.999, 0.5}, 15 + 1 + 0.25}, // 0.5 is not < 0.5: right
	} {
		if got := m.Predict(c.x); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("Predict(%v) = %v, want %v", c.x, got, c.want)
		}
	}
}

func TestBaseScoreOfXGBoost3AndBooleanDefaults(t *testing.T) {
	s := strings.Replace(booster, `"1.5E1"`, `"[1.5E1]"`, 1)
	s = strings.Replace(s, `"default_left": [0, 1, 0, 0, 0]`, `"default_left": [false, true, false, false, false]`, 1)
	m, err := xgbjson.Load(strings.NewReader(s))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Predict([]float64{5, math.NaN()}); math.Abs(got-(15-1-0.25)) > 1e-12 {
		t.Errorf("got %v", got)
	}
}

func TestRefusesWhatItCannotEvaluate(t *testing.T) {
	for name, c := range map[string][2]string{
		"logistic":    {`"reg:squarederror"`, `"binary:logistic"`},
		"dart":        {`"name": "gbtree"`, `"name": "dart"`},
		"categorical": {`"split_type": [0, 0, 0, 0, 0]`, `"split_type": [1, 0, 0, 0, 0]`},
		"multiclass":  {`"num_class": "0"`, `"num_class": "3"`},
		"bad child":   {`"right_children": [2, -1, -1]`, `"right_children": [7, -1, -1]`},
		"short":       {`"split_indices": [1, 0, 0]`, `"split_indices": [1, 0]`},
		"not json":    {`{"learner"`, `{"learner"x`},
	} {
		if _, err := xgbjson.Load(strings.NewReader(strings.Replace(booster, c[0], c[1], 1))); err == nil {
			t.Errorf("%s: loaded", name)
		}
	}
}
