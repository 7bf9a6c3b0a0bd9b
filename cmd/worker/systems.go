package main

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/ensemble"
	"github.com/predworker/predworker/systems/movingavg"
	"github.com/predworker/predworker/systems/similarity"
	"github.com/predworker/predworker/systems/treemodel"
	"github.com/predworker/predworker/systems/zonematchup"
)

// allSystems are the systems this build knows, in registration order.
var allSystems = []string{movingavg.ID, zonematchup.ID, similarity.ID, treemodel.ID, ensemble.ID}

// pairs parses "id=value,id=value", refusing unknown ids.
func pairs(name, spec string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(spec, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		id, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("%s: %q is not id=value", name, kv)
		}
		if !slices.Contains(allSystems, id) {
			return nil, fmt.Errorf("%s names unknown system %q (known: %s)", name, id, strings.Join(allSystems, ", "))
		}
		out[id] = v
	}
	return out, nil
}

// newRegistry builds the enabled systems with their policy: fallbacks,
// thresholds, the tree model's file. Invalid policy is a startup error that
// names the variable.
func newRegistry(cfg *Config) (*systems.Registry, error) {
	enabled := allSystems
	if len(cfg.Systems) > 0 {
		enabled = nil
		for _, id := range cfg.Systems {
			if !slices.Contains(allSystems, id) {
				return nil, fmt.Errorf("SYSTEMS names unknown system %q (known: %s)", id, strings.Join(allSystems, ", "))
			}
			enabled = append(enabled, id)
		}
	}
	fallbacks, err := pairs("SYSTEM_FALLBACKS", cfg.SystemFallbacks)
	if err != nil {
		return nil, err
	}
	thresholds, err := pairs("SYSTEM_THRESHOLDS", cfg.SystemThresholds)
	if err != nil {
		return nil, err
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
		if th, ok := thresholds[id]; ok {
			edge, conf, ok := strings.Cut(th, ":")
			e, err1 := strconv.ParseFloat(edge, 64)
			c, err2 := strconv.ParseFloat(conf, 64)
			if !ok || err1 != nil || err2 != nil || e < 0 || c < 0 || c > 100 {
				return nil, fmt.Errorf("SYSTEM_THRESHOLDS: %s=%q must be edge:confidence, e.g. 2.0:55", id, th)
			}
			s = systems.WithThresholds(s, e, c)
		}
		r.Register(s, fallbacks[id]) // fallbacks of systems not enabled are ignored
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
