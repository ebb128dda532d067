// Package locksmith makes a fleet of servers call a rate-limited upstream once
// per key, not once per server or per request.
//
// Servers that cache an upstream's results behind one Redis lose rate-limit
// budget whenever two requests, on one server or on ten, miss the same key at
// the same time and both call the upstream. locksmith merges those misses
// across the whole fleet and hands the value to every waiting caller, on every
// server, the moment it exists.
//
// The library is three packages:
//
//   - [github.com/locksmith-go/locksmith/fill]: fill.Get, a cache-aside with
//     single flight across the fleet. A hit costs one round trip, a miss two
//     plus one upstream call for the whole fleet.
//   - [github.com/locksmith-go/locksmith/lock]: the distributed lock it is built
//     on, the original locksmith API done right: token-checked release,
//     fencing tokens, waiters woken by push, renewal while held.
//   - [github.com/locksmith-go/locksmith/codec]: how values become bytes
//     (MessagePack by default).
//
// This package holds no code: it documents the module, and its tests run the
// fleet end to end against a real Redis.
package locksmith
