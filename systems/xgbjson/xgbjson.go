// Package xgbjson evaluates XGBoost boosters saved as JSON (save_model
// with a .json name, XGBoost 1.0 and later), the format the pipeline
// profile's model registry lists for xgboost models. github.com/dmitryikh/leaves,
// which serves the LightGBM files, reads only XGBoost's older binary format.
//
// Supported: the gbtree booster with numerical splits and an objective whose
// link is the identity (reg:squarederror, reg:absoluteerror,
// reg:pseudohubererror), one output. Anything else is refused at load with the reason, never
// evaluated wrongly.
package xgbjson

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// Model is a loaded booster.
type Model struct {
	base     float64
	trees    []tree
	names    []string
	features int
}

type tree struct {
	left, right []int32
	split       []int32
	cond        []float64
	defLeft     []bool
}

// identityObjectives are the objectives whose prediction is the raw margin.
var identityObjectives = map[string]bool{
	"reg:squarederror": true, "reg:linear": true, "reg:absoluteerror": true, "reg:pseudohubererror": true,
}

type file struct {
	Learner struct {
		FeatureNames    []string `json:"feature_names"`
		GradientBooster struct {
			Name  string `json:"name"`
			Model struct {
				Trees []struct {
					Left      []int32   `json:"left_children"`
					Right     []int32   `json:"right_children"`
					Split     []int32   `json:"split_indices"`
					Cond      []float64 `json:"split_conditions"`
					DefLeft   []any     `json:"default_left"`
					SplitType []int     `json:"split_type"`
				} `json:"trees"`
			} `json:"model"`
		} `json:"gradient_booster"`
		Param struct {
			BaseScore  string `json:"base_score"`
			NumClass   string `json:"num_class"`
			NumFeature string `json:"num_feature"`
			NumTarget  string `json:"num_target"`
		} `json:"learner_model_param"`
		Objective struct {
			Name string `json:"name"`
		} `json:"objective"`
	} `json:"learner"`
}

// Load reads a JSON booster.
func Load(r io.Reader) (*Model, error) {
	var f file
	dec := json.NewDecoder(r)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("xgboost json: %w", err)
	}
	l := f.Learner
	switch {
	case l.GradientBooster.Name != "gbtree":
		return nil, fmt.Errorf("xgboost json: booster %q is not supported (gbtree only)", l.GradientBooster.Name)
	case !identityObjectives[l.Objective.Name]:
		return nil, fmt.Errorf("xgboost json: objective %q is not supported (regression with an identity link only)", l.Objective.Name)
	case atoi(l.Param.NumClass) > 1 || atoi(l.Param.NumTarget) > 1:
		return nil, fmt.Errorf("xgboost json: %s classes, %s targets: one output only", l.Param.NumClass, l.Param.NumTarget)
	}
	base, err := parseBase(l.Param.BaseScore)
	if err != nil {
		return nil, err
	}
	m := &Model{base: base, names: l.FeatureNames, features: atoi(l.Param.NumFeature)}
	for i, t := range l.GradientBooster.Model.Trees {
		n := len(t.Left)
		if n == 0 || len(t.Right) != n || len(t.Split) != n || len(t.Cond) != n || len(t.DefLeft) != n {
			return nil, fmt.Errorf("xgboost json: tree %d: node arrays of different lengths", i)
		}
		tr := tree{left: t.Left, right: t.Right, split: t.Split, cond: t.Cond, defLeft: make([]bool, n)}
		for j := range n {
			if len(t.SplitType) == n && t.SplitType[j] != 0 {
				return nil, fmt.Errorf("xgboost json: tree %d node %d: categorical splits are not supported", i, j)
			}
			switch v := t.DefLeft[j].(type) { // 0/1 in some versions, booleans in others
			case bool:
				tr.defLeft[j] = v
			case float64:
				tr.defLeft[j] = v != 0
			default:
				return nil, fmt.Errorf("xgboost json: tree %d node %d: default_left %v", i, j, v)
			}
			if l, r := t.Left[j], t.Right[j]; (l == -1) != (r == -1) || l >= int32(n) || r >= int32(n) || (l != -1 && (l <= int32(j) || r <= int32(j))) {
				return nil, fmt.Errorf("xgboost json: tree %d node %d: bad children %d, %d", i, j, l, r)
			}
			if t.Left[j] != -1 && (t.Split[j] < 0 || (m.features > 0 && int(t.Split[j]) >= m.features)) {
				return nil, fmt.Errorf("xgboost json: tree %d node %d: feature %d out of range", i, j, t.Split[j])
			}
		}
		m.trees = append(m.trees, tr)
	}
	if len(m.trees) == 0 {
		return nil, fmt.Errorf("xgboost json: no trees")
	}
	if m.features == 0 {
		m.features = len(m.names)
	}
	return m, nil
}

func atoi(s string) int {
	n, _ := strconv.Atoi(strings.TrimSpace(s))
	return n
}

// parseBase reads base_score: "5E-1" (XGBoost 1.x-2.x) or "[5E-1]" (3.x).
func parseBase(s string) (float64, error) {
	s = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(s), "["), "]")
	if s == "" {
		return 0.5, nil // XGBoost's default
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("xgboost json: base_score %q: %w", s, err)
	}
	return v, nil
}

// FeatureNames are the input names saved with the booster (may be empty).
func (m *Model) FeatureNames() []string { return m.names }

// NumFeatures is the input width the booster was trained with.
func (m *Model) NumFeatures() int { return m.features }

// Predict evaluates x: base_score plus each tree's leaf. A split sends x
// left when x[f] < condition; NaN follows the node's default direction.
func (m *Model) Predict(x []float64) float64 {
	sum := m.base
	for i := range m.trees {
		t := &m.trees[i]
		n := int32(0)
		for t.left[n] != -1 {
			f := t.split[n]
			var v float64
			if int(f) < len(x) {
				v = x[f]
			} else {
				v = math.NaN()
			}
			switch {
			case math.IsNaN(v):
				if t.defLeft[n] {
					n = t.left[n]
				} else {
					n = t.right[n]
				}
			case v < t.cond[n]:
				n = t.left[n]
			default:
				n = t.right[n]
			}
		}
		sum += t.cond[n]
	}
	return sum
}
