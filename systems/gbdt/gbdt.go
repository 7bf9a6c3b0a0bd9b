// Package gbdt is a small, deterministic gradient-boosted regression tree
// trainer (histogram splits, squared error) that writes LightGBM's text model
// format. It fits the bundled xgboost_v1 model; the model is served by
// systems/treemodel through github.com/dmitryikh/leaves, and the tests check
// that the file evaluates exactly as the fitted model does.
package gbdt

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// TrainConfig tunes the booster.
type TrainConfig struct {
	Trees        int     // boosting rounds
	Depth        int     // levels per tree (2^Depth leaves at most)
	LearningRate float64 // shrinkage
	Bins         int     // histogram bins per feature
	MinLeaf      int     // fewest rows in a leaf
	// Objective is "l2" (squared error: the mean; the default) or "l1"
	// (absolute error: splits on the sign of the residuals, leaves at their
	// median, as LightGBM's regression_l1 does).
	Objective string
}

// DefaultTrainConfig is what the bundled model was fitted with.
var DefaultTrainConfig = TrainConfig{Trees: 80, Depth: 3, LearningRate: 0.1, Bins: 32, MinLeaf: 40}

// node of a fitted tree: an internal node splits on X[Feature] <= Threshold
// (left) as LightGBM does; a leaf (Feature < 0) holds Value.
type node struct {
	Feature     int
	Threshold   float64
	Left, Right int
	Value       float64
}

// Model is a fitted ensemble: Base + Σ trees.
type Model struct {
	Base  float64
	Trees [][]node
	nfeat int
}

// Predict evaluates the model as defined (not through the file).
func (m *Model) Predict(x []float64) float64 {
	p := m.Base
	for _, t := range m.Trees {
		i := 0
		for t[i].Feature >= 0 {
			if x[t[i].Feature] <= t[i].Threshold {
				i = t[i].Left
			} else {
				i = t[i].Right
			}
		}
		p += t[i].Value
	}
	return p
}

// Train fits a model on rows X with targets y. It is deterministic.
func Train(X [][]float64, y []float64, cfg TrainConfig) (*Model, error) {
	if len(X) == 0 || len(X) != len(y) {
		return nil, fmt.Errorf("train: %d rows, %d targets", len(X), len(y))
	}
	nf := len(X[0])
	// Quantile bin edges per feature; bin b holds values <= edges[b].
	edges := make([][]float64, nf)
	bins := make([][]uint8, nf)
	for f := range nf {
		col := make([]float64, len(X))
		for i := range X {
			col[i] = X[i][f]
		}
		sorted := slices.Clone(col)
		slices.Sort(sorted)
		var e []float64
		for b := 1; b < cfg.Bins; b++ {
			v := sorted[b*len(sorted)/cfg.Bins]
			if len(e) == 0 || v > e[len(e)-1] {
				e = append(e, v)
			}
		}
		edges[f] = e
		bins[f] = make([]uint8, len(X))
		for i, v := range col {
			b, _ := slices.BinarySearch(e, v) // first edge >= v
			bins[f][i] = uint8(b)
		}
	}
	l1 := cfg.Objective == "l1"
	if cfg.Objective != "" && cfg.Objective != "l2" && !l1 {
		return nil, fmt.Errorf("train: unknown objective %q (want l2 or l1)", cfg.Objective)
	}
	m := &Model{nfeat: nf}
	if l1 {
		m.Base = median(slices.Clone(y))
	} else {
		for _, v := range y {
			m.Base += v
		}
		m.Base /= float64(len(y))
	}
	pred := make([]float64, len(y))
	for i := range pred {
		pred[i] = m.Base
	}
	resid := make([]float64, len(y))
	grad := make([]float64, len(y)) // what splits are chosen on
	for range cfg.Trees {
		for i := range y {
			resid[i] = y[i] - pred[i]
			grad[i] = resid[i]
			if l1 {
				grad[i] = sign(resid[i])
			}
		}
		all := make([]int, len(y))
		for i := range all {
			all[i] = i
		}
		var t []node
		var grow func(rows []int, depth int) int
		grow = func(rows []int, depth int) int {
			sum := 0.0
			for _, r := range rows {
				sum += grad[r]
			}
			idx := len(t)
			value := cfg.LearningRate * sum / float64(len(rows))
			if l1 {
				rs := make([]float64, len(rows))
				for k, r := range rows {
					rs[k] = resid[r]
				}
				value = cfg.LearningRate * median(rs)
			}
			t = append(t, node{Feature: -1, Value: value})
			if depth == cfg.Depth || len(rows) < 2*cfg.MinLeaf {
				return idx
			}
			bestGain, bestF, bestB := 0.0, -1, 0
			parent := sum * sum / float64(len(rows))
			hs := make([]float64, cfg.Bins+1)
			hc := make([]int, cfg.Bins+1)
			for f := range nf {
				clear(hs)
				clear(hc)
				for _, r := range rows {
					b := bins[f][r]
					hs[b] += grad[r]
					hc[b]++
				}
				ls, lc := 0.0, 0
				for b := 0; b < len(edges[f]); b++ {
					ls += hs[b]
					lc += hc[b]
					rc := len(rows) - lc
					if lc < cfg.MinLeaf || rc < cfg.MinLeaf {
						continue
					}
					rs := sum - ls
					if gain := ls*ls/float64(lc) + rs*rs/float64(rc) - parent; gain > bestGain+1e-12 {
						bestGain, bestF, bestB = gain, f, b
					}
				}
			}
			if bestF < 0 {
				return idx
			}
			var left, right []int
			for _, r := range rows {
				if int(bins[bestF][r]) <= bestB {
					left = append(left, r)
				} else {
					right = append(right, r)
				}
			}
			t[idx].Feature, t[idx].Threshold = bestF, edges[bestF][bestB]
			l := grow(left, depth+1)
			rr := grow(right, depth+1)
			t[idx].Left, t[idx].Right = l, rr
			return idx
		}
		grow(all, 0)
		tree := t
		m.Trees = append(m.Trees, tree)
		for i := range pred {
			pred[i] += evalTree(tree, X[i])
		}
	}
	return m, nil
}

