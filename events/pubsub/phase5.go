package pubsub

import (
	"encoding/json"
	"math"
	"time"

	"github.com/predworker/predworker/events"
)

// Completion message formats (PROFILE).
const (
	// FormatEvent publishes the event as it is, with its id, type, batch
	// and correlation ids as attributes.
	FormatEvent = "event"
	// FormatPhase5 publishes the completion message of the pipeline stage
	// predworker replaces (topic nba-phase5-predictions-complete): the
	// fields its Phase-6 orchestrator reads, no attributes.
	FormatPhase5 = "phase5"
)

// Phase5Completion is that message. Unlike the stage it replaces, whose
// status was always "success", the status says what happened: "success"
// when every player got predictions, "partial" when some did not (or the
// batch produced none), "failed" when the batch failed.
type Phase5Completion struct {
	ProcessorName   string         `json:"processor_name"`
	Phase           string         `json:"phase"`
	ExecutionID     string         `json:"execution_id"`
	CorrelationID   string         `json:"correlation_id"`
	GameDate        string         `json:"game_date"`
	OutputTable     string         `json:"output_table"`
	OutputDataset   string         `json:"output_dataset"`
	Status          string         `json:"status"`
	RecordCount     int            `json:"record_count"`
	RecordsFailed   int            `json:"records_failed"`
	Timestamp       string         `json:"timestamp"`
	DurationSeconds float64        `json:"duration_seconds"`
	TriggerSource   string         `json:"trigger_source"`
	Metadata        Phase5Metadata `json:"metadata"`
}

// Phase5Metadata is the message's metadata object.
type Phase5Metadata struct {
	BatchID              string  `json:"batch_id"`
	ExpectedPlayers      int     `json:"expected_players"`
	CompletedPlayers     int     `json:"completed_players"`
	CompletedPredictions int     `json:"completed_predictions"`
	TotalPredictions     int     `json:"total_predictions"`
	CompletionPct        float64 `json:"completion_pct"`
}

// Phase5Message builds the message of a completion event. Players that
// "reported" are those with at least one prediction; records_failed counts
// those without any (every row a failure record).
func Phase5Message(ev events.Event) Phase5Completion {
	completed := max(0, ev.DoneItems-ev.FailedPlayers)
	status := "success"
	switch {
	case ev.Type == events.TypeBatchFailed:
		status = "failed"
	case ev.FailedItems > 0 || ev.Predictions == 0 || completed < ev.TotalItems:
		status = "partial"
	}
	pct := 0.0
	if ev.TotalItems > 0 {
		pct = math.Round(10000*float64(completed)/float64(ev.TotalItems)) / 100
	}
	corr := ev.CorrelationID
	if corr == "" {
		corr = ev.BatchID
	}
	dataset := "nba_predictions"
	if ev.DatasetPrefix != "" {
		dataset = ev.DatasetPrefix + "_nba_predictions"
	}
	return Phase5Completion{ProcessorName: "PredictionCoordinator", Phase: "phase_5_predictions", ExecutionID: ev.BatchID,
		CorrelationID: corr, GameDate: ev.GameDate, OutputTable: "player_prop_predictions", OutputDataset: dataset,
		Status: status, RecordCount: completed, RecordsFailed: ev.FailedPlayers,
		Timestamp: ev.At.UTC().Format(time.RFC3339Nano), DurationSeconds: float64(ev.DurationMS) / 1000,
		TriggerSource: "automatic",
		Metadata: Phase5Metadata{BatchID: ev.BatchID, ExpectedPlayers: ev.TotalItems, CompletedPlayers: completed,
			CompletedPredictions: completed, TotalPredictions: ev.Predictions, CompletionPct: pct}}
}

// encodeCompletion encodes ev in format: the data and the attributes.
func encodeCompletion(format string, ev events.Event) ([]byte, map[string]string, error) {
	if format == FormatPhase5 {
		data, err := json.Marshal(Phase5Message(ev))
		return data, nil, err
	}
	data, err := json.Marshal(ev)
	return data, map[string]string{"event_id": ev.ID, "type": ev.Type, "batch_id": ev.BatchID,
		"correlation_id": ev.CorrelationID}, err
}
