// Package indexfile reads firestore.indexes.json, the Firestore indexes,
// exemptions and TTL policies the deployment creates, for the tests that
// check it against the store's queries and against deploy/setup.sh.
package indexfile

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// File is firestore.indexes.json.
type File struct {
	Indexes        []Index    `json:"indexes"`
	FieldOverrides []Override `json:"fieldOverrides"`
}

// Index is one composite index.
type Index struct {
	CollectionGroup string  `json:"collectionGroup"`
	Fields          []Field `json:"fields"`
}

// Field is one field of a composite index.
type Field struct {
	FieldPath string `json:"fieldPath"`
	Order     string `json:"order"`
}

// Override is a single-field setting: a TTL policy, or an exemption (no
// indexes).
type Override struct {
	CollectionGroup string           `json:"collectionGroup"`
	FieldPath       string           `json:"fieldPath"`
	TTL             bool             `json:"ttl"`
	Indexes         []map[string]any `json:"indexes"`
}

// Read reads firestore.indexes.json from root, the module's directory
// relative to the calling test.
func Read(t testing.TB, root string) File {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "firestore.indexes.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f File
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	return f
}
