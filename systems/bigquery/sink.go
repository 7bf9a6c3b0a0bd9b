package bigquery

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"cloud.google.com/go/bigquery/storage/managedwriter"
	"cloud.google.com/go/bigquery/storage/managedwriter/adapt"
	"cloud.google.com/go/civil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/predworker/predworker/systems"
)

// SinkOptions configures the BigQuery prediction sink.
type SinkOptions struct {
	Project, Dataset, Table string        // the predictions table (deploy/bigquery/predictions_schema.json)
	CallTimeout             time.Duration // per call (default 30 s)
	// Rows, when set, is another table's row format (a pipeline profile's
	// output table); nil writes the rows of PredictionSchema.
	Rows *RowFormat
}

// RowFormat is a table's rows: its schema and how a prediction becomes a
// row. The schema needs a batch_id column (the verification query of a
// stream BigQuery no longer knows counts a chunk's rows by it).
type RowFormat struct {
	Schema bigquery.Schema
	// SchemaFile names where operators find the schema, for messages.
	SchemaFile string
	// Row returns a prediction's columns by name; nil leaves the
	// prediction out of the table (its count travels in the stage's
	// token). Values: nil (NULL), string, float64 (also for NUMERIC),
	// int64, bool, civil.Date, time.Time, []int64.
	Row func(p *systems.Prediction, epoch int64, writtenAt time.Time) (map[string]any, error)
}

// Sink writes predictions with the BigQuery Storage Write API, exactly once
// by construction (it implements systems.Stager):
//
//  1. Stage: each chunk's rows go into a new PENDING write stream (appended
//     at offset 0, then finalized). Rows of a pending stream are invisible
//     until the stream is committed.
//  2. The engine records the stream's name in the chunk's checkpoint
//     (fenced by the lease epoch).
//  3. Commit: BatchCommitWriteStreams makes the rows visible, atomically.
//     "Already committed" is success, so the commit is repeated safely
//     after a crash (a resumed run commits the last checkpointed stream).
//
// A chunk whose rows were staged but never checkpointed (the owner crashed,
// or lost its lease to another that computed the chunk again) is never
// committed: only the streams named in checkpoints become rows, so the table
// holds exactly one row per key, and exactly the rows the counters counted.
// An append that timed out on the client but landed on the server leaves an
// uncommitted stream behind the same way: the retry stages a new stream.
//
// If BigQuery no longer knows a checkpointed stream at commit (it expired
// while the batch sat unclaimed), the table is asked whether the chunk's
// rows are there (a parameterized COUNT): all of them means it was committed
// before; none means they were lost (systems.ErrStagedRowsLost: the batch
// fails naming the chunk, nothing is duplicated).
type Sink struct {
	writer  *managedwriter.Client
	query   *bigquery.Client
	parent  string    // projects/P/datasets/D/tables/T
	sqlName string    // `P.D.T`
	table   [3]string // project, dataset, table
	schema  *descriptorpb.DescriptorProto
	message protoreflect.MessageDescriptor
	rows    RowFormat
	timeout time.Duration
}

var _ systems.Stager = (*Sink)(nil)

// PredictionSchema is the predictions table's schema (the same as
// deploy/bigquery/predictions_schema.json; a test keeps them equal).
var PredictionSchema = bigquery.Schema{
	{Name: "batch_id", Type: bigquery.StringFieldType, Required: true},
	{Name: "game_date", Type: bigquery.DateFieldType, Required: true},
	{Name: "game_id", Type: bigquery.StringFieldType},
	{Name: "player_lookup", Type: bigquery.StringFieldType, Required: true},
	{Name: "system_id", Type: bigquery.StringFieldType, Required: true},
	{Name: "predicted_points", Type: bigquery.FloatFieldType, Required: true},
	{Name: "confidence", Type: bigquery.FloatFieldType, Required: true},
	{Name: "recommendation", Type: bigquery.StringFieldType, Required: true},
	{Name: "line", Type: bigquery.FloatFieldType},
	{Name: "fallback", Type: bigquery.BooleanFieldType, Required: true},
	{Name: "fallback_from", Type: bigquery.StringFieldType},
	{Name: "fallback_reason", Type: bigquery.StringFieldType},
	{Name: "produced_by", Type: bigquery.StringFieldType},
	{Name: "failed", Type: bigquery.BooleanFieldType, Required: true},
	{Name: "failure_reason", Type: bigquery.StringFieldType},
	{Name: "model_version", Type: bigquery.StringFieldType},
	{Name: "created_at", Type: bigquery.TimestampFieldType, Required: true},
	{Name: "epoch", Type: bigquery.IntegerFieldType, Required: true},
	{Name: "written_at", Type: bigquery.TimestampFieldType, Required: true},
}

