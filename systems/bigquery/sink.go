package bigquery

import (
	"context"
	"errors"
	"fmt"
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
	fields  rowFields
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
	ts, err := adapt.BQSchemaToStorageTableSchema(PredictionSchema)
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
	fields, err := fieldsOf(md)
	if err != nil {
		return nil, err
	}
	return &Sink{writer: writer, query: query, schema: dp, message: md, fields: fields, timeout: o.CallTimeout,
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
	if err != nil {
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
		return "", rowErrors(op, rows, resp.GetRowErrors())
	} else if _, err := res.GetResult(ctx); err != nil {
		return "", classifyRPC(ctx, op+": append", errors.Join(err, rerr))
	}
	n, err := ms.Finalize(ctx)
	if err != nil {
		return "", classifyRPC(ctx, op+": finalize", err)
	}
	if n != int64(len(rows)) {
		return "", fmt.Errorf("%s: the finalized stream holds %d rows, not %d: %w", op, n, len(rows), systems.ErrUnavailable)
	}
	return ws.GetName(), nil
}

// Commit implements systems.Stager.
func (s *Sink) Commit(ctx context.Context, batchID, token string, players []string, rows int) error {
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
		"SELECT COUNT(*) AS n FROM "+s.sqlName+" WHERE batch_id = @batch_id AND player_lookup IN UNNEST(@players)",
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
func rowErrors(op string, rows []systems.Prediction, errs []*storagepb.RowError) error {
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
	return fmt.Errorf("%s: BigQuery refused rows (does the table still have the schema of deploy/bigquery/predictions_schema.json?): %s: %w",
		op, b.String(), systems.ErrPermanent)
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

// rowFields are the prediction message's fields, looked up once.
type rowFields struct {
	batchID, gameDate, gameID, player, system, points, confidence, recommendation, line, fallback,
	fallbackFrom, fallbackReason, producedBy, failed, failureReason, modelVersion, createdAt, epoch,
	writtenAt protoreflect.FieldDescriptor
}

func fieldsOf(md protoreflect.MessageDescriptor) (rowFields, error) {
	var f rowFields
	var missing []string
	get := func(name string) protoreflect.FieldDescriptor {
		fd := md.Fields().ByName(protoreflect.Name(name))
		if fd == nil {
			missing = append(missing, name)
		}
		return fd
	}
	f = rowFields{batchID: get("batch_id"), gameDate: get("game_date"), gameID: get("game_id"), player: get("player_lookup"),
		system: get("system_id"), points: get("predicted_points"), confidence: get("confidence"),
		recommendation: get("recommendation"), line: get("line"), fallback: get("fallback"),
		fallbackFrom: get("fallback_from"), fallbackReason: get("fallback_reason"), producedBy: get("produced_by"),
		failed: get("failed"), failureReason: get("failure_reason"), modelVersion: get("model_version"),
		createdAt: get("created_at"), epoch: get("epoch"), writtenAt: get("written_at")}
	if len(missing) > 0 {
		return f, fmt.Errorf("prediction schema lacks %s", strings.Join(missing, ", "))
	}
	return f, nil
}

// encode turns rows into the serialized proto messages the Write API takes.
func (s *Sink) encode(batchID string, epoch int64, rows []systems.Prediction) ([][]byte, error) {
	now := time.Now().UnixMicro()
	out := make([][]byte, len(rows))
	for i := range rows {
		r := &rows[i]
		if r.BatchID != batchID {
			return nil, fmt.Errorf("row for batch %q in a write for %q", r.BatchID, batchID)
		}
		d, err := civil.ParseDate(r.GameDate)
		if err != nil {
			return nil, fmt.Errorf("row %s/%s: game date %q: %w", r.PlayerLookup, r.SystemID, r.GameDate, err)
		}
		m := dynamicpb.NewMessage(s.message)
		f := &s.fields
		str := func(fd protoreflect.FieldDescriptor, v string) { m.Set(fd, protoreflect.ValueOfString(v)) }
		str(f.batchID, r.BatchID)
		m.Set(f.gameDate, protoreflect.ValueOfInt32(int32(d.DaysSince(civil.Date{Year: 1970, Month: 1, Day: 1}))))
		str(f.gameID, r.GameID)
		str(f.player, r.PlayerLookup)
		str(f.system, r.SystemID)
		m.Set(f.points, protoreflect.ValueOfFloat64(r.PredictedPoints))
		m.Set(f.confidence, protoreflect.ValueOfFloat64(r.Confidence))
		str(f.recommendation, string(r.Recommendation))
		if r.Line != nil {
			m.Set(f.line, protoreflect.ValueOfFloat64(*r.Line))
		}
		m.Set(f.fallback, protoreflect.ValueOfBool(r.Fallback))
		str(f.fallbackFrom, r.FallbackFrom)
		str(f.fallbackReason, r.FallbackReason)
		str(f.producedBy, r.ProducedBy)
		m.Set(f.failed, protoreflect.ValueOfBool(r.Failed))
		str(f.failureReason, r.FailureReason)
		str(f.modelVersion, r.ModelVersion)
		m.Set(f.createdAt, protoreflect.ValueOfInt64(r.CreatedAt.UnixMicro()))
		m.Set(f.epoch, protoreflect.ValueOfInt64(epoch))
		m.Set(f.writtenAt, protoreflect.ValueOfInt64(now))
		b, err := proto.Marshal(m)
		if err != nil {
			return nil, fmt.Errorf("encode row %s/%s: %w", r.PlayerLookup, r.SystemID, err)
		}
		out[i] = b
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
	for _, f := range PredictionSchema {
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
		return fmt.Errorf("predictions table %s does not have deploy/bigquery/predictions_schema.json: %s: %w",
			name, strings.Join(wrong, "; "), systems.ErrPermanent)
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
