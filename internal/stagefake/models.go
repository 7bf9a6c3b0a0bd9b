package stagefake

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/predworker/predworker/systems/gbdt"
)

// LightGBMModel fits a small booster on synthetic rows over names (points
// follow the first input, with noise) and returns it in LightGBM's text
// format, with the fitted model.
func LightGBMModel(names []string, seed uint64) ([]byte, *gbdt.Model, error) {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	var X [][]float64
	var y []float64
	for range 400 {
		x := make([]float64, len(names))
		for j := range x {
			x[j] = rng.Float64() * 30
		}
		X, y = append(X, x), append(y, x[0]+rng.NormFloat64())
	}
	m, err := gbdt.Train(X, y, gbdt.TrainConfig{Trees: 20, Depth: 3, LearningRate: 0.3, Bins: 16, MinLeaf: 10})
	if err != nil {
		return nil, nil, err
	}
	var b bytes.Buffer
	if err := m.WriteLightGBM(&b, names); err != nil {
		return nil, nil, err
	}
	return b.Bytes(), m, nil
}

// SHA256 is the hex checksum the registry's sha256_hash holds.
func SHA256(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// XGBoostModel is a one-tree XGBoost JSON booster over names: base 10, +5
// when the first input is under 20, else +15.
func XGBoostModel(names []string) []byte {
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = fmt.Sprintf("%q", n)
	}
	return fmt.Appendf(nil, `{"learner": {"feature_names": [%s],
  "gradient_booster": {"name": "gbtree", "model": {"trees": [{"left_children": [1, -1, -1], "right_children": [2, -1, -1],
    "split_indices": [0, 0, 0], "split_conditions": [20, 5, 15], "default_left": [1, 0, 0], "split_type": [0, 0, 0]}]}},
  "learner_model_param": {"base_score": "1E1", "num_class": "0", "num_feature": "%d", "num_target": "1"},
  "objective": {"name": "reg:squarederror"}}, "version": [2, 1, 0]}`, strings.Join(quoted, ", "), len(names))
}