// NewSink returns the sink. writer talks to the Storage Write API; query
// runs the verification query of a stream BigQuery no longer knows.
func NewSink(writer *managedwriter.Client, query *bigquery.Client, o SinkOptions) (*Sink, error) {
	if err := (Options{TableProject: o.Project, Dataset: o.Dataset, Table: o.Table}).ValidateIdentifiers(); err != nil {
		return nil, err
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = 30 * time.Second
	}
	rf := predictionRows
	if o.Rows != nil {
		rf = *o.Rows
	}
	if !slices.ContainsFunc(rf.Schema, func(f *bigquery.FieldSchema) bool { return f.Name == "batch_id" }) {
		return nil, fmt.Errorf("the rows of %s need a batch_id column", o.Table)
	}
	ts, err := adapt.BQSchemaToStorageTableSchema(rf.Schema)
	if err != nil {
		return nil, fmt.Errorf("prediction schema: %w", err)
	}
	desc, err := adapt.StorageSchemaToProto2Descriptor(ts, "prediction")
	if err != nil {
		return nil, fmt.Errorf("prediction schema: %w", err)
	}
	md, ok := desc.(protoreflect.MessageDescriptor)
	if !ok {
		return nil, fmt.Errorf("prediction schema: %T is not a message descriptor", desc)
	}
	dp, err := adapt.NormalizeDescriptor(md)
	if err != nil {
		return nil, fmt.Errorf("prediction schema: %w", err)
	}
	return &Sink{writer: writer, query: query, schema: dp, message: md, rows: rf, timeout: o.CallTimeout,
		parent:  managedwriter.TableParentFromParts(o.Project, o.Dataset, o.Table),
		sqlName: fmt.Sprintf("`%s.%s.%s`", o.Project, o.Dataset, o.Table), table: [3]string{o.Project, o.Dataset, o.Table}}, nil
}

// Write implements systems.Sink for completeness: stage and commit at once
// (the engine uses Stage and Commit around the checkpoint instead).
func (s *Sink) Write(ctx context.Context, batchID string, epoch int64, rows []systems.Prediction) error {
	token, err := s.Stage(ctx, batchID, epoch, rows)
	if err != nil || token == "" {
		return err
	}
	players := make([]string, 0, len(rows))
	for _, r := range rows {
		players = append(players, r.PlayerLookup)
	}
	return s.Commit(ctx, batchID, token, systems.SortedUnique(players), len(rows))
}

