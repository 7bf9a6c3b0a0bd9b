package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/predworker/predworker/api"
)

// GET /v1/doctor runs every check and answers 200 only when all pass; a
// failing, a hung (past its deadline) and a panicking check each answer
// 503 with their name and error, and the others still report.
func TestDoctorReportsEveryCheck(t *testing.T) {
	t.Parallel()
	ok := api.Check{Name: "store", Run: func(context.Context) error { return nil }}
	f := setupWith(t, fixtureOpts{checks: []api.Check{ok}})
	resp, body := do(t, "GET", f.srv.URL+"/v1/doctor", "", "")
	var got struct{ Checks []api.CheckResult }
	if err := json.Unmarshal(body, &got); err != nil || resp.StatusCode != 200 || len(got.Checks) != 1 || !got.Checks[0].OK {
		t.Fatalf("all passing: %d %s", resp.StatusCode, body)
	}

	failing := api.Check{Name: "topics", Run: func(context.Context) error { return errors.New("topic x not found") }}
	hung := api.Check{Name: "sink", Run: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }}
	panicking := api.Check{Name: "model", Run: func(context.Context) error { panic("nil model") }}
	results := api.RunChecks(t.Context(), []api.Check{ok, failing, hung, panicking}, 50*time.Millisecond)
	want := []struct {
		name, err string
		ok        bool
	}{{"store", "", true}, {"topics", "topic x not found", false}, {"sink", "context deadline exceeded", false},
		{"model", "check panicked: nil model", false}}
	for i, w := range want {
		r := results[i]
		if r.Name != w.name || r.OK != w.ok || r.Error != w.err {
			t.Errorf("result %d = %+v, want %+v", i, r, w)
		}
	}

	f = setupWith(t, fixtureOpts{checks: []api.Check{ok, failing}})
	resp, body = do(t, "GET", f.srv.URL+"/v1/doctor", "", "")
	if err := json.Unmarshal(body, &got); err != nil || resp.StatusCode != 503 || len(got.Checks) != 2 ||
		got.Checks[1].OK || got.Checks[1].Error != "topic x not found" {
		t.Fatalf("one failing: %d %s", resp.StatusCode, body)
	}
}
