package budget

// Pauses: a fleet-wide pause in Redis (pause.lua), begun by a 429, an
// exhausted limit or a caller, heard by every server over pub/sub; and the
// overshoots of a budget at the upstream's exact limit, which respace the
// schedule instead of pausing it.

import (
	"cmp"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/redisx"
	"github.com/locksmith-go/locksmith/observe"
)

// PauseUntil pauses the budget of the whole fleet until t, or for 24 hours
// when t lies further ahead: no Wait returns before then on any server, and
// Waits sleeping on a slot before then book again after it. A t in the past
// does nothing. The pause is taken as a duration from now, so this server's
// clock need not agree with Redis's. When Redis is unreachable the pause is
// kept in this process only.
func (b *Budget) PauseUntil(ctx context.Context, t time.Time) error {
	if err := b.check(); err != nil {
		return err
	}
	d := time.Until(t)
	if d <= 0 {
		return nil
	}
	return b.apply(ctx, "pause", feedback{pause: min(d, maxHeaderWait), cause: requested})
}

// PauseFor pauses the budget of the whole fleet when err, a loader's error,
// wraps [ErrRateLimited]: for its [RateLimitedError].RetryAfter (at most 24
// hours), or, when that is unknown (0, or no RateLimitedError in the chain),
// for one Per of the limit; not at all when the RateLimitedError is
// Observed, since Observe paused the budget for the same response. With
// [Options].Adaptive, an unknown RetryAfter cuts the fleet's learned rate
// instead of pausing it (see the package documentation); with
// [Options].Keys, it pauses the key of the reservation ctx carries (a fill
// load's), or every key when ctx carries none. It reports whether err wraps
// ErrRateLimited. It is the retry path of a caller that loads through the
// budget:
//
//	for {
//		if err := b.Wait(ctx, budget.Foreground); err != nil {
//			return err
//		}
//		v, err := load(ctx)
//		if paused, _ := b.PauseFor(ctx, err); paused {
//			continue // the next Wait returns after the pause
//		}
//		return v, err
//	}
//
// The error is that of storing the pause; the pause is kept in this process
// when Redis is unreachable.
func (b *Budget) PauseFor(ctx context.Context, err error) (bool, error) {
	if !errors.Is(err, ErrRateLimited) {
		return false, nil
	}
	if cerr := b.check(); cerr != nil {
		return true, cerr
	}
	d := b.lim.Per
	var rle *RateLimitedError
	if errors.As(err, &rle) {
		if rle.Observed {
			return true, nil
		}
		if rle.RetryAfter > 0 {
			d = min(rle.RetryAfter, maxHeaderWait)
		}
	}
	if b.opt.Adaptive && (rle == nil || rle.RetryAfter <= 0) {
		return true, b.cut(ctx, "pause", b.slotOf(ctx), "a load was rate-limited with no RetryAfter (RateLimitedError)")
	}
	return true, b.apply(ctx, "pause", feedback{pause: d, cause: rateLimited, slot: b.slotOf(ctx), key: b.keyOf(ctx),
		perDefault: rle == nil || rle.RetryAfter <= 0})
}

//go:embed pause.lua
var pauseLua string

var pauseScript = redis.NewScript(pauseLua)

