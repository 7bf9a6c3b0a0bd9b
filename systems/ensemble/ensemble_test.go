package ensemble_test

import (
	"errors"
	"testing"

	"github.com/predworker/predworker/systems"
	"github.com/predworker/predworker/systems/ensemble"
)

func TestCombine(t *testing.T) {
	t.Parallel()
	e := ensemble.New("a", "b", "c")
	line := &systems.Features{HasLine: true, Line: 18.5}
	for _, c := range []struct {
		name string
		in   map[string]systems.Estimate
		pts  float64
		conf float64
		rec  systems.Recommendation
	}{
		// (60·20 + 40·22) / 100 = 20.8; spread 2 → not < 2, < 3: +5; confidence (60+40)/2 + 5 = 55: PASS (not above 55).
		{"two, some agreement", map[string]systems.Estimate{"a": {Points: 20, Confidence: 60}, "b": {Points: 22, Confidence: 40}}, 20.8, 55, systems.Pass},
		// (70·21 + 70·21.5 + 70·22) / 210 = 21.5; spread 1 → +10; 70 + 10 = 80. Edge 3 > 2: OVER.
		{"three agreeing", map[string]systems.Estimate{"a": {Points: 21, Confidence: 70}, "b": {Points: 21.5, Confidence: 70}, "c": {Points: 22, Confidence: 70}}, 21.5, 80, systems.Over},
		// (50·10 + 50·20) / 100 = 15; spread 10 → −10; 50 − 10 = 40: PASS.
		{"disagreeing", map[string]systems.Estimate{"a": {Points: 10, Confidence: 50}, "b": {Points: 20, Confidence: 50}}, 15, 40, systems.Pass},
		// An estimate from a system not in the ensemble is ignored.
		{"ignores strangers", map[string]systems.Estimate{"a": {Points: 12, Confidence: 80}, "b": {Points: 13, Confidence: 80}, "zz": {Points: 60, Confidence: 100}}, 12.5, 90, systems.Under},
	} {
		got, err := e.Combine(t.Context(), line, c.in)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got.Points != c.pts || got.Confidence != c.conf || got.Recommendation != c.rec {
			t.Errorf("%s: got %+v, want %.1f / %.1f / %s", c.name, got, c.pts, c.conf, c.rec)
		}
	}
	if _, err := e.Combine(t.Context(), line, map[string]systems.Estimate{"a": {Points: 20, Confidence: 60}}); !errors.Is(err, systems.ErrInsufficientData) {
		t.Fatalf("one input: %v, want ErrInsufficientData", err)
	}
	if _, err := e.Predict(t.Context(), line); !errors.Is(err, systems.ErrInsufficientData) {
		t.Fatalf("Predict alone: %v", err)
	}
}

func BenchmarkCombine(b *testing.B) {
	e := ensemble.New("a", "b", "c", "d")
	in := map[string]systems.Estimate{"a": {Points: 20, Confidence: 60}, "b": {Points: 21, Confidence: 55},
		"c": {Points: 19.5, Confidence: 70}, "d": {Points: 22, Confidence: 50}}
	f := &systems.Features{HasLine: true, Line: 18.5}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = e.Combine(b.Context(), f, in)
	}
}
