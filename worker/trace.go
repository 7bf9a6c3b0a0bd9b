package worker

import (
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/predworker/predworker/state"
)

// The engine's trace spans: "batch" (a run, from claim to its end) → "chunk"
// → "load features", one "system NAME" per call, "write predictions",
// "checkpoint", "commit predictions". Their attributes:
const (
	attrBatchID = attribute.Key("predworker.batch_id")
	attrEpoch   = attribute.Key("predworker.epoch")
	attrChunk   = attribute.Key("predworker.chunk")
	attrItems   = attribute.Key("predworker.items")
	attrSystem  = attribute.Key("predworker.system_id")
	attrPlayer  = attribute.Key("predworker.player_lookup")
	attrOutcome = attribute.Key("predworker.outcome")
	attrRows    = attribute.Key("predworker.rows")
	attrTries   = attribute.Key("predworker.attempts")
)

// TracerName names the engine's tracer.
const TracerName = "github.com/predworker/predworker/worker"

// endSpan ends span with err's outcome: an error status for a failure; an
// interruption or a lost lease (a takeover) is an outcome, not an error.
func endSpan(span trace.Span, err error) {
	var failed *BatchFailedError
	switch {
	case err == nil:
		span.SetAttributes(attrOutcome.String("ok"))
	case errors.Is(err, ErrInterrupted):
		span.SetAttributes(attrOutcome.String("interrupted"))
	case errors.Is(err, state.ErrLeaseLost):
		span.SetAttributes(attrOutcome.String("lease_lost"))
	case errors.As(err, &failed):
		span.SetAttributes(attrOutcome.String("failed"))
		span.SetStatus(codes.Error, err.Error())
	default:
		span.SetAttributes(attrOutcome.String(string(Classify(err))))
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
