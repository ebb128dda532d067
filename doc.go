// Package locksmith makes a fleet of servers call a rate-limited upstream once
// per key, not once per server or per request.
//
// Servers that cache an upstream's results behind one Redis lose rate-limit
// budget whenever two requests, on one server or on ten, miss the same key at
// the same time and both call the upstream. locksmith merges those misses
// across the whole fleet and hands the value to every waiting caller, on every
// server, the moment it exists.
//
// The packages:
//
//   - [github.com/locksmith-go/locksmith/fill]: fill.Get, a cache-aside with
//     single flight across the fleet. A hit costs one round trip, a miss two
//     plus one upstream call for the whole fleet. It also serves stale values
//     while one server refreshes, batches misses (GetMany, Batcher) and keeps
//     an in-process tier invalidated by push.
//   - [github.com/locksmith-go/locksmith/budget]: the upstream's rate limit as
//     one budget for the whole fleet (GCRA in Redis), fed by the upstream's
//     own rate-limit headers, with priorities and fleet-wide pauses.
//   - [github.com/locksmith-go/locksmith/httpfill]: an HTTP transport
//     ([net/http.RoundTripper])
//     that gives an existing HTTP client fleet-wide merging, caching and the
//     budget.
//   - [github.com/locksmith-go/locksmith/lock]: the distributed lock fill is
//     built on, the original locksmith API done right: token-checked release,
//     fencing tokens, waiters woken by push, renewal while held.
//   - [github.com/locksmith-go/locksmith/codec]: how values become bytes
//     (MessagePack by default, JSON, or your own).
//   - [github.com/locksmith-go/locksmith/observe]: a dependency-free hook that
//     sees hits, misses, loads, waits, pauses and outages.
//   - github.com/locksmith-go/locksmith/otel, a module of its own: those
//     events as OpenTelemetry metrics and spans.
//   - github.com/locksmith-go/locksmith/examples/quickstart, examples/twitter
//     and examples/llm: runnable programs (the last, an LLM API's requests
//     and tokens per minute under one budget).
//
// This package holds no code: it documents the module, and its tests run the
// fleet end to end against a real Redis.
package locksmith
