// Package worker is the engine: it turns a stored batch into prediction rows,
// chunk after chunk, and keeps the guarantees that make a crash at any
// instant harmless.
//
// # Where things are
//
//   - errors.go: the one error taxonomy (Class, Classify) and every error
//     type the engine produces. The engine's retry and fail decisions, the
//     API's answers and the push endpoint's acks all derive from Classify.
//   - lifecycle.go: Runner.Do, the batch lifecycle every entry point shares
//     (create or resume, claim, run here or in the background, within a
//     budget) and the Outcome each entry point translates.
//   - submit.go: request validation, batch ids, batch creation.
//   - run.go: the chunk loop and how a run that ends early is left behind.
//   - fanout.go: the fan-out to systems (plan → call → combine → tally),
//     deadlines, circuit breakers, fallbacks.
//   - lease.go: owner ids, heartbeat, self-fencing.
//   - runner.go: background runs, the sweeper, the two-stage drain.
//   - config.go: settings, their one set of defaults, their validation.
//
// # Batch state machine
//
//	pending ──claim──▶ running ──last chunk checkpointed──▶ completed
//	                    │  ▲
//	   release (drain,  │  │ claim (sweeper, resume, redelivery)
//	   interrupt) or    ▼  │
//	   lease expiry ─▶ orphaned (running, no live lease)
//	                    │
//	                    └──permanent error──▶ failed ──resume (operator)──▶ running
//
// "Orphaned" is not a stored state: it is a running (or pending) batch whose
// lease expired or was released; Store.Orphans finds them.
//
// # Lease invariants
//
//  1. Every claim bumps the epoch. Renew, Checkpoint, Finish and Release are
//     conditioned on (owner, epoch): after a takeover the old owner can
//     change nothing in the state store.
//  2. The sink is idempotent by (batch, player, system) and fenced by epoch:
//     a replayed chunk never adds a row, and once epoch E wrote, an older
//     epoch cannot write at all.
//  3. A chunk's rows are written before its checkpoint; a checkpoint
//     advances DoneChunks by exactly one. So a crash loses at most the chunk
//     in flight, and a committed chunk is never computed again.
//  4. A run is sure of its lease until (time the last successful renewal was
//     sent) + TTL − margin. When that passes without a renewal, the run
//     cancels itself (self-fencing) before any other owner can claim.
//  5. Interrupted runs (drain, cancelled context) release the lease on a
//     context detached from the cancellation, so another owner resumes at
//     once instead of waiting for expiry.
//
// # Per-call isolation
//
// Each (player, system) pair is one task in a bounded errgroup. Each system
// call has its own deadline, runs behind the system's circuit breaker, and has
// its panics recovered. Timeout, error, panic or an open breaker falls back
// along the registry's chain; when the chain is exhausted the row is an
// explicit failure record. A call that ignores its context is abandoned at the
// deadline, so a hung system cannot hold a chunk past its timeout.
package worker
