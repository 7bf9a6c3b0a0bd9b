package main

import (
	"bytes"
	"fmt"
	"os"

	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/ensemble"
	"github.com/predworker/predworker/systems/movingavg"
	"github.com/predworker/predworker/systems/similarity"
	"github.com/predworker/predworker/systems/treemodel"
	"github.com/predworker/predworker/systems/zonematchup"
)

// allSystems are the systems this build knows, in registration order.
var allSystems = []string{movingavg.ID, zonematchup.ID, similarity.ID, treemodel.ID, ensemble.ID}

// defaultFallbacks: every system falls back to the moving-average baseline,
// which needs the least data and cannot time out.
func defaultFallbacks() systems.Fallbacks {
	f := systems.Fallbacks{}
	for _, id := range allSystems {
		if id != movingavg.ID {
			f[id] = movingavg.ID
		}
	}
	return f
}

// newRegistry builds the enabled systems with their policy: fallbacks,
// thresholds, the tree model's file. The ids were validated with the
// configuration; what can still fail here is loading the model, and a
// fallback naming a system that is not enabled.
func newRegistry(cfg *Config) (*systems.Registry, error) {
	if cfg.Profile == "phase5" {
		return systems.NewRegistry(), nil // the model_registry's fleet registers itself as it loads
	}
	enabled, err := cfg.enabledSystems()
	if err != nil {
		return nil, err
	}
	var cal *systems.Calibration
	if cfg.CalibrationPath != "" {
		if cal, err = systems.ReadCalibration(cfg.CalibrationPath); err != nil {
			return nil, fmt.Errorf("CALIBRATION_PATH: %w", err)
		}
	}
	r := systems.NewRegistry()
	for _, id := range enabled {
		var s systems.System
		switch id {
		case movingavg.ID:
			s = movingavg.New()
		case zonematchup.ID:
			s = zonematchup.New()
		case similarity.ID:
			s = similarity.New()
		case treemodel.ID:
			if s, err = loadModel(cfg); err != nil {
				return nil, err
			}
		case ensemble.ID:
			var inputs []string
			for _, other := range enabled {
				if other != ensemble.ID {
					inputs = append(inputs, other)
				}
			}
			s = ensemble.New(inputs...)
		}
		if th, ok := cfg.SystemThresholds[id]; ok {
			s = systems.WithThresholds(s, th.Edge, th.Confidence)
		}
		if cal != nil {
			s = systems.WithCalibration(s, cal)
		}
		r.Register(s, cfg.SystemFallbacks[id]) // fallbacks of systems not enabled are ignored
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("SYSTEM_FALLBACKS: %w", err)
	}
	return r, nil
}

// loadModel reads XGBOOST_MODEL_PATH (the bundled model when empty). A bad
// or missing file stops startup, unless XGBOOST_MODEL_OPTIONAL: then the
// system answers with errors and its rows fall back.
func loadModel(cfg *Config) (systems.System, error) {
	var (
		s   systems.System
		err error
	)
	if cfg.ModelPath == "" {
		s, err = treemodel.LoadBundled()
	} else {
		var b []byte
		if b, err = os.ReadFile(cfg.ModelPath); err == nil {
			s, err = treemodel.Load(bytes.NewReader(b), "xgboost_v1-"+shortHash(b))
		}
	}
	if err != nil {
		if cfg.ModelOptional {
			return treemodel.Unavailable{Err: err}, nil
		}
		return nil, fmt.Errorf("XGBOOST_MODEL_PATH: %w (set XGBOOST_MODEL_OPTIONAL=true to fall back instead)", err)
	}
	return s, nil
}
