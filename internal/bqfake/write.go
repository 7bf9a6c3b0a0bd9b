// Package bqfake holds BigQuery test doubles: an in-process Storage Write
// API server (Write) and a REST query endpoint that answers from tables the
// test fills (Query). Tests of the BigQuery adapters, and end-to-end tests
// that point the real binary at them, use them; nothing else does.
package bqfake

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"sync"

	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"cloud.google.com/go/bigquery/storage/managedwriter"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// TB is the part of testing.TB the doubles use.
type TB interface {
	Helper()
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Cleanup(func())
	Context() context.Context
}

// Write is an in-process BigQueryWrite server with the documented
// semantics of pending streams: appends at an offset (ALREADY_EXISTS for an
// offset already written, OUT_OF_RANGE beyond the end), finalize, and an
// atomic BatchCommitWriteStreams (STREAM_ALREADY_COMMITTED,
// STREAM_NOT_FOUND, INVALID_STREAM_STATE). Committed rows land in table,
// decoded with the writer's schema.
type Write struct {
	storagepb.UnimplementedBigQueryWriteServer
	t  TB
	mu sync.Mutex
	// streams by name; table holds the committed rows.
	streams map[string]*stream
	table   []map[string]any
	seq     int
	// Faults (set with Fault): dropAck swallows the answer of this many
	// appends (the rows land; the client hears nothing and times out);
	// rowError refuses every row naming this column; failCommit answers
	// this many commits with Unavailable.
	dropAck    int
	rowError   string
	failCommit int
	commits    int
}

// Faults are the failures a Write server injects.
type Faults struct {
	DropAcks    int    // appends whose rows land but whose answer is lost
	RefuseRows  string // refuse every row, naming this column
	FailCommits int    // commits answered Unavailable
}

// Fault sets the failures to inject from now on.
func (f *Write) Fault(x Faults) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dropAck, f.rowError, f.failCommit = x.DropAcks, x.RefuseRows, x.FailCommits
}

type stream struct {
	rows      [][]byte
	schema    *descriptorpb.DescriptorProto
	finalized bool
	committed bool
}

func (f *Write) CreateWriteStream(_ context.Context, req *storagepb.CreateWriteStreamRequest) (*storagepb.WriteStream, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if req.GetWriteStream().GetType() != storagepb.WriteStream_PENDING {
		return nil, status.Error(codes.InvalidArgument, "this fake serves pending streams")
	}
	f.seq++
	name := fmt.Sprintf("%s/streams/s%d", req.GetParent(), f.seq)
	if f.streams == nil {
		f.streams = map[string]*stream{}
	}
	f.streams[name] = &stream{}
	return &storagepb.WriteStream{Name: name, Type: storagepb.WriteStream_PENDING, CreateTime: timestamppb.Now()}, nil
}

func (f *Write) GetWriteStream(_ context.Context, req *storagepb.GetWriteStreamRequest) (*storagepb.WriteStream, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.streams[req.GetName()]; !ok {
		return nil, status.Error(codes.NotFound, "no such stream")
	}
	return &storagepb.WriteStream{Name: req.GetName(), Type: storagepb.WriteStream_PENDING}, nil
}

func (f *Write) AppendRows(srv storagepb.BigQueryWrite_AppendRowsServer) error {
	name := ""
	var schema *descriptorpb.DescriptorProto
	for {
		req, err := srv.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if req.GetWriteStream() != "" {
			name = req.GetWriteStream()
		}
		if ws := req.GetProtoRows().GetWriterSchema(); ws != nil {
			schema = ws.GetProtoDescriptor()
		}
		resp, send := f.append(name, schema, req)
		if send {
			if err := srv.Send(resp); err != nil {
				return err
			}
		}
	}
}

func (f *Write) append(name string, schema *descriptorpb.DescriptorProto, req *storagepb.AppendRowsRequest) (*storagepb.AppendRowsResponse, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fail := func(c codes.Code, msg string) (*storagepb.AppendRowsResponse, bool) {
		return &storagepb.AppendRowsResponse{Response: &storagepb.AppendRowsResponse_Error{
			Error: status.New(c, msg).Proto()}, WriteStream: name}, true
	}
	s, ok := f.streams[name]
	switch {
	case !ok:
		return fail(codes.NotFound, "no such stream "+name)
	case s.finalized:
		return fail(codes.FailedPrecondition, "stream finalized")
	}
	rows := req.GetProtoRows().GetRows().GetSerializedRows()
	if f.rowError != "" {
		resp := &storagepb.AppendRowsResponse{Response: &storagepb.AppendRowsResponse_Error{
			Error: status.New(codes.InvalidArgument, "rows refused").Proto()}, WriteStream: name}
		for i := range rows {
			resp.RowErrors = append(resp.RowErrors, &storagepb.RowError{Index: int64(i), Code: storagepb.RowError_FIELDS_ERROR,
				Message: "Field " + f.rowError + ": no such column in the table's schema"})
		}
		return resp, true
	}
	if off := req.GetOffset(); off != nil {
		switch {
		case off.GetValue() < int64(len(s.rows)):
			return fail(codes.AlreadyExists, "offset already written")
		case off.GetValue() > int64(len(s.rows)):
			return fail(codes.OutOfRange, "offset beyond the end of the stream")
		}
	}
	at := int64(len(s.rows))
	s.rows = append(s.rows, rows...)
	if schema != nil {
		s.schema = schema
	}
	if f.dropAck > 0 { // landed, but the answer is lost
		f.dropAck--
		return nil, false
	}
	return &storagepb.AppendRowsResponse{Response: &storagepb.AppendRowsResponse_AppendResult_{
		AppendResult: &storagepb.AppendRowsResponse_AppendResult{Offset: wrapperspb.Int64(at)}}, WriteStream: name}, true
}

