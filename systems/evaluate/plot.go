package evaluate

import (
	"errors"
	"fmt"
	"image/color"
	"maps"
	"os"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// WritePlot draws two panels into an SVG file: the error by month of every
// system and baseline, and each system's calibration (confidence decile
// against the share of its sides that won, with the diagonal a calibrated
// system would follow).
func WritePlot(path string, r Report) error {
	months := map[string]bool{}
	for _, s := range append(slices.Clone(r.Systems), r.Baselines...) {
		for m := range s.MonthMAE {
			months[m] = true
		}
	}
	order := slices.Sorted(maps.Keys(months))
	byMonth := plot.New()
	byMonth.Title.Text = fmt.Sprintf("MAE by month, %s to %s", r.From, r.To)
	byMonth.Y.Label.Text = "mean absolute error (points)"
	byMonth.NominalX(order...)
	byMonth.Legend.Top = true
	calib := plot.New()
	calib.Title.Text = "Calibrated confidence against the lines (walk-forward)"
	calib.X.Label.Text = "calibrated confidence (decile midpoint, %)"
	calib.Y.Label.Text = "sides that won (%)"
	calib.X.Min, calib.X.Max, calib.Y.Min, calib.Y.Max = 0, 100, 0, 100
	calib.Legend.Top = true
	diagonal, err := plotter.NewLine(plotter.XYs{{X: 0, Y: 0}, {X: 100, Y: 100}})
	if err != nil {
		return err
	}
	diagonal.Color = color.Gray{Y: 160}
	diagonal.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
	calib.Add(diagonal)
	for i, s := range append(slices.Clone(r.Systems), r.Baselines...) {
		name := s.SystemID
		if name == "" {
			name = "baseline: " + s.Baseline
		}
		var pts plotter.XYs
		for x, m := range order {
			if v, ok := s.MonthMAE[m]; ok {
				pts = append(pts, plotter.XY{X: float64(x), Y: v})
			}
		}
		if len(pts) > 0 {
			l, err := plotter.NewLine(pts)
			if err != nil {
				return err
			}
			l.Color = plotutil.Color(i)
			byMonth.Add(l)
			byMonth.Legend.Add(name, l)
		}
		var cal plotter.XYs
		for _, b := range s.Calibration {
			if b.Sides >= 20 { // fewer sides than that: noise
				cal = append(cal, plotter.XY{X: b.From + 5, Y: 100 * b.HitRate})
			}
		}
		if len(cal) > 0 {
			l, sc, err := plotter.NewLinePoints(cal)
			if err != nil {
				return err
			}
			l.Color, sc.Color = plotutil.Color(i), plotutil.Color(i)
			calib.Add(l, sc)
			calib.Legend.Add(name, l, sc)
		}
	}
	img := vgsvg.New(13*vg.Inch, 5*vg.Inch)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Millimeter * 8, PadY: vg.Millimeter * 4,
		PadLeft: vg.Millimeter * 4, PadRight: vg.Millimeter * 4, PadTop: vg.Millimeter * 4, PadBottom: vg.Millimeter * 4}
	canvases := plot.Align([][]*plot.Plot{{byMonth, calib}}, tiles, draw.New(img))
	byMonth.Draw(canvases[0][0])
	calib.Draw(canvases[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	_, werr := img.WriteTo(f)
	return errors.Join(werr, f.Close())
}
