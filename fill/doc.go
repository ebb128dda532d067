// Package fill is a cache-aside on Redis with single flight across a whole
// fleet: when a key is missing, one caller on one server runs the loader, and
// every other caller, on that server or any other, gets its result the moment
// it exists.
//
// [Get] first merges the callers of one process on one flight per key. The
// flight reads the value, or claims the key's lock if there is none, in one
// round trip (one Lua script). The claimer runs the loader, with the lock's
// lease renewed while it runs, then stores the value, releases the lock and
// publishes the value on the key's channel in one more round trip. Flights on
// other servers that found the lock held wait on that channel and take the
// value from the message. A hit costs one round trip, a miss two plus the
// loader.
//
// The fill lock is a [github.com/locksmith-go/locksmith/lock] lock: a fill
// and a lock.Locker.Do on the same name and prefix exclude each other.
//
// # Values
//
// Every caller gets the value as the codec returns it: the loader's value is
// encoded, stored, and decoded again, so that the callers on the loading
// server see what every other server and every later hit sees (unexported
// fields dropped, times in the codec's zone). The callers of one flight, and
// of the in-process tier, share one decoded value: treat it as read-only, as
// with x/sync/singleflight.
//
// # Freshness
//
// A value is fresh for Options.TTL. With Options.StaleWhileRevalidate, a
// value past its TTL is still served, at once, while exactly one server
// fleet-wide refreshes it in the background; with Options.StaleIfError, it
// is served while refreshes fail, and failing refreshes back off
// fleet-wide; with Options.EarlyRefresh, hot values are refreshed before
// they expire. See [Options].
//
// # Keys
//
// For a key K under prefix P: the value is P{K}:value, the lock P{K}, and
// notifications go on the channel P{K}. A failed load leaves a short-lived
// marker P{K}:failed for the servers that waited for it, and failing
// refreshes a back-off P{K}:backoff. Claims and deletes leave, for a
// second, the key's last stamp P{K}:stamp, which orders its entries and
// deletes for the in-process tiers. A fill takes no fencing token: its
// store is checked against its lock token inside Redis, in the same script.
// Stores and deletes also publish on the channel P + "invalidate", which
// in-process tiers listen to.
//
// # Rate budget
//
// With Options.Budget, every load reserves what its upstream call is
// expected to spend ([budget.Budget.Reserve]: one call, or [WithCost]'s
// estimate, such as an LLM call's tokens) before it runs the loader,
// Foreground for a caller's load and Background for a refresh, and runs the
// loader with the reservation in its ctx: the loader reads it with
// budget.FromContext, and reports what the call really spent with
// Reservation.Spent (usage.total_tokens, say). When the loader returns,
// whatever it returned, the call was made: fill ends the reservation with
// Done, which settles Spent against the estimate (no round trip when they
// agree, so a load of one call costs what a Wait did). A reservation
// granted once its load is no longer wanted (nobody waits any more, the
// Cache closed) is cancelled, and the loader not called. A batch loader
// call ([GetMany], [Batcher]) reserves once for the call.
//
// A budget with a pool of credentials (budget.Options.Keys) books each load
// on the key with the most room: the loader calls the upstream with
// budget.FromContext(ctx).Key(), and the upstream's answer, reported
// through the reservation or with the budget's Observe on the loader's
// ctx, is that key's. A [budget.RateLimitedError] the loader returns pauses
// its key only, and the load goes again at once on another key.
//
// # Failures
//
// A loader error is not cached: the lock is released and the failure
// published, so every waiter returns it at once instead of each calling the
// upstream in turn. An error wrapping [ErrNotFound] is cached as an absence
// for Options.NegativeTTL. A loader panic is re-raised in every caller of the
// process, as x/sync/singleflight does (a FleetWide batch's, whose call
// serves the whole fleet, fails its keys on every server with an error
// wrapping [ErrLoadFailed], logged with its stack); a panic in a background refresh,
// which no caller waits for, is a failed refresh (counted, backed off, seen
// by the events handler) logged with its stack, and a codec or events handler that
// panics on a goroutine of the Cache is an error, logged, never a crash of
// the process. When Redis cannot be reached, or
// cannot serve now (a failover, a restart), Get runs the loader anyway (the
// in-process merge still holds) unless Options.FailClosed is set; an outage
// is remembered, so calls during it do not each pay the client's dial
// retries. Entries that cannot be decoded are counted and treated as
// misses, never served.
package fill