func (f *Write) FinalizeWriteStream(_ context.Context, req *storagepb.FinalizeWriteStreamRequest) (*storagepb.FinalizeWriteStreamResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.streams[req.GetName()]
	if !ok {
		return nil, status.Error(codes.NotFound, "no such stream")
	}
	s.finalized = true
	return &storagepb.FinalizeWriteStreamResponse{RowCount: int64(len(s.rows))}, nil
}

func (f *Write) BatchCommitWriteStreams(_ context.Context, req *storagepb.BatchCommitWriteStreamsRequest) (*storagepb.BatchCommitWriteStreamsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.commits++
	if f.failCommit > 0 {
		f.failCommit--
		return nil, status.Error(codes.Unavailable, "try again")
	}
	var errs []*storagepb.StorageError
	for _, name := range req.GetWriteStreams() {
		s, ok := f.streams[name]
		switch {
		case !ok:
			errs = append(errs, &storagepb.StorageError{Code: storagepb.StorageError_STREAM_NOT_FOUND, Entity: name})
		case s.committed:
			errs = append(errs, &storagepb.StorageError{Code: storagepb.StorageError_STREAM_ALREADY_COMMITTED, Entity: name})
		case !s.finalized:
			errs = append(errs, &storagepb.StorageError{Code: storagepb.StorageError_INVALID_STREAM_STATE, Entity: name})
		}
	}
	if len(errs) > 0 { // atomic: nothing is committed
		return &storagepb.BatchCommitWriteStreamsResponse{StreamErrors: errs}, nil
	}
	for _, name := range req.GetWriteStreams() {
		s := f.streams[name]
		s.committed = true
		for _, raw := range s.rows {
			f.table = append(f.table, f.decode(s.schema, raw))
		}
	}
	return &storagepb.BatchCommitWriteStreamsResponse{CommitTime: timestamppb.Now()}, nil
}

// Forget drops a stream, as BigQuery's garbage collection would.
func (f *Write) Forget(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.streams, name)
}

// StreamCounts returns how many streams were created and committed.
func (f *Write) StreamCounts() (created, committed int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.streams {
		if s.committed {
			committed++
		}
	}
	return f.seq, committed
}

// Rows returns copies of the committed rows.
func (f *Write) Rows() []map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]map[string]any, len(f.table))
	for i, r := range f.table {
		out[i] = maps.Clone(r)
	}
	return out
}

// Update lets fn change the committed rows (a DML statement of a query
// double), under the server's lock.
func (f *Write) Update(fn func(rows []map[string]any) []map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.table = fn(f.table)
}

func (f *Write) decode(schema *descriptorpb.DescriptorProto, raw []byte) map[string]any {
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{Name: proto.String("row.proto"),
		Syntax: proto.String("proto2"), MessageType: []*descriptorpb.DescriptorProto{schema}}, nil)
	if err != nil {
		f.t.Errorf("writer schema: %v", err)
		return nil
	}
	m := dynamicpb.NewMessage(fd.Messages().Get(0))
	if err := proto.Unmarshal(raw, m); err != nil {
		f.t.Errorf("row: %v", err)
		return nil
	}
	out := map[string]any{}
	m.Range(func(field protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		out[string(field.Name())] = v.Interface()
		return true
	})
	return out
}

// ServeWrite serves a new Write server on a loopback port until the test
// ends and returns it with its address.
func ServeWrite(t TB) (*Write, string) {
	t.Helper()
	f := &Write{t: t}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	storagepb.RegisterBigQueryWriteServer(srv, f)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return f, ln.Addr().String()
}

// WriteClient returns a managedwriter client talking to the server at addr.
func WriteClient(t TB, addr string) *managedwriter.Client {
	t.Helper()
	client, err := managedwriter.NewClient(t.Context(), "run-proj", option.WithEndpoint(addr),
		option.WithoutAuthentication(), option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}
