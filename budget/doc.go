// Package budget makes an upstream's rate limit one budget for a whole fleet
// of servers: every call to the upstream first waits for its slot in the
// budget, so the fleet neither draws 429s nor leaves slots unused.
//
// # Algorithm
//
// The budget is GCRA (the generic cell rate algorithm) kept in one Redis
// hash and run by Lua scripts on the Redis clock, so servers' clocks do not
// matter. With emission interval T = Per/Rate and tolerance τ = (Burst-1)·T,
// the hash holds the theoretical arrival time tat. [Budget.Wait] is one round
// trip: the script books the caller's slot, max(now, tat-τ, end of a pause),
// moves tat to max(tat, slot)+T, and returns the slot; the caller sleeps
// until it. Slots are handed out in booking order across the fleet, at most
// Burst at once after a quiet spell and one per T after that: in any window
// of length Per, at most Rate+Burst-1 slots.
//
// A caller whose ctx has a deadline passes its patience to the script: a slot
// past the deadline is refused without booking it, as golang.org/x/time/rate
// does. A caller whose ctx ends while it sleeps gives its slot back, when it
// can without breaking the limit: only the latest booking can be undone, so
// when tat still holds the value this booking set, tat goes back by T.
// Otherwise the slot is lost to the fleet (see [Stats].GivenBack).
//
// # Priorities
//
// A [Background] call (a refresh, a prefetch) books no further ahead than the
// horizon, 2·T kept within [10ms, 100ms]: a [Foreground] call that arrives
// while background calls saturate the budget waits at most the horizon
// behind them, plus the slot in progress. A background caller whose slot
// would lie beyond the horizon is not booked: it is given a place in a
// background line, one place per T, and told to come back then. While
// foreground calls wait (a foreground slot lies in the future, or passed less
// than T ago: a foreground caller served at its slot books again an instant
// later), background calls also pass a second gate, one call per
// T/BackgroundShare: they take at most that share of the booked slots, and
// none at all while foreground calls are queued past the horizon. A slot free
// at once is never held back, since unused it is lost: one background caller
// refused by the gate stands by for the next free slot and takes it if no
// foreground call did. With no foreground call waiting, or foreground demand
// below the rate, background calls use all the rest. Refused callers come
// back one at a time, not all at once: beyond one round trip per call,
// background calls cost the fleet about two round trips per T at most (one
// place in line coming back, one caller standing by).
//
// # The upstream's own accounting
//
// [Budget.Observe] reads the rate-limit headers of each response (Retry-After,
// the X API's x-rate-limit-*, GitHub's x-ratelimit-*). A 429, or remaining 0,
// pauses the whole budget until the upstream's reset: the pause is kept in the
// hash, checked by the same script that books slots, and announced on a
// pub/sub channel so that callers already sleeping on a slot before it, on
// every server, wake and book again after it (a server whose subscription
// Redis refuses, or not yet confirmed, reads the pause before each slot it
// slept for instead). [Budget.PauseUntil] pauses
// directly, and [Budget.PauseFor] pauses for a loader's [RateLimitedError].
// Fewer calls remaining than the budget would allow before the reset cap
// it: that many more calls, less those already booked for a slot ahead, get
// a slot before the reset, at the budget's own pace, and the next one gets
// the reset. The cap is two fields of the hash, spent by the same script that
// books slots: it delays a call only when the upstream would refuse it.
//
// # A limit without burst tolerance
//
// An upstream that allows no burst (Burst 1) counts each call from its
// arrival: the next must come a whole interval after it. Every server sleeps
// to its slot by the Redis clock, on Linux the last 2.5 ms on the kernel's
// fine timer. A call that still leaves more than 0.5 ms late (a busy CPU, a
// collector's pause) moves every slot booked after it as late, with one
// script and one message on the budget's channel: each server's sleeping
// calls move their own slots, without a round trip ([Stats].Late). Jitter
// no server sees (between a caller's send and the upstream's arrival) draws
// a 429 now and then: such an overshoot widens the spacing of slots by a
// slack learned from them, and stretches the schedule in place, rather
// than pausing the fleet (see [Budget.Observe]).
//
// # Several limits, meters, costs known after the call
//
// Real upstreams state several limits at once: the X API a rate per second
// under a count per 15 minutes, LLM APIs requests and tokens per minute.
// [Options].Also adds limits on the same calls; [Options].Meters adds
// limits on other units (tokens, points), each a token bucket of Burst
// units refilled at Rate per Per. [Budget.Reserve] books a call's [Cost] in
// all of them with one round trip: each dimension is a GCRA of its own in
// the same hash, and the script books them all for one slot, the earliest
// every one of them allows, or books nothing. A reservation of c units of a
// dimension of emission interval T and tolerance τ may go at slot s when
// s ≥ tat − τ + (c−1)·T (c capped at the burst: a larger cost goes when the
// bucket is full, and overdraws it), and sets tat = max(tat, s) + c·T; in
// any window of Per, at most Rate+Burst−1 units are booked. [Budget.Wait] is
// the same script booking one call (and Also's limits), no meter.
//
// A call's cost is often known only after it (an LLM's tokens). Reserve
// books the estimate; [Reservation.Spent] records the real figure and
// [Reservation.Done] settles it: units spent beyond the estimate are booked
// after the fact, units not spent go back at once, even when later
// reservations were booked since. [Reservation.Cancel] gives back the units
// of a call not made, and its slot while it is the latest booking. Callers
// keep booking order across every dimension: a slot is never earlier than
// one booked before it, less the tolerance of the limit on calls.
//
// # At most N calls in flight
//
// [Options].Concurrency caps the reservations in flight across the fleet,
// as package lock caps them at one. A reservation holds one of N slots
// from [Budget.Reserve] until [Reservation.Done] or [Reservation.Cancel]. The
// slots are a ZSET of holder ids scored by the end of each holder's lease,
// beside the budget's hash under the same hash tag; the booking script
// first drops the holders whose lease ended, then takes a slot, atomically
// with the rate slot (one round trip uncontended), when the caller already
// holds one, when the line is empty and fewer than N are held, or when the
// caller is among the first N−held of the line. Otherwise it books nothing
// and puts the caller at the end of the line (a second ZSET, scored by
// arrival: first come, first served across the fleet), and the caller
// sleeps. Done and Cancel free the slot in one round trip, and publish on
// the budget's channel the ids of the waiters at the head of the line that
// a slot is now free for; those book again, and take it (a hand-off to
// another server is a publish and one round trip, well under a
// millisecond on a LAN). Nobody polls: only the head of the line looks
// again, when the earliest lease ends, and every server holding a slot or
// a place renews all of them in one round trip every third of
// [Options].SlotLease, which also drops the leases that ended and wakes the
// waiters they let through. A caller whose ctx ends in line leaves it.
//
// A Reserve that waited in line thus costs two round trips (three with its
// Done), one more than an uncontended one: the first puts it in line, the
// second, once woken, books its rate slot with the concurrency slot. The
// script that frees the slot does not book for the waiter, though it runs
// when the slot frees: the booking needs what only the waiter's process
// has (its cost in every limit and meter, its priority, its deadline, the
// latest slot it booked, its clock's lead on Redis's); its outcome would
// reach the waiter only by a publish, which can be lost; and a waiter that
// gave up meanwhile would hold a rate slot and a concurrency slot that no
// call uses until its place's lease ran out. With it, a hand-off to a
// caller on another server (the publish, then that round trip) takes
// 0.37–0.43 ms at p50 on a loopback (BenchmarkBudgetConcurrency), and each
// booking is made by the caller it is for.
//
// A server that crashes, or loses Redis, stops renewing: its slots come
// back within the lease. A holder that loses its lease is told: its
// [Reservation.Context] ends with cause [ErrSlotLost], and Done returns an
// error wrapping it; the call should stop, since the fleet may have given
// the slot to another. [Budget.Close] frees this server's slots and places
// at once. While Redis is unreachable, each server holds at most
// max(1, Concurrency/FleetSize) slots of its own. [Budget.Wait] takes no
// slot; without Concurrency, Wait and Reserve do no more than before.
//
// # Unstated limits
//
// Many upstreams do not state their limit, or change it under load: a 429
// with no Retry-After and no reset is all they say. With
// [Options].Adaptive, Limit.Rate is a ceiling and the fleet learns the
// rate the upstream accepts: one learned interval in the budget's hash,
// which the booking script paces at instead of T when it is longer. A 429
// that states no wait ([Budget.Observe], [Reservation.Observe], or a
// loader's [RateLimitedError] without RetryAfter given to
// [Budget.PauseFor]) pauses nothing: it cuts the learned rate to 75%, and
// stretches the fleet's schedule in place as an overshoot does (every
// server's sleeping Waits move their own slots), so the calls already
// booked go at the new rate too. It cuts once per episode however many
// servers saw a 429: a 429 for a call booked before the latest cut is old
// news (the calls on their way when it came are refused together, and say
// nothing of the new rate); of a 429 whose call is unknown (Observe after
// a Wait, not a reservation), one within 250ms of the latest cut is (or
// within two learned intervals, if longer).
//
// The rate rises again with the calls the upstream accepts: every 2xx
// observed counts, while demand meets the learned rate (its reservation
// waited for its slot, and the fleet's schedule is booked up to now).
// Each server sends them 16 at a time, in one round trip off the caller's
// path. The rate follows the calls accepted since the latest cut on a
// cubic, as TCP CUBIC's window follows time: after U = 512 of them it is
// back at the rate that drew the 429, rising fast at first and cautiously
// near it, then, with still no 429, ever faster up to the ceiling: the
// fleet probes for a higher limit, and finds a raised one within a few U.
// At a steady limit an episode lasts some hundreds of calls, a 429 or a
// few among them, and the fleet uses about 90% of the limit (see
// BenchmarkBudgetAdaptive in the repository's README). Time alone counts
// too, one call per 100 learned intervals: when nothing has been refused
// for a long while (demand fell below the learned rate), the rate drifts
// back up to the ceiling, and the next demand probes again.
//
// A 429 that states its wait (Retry-After, a reset) pauses the fleet as
// without Adaptive, remaining counts cap it, and an overshoot (a 429
// asking for one interval or a second) widens the slack between slots on
// top of the learned interval: the upstream's own accounting wins. The
// slack is for arrival jitter at a known limit; the learned rate for an
// unknown one. [Stats].Rate tells the rate in force, [Stats].RateCuts the
// cuts this server made; each cut is an observe.RateCut event and a line
// of the Logger saying why. The learned rate is the Limit's: the limits of
// Also and the meters stay as stated.
//
// The learned fields outlive the hash's others (which expire a second
// after their last instant) for as long as time alone would take to bring
// the rate back to the ceiling: servers that restart, all of them at once
// after a quiet spell included, find it. When Redis loses the hash
// (FLUSHALL, a restart without persistence) the fleet starts again from
// the ceiling, and its first 429s cut the rate down again within a few
// latencies. While Redis is unreachable, each server's local limiter keeps
// to the learned rate over FleetSize, and a 429 slows it alone.
//
// # Key pools
//
// Upstreams limit each credential on its own: each user token of the X API,
// each installation of a GitHub App, each API key of an LLM provider.
// [Options].Keys lists credentials to spread calls over. Each key is a
// budget of its own, with every limit, meter and cap of the budget, in a
// hash of its own beside the budget's (same hash tag, same Redis Cluster
// slot), and the booking script runs on it unchanged. [Budget.Reserve]
// books, in one round trip, the key whose slot comes first, ties going to
// the key with the most room left in its bucket: the pool's index, a ZSET
// of the keys scored by the earliest instant each could take a unit of
// every dimension (its tat less its burst tolerance, its pause, a cap with
// nothing left), kept by every script that changes a key, gives the key
// with one short read whatever the pool's size. [Reservation.Key] is the
// credential to call with.
//
// The upstream's word is the key's: [Reservation.Observe] applies a
// response to the key of its reservation (and Budget.Observe to that of
// the reservation its ctx carries, as in a fill load): a 429 or "remaining
// 0" pauses that key only, fleet-wide, and callers sleeping on a slot of
// it, on every server, book again on the others; a 401 removes the key.
// [Budget.Remove] removes a key for the whole fleet: a tombstone (kept 30
// days after the latest removal) that every booking honours, and a message
// that every server hears, its callers sleeping on the key booking again.
// A server that missed the message hears of it at its next booking: a
// removal starts a new generation of the index, and a server announces its
// keys, and learns which were removed, once per generation. A removal
// Redis lost (FLUSHALL) is written back by the next booking of a server
// that knows of it. With no key left, Reserve fails with an error wrapping
// [ErrNoKeys].
//
// Servers may hold different lists: a key is known fleet-wide by a hash of
// the credential, never the credential itself, and each server books the
// keys it holds; a key several servers hold is one budget for them all, and
// a server started with a longer list adds its keys to the pool. Without
// a reservation, Budget.Observe cannot tell the key a response is of, and
// returns an error; [Budget.PauseUntil], and PauseFor without a
// reservation in its ctx, pause every key. Use Reserve: [Budget.Wait]
// cannot tell the key it booked, and returns an error. Keys with Adaptive
// are not supported. While Redis is unreachable, each key has a local
// limiter at Rate/FleetSize, and a 429 pauses its key in this process.
//
// With [Options].Concurrency the cap is per key too: each key holds at
// most Concurrency slots across the fleet, and the pool has one line,
// first come first served, its head taking a slot on whichever key frees
// one. The booking script picks, among the keys with a slot free, the one
// whose rate slot comes first, and takes both in the same round trip;
// Done frees both in one. A reservation sleeping for its rate slot holds
// its concurrency slot; when its key is paused or removed it books again
// on another key with room, and the slot moves with it. A removed key's
// slots count no more as free, and are not handed on as its holders end.
// Servers holding different lists share the line: a waiter none of whose
// keys has a slot free keeps its place, and those behind it wait with it,
// until one of its keys frees one.
// While Redis is unreachable a server holds at most one key's share,
// max(1, Concurrency/FleetSize), whatever key its local limiter picks: the
// cap holds per key whichever keys the fleet's servers pick.
//
// # Redis
//
// A budget named N under prefix P is the hash P{N}:budget, which expires a
// second after the last instant it holds; its pauses go on the channel of the
// same name. With Options.Keys, each key is the hash P{N}:budget:k:ID, ID a
// hash of the credential; the pool's index is the ZSET P{N}:budget:keys,
// kept an hour past its latest change, and the removed keys the hash
// P{N}:budget:removed. With Options.Concurrency, the holders of a slot are
// the ZSET P{N}:budget:slots, the line P{N}:budget:queue and
// P{N}:budget:queued (see "Concurrency"); a pool adds the hashes
// P{N}:budget:kin (each key's count of slots held) and P{N}:budget:kheld
// (each holder's key). One hash tag: every script touches one Redis Cluster
// slot. Servers sharing a budget must give it the same [Limit].
//
// Each server remembers the latest tat it set and sends it with every
// booking; the script takes the greater of Redis's and the caller's (the
// Limit's only: the tats of Also and of the meters start afresh). When
// Redis loses the hash (a restart without persistence, FLUSHALL, a failover
// to a replica that is behind), the fleet goes on from the latest slot the
// servers that book know of, instead of from a fresh budget.
//
// When Redis is unreachable, each server falls back to a local limiter (GCRA
// on its own clock) at Rate/FleetSize per Per with a burst of
// max(1, Burst/FleetSize): the fleet stays under the limit as long as
// [Options].FleetSize is at least the number of servers. Each limit of
// Also and each meter's is kept locally the same way, at its Rate/FleetSize;
// a reservation made then books its estimate and settles nothing. The local limiter
// goes on one local interval after this server's latest slot in Redis, and
// not before the end of the fleet's schedule this server last heard of, not
// with a full burst; a call whose slot in Redis comes while Redis is gone
// leaves on time (its look for a pause it may have missed gives up after
// half an interval). Back on Redis (each server looks every 200ms at most),
// the calls sleeping on local slots book again in Redis, where the fleet sees
// them, and the server's first booking brings its latest local slot gone as
// its tat. The servers still in their outage meanwhile, and the slots other
// servers booked in Redis after this server's latest booking, are what no
// server can place: a switch may let that many calls more through. An error
// reply (a key of another type at the budget's name) is returned, wrapped,
// and is not an outage.
package budget
