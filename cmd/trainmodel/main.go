// Command trainmodel fits the bundled xgboost_v1 model on the synthetic
// league and writes it in LightGBM's text format. The result is the same on
// every machine: the league and the trainer are deterministic.
//
//	go run ./cmd/trainmodel            # writes systems/treemodel/model/xgboost_v1.txt
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/predworker/predworker/systems/gbdt"
	"github.com/predworker/predworker/systems/league"
	"github.com/predworker/predworker/systems/treemodel"
)

func main() {
	out := flag.String("out", "systems/treemodel/model/xgboost_v1.txt", "where to write the model")
	flag.Parse()
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "trainmodel:", err)
		os.Exit(1)
	}
}

func run(out string) error {
	ds, err := treemodel.Dataset(context.Background(), league.Default())
	if err != nil {
		return err
	}
	m, err := gbdt.Train(ds.TrainX, ds.TrainY, gbdt.DefaultTrainConfig)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := m.WriteLightGBM(&buf, treemodel.FeatureNames); err != nil {
		return err
	}
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Printf("xgboost_v1: %d trees of depth %d on %d training rows (dates before %s), %d holdout rows\n",
		len(m.Trees), gbdt.DefaultTrainConfig.Depth, len(ds.TrainY), treemodel.HoldoutFrom, len(ds.HoldoutY))
	fmt.Printf("MAE: train %.3f, holdout %.3f (points); baseline, the season average: holdout %.3f\n",
		m.MAE(ds.TrainX, ds.TrainY), m.MAE(ds.HoldoutX, ds.HoldoutY), ds.BaselineHoldoutMAE())
	fmt.Printf("wrote %s (%d bytes)\n", out, buf.Len())
	return nil
}
