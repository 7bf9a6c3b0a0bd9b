package systems

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// The per-system policy an operator sets in the environment, as typed values
// with their own decoders (encoding.TextUnmarshaler), so they are parsed
// once, at start, with the variable's syntax in the error.

// ParsePairs splits the "id=value,id=value" syntax of the per-system
// settings (spaces around items allowed); example shows the syntax in the
// error.
func ParsePairs(spec, example string) ([][2]string, error) {
	var out [][2]string
	for _, kv := range strings.Split(spec, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		id, v, ok := strings.Cut(kv, "=")
		if !ok || strings.TrimSpace(id) == "" {
			return nil, fmt.Errorf("want id=value pairs separated by commas, e.g. %s (bad: %q)", example, kv)
		}
		out = append(out, [2]string{strings.TrimSpace(id), strings.TrimSpace(v)})
	}
	return out, nil
}

// Fallbacks maps a system to the system that answers when it cannot:
// SYSTEM_FALLBACKS "xgboost_v1=moving_average,…".
type Fallbacks map[string]string

// UnmarshalText implements encoding.TextUnmarshaler.
func (f *Fallbacks) UnmarshalText(b []byte) error {
	ps, err := ParsePairs(string(b), "xgboost_v1=moving_average")
	if err != nil {
		return err
	}
	out := Fallbacks{}
	for _, p := range ps {
		out[p[0]] = p[1]
	}
	*f = out
	return nil
}

func (f Fallbacks) String() string {
	var parts []string
	for _, id := range slices.Sorted(maps.Keys(f)) {
		parts = append(parts, id+"="+f[id])
	}
	return strings.Join(parts, ",")
}

// Threshold is what a system's estimate must clear for OVER or UNDER: an
// edge over the line (points) and a confidence (0-100).
type Threshold struct {
	Edge       float64
	Confidence float64
}

// Thresholds are per-system recommendation thresholds: SYSTEM_THRESHOLDS
// "xgboost_v1=1.5:55" (edge:confidence).
type Thresholds map[string]Threshold

// UnmarshalText implements encoding.TextUnmarshaler.
func (t *Thresholds) UnmarshalText(b []byte) error {
	ps, err := ParsePairs(string(b), "xgboost_v1=1.5:55")
	if err != nil {
		return err
	}
	out := Thresholds{}
	for _, p := range ps {
		edge, conf, ok := strings.Cut(p[1], ":")
		e, err1 := strconv.ParseFloat(edge, 64)
		c, err2 := strconv.ParseFloat(conf, 64)
		if !ok || err1 != nil || err2 != nil || e < 0 || c < 0 || c > 100 {
			return fmt.Errorf("%s=%q must be edge:confidence, e.g. 2.0:55", p[0], p[1])
		}
		out[p[0]] = Threshold{Edge: e, Confidence: c}
	}
	*t = out
	return nil
}

func (t Thresholds) String() string {
	var parts []string
	for _, id := range slices.Sorted(maps.Keys(t)) {
		parts = append(parts, fmt.Sprintf("%s=%g:%g", id, t[id].Edge, t[id].Confidence))
	}
	return strings.Join(parts, ",")
}
