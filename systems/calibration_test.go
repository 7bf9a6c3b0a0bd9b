package systems_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/predworker/predworker/systems"
)

// Probabilities start at a coin flip and move toward the history of their
// edge bin as sides accumulate; a side is recommended only above the
// break-even; rows without a line are untouched; the file round-trips.
func TestCalibration(t *testing.T) {
	c := systems.NewCalibration()
	if p := c.Prob("s", 3); p != 0.5 {
		t.Fatalf("empty calibration: %g", p)
	}
	for i := range 150 { // edge 2-3: 100 wins of 150; edge under 0.5: 40 of 100
		c.Add("s", -2.5, i < 100)
		if i < 100 {
			c.Add("s", 0.2, i < 40)
		}
	}
	if p := c.Prob("s", 2.7); p != (100+25)/(150+50.0) {
		t.Fatalf("edge 2.7: %g", p)
	}
	if p := c.Prob("s", -0.3); p != (40+25)/(100+50.0) {
		t.Fatalf("edge 0.3: %g", p)
	}
	if p := c.Prob("other", 2.7); p != 0.5 {
		t.Fatalf("another system: %g", p)
	}
	f := &systems.Features{HasLine: true, Line: 20.5}
	e := c.Apply("s", f, systems.Estimate{Points: 18, Confidence: 80, Recommendation: systems.Over})
	if e.Confidence != 62.5 || e.Recommendation != systems.Under {
		t.Fatalf("a side 2.5 under: %+v", e)
	}
	e = c.Apply("s", f, systems.Estimate{Points: 20.8, Confidence: 80, Recommendation: systems.Over})
	if e.Confidence != 43.3 || e.Recommendation != systems.Pass {
		t.Fatalf("a side 0.3 over, below the break-even: %+v", e)
	}
	raw := systems.Estimate{Points: 18, Confidence: 80, Recommendation: systems.NoLine}
	if e := c.Apply("s", &systems.Features{}, raw); e != raw {
		t.Fatalf("a row without a line was changed: %+v", e)
	}

	var buf bytes.Buffer
	if err := c.Write(&buf); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "cal.json")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	back, err := systems.ReadCalibration(path)
	if err != nil || back.Prob("s", 2.7) != c.Prob("s", 2.7) || back.BreakEven != systems.BreakEvenAtMinus110 {
		t.Fatalf("read back: %v", err)
	}
	for name, bad := range map[string]string{
		"unknown field": `{"prior": 50, "break_even": 0.52, "systems": {}, "extra": 1}`,
		"break-even":    `{"prior": 50, "break_even": 1.5, "systems": {}}`,
		"bins":          `{"prior": 50, "break_even": 0.52, "systems": {"s": [{"max_edge": 1, "sides": 1, "wins": 0}]}}`,
		"wins":          strings.Replace(buf.String(), `"wins": 100`, `"wins": 200`, 1),
	} {
		p := filepath.Join(t.TempDir(), "bad.json")
		if err := os.WriteFile(p, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := systems.ReadCalibration(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
