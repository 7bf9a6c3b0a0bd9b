package api_test

import (
	"testing"

	"github.com/predworker/predworker/api"
)

// FuzzPushEnvelope feeds arbitrary push bodies to the decoders a push goes
// through. They must never panic; what they accept must be usable. The seed
// corpus lives in testdata/fuzz/FuzzPushEnvelope; CI fuzzes briefly.
func FuzzPushEnvelope(f *testing.F) {
	f.Add([]byte(envelope("1", `{"batch_id": "b", "game_date": "2025-01-15"}`, 0, nil)))
	f.Add([]byte(envelope("2", `{"game_date": "2025-01-15", "players": ["a", "b"], "systems": ["moving_average"], "chunk_size": 5}`, 3, map[string]string{"batch_id": "x"})))
	f.Add([]byte(`{"message": {"data": "e30=", "message_id": "3", "publish_time": "2025-01-15T00:00:00Z"}, "subscription": "s"}`))
	f.Add([]byte(`{"message": {"data": null, "messageId": ""}}`))
	f.Add([]byte(`{"message": {"data": "!!", "messageId": "4"}}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, body []byte) {
		env, err := api.DecodePushEnvelope(body)
		if err != nil {
			return
		}
		if env.ID() == "" || len(env.Message.Data) == 0 {
			t.Fatalf("accepted an envelope without id or data: %q", body)
		}
		req, err := api.DecodeBatchRequest(env.Message.Data)
		if err != nil {
			return
		}
		_ = req.GameDate
	})
}
