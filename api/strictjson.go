package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
)

// decodeStrict decodes exactly one JSON object of raw into dst: unknown
// fields, wrong types, trailing data, duplicate keys and case-variant keys
// are errors (*Error, invalid_argument, with the field).
func decodeStrict(raw []byte, dst any, fields []string) *Error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalid("", "request body must hold a single JSON object")
	}
	// raw is valid JSON now: the walk can only find key problems.
	var ae *Error
	if err := checkKeys(raw, fields); errors.As(err, &ae) {
		return ae
	} else if err != nil {
		return invalid("", "request body could not be decoded: "+err.Error())
	}
	return nil
}

// checkKeys rejects what encoding/json silently accepts: a key that appears
// twice in one object (json keeps the last) and, in the top-level object, a
// key that matches a field only case-insensitively (json matches "GAME_DATE"
// to game_date). fields lists the exact top-level keys; nil allows any (the
// push envelope, where Pub/Sub may add fields).
func checkKeys(data []byte, fields []string) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	return walkValue(dec, fields, "")
}

// walkValue reads one value; objects have their keys checked.
func walkValue(dec *json.Decoder, fields []string, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return err
			}
			key, _ := kt.(string)
			where := key
			if path != "" {
				where = path + "." + key
			}
			switch {
			case seen[key]:
				return invalid(where, "duplicate key "+strconv.Quote(where))
			case fields != nil && !slices.Contains(fields, key):
				return invalid(where, "unknown field "+strconv.Quote(where)+" (field names are case-sensitive)")
			}
			seen[key] = true
			if err := walkValue(dec, nil, where); err != nil {
				return err
			}
		}
		_, err = dec.Token() // '}'
		return err
	case json.Delim('['):
		for i := 0; dec.More(); i++ {
			if err := walkValue(dec, nil, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		_, err = dec.Token() // ']'
		return err
	}
	return nil
}

// batchRequestFields are the exact keys of a batch request.
var batchRequestFields = jsonFields[BatchRequest]()

// jsonFields lists the JSON names of T's fields.
func jsonFields[T any]() []string {
	var v T
	b, _ := json.Marshal(v) // a struct of plain fields always marshals
	var m map[string]json.RawMessage
	_ = json.Unmarshal(b, &m)
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
