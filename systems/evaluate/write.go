package evaluate

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// WriteJSON writes the report as one JSON object.
func WriteJSON(w io.Writer, r Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func pct(v *float64) string {
	if v == nil {
		return "—"
	}
	return fmt.Sprintf("%.1f %%", 100**v)
}

func signed(v *float64) string {
	if v == nil {
		return "—"
	}
	return fmt.Sprintf("%+.3f", *v)
}

// WriteTable writes the report as a Markdown table, systems then baselines.
func WriteTable(w io.Writer, r Report) error {
	lined := 0
	if len(r.Baselines) > 1 {
		lined = r.Baselines[1].N
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s to %s: %d player-games of players with at least %d earlier games that season, %d with a line\n\n",
		r.From, r.To, r.Eligible, MinGames, lined)
	b.WriteString("| | n | MAE | RMSE | bias | coverage | fallbacks | lined n | lined MAE | side hit rate | calls | call hit rate | return (listed odds) | return (-110) | calibrated calls | their hit rate | their return (listed) | their return (-110) |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range r.Systems {
		fmt.Fprintf(&b, "| %s | %d | %.3f | %.3f | %+.3f | %.1f %% | %d | %d | %.3f | %s | %d | %s | %s | %s | %d | %s | %s | %s |\n",
			s.SystemID, s.N, s.MAE, s.RMSE, s.Bias, 100*s.Coverage, s.Fallbacks, s.LinedN, s.LinedMAE, pct(s.HitRate),
			s.Calls, pct(s.CallHits), signed(s.ROI), signed(s.ROI110),
			s.CalibratedCalls, pct(s.CalibratedHitRate), signed(s.CalibratedROI), signed(s.CalibratedROI110))
	}
	for _, s := range r.Baselines {
		fmt.Fprintf(&b, "| baseline: %s | %d | %.3f | %.3f | %+.3f | | | %d | %.3f | | | | | | | | | |\n",
			s.Baseline, s.N, s.MAE, s.RMSE, s.Bias, s.LinedN, s.LinedMAE)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