// Stage implements systems.Stager: a new pending stream holding rows,
// finalized. Its name is the token.
func (s *Sink) Stage(ctx context.Context, batchID string, epoch int64, rows []systems.Prediction) (string, error) {
	if len(rows) == 0 {
		return "", nil
	}
	data, err := s.encode(batchID, epoch, rows)
	if err != nil || len(data) == 0 {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	op := fmt.Sprintf("stage %d rows of %s", len(rows), batchID)
	ws, err := s.writer.CreateWriteStream(ctx, &storagepb.CreateWriteStreamRequest{Parent: s.parent,
		WriteStream: &storagepb.WriteStream{Type: storagepb.WriteStream_PENDING}})
	if err != nil {
		return "", classifyRPC(ctx, op+": create stream", err)
	}
	ms, err := s.writer.NewManagedStream(ctx, managedwriter.WithStreamName(ws.GetName()),
		managedwriter.WithSchemaDescriptor(s.schema), managedwriter.EnableWriteRetries(false))
	if err != nil {
		return "", classifyRPC(ctx, op+": open stream", err)
	}
	defer func() { _ = ms.Close() }()
	res, err := ms.AppendRows(ctx, data, managedwriter.WithOffset(0))
	if err != nil {
		return "", classifyRPC(ctx, op+": append", err)
	}
	if resp, rerr := res.FullResponse(ctx); len(resp.GetRowErrors()) > 0 {
		return "", rowErrors(op, s.rows.SchemaFile, rows, resp.GetRowErrors())
	} else if _, err := res.GetResult(ctx); err != nil {
		return "", classifyRPC(ctx, op+": append", errors.Join(err, rerr))
	}
	n, err := ms.Finalize(ctx)
	if err != nil {
		return "", classifyRPC(ctx, op+": finalize", err)
	}
	if n != int64(len(data)) {
		return "", fmt.Errorf("%s: the finalized stream holds %d rows, not %d: %w", op, n, len(data), systems.ErrUnavailable)
	}
	if len(data) != len(rows) {
		// Some predictions are not rows of this table: the token carries
		// how many are, for the verification of a forgotten stream.
		return fmt.Sprintf("%s#%d", ws.GetName(), len(data)), nil
	}
	return ws.GetName(), nil
}

// parseToken splits a stage token into the stream's name and, when the
// stage left predictions out, its row count (else rows).
func parseToken(token string, rows int) (string, int, error) {
	name, count, ok := strings.Cut(token, "#")
	if !ok {
		return token, rows, nil
	}
	n, err := strconv.Atoi(count)
	if err != nil || n < 0 {
		return "", 0, fmt.Errorf("stage token %q: bad row count: %w", token, systems.ErrPermanent)
	}
	return name, n, nil
}

// Commit implements systems.Stager.
func (s *Sink) Commit(ctx context.Context, batchID, token string, players []string, rows int) error {
	token, rows, err := parseToken(token, rows)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	op := "commit " + token
	resp, err := s.writer.BatchCommitWriteStreams(ctx, &storagepb.BatchCommitWriteStreamsRequest{Parent: s.parent,
		WriteStreams: []string{token}})
	if status.Code(err) == codes.NotFound {
		return s.verify(ctx, op, batchID, players, rows)
	}
	if err != nil {
		return classifyRPC(ctx, op, err)
	}
	for _, se := range resp.GetStreamErrors() {
		switch se.GetCode() {
		case storagepb.StorageError_STREAM_ALREADY_COMMITTED:
			return nil
		case storagepb.StorageError_STREAM_NOT_FOUND:
			return s.verify(ctx, op, batchID, players, rows)
		default:
			return fmt.Errorf("%s: %s: %s: %w", op, se.GetCode(), se.GetErrorMessage(), systems.ErrPermanent)
		}
	}
	if resp.GetCommitTime() == nil {
		return fmt.Errorf("%s: no commit time and no error: %w", op, systems.ErrUnavailable)
	}
	return nil
}

// verify asks the table whether a chunk whose stream BigQuery no longer
// knows was committed: all its rows there means yes, none means they were
// lost.
func (s *Sink) verify(ctx context.Context, op, batchID string, players []string, rows int) error {
	var n int64
	err := runQuery(ctx, s.query, s.timeout, op+": count the chunk's rows",
		"-- predworker:count\nSELECT COUNT(*) AS n FROM "+s.sqlName+" WHERE batch_id = @batch_id AND player_lookup IN UNNEST(@players)",
		[]bigquery.QueryParameter{{Name: "batch_id", Value: batchID}, {Name: "players", Value: players}},
		func(it *bigquery.RowIterator) error {
			var row struct {
				N int64 `bigquery:"n"`
			}
			if err := it.Next(&row); err != nil {
				return err
			}
			n = row.N
			return nil
		})
	switch {
	case err != nil:
		return err
	case n == int64(rows):
		return nil // committed before; the stream's metadata is gone since
	case n == 0:
		return fmt.Errorf("%s: the stream is gone and the table has none of the chunk's %d rows: %w", op, rows, systems.ErrStagedRowsLost)
	}
	return fmt.Errorf("%s: the table holds %d of the chunk's %d rows: %w", op, n, rows, systems.ErrPermanent)
}

// rowErrors names the rows and columns BigQuery refused (the schema
// drifted): permanent, retrying sends the same rows again.
func rowErrors(op, schemaFile string, rows []systems.Prediction, errs []*storagepb.RowError) error {
	var b strings.Builder
	for i, re := range errs {
		if i == 3 {
			fmt.Fprintf(&b, "; and %d more", len(errs)-3)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		key := ""
		if idx := int(re.GetIndex()); idx >= 0 && idx < len(rows) {
			key = fmt.Sprintf(" (%s/%s)", rows[idx].PlayerLookup, rows[idx].SystemID)
		}
		fmt.Fprintf(&b, "row %d%s: %s", re.GetIndex(), key, re.GetMessage())
	}
	return fmt.Errorf("%s: BigQuery refused rows (does the table still have the schema of %s?): %s: %w",
		op, schemaFile, b.String(), systems.ErrPermanent)
}

// classifyRPC wraps a Storage Write API error so the engine knows whether to
// retry: a server that cannot be reached in time is transient; a missing
// table, a refused request or a permission is permanent.
func classifyRPC(ctx context.Context, op string, err error) error {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted, codes.Internal, codes.Canceled:
		return fmt.Errorf("%s: %w: %w", op, systems.ErrUnavailable, err)
	case codes.InvalidArgument, codes.NotFound, codes.PermissionDenied, codes.FailedPrecondition, codes.Unauthenticated,
		codes.OutOfRange, codes.AlreadyExists:
		return fmt.Errorf("%s: %w: %w", op, systems.ErrPermanent, err)
	}
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		return fmt.Errorf("%s: %w: %w", op, systems.ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w: %w", op, systems.ErrUnavailable, err)
}

// predictionRows is the format of the predictions table of
// deploy/bigquery/predictions_schema.json: every prediction, failure
// records included.
var predictionRows = RowFormat{Schema: PredictionSchema, SchemaFile: "deploy/bigquery/predictions_schema.json",
	Row: func(r *systems.Prediction, epoch int64, writtenAt time.Time) (map[string]any, error) {
		d, err := civil.ParseDate(r.GameDate)
		if err != nil {
			return nil, fmt.Errorf("game date %q: %w", r.GameDate, err)
		}
		row := map[string]any{"batch_id": r.BatchID, "game_date": d, "game_id": r.GameID,
			"player_lookup": r.PlayerLookup, "system_id": r.SystemID, "predicted_points": r.PredictedPoints,
			"confidence": r.Confidence, "recommendation": string(r.Recommendation), "fallback": r.Fallback,
			"fallback_from": r.FallbackFrom, "fallback_reason": r.FallbackReason, "produced_by": r.ProducedBy,
			"failed": r.Failed, "failure_reason": r.FailureReason, "model_version": r.ModelVersion,
			"created_at": r.CreatedAt, "epoch": epoch, "written_at": writtenAt}
		if r.Line != nil {
			row["line"] = *r.Line
		}
		return row, nil
	}}

// encode turns rows into the serialized proto messages the Write API takes
// (the predictions the row format leaves out are not among them).
func (s *Sink) encode(batchID string, epoch int64, rows []systems.Prediction) ([][]byte, error) {
	now := time.Now()
	out := make([][]byte, 0, len(rows))
	for i := range rows {
		r := &rows[i]
		if r.BatchID != batchID {
			return nil, fmt.Errorf("row for batch %q in a write for %q", r.BatchID, batchID)
		}
		vals, err := s.rows.Row(r, epoch, now)
		if err != nil {
			return nil, fmt.Errorf("row %s/%s: %w: %w", r.PlayerLookup, r.SystemID, err, systems.ErrPermanent)
		}
		if vals == nil {
			continue
		}
		m := dynamicpb.NewMessage(s.message)
		for name, v := range vals {
			fd := s.message.Fields().ByName(protoreflect.Name(name))
			if fd == nil {
				return nil, fmt.Errorf("row %s/%s: column %s is not in the schema: %w", r.PlayerLookup, r.SystemID, name, systems.ErrPermanent)
			}
			if err := setField(m, fd, v); err != nil {
				return nil, fmt.Errorf("row %s/%s: column %s: %w: %w", r.PlayerLookup, r.SystemID, name, err, systems.ErrPermanent)
			}
		}
		b, err := proto.Marshal(m)
		if err != nil {
			return nil, fmt.Errorf("encode row %s/%s: %w", r.PlayerLookup, r.SystemID, err)
		}
		out = append(out, b)
	}
	return out, nil
}

var epochDay = civil.Date{Year: 1970, Month: 1, Day: 1}

// setField sets one column of a row message from a Go value, in the
// encoding the Storage Write API takes for the column's type.
func setField(m *dynamicpb.Message, fd protoreflect.FieldDescriptor, v any) error {
	var pv protoreflect.Value
	want := fd.Kind()
	switch x := v.(type) {
	case nil:
		return nil
	case string:
		pv, want = protoreflect.ValueOfString(x), protoreflect.StringKind
	case float64:
		if fd.Kind() != protoreflect.BytesKind {
			pv, want = protoreflect.ValueOfFloat64(x), protoreflect.DoubleKind
			break
		}
		b, err := NumericBytes(x) // a NUMERIC column
		if err != nil {
			return err
		}
		pv = protoreflect.ValueOfBytes(b)
	case int64:
		pv, want = protoreflect.ValueOfInt64(x), protoreflect.Int64Kind
	case bool:
		pv, want = protoreflect.ValueOfBool(x), protoreflect.BoolKind
	case civil.Date:
		pv, want = protoreflect.ValueOfInt32(int32(x.DaysSince(epochDay))), protoreflect.Int32Kind
	case time.Time:
		pv, want = protoreflect.ValueOfInt64(x.UnixMicro()), protoreflect.Int64Kind
	case []int64:
		if !fd.IsList() || fd.Kind() != protoreflect.Int64Kind {
			return fmt.Errorf("a list of integers does not fit a %s column", fd.Kind())
		}
		l := m.NewField(fd).List()
		for _, e := range x {
			l.Append(protoreflect.ValueOfInt64(e))
		}
		m.Set(fd, protoreflect.ValueOfList(l))
		return nil
	default:
		return fmt.Errorf("a %T cannot be written", v)
	}
	if fd.Kind() != want || fd.IsList() {
		return fmt.Errorf("a %T does not fit a %s column", v, fd.Kind())
	}
	m.Set(fd, pv)
	return nil
}

// NumericBytes encodes v as a BigQuery NUMERIC for the Storage Write API:
// the value scaled by 10^9, as a little-endian two's-complement integer.
func NumericBytes(v float64) ([]byte, error) {
	if math.IsNaN(v) || math.IsInf(v, 0) || math.Abs(v) >= 1e29 {
		return nil, fmt.Errorf("%g is not a NUMERIC", v)
	}
	n, ok := new(big.Int).SetString(strings.Replace(strconv.FormatFloat(v, 'f', 9, 64), ".", "", 1), 10)
	if !ok {
		return nil, fmt.Errorf("%g is not a NUMERIC", v)
	}
	neg := n.Sign() < 0
	if neg { // two's complement: 2^(8k) - |n|
		k := (n.BitLen()/8 + 1)
		n.Add(new(big.Int).Lsh(big.NewInt(1), uint(8*k)), n)
	}
	be := n.Bytes()
	if !neg && (len(be) == 0 || be[0]&0x80 != 0) {
		be = append([]byte{0}, be...)
	}
	out := make([]byte, len(be))
	for i, b := range be {
		out[len(be)-1-i] = b
	}
	return out, nil
}

// Check verifies that the predictions table exists with PredictionSchema's
// columns and types (for `worker doctor`): rows of a drifted table would be
// refused at the first chunk.
func (s *Sink) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	name := strings.Join(s.table[:], ".")
	md, err := s.query.DatasetInProject(s.table[0], s.table[1]).Table(s.table[2]).Metadata(ctx)
	if err != nil {
		return classify(ctx, "predictions table "+name, err)
	}
	have := map[string]*bigquery.FieldSchema{}
	for _, f := range md.Schema {
		have[f.Name] = f
	}
	want := map[string]bool{}
	var wrong []string
	for _, f := range s.rows.Schema {
		want[f.Name] = true
		t, ok := have[f.Name]
		switch {
		case !ok:
			wrong = append(wrong, f.Name+" missing")
		case canonicalType(t.Type) != f.Type:
			wrong = append(wrong, fmt.Sprintf("%s is %s, not %s", f.Name, t.Type, f.Type))
		case t.Required && !f.Required:
			wrong = append(wrong, f.Name+" is REQUIRED but may be null")
		}
	}
	for _, f := range md.Schema {
		if f.Required && !want[f.Name] {
			wrong = append(wrong, f.Name+" is REQUIRED but never written")
		}
	}
	if len(wrong) > 0 {
		return fmt.Errorf("predictions table %s does not have the schema of %s: %s: %w",
			name, s.rows.SchemaFile, strings.Join(wrong, "; "), systems.ErrPermanent)
	}
	return nil
}

// canonicalType maps the Standard SQL names the API also answers with
// (FLOAT64, INT64, BOOL, STRUCT) to the client's type names.
func canonicalType(t bigquery.FieldType) bigquery.FieldType {
	switch t {
	case "FLOAT64":
		return bigquery.FloatFieldType
	case "INT64":
		return bigquery.IntegerFieldType
	case "BOOL":
		return bigquery.BooleanFieldType
	case "STRUCT":
		return bigquery.RecordFieldType
	}
	return t
}