// apply stores f in the budget's hash with one round trip, and wakes this
// server's sleeping Waits at once when the pause grew.
func (b *Budget) apply(ctx context.Context, op string, f feedback) error {
	pause := int64(-1)
	if f.pause > 0 {
		pause = f.pause.Microseconds()
	}
	start := time.Now()
	over := "0"
	// With Options.Keys, only a key's 429 may be an overshoot: a pause of
	// the whole pool respaces no key's schedule.
	if f.cause == rateLimited && !f.metered && (b.pool == nil || f.key > 0) &&
		(f.pause <= time.Duration(b.t)*time.Microsecond || f.pause == time.Second && !f.perDefault) {
		// A wait no longer than an interval, or the whole second a
		// Retry-After rounds a shorter wait up to (not one Per of 1 s
		// for want of any stated wait), for no other limit than the
		// calls': perhaps an overshoot (see pause.lua).
		over = "1"
	}
	script, keys, args := b.onKey(f.key, pauseScript, keyPauseScript, []any{pause,
		b.t, b.tau, b.rdb.PublishFlag(), maxAhead.Microseconds(),
		over, b.lim.Per.Microseconds(), b.t, min(maxStorm, max(3, b.lim.Rate/stormShare)), slackHalfLife(b.t), b.t / firstSlack, f.slot})
	v, err := redisx.Run(ctx, b.rdb, func(ctx context.Context) ([]int64, error) {
		return script.Run(ctx, b.rdb.Redis(), keys, args...).Int64Slice()
	}, nil)
	if err == nil && len(v) != 6 {
		err = fmt.Errorf("unexpected pause reply %v", v)
	}
	switch {
	case err != nil && redisx.Outage(err):
		switch {
		case f.pause > 0 && f.key > 0:
			b.pauseKeyLocally(f.key-1, start.Add(f.pause))
		case f.pause > 0:
			b.pauseLocally(start.Add(f.pause))
		}
		return nil
	case err != nil:
		return b.fail(ctx, op, err)
	}
	switch v[3] {
	case overshoot:
		b.stats.overshoots.Add(1)
		if f.key > 0 {
			b.keyHeard(f.key-1, v[0], v[4])
		} else {
			b.heard(v[0], v[4], v[5])
		}
		return nil
	case overshootAgain:
		return nil
	}
	if f.pause > 0 {
		b.event(ctx, observe.Event{Kind: observe.Pause, Duration: f.pause})
		if f.key > 0 {
			b.log("pausing a key of the pool on every server", "for", f.pause, "cause", f.cause.String(), "key", b.pool.ids[f.key-1])
		} else {
			b.log("pausing every server", "for", f.pause, "cause", f.cause.String())
		}
		switch f.cause {
		case rateLimited:
			b.stats.rateLimited.Add(1)
		case exhausted:
			b.stats.exhausted.Add(1)
		case requested:
			b.stats.requested.Add(1)
		}
	}
	if v[1] == 1 {
		now := time.Now()
		b.clock.Store(v[0] - now.Add(f.pause).UnixMicro())
		if f.key > 0 {
			b.keyHeard(f.key-1, v[0], 0)
		} else {
			b.heard(v[0], 0, 0)
		}
	}
	return nil
}

// firstSlack: the first overshoot sets the slack between paced slots to
// T/firstSlack, and each later one doubles it, up to T (half the limit):
// a budget whose arrival jitter is small loses about 2% of its limit, and
// one on a host so loaded that calls arrive tens of milliseconds off their
// slots slows down instead of drawing a 429 for every other call.
const firstSlack = 48

// slackHalfLife is how long the learned slack takes to halve without an
// overshoot, for a budget of emission interval t µs: 100 intervals (2 s at
// 50 calls/s). Each halving that proves too much costs one 429 and a
// doubling, so a fleet settles at about one overshoot per half-life at
// the least slack its jitter allows; and the slack a burst of jitter
// taught it (a cold start, a stall) is gone within seconds, not kept for
// a minute. In µs.
func slackHalfLife(t int64) int64 { return 100 * t }

// stormShare: 429s for more than one call in stormShare of a Per (at least
// 3, at most maxStorm), with the slack at its most, are a storm, not
// overshoots: the fleet pauses for Retry-After.
const stormShare = 4

// maxStorm: at most this many overshoots within one Per make a storm,
// however high the rate, so that a long Per (a minute, an hour) does not
// let a refusal that is no overshoot come back for most of it.
const maxStorm = 10

// What pause.lua made of a 429.
const (
	overshoot      = 1 // the slack grew and the schedule was respaced
	overshootAgain = 2 // the same 429 reported again: nothing done
)