func evalTree(t []node, x []float64) float64 {
	i := 0
	for t[i].Feature >= 0 {
		if x[t[i].Feature] <= t[i].Threshold {
			i = t[i].Left
		} else {
			i = t[i].Right
		}
	}
	return t[i].Value
}

func ftoa(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// WriteLightGBM writes the model in LightGBM's text format. The base score is
// folded into the first tree's leaves, as LightGBM does with its init score.
func (m *Model) WriteLightGBM(w io.Writer, featureNames []string) error {
	var trees []string
	for ti, t := range m.Trees {
		// LightGBM numbers internal nodes 0..k-1 and leaves 0..k (a child
		// index < 0 is leaf ^idx). Map our node slice onto that.
		internal, leaf := map[int]int{}, map[int]int{}
		for i, n := range t {
			if n.Feature >= 0 {
				internal[i] = len(internal)
			}
		}
		for i, n := range t {
			if n.Feature < 0 {
				leaf[i] = len(leaf)
			}
		}
		child := func(i int) string {
			if t[i].Feature >= 0 {
				return strconv.Itoa(internal[i])
			}
			return strconv.Itoa(^leaf[i])
		}
		sf, th, dt, lc, rc := make([]string, len(internal)), make([]string, len(internal)),
			make([]string, len(internal)), make([]string, len(internal)), make([]string, len(internal))
		lv := make([]string, len(leaf))
		for i, n := range t {
			if n.Feature >= 0 {
				k := internal[i]
				sf[k], th[k], dt[k] = strconv.Itoa(n.Feature), ftoa(n.Threshold), "0"
				lc[k], rc[k] = child(n.Left), child(n.Right)
			} else {
				v := n.Value
				if ti == 0 {
					v += m.Base
				}
				lv[leaf[i]] = ftoa(v)
			}
		}
		var b strings.Builder
		fmt.Fprintf(&b, "Tree=%d\nnum_leaves=%d\nnum_cat=0\n", ti, len(leaf))
		if len(internal) > 0 {
			fmt.Fprintf(&b, "split_feature=%s\nthreshold=%s\ndecision_type=%s\nleft_child=%s\nright_child=%s\n",
				strings.Join(sf, " "), strings.Join(th, " "), strings.Join(dt, " "), strings.Join(lc, " "), strings.Join(rc, " "))
		}
		fmt.Fprintf(&b, "leaf_value=%s\nshrinkage=1\n\n\n", strings.Join(lv, " "))
		trees = append(trees, b.String())
	}
	sizes := make([]string, len(trees))
	for i, t := range trees {
		sizes[i] = strconv.Itoa(len(t))
	}
	infos := make([]string, len(featureNames))
	for i := range infos {
		infos[i] = "none"
	}
	_, err := fmt.Fprintf(w, "tree\nversion=v3\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx=%d\n"+
		"objective=regression\nfeature_names=%s\nfeature_infos=%s\ntree_sizes=%s\n\n%s\nend of trees\n",
		len(featureNames)-1, strings.Join(featureNames, " "), strings.Join(infos, " "), strings.Join(sizes, " "),
		strings.Join(trees, ""))
	return err
}

// MAE is the mean absolute error of m on (X, y).
func (m *Model) MAE(X [][]float64, y []float64) float64 {
	s := 0.0
	for i := range X {
		s += math.Abs(m.Predict(X[i]) - y[i])
	}
	return s / float64(len(X))
}

// BestPrefix returns the number of trees, from 1 to all, whose prefix of the
// ensemble has the lowest mean absolute error on (X, y), and that error
// (early stopping on a validation set, decided after training).
func (m *Model) BestPrefix(X [][]float64, y []float64) (int, float64) {
	pred := make([]float64, len(y))
	for i := range pred {
		pred[i] = m.Base
	}
	best, bestMAE := 0, math.Inf(1)
	for k, t := range m.Trees {
		s := 0.0
		for i := range X {
			pred[i] += evalTree(t, X[i])
			s += math.Abs(pred[i] - y[i])
		}
		if mae := s / float64(len(y)); mae < bestMAE {
			best, bestMAE = k+1, mae
		}
	}
	return best, bestMAE
}

func sign(v float64) float64 {
	switch {
	case v > 0:
		return 1
	case v < 0:
		return -1
	}
	return 0
}

// median of xs (reordered in place).
func median(xs []float64) float64 {
	slices.Sort(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}
