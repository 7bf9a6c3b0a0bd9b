package contract

import (
	"path"
	"strings"
)

// ModelEntry is one row of the stage's model_registry (ORIGIN.md §6.1), the
// columns the fleet reads.
type ModelEntry struct {
	ModelID       string   `json:"model_id"`
	ModelVersion  string   `json:"model_version"`
	ModelType     string   `json:"model_type"`
	GCSPath       string   `json:"gcs_path"`
	FeatureCount  int      `json:"feature_count"`
	Features      []string `json:"features"` // features_json, when the registry has it
	FeatureSet    string   `json:"feature_set"`
	LossFunction  string   `json:"loss_function"`
	Status        string   `json:"status"`
	Family        string   `json:"model_family"`
	SHA256        string   `json:"sha256_hash"`
	TrainingStart string   `json:"training_start_date"`
	TrainingEnd   string   `json:"training_end_date"`
}

// Frameworks a registry row can name.
const (
	LightGBM = "lightgbm"
	XGBoost  = "xgboost"
	CatBoost = "catboost"
)

// Framework is how the stage decided a row's framework (§6.2): model_type
// when it names one, else the id prefix (lgbm, xgb_), else the file's
// suffix (.txt, .json), else CatBoost.
func (e ModelEntry) Framework() string {
	switch t := strings.ToLower(e.ModelType); t {
	case LightGBM, XGBoost, CatBoost:
		return t
	}
	switch id := strings.ToLower(e.ModelID); {
	case strings.HasPrefix(id, "lgbm"):
		return LightGBM
	case strings.HasPrefix(id, "xgb_"):
		return XGBoost
	}
	switch path.Ext(strings.ToLower(e.GCSPath)) {
	case ".txt":
		return LightGBM
	case ".json":
		return XGBoost
	}
	return CatBoost
}

// Inputs are the model's ordered input names: features_json when the
// registry lists them, else the feature_set's list (§6.4).
func (e ModelEntry) Inputs() []string {
	if len(e.Features) > 0 {
		return append([]string(nil), e.Features...)
	}
	return FeatureSet(e.FeatureSet)
}

// Anchor reports a model whose output is a deviation from the line
// (feature #25): a file or path containing "_anchor_".
func (e ModelEntry) Anchor() bool { return strings.Contains(e.GCSPath, "_anchor_") }
