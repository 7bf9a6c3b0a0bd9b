package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/predworker/predworker/internal/nbadata"
	"github.com/predworker/predworker/systems/treemodel"
)

// subset writes the real game logs from fromSeason on whose date is before
// cut.
func subset(t *testing.T, games, fromSeason, cut string) string {
	t.Helper()
	return nbadata.Filter(t, games, func(rec []string) []string {
		if rec[0] >= fromSeason && rec[1] < cut {
			return rec
		}
		return nil
	})
}

// A model of real games is deterministic, and depends on the games before
// --until only: trained from a file that goes on past that date, or from
// one that stops there, it is the same file, byte for byte; and it loads as
// xgboost_v1 over the real-data inputs.
func TestRealModelIsWalkForwardAndDeterministic(t *testing.T) {
	data := nbadata.Require(t)
	const until = "2023-12-01"
	long := subset(t, data.Games, "2022-23", "2024-03-01")
	short := subset(t, data.Games, "2022-23", until)
	dir := t.TempDir()
	var models [][]byte
	for i, games := range []string{long, short} {
		out := filepath.Join(dir, []string{"a.txt", "b.txt"}[i])
		var stdout bytes.Buffer
		if err := run([]string{"--games", games, "--until", until, "--out", out, "--trees", "30", "--depth", "3"}, &stdout); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(stdout.String(), "validated on 2023-24") {
			t.Fatalf("trained: %s", stdout.String())
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		models = append(models, b)
	}
	// Two separate fits agreeing byte for byte also shows the fit is
	// deterministic.
	if !bytes.Equal(models[0], models[1]) {
		t.Fatal("the model depends on games on or after --until, or two fits of the same games differ")
	}
	m, err := treemodel.Load(bytes.NewReader(models[0]), "test")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(m.Inputs(), ","); got != strings.Join(treemodel.RealFeatureNames, ",") {
		t.Fatalf("inputs %s", got)
	}
}

// A model of real data is never written into the repository.
func TestRefusesToWriteIntoTheRepository(t *testing.T) {
	err := run([]string{"--games", "x.csv", "--until", "2024-10-01", "--out", "model.txt"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "inside the repository") {
		t.Fatalf("--out inside the repository: %v", err)
	}
	for _, args := range [][]string{{"--games", "x.csv", "--out", "/tmp/m.txt"}, {"--until", "2024-10-01"},
		{"--games", "x.csv", "--until", "2024-10-01"}} {
		if err := run(args, io.Discard); err == nil {
			t.Errorf("trainmodel %v was accepted", args)
		}
	}
}