// message hears a pause begun on any server: its end, and the instant the
// schedule was respaced if it was (see pause.lua); or, "c" and holder ids,
// that concurrency slots are free for those waiters (see conc.lua). It runs
// on the hub's reader, and must not block.
func (b *Budget) message(m string) {
	if b.keyMessage(m) {
		return
	}
	if ids, ok := strings.CutPrefix(m, "c "); ok {
		if b.conc != nil {
			b.conc.wake(ids, false)
		}
		return
	}
	if s, ok := strings.CutPrefix(m, "s "); ok {
		// A call left late: the slots after it moved (shift.lua). A move
		// pause.lua or shift.lua never announces (more than an interval,
		// or none) is dropped: a Wait that misses a move goes at its
		// slot, and a 429 it draws counts as an overshoot.
		f := strings.Fields(s)
		if len(f) == 3 {
			at, aerr := strconv.ParseInt(f[0], 10, 64)
			from, ferr := strconv.ParseInt(f[1], 10, 64)
			d, derr := strconv.ParseInt(f[2], 10, 64)
			if aerr == nil && ferr == nil && derr == nil && at > 0 && from > 0 && d > 0 && d <= b.t {
				b.heardShift(at, from, d)
			}
		}
		return
	}
	ends, respaced, _ := strings.Cut(m, " ")
	respaced, stretch, _ := strings.Cut(respaced, " ")
	// A cut of the learned rate (adaptive.lua) says the rate after it.
	stretch, learned, _ := strings.Cut(stretch, " ")
	at, err := strconv.ParseInt(ends, 10, 64)
	rs, rerr := strconv.ParseInt(respaced, 10, 64)
	k, kerr := strconv.ParseInt(stretch, 10, 64)
	if stretch == "" || kerr == nil && (k < 1e6 || k > 2e6) {
		// No factor, or one pause.lua never sends (the new spacing over
		// the old lies within [1, 2]): the sleeping Waits book again
		// rather than move their slots by it.
		k, kerr = 0, nil
	}
	if err != nil || respaced != "" && rerr != nil || kerr != nil || k < 0 {
		// Not a pause's end: the hub's word (notify.Wake) that messages
		// may have been lost. Sleeping Waits read the pause before going;
		// callers in line for a slot look again; a server with a pool of
		// keys announces them again, and hears of the keys removed.
		b.lost.Add(1)
		if b.pool != nil {
			b.pool.gen.Store(0)
		}
		if b.conc != nil {
			b.conc.wake("", true)
		}
		return
	}
	if learned != "" && b.opt.Adaptive {
		b.heardCut(learned)
	}
	b.heard(at, rs, k)
}

// readPauseTimeout bounds the read of pauses a call makes when its slot
// came while pub/sub was not working (see wait), for a budget of interval t
// (µs): half an interval, within [5ms, 100ms]. A Redis that just died can
// take the client's whole dial back-off to fail the read (go-redis tries 5
// dials over about 400ms): every call leaving meanwhile would go that late
// and bunch with the calls the local limiter lets through once the outage
// is known, past the upstream's limit.
func readPauseTimeout(t int64) time.Duration {
	return min(max(time.Duration(t)*time.Microsecond/2, 5*time.Millisecond), 100*time.Millisecond)
}

// listening reports whether the budget's subscription is confirmed: a
// pause announced now reaches this server.
func (b *Budget) listening() bool {
	select {
	case <-b.listener.Ready():
		return true
	default:
		return false
	}
}

// readPause reads the end of the pause in the budget's hash, and when the
// schedule was last respaced: the budget's, or the later of the budget's
// and key k's (1 + its index in the pool; 0 for none). The read is bounded
// by readPauseTimeout: a call whose slot came leaves without the answer
// rather than long after its slot.
func (b *Budget) readPause(k int) (at, respaced int64, err error) {
	ctx, cancel := context.WithTimeout(b.base, readPauseTimeout(b.t))
	defer cancel()
	v, err := redisx.Run(ctx, b.rdb, func(ctx context.Context) ([]any, error) {
		if k == 0 {
			return b.rdb.Redis().HMGet(ctx, b.key, "pause", "rs").Result()
		}
		var main, key *redis.SliceCmd
		_, err := b.rdb.Redis().Pipelined(ctx, func(p redis.Pipeliner) error {
			main = p.HMGet(ctx, b.key, "pause", "rs")
			key = p.HMGet(ctx, b.pool.hashes[k-1], "pause", "rs")
			return nil
		})
		if err != nil {
			return nil, err
		}
		return append(main.Val(), key.Val()...), nil
	}, nil)
	if err != nil {
		return 0, 0, err
	}
	n := func(x any) int64 {
		s, _ := x.(string)
		i, _ := strconv.ParseInt(s, 10, 64)
		return i
	}
	at, respaced = n(v[0]), n(v[1])
	if k > 0 {
		at, respaced = max(at, n(v[2])), max(respaced, n(v[3]))
	}
	return at, respaced, nil
}

