package api

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// Check is one dependency check of the deep health check (GET /v1/doctor,
// `worker doctor`): Firestore reachable and its indexes usable, the BigQuery
// tables there with their schema, the topics there, the model loaded.
type Check struct {
	Name string
	Run  func(ctx context.Context) error
}

// CheckResult is the outcome of one Check.
type CheckResult struct {
	Name  string `json:"name"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	MS    int64  `json:"duration_ms"`
}

// RunChecks runs checks concurrently, each under timeout, in their order.
func RunChecks(ctx context.Context, checks []Check, timeout time.Duration) []CheckResult {
	out := make([]CheckResult, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			start := time.Now()
			err := runCheck(cctx, c)
			out[i] = CheckResult{Name: c.Name, OK: err == nil, MS: time.Since(start).Milliseconds()}
			if err != nil {
				out[i].Error = err.Error()
			}
		})
	}
	wg.Wait()
	return out
}

// runCheck runs c, turning a panic into its error.
func runCheck(ctx context.Context, c Check) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("check panicked: %v", p)
		}
	}()
	return c.Run(ctx)
}

// doctor answers GET /v1/doctor: every configured dependency, checked; 200
// when all pass, 503 otherwise.
func (s *Server) doctor(w http.ResponseWriter, r *http.Request) {
	results := RunChecks(r.Context(), s.checks, 20*time.Second)
	status := http.StatusOK
	for _, res := range results {
		if !res.OK {
			status = http.StatusServiceUnavailable
		}
	}
	writeJSON(w, status, map[string]any{"checks": results})
}
