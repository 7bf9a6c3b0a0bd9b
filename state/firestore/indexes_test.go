package firestore_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/firestore/apiv1/firestorepb"
	"github.com/jonboulle/clockwork"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/predworker/predworker/internal/emulator"
	"github.com/predworker/predworker/internal/indexfile"
	"github.com/predworker/predworker/state"
	"github.com/predworker/predworker/state/firestore"
	"github.com/predworker/predworker/state/statetest"
)

// shapes records the structured queries a store sends, as the composite
// index each one needs ("" when a single-field index is enough).
type shapes struct {
	mu    sync.Mutex
	needs map[string]string // index → an example query, for the message
}

func (s *shapes) record(q *firestorepb.StructuredQuery) {
	if q == nil || len(q.GetFrom()) == 0 {
		return
	}
	coll := testPrefix.ReplaceAllString(q.GetFrom()[0].GetCollectionId(), "")
	var eq, ineq []string
	var walk func(f *firestorepb.StructuredQuery_Filter)
	walk = func(f *firestorepb.StructuredQuery_Filter) {
		switch {
		case f.GetCompositeFilter() != nil:
			for _, sub := range f.GetCompositeFilter().GetFilters() {
				walk(sub)
			}
		case f.GetFieldFilter() != nil:
			ff := f.GetFieldFilter()
			name := ff.GetField().GetFieldPath()
			switch ff.GetOp() {
			case firestorepb.StructuredQuery_FieldFilter_EQUAL, firestorepb.StructuredQuery_FieldFilter_IN,
				firestorepb.StructuredQuery_FieldFilter_ARRAY_CONTAINS:
				eq = append(eq, name+":ASCENDING")
			default:
				ineq = append(ineq, name)
			}
		}
	}
	if q.GetWhere() != nil {
		walk(q.GetWhere())
	}
	fields := slices.Clone(eq)
	seen := map[string]bool{}
	for _, f := range eq {
		seen[strings.Split(f, ":")[0]] = true
	}
	for _, o := range q.GetOrderBy() {
		name := o.GetField().GetFieldPath()
		if seen[name] || name == "__name__" {
			continue
		}
		seen[name] = true
		fields = append(fields, name+":"+o.GetDirection().String())
	}
	for _, f := range ineq { // an inequality without an order on it sorts ascending
		if !seen[f] {
			seen[f] = true
			fields = append(fields, f+":ASCENDING")
		}
	}
	if len(fields) < 2 {
		return // a single-field index, which Firestore keeps by itself
	}
	key := coll + " " + strings.Join(fields, ",")
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.needs[key]; !ok {
		s.needs[key] = q.String()
	}
}

// recordingStream passes a query RPC through and records its request.
type recordingStream struct {
	grpc.ClientStream
	s *shapes
}

func (r *recordingStream) SendMsg(m any) error {
	switch req := m.(type) {
	case *firestorepb.RunQueryRequest:
		r.s.record(req.GetStructuredQuery())
	case *firestorepb.RunAggregationQueryRequest:
		r.s.record(req.GetStructuredAggregationQuery().GetStructuredQuery())
	}
	return r.ClientStream.SendMsg(m)
}

// TestIndexesCoverEveryQuery runs the conformance suite on a store whose
// queries are recorded at the gRPC layer, derives the composite index each
// query shape needs, and fails unless firestore.indexes.json declares it.
// (The emulator does not enforce indexes; production answers a query that
// lacks one with FAILED_PRECONDITION.) deploy.TestSetupRunsEndToEnd checks
// that setup.sh creates every index of the file, with and without a
// collection prefix; here the suite's own prefixes are stripped, so the
// shapes are checked with a prefix in use.
func TestIndexesCoverEveryQuery(t *testing.T) {
	emulator.SkipOrFail(t, skip)
	rec := &shapes{needs: map[string]string{}}
	newRecorded := func(t *testing.T, clock clockwork.Clock) state.Store {
		t.Helper()
		prefix := fmt.Sprintf("ix%d_", seq.Add(1))
		// The client dials the emulator itself, ignoring dial options: give it
		// a connection of ours (the store closes it), with the emulator's
		// credentials and a recorder.
		conn, err := grpc.NewClient(os.Getenv("FIRESTORE_EMULATOR_HOST"),
			grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(emulatorOwner{}),
			grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
				streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
				cs, err := streamer(ctx, desc, cc, method, opts...)
				if err != nil {
					return cs, err
				}
				return &recordingStream{ClientStream: cs, s: rec}, nil
			}))
		if err != nil {
			t.Fatal(err)
		}

		s, err := firestore.New(t.Context(), firestore.Options{Project: emulator.Project, Prefix: prefix, Clock: clock,
			ServerTime:    func(time.Time) time.Time { return clock.Now() },
			ClientOptions: []option.ClientOption{option.WithGRPCConn(conn)}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	t.Run("suite", func(t *testing.T) { statetest.Run(t, newRecorded) })

	file := indexfile.Read(t, "../..")
	declared := map[string]bool{}
	for _, ix := range file.Indexes {
		var fields []string
		for _, f := range ix.Fields {
			fields = append(fields, f.FieldPath+":"+f.Order)
		}
		declared[ix.CollectionGroup+" "+strings.Join(fields, ",")] = true
	}
	if len(rec.needs) < 3 {
		t.Fatalf("only %d query shapes recorded: %v", len(rec.needs), rec.needs)
	}
	for need, example := range rec.needs {
		if !declared[need] {
			t.Errorf("the store queries %s, which needs the composite index %q that firestore.indexes.json lacks\nquery: %s",
				strings.Fields(need)[0], need, example)
		}
	}
	t.Logf("%d query shapes needing a composite index, all declared: %v", len(rec.needs), slices.Sorted(maps.Keys(rec.needs)))
}

// emulatorOwner is the credential the emulator expects ("Bearer owner").
type emulatorOwner struct{}

func (emulatorOwner) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer owner"}, nil
}

func (emulatorOwner) RequireTransportSecurity() bool { return false }

// testPrefix matches the collection prefixes of this test's stores.
var testPrefix = regexp.MustCompile(`^ix[0-9]+_`)
