package fleet

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"cloud.google.com/go/storage"
)

// GCS opens model files from Cloud Storage (gs://bucket/object); any other
// path is a local file, for trying the profile without a bucket. The client
// honours STORAGE_EMULATOR_HOST.
type GCS struct{ Client *storage.Client }

// Open implements Files.
func (g GCS) Open(ctx context.Context, path string) (io.ReadCloser, error) {
	rest, ok := strings.CutPrefix(path, "gs://")
	if !ok {
		return os.Open(path) // #nosec G304 -- the path comes from the operator's registry
	}
	bucket, object, ok := strings.Cut(rest, "/")
	if !ok || bucket == "" || object == "" {
		return nil, fmt.Errorf("%q is not gs://bucket/object", path)
	}
	return g.Client.Bucket(bucket).Object(object).NewReader(ctx)
}
