// Package nbadata finds the real NBA data (../shared/data/nba next to the
// module, or NBA_DATA_DIR) for tests and benchmarks. The data is never part
// of the project: it is read where it lies.
package nbadata

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/csv"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// Files are the data's two files.
type Files struct {
	Games string // games.csv.gz
	Lines string // lines.csv.gz
}

// Find returns the files, or "" paths and false when they are not there.
func Find() (Files, bool) {
	dir := os.Getenv("NBA_DATA_DIR")
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return Files{}, false
		}
		for d := wd; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				dir = filepath.Join(d, "..", "shared", "data", "nba")
				break
			}
			if filepath.Dir(d) == d {
				return Files{}, false
			}
		}
	}
	f := Files{Games: filepath.Join(dir, "games.csv.gz"), Lines: filepath.Join(dir, "lines.csv.gz")}
	for _, p := range []string{f.Games, f.Lines} {
		if _, err := os.Stat(p); err != nil {
			return Files{}, false
		}
	}
	return f, true
}

// Require returns the files; without them the test fails in CI (CI or
// PREDWORKER_REQUIRE_DATA set) and is skipped elsewhere.
func Require(t testing.TB) Files {
	t.Helper()
	f, ok := Find()
	if !ok {
		msg := "the NBA data is not at ../shared/data/nba (or NBA_DATA_DIR)"
		if os.Getenv("CI") != "" || os.Getenv("PREDWORKER_REQUIRE_DATA") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return f
}

// Filter writes a CSV file of the rows of a gzipped CSV that keep returns
// (possibly changed) for, with the header, and returns its path. keep
// returning nil drops the row.
func Filter(t testing.TB, path string, keep func(rec []string) []string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	cr := csv.NewReader(bufio.NewReader(zr))
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	for i := 0; ; i++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 {
			if rec = keep(rec); rec == nil {
				continue
			}
		}
		if err := w.Write(rec); err != nil {
			t.Fatal(err)
		}
	}
	w.Flush()
	out := filepath.Join(t.TempDir(), "filtered.csv")
	if err := errors.Join(w.Error(), os.WriteFile(out, buf.Bytes(), 0o600)); err != nil {
		t.Fatal(err)
	}
	return out
}
