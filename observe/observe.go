// Package observe is the hook through which fill and budget tell what they
// do: hits, misses, loads, waits, pauses, outages. It has no dependencies, so
// the core stays lean; the module github.com/locksmith-go/locksmith/otel turns
// these events into OpenTelemetry metrics and spans, and a few lines of your
// own can turn them into anything else.
//
// An [Handler] is called on the goroutine that saw the event, synchronously:
// keep it fast and never block in it. A nil Handler costs one comparison.
package observe

import (
	"context"
	"time"
)

// Kind is what happened.
type Kind uint8

// The kinds of [Event].
const (
	// Hit: a value (or a cached absence) was read from Redis.
	Hit Kind = iota + 1
	// LocalHit: a value was served from the in-process tier.
	LocalHit
	// StaleHit: a value past its TTL was served while it is refreshed or
	// while refreshes fail.
	StaleHit
	// Miss: no usable value in Redis; this server loads or waits for
	// another.
	Miss
	// Load: the loader returned, after Duration, with Err. Background
	// refreshes are loads too.
	Load
	// WaitRemote: a flight waited Duration for another server's load.
	WaitRemote
	// BudgetWait: a call waited Duration for its slot in a rate budget.
	BudgetWait
	// Pause: the upstream asked for a pause (a 429, remaining 0, or
	// PauseUntil); Duration is how long from now.
	Pause
	// FailOpen: Redis could not be reached and the loader ran without the
	// fleet-wide lock; Err is the Redis error.
	FailOpen
	// OutageStart: a call found Redis unreachable; Err says how.
	OutageStart
	// OutageEnd: Redis answers again after an outage of Duration.
	OutageEnd
	// LeaseLost: a fill lock's lease was lost while its loader ran.
	LeaseLost
	// Batch: a batch loader returned N keys after Duration, with Err.
	Batch
	// Invalidation: the in-process tier dropped a value another server
	// replaced or deleted.
	Invalidation
	// RateCut: a budget that learns its upstream's unstated limit
	// (budget.Options.Adaptive) cut the fleet's learned rate after a 429;
	// Rate is the rate learned now, in calls per Per of the budget's
	// Limit.
	RateCut
)

var kindNames = [...]string{
	Hit: "hit", LocalHit: "local_hit", StaleHit: "stale_hit", Miss: "miss", Load: "load",
	WaitRemote: "wait_remote", BudgetWait: "budget_wait", Pause: "pause", FailOpen: "fail_open",
	OutageStart: "outage_start", OutageEnd: "outage_end", LeaseLost: "lease_lost", Batch: "batch",
	Invalidation: "invalidation", RateCut: "rate_cut",
}

// String returns the kind's name in snake case ("local_hit").
func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return "unknown"
}

// Event is one thing that happened. Fields a kind does not use are zero.
type Event struct {
	Kind Kind
	// Source names what reported it: "fill" or "budget".
	Source string
	// Name is the cache's prefix or the budget's name: which of several
	// caches or budgets in one process. Low cardinality.
	Name string
	// Key is the key concerned, if any. It has unbounded cardinality: keep
	// it out of metric attributes.
	Key      string
	Duration time.Duration
	Err      error
	// N counts keys (Batch) or is otherwise 0.
	N int
	// Rate is a budget's learned rate, in calls per Per of its Limit
	// (RateCut), or is otherwise 0.
	Rate float64
	// Background marks work no caller waits for: a refresh, or a budget
	// wait at Background priority.
	Background bool
}

// Handler receives events. ctx is the ctx of the call the event belongs
// to, or of the flight or refresh that runs for it, with the caller's
// values (trace spans among them).
type Handler interface {
	Handle(ctx context.Context, e Event)
}

// Func adapts a function to an [Handler].
type Func func(ctx context.Context, e Event)

// Handle calls f.
func (f Func) Handle(ctx context.Context, e Event) { f(ctx, e) }