// heard records that a pause ends at at and that the schedule was
// respaced at respaced (µs of the Redis clock; 0 for not), and wakes the
// sleeping Waits to look.
func (b *Budget) heard(at, respaced, k int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if respaced > b.respacedAt {
		// Kept for the sleeping Waits to move their slots (stretch); k 0
		// for a respace heard of without its factor.
		b.addMove(respace{at: respaced, k: k})
		// The fleet's schedule started again at respaced: what this
		// server remembers of the old one must not push it back out
		// (wait.lua takes the greater of the two).
		for m := b.mineTAT.Load(); m > respaced+b.t+b.tau && !b.mineTAT.CompareAndSwap(m, respaced+b.t+b.tau); m = b.mineTAT.Load() {
		}
	}
	if at > b.pauseAt || respaced > b.respacedAt {
		b.pauseAt = max(b.pauseAt, at)
		b.respacedAt = max(b.respacedAt, respaced)
		close(b.paused)
		b.paused = make(chan struct{})
	}
}

// knownRespace is the latest respace of the schedule this server has heard
// of (µs of the Redis clock), or 0.
func (b *Budget) knownRespace() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.respacedAt
}

// Paused reports whether the fleet is paused now, as far as this server
// has heard: by a 429 or remaining 0 observed, or by [Budget.PauseUntil], on
// any server. With [Options].Keys, it is also paused when every live key of
// this server's is. A caller that gives up on a Wait while it is paused is
// held up by the upstream's rate limit, not by a slow upstream.
func (b *Budget) Paused() bool {
	if b.check() != nil {
		return false
	}
	now := time.Now()
	if b.keysPaused(now.UnixMicro() + b.clock.Load()) {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pauseAt > now.UnixMicro()+b.clock.Load() || b.localPause.After(now)
}

// pauseLocally keeps a pause in this process while Redis is unreachable.
func (b *Budget) pauseLocally(until time.Time) {
	b.stats.localPauses.Add(1)
	b.mu.Lock()
	defer b.mu.Unlock()
	if until.After(b.localPause) {
		b.localPause = until
		close(b.paused)
		b.paused = make(chan struct{})
	}
}

// respace is a move of the fleet's schedule heard of, at the instant at
// (µs of the Redis clock): a stretch, every slot s > at moved to at + T +
// (s-at)·k/10⁶ (see pause.lua; k is 0 when not known), or, with d > 0, a
// shift, every slot s > from moved to s + d (see shift.lua).
type respace struct{ at, k, from, d int64 }

// maxRespaces is how many moves of the schedule a server keeps for its
// sleeping Waits; a Wait that slept across more books again. A call that
// leaves late moves the schedule (shift.go): a busy fleet hears a few tens
// a second, and a Wait may sleep for seconds.
const maxRespaces = 1024

// stretch returns where the moves heard of since booked (µs of the Redis
// clock, the instant of the booking), applied in order of instant, moved
// slot, the slot booked then, and how many moves had been heard of; ok is
// false when one of them is not known well enough to move it (its factor
// was not heard, or it was forgotten): the Wait books again. A move heard
// of late (a reply and a message on different connections) takes its
// place among the others, so the slot is worked out again from the
// booking each time.
func (b *Budget) stretch(slot, booked int64) (moved, moves int64, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	moved, ok = b.replay(b.respaces, b.forgotRespaces, slot, booked)
	return moved, b.moves, ok
}

// replay returns where the moves of list (in order of instant; forgot the
// latest instant of those dropped) made after booked moved slot, and
// whether all of them are known well enough to move it (see stretch).
func (b *Budget) replay(list []respace, forgot, slot, booked int64) (int64, bool) {
	if booked < forgot {
		return slot, false
	}
	i, _ := slices.BinarySearchFunc(list, booked+1, func(r respace, at int64) int {
		return cmp.Compare(r.at, at)
	})
	for _, r := range list[i:] {
		switch {
		case r.d > 0:
			if slot > r.from {
				slot += r.d
			}
		case r.k <= 0:
			return slot, false
		case slot > r.at:
			slot = r.at + b.t + (slot-r.at)*r.k/1e6 + 1
		}
	}
	return slot, true
}
