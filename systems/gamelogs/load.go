package gamelogs

import (
	"bufio"
	"compress/gzip"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"

	"golang.org/x/text/runes"
	"golang.org/x/text/transform"
	"golang.org/x/text/unicode/norm"
)

// GameColumns are the columns a game-log file must have (in any order; more
// are ignored).
var GameColumns = []string{"season", "game_date", "game_id", "player_id", "player_name", "team", "opponent",
	"home", "minutes", "points", "fga", "fta", "fg3a"}

// LineColumns are the columns a lines file must have.
var LineColumns = []string{"game_date", "player_id", "player_name", "line", "over_odds", "under_odds", "book"}

// openCSV opens path, gunzipping it when it starts with gzip's magic bytes,
// and returns a reader positioned after a header that has every column of
// want, with the column index of each.
func openCSV(path string, want []string) (*csv.Reader, map[string]int, func() error, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, nil, err
	}
	br := bufio.NewReaderSize(f, 1<<16)
	var r io.Reader = br
	closeAll := f.Close
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			_ = f.Close()
			return nil, nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		r = gz
		closeAll = func() error { return errors.Join(gz.Close(), f.Close()) }
	}
	cr := csv.NewReader(r)
	cr.ReuseRecord = true
	header, err := cr.Read()
	if err != nil {
		_ = closeAll()
		return nil, nil, nil, fmt.Errorf("%s: reading the header: %w", path, err)
	}
	cols := map[string]int{}
	for i, h := range header {
		cols[strings.TrimSpace(strings.TrimPrefix(h, "\ufeff"))] = i
	}
	var missing []string
	for _, c := range want {
		if _, ok := cols[c]; !ok {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		_ = closeAll()
		return nil, nil, nil, fmt.Errorf("%s: the header lacks %s (want %s)", path, strings.Join(missing, ", "), strings.Join(want, ","))
	}
	return cr, cols, closeAll, nil
}

// row reads named fields of one record, keeping the first parse error with
// its line and column.
type row struct {
	rec  []string
	cols map[string]int
	line int
	err  error
}

func (r *row) str(col string) string { return strings.TrimSpace(r.rec[r.cols[col]]) }

func (r *row) fail(col, msg string) {
	if r.err == nil {
		r.err = fmt.Errorf("line %d, %s: %s", r.line, col, msg)
	}
}

func (r *row) float(col string, lo, hi float64) float64 {
	s := r.str(col)
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < lo || v > hi {
		r.fail(col, fmt.Sprintf("%q is not a number from %g to %g", s, lo, hi))
	}
	return v
}

func (r *row) date(col string) string {
	s := r.str(col)
	if _, err := time.Parse(time.DateOnly, s); err != nil {
		r.fail(col, fmt.Sprintf("%q is not a YYYY-MM-DD date", s))
	}
	return s
}

// nonEmpty returns the field, failing when it is blank.
func (r *row) nonEmpty(col string) string {
	s := r.str(col)
	if s == "" {
		r.fail(col, "is empty")
	}
	return s
}

// Lookup turns a player's name into a lookup: letters and digits of the
// name, lower-cased, accents removed ("Luka Dončić" → "lukadoncic").
func Lookup(name string) string {
	t := transform.Chain(norm.NFD, runes.Remove(runes.In(unicode.Mn)), norm.NFC)
	plain, _, err := transform.String(t, name)
	if err != nil {
		plain = name
	}
	var b strings.Builder
	for _, c := range strings.ToLower(plain) {
		if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') {
			b.WriteRune(c)
		}
	}
	return b.String()
}
