package budget

// Booking: a call books its slot in Redis in one round trip (wait.lua) and
// sleeps until it (giving back what it booked when it gives up: see
// giveback.go).

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/fine"
	"github.com/locksmith-go/locksmith/internal/redisx"
	"github.com/locksmith-go/locksmith/observe"
)

var (
	//go:embed wait.lua
	waitLua    string
	waitScript = redis.NewScript(waitLua)
)

// Wait returns when this call may go to the upstream: at once while the
// budget has room, else at the slot it booked. Booking is one round trip, and
// the slot is Wait's to keep: callers are served in booking order across the
// fleet, Background calls yielding to Foreground ones (see the package
// documentation).
//
// When ctx has a deadline and the slot lies past it, Wait books nothing and
// returns at once an error wrapping context.DeadlineExceeded. When ctx ends
// while Wait sleeps, Wait returns ctx.Err() at once and gives the slot back
// if no call booked after it. A ctx already ended returns ctx.Err() without
// a round trip. When Redis is unreachable, a local limiter decides (see
// [Options].FleetSize); a Redis error reply (a key of another type at the
// budget's name, say) is returned, wrapped.
func (b *Budget) Wait(ctx context.Context, p Priority) error {
	if err := b.check(); err != nil {
		return err
	}
	if b.pool != nil {
		return fmt.Errorf("budget: wait %s: the budget has Options.Keys: use Reserve, whose Reservation.Key is the key to call with",
			redisx.Quote(b.name))
	}
	_, err := b.run(ctx, "wait", p, b.waitWant)
	return err
}

// run books w for a call of priority p and sleeps until its slot: the
// common part of Wait and Reserve (op), counted and observed alike.
func (b *Budget) run(ctx context.Context, op string, p Priority, w want) (booking, error) {
	if p != Foreground && p != Background {
		return booking{}, fmt.Errorf("budget: %s %s: unknown priority %d", op, redisx.Quote(b.name), int(p))
	}
	if err := ctx.Err(); err != nil {
		return booking{}, err
	}
	start := time.Now()
	r, err := b.wait(ctx, op, p, w)
	d := time.Since(start)
	if err == nil {
		b.leftLate(r)
		s := &b.stats
		s.waits.Add(1)
		s.waitTotal.Add(int64(d))
		for m := s.waitMax.Load(); int64(d) > m && !s.waitMax.CompareAndSwap(m, int64(d)); m = s.waitMax.Load() {
		}
	}
	b.event(ctx, observe.Event{Kind: observe.BudgetWait, Duration: d, Err: err, Background: p == Background})
	return r, err
}

// booking is the wait script's reply.
type booking struct {
	kind  int64 // booked, refused or comeBack
	wait  time.Duration
	slot  int64  // booked: the slot; comeBack: the place in line
	tat   int64  // booked: the tat the booking set
	gated bool   // booked: a background call passed the share gate
	other string // booked: the limit of the previous booking, when another server's differs
	bg    bool
	place bool // comeBack: slot is a place in the line
	// early: booked, its reply came before its slot, so the call has
	// its slot to keep (see leftLate)
	early bool
	local bool // a slot of the local limiter, in µs of this process's clock
	// kidx is the key of the pool (Options.Keys) booked, 1 + its index;
	// 0 without Keys.
	kidx int
	// w is what was booked; prev, the tat before the booking, or -1 when
	// unknown (a Wait on a budget of one limit); tats and prevs, the tat
	// the booking set in each of the budget's extra dimensions and the one
	// before it (0 where w books none).
	w           want
	prev        int64
	tats, prevs []int64
	// sent is when a booking of a concurrency slot was sent: its lease
	// runs from then.
	sent time.Time
}

const (
	booked   = 0
	refused  = 1
	comeBack = 2
)

func (b *Budget) wait(ctx context.Context, op string, p Priority, w want) (booking, error) {
	var place int64
	rebooked := false // the last booking was given up for a pause
	for {
		if err := b.sleepLocalPause(ctx, op); err != nil {
			return booking{}, err
		}
		// A pause announced before the subscription was confirmed, or
		// while messages were lost, is read before going.
		listening, lost := b.listening(), b.lost.Load()
		var sw slotWatch
		if w.cid != "" {
			sw = b.watchSlot()
		}
		r, err := b.book(ctx, p, place, w)
		if err == nil && r.kind == booked && r.wait > 0 {
			d, ok := b.lead.until(r.slot, time.Now())
			r.early = !ok || d > 0
		}
		if err != nil {
			if redisx.Outage(err) {
				var k int
				if b.pool != nil {
					k, err = b.waitLocalKeySlot(ctx, op, p, w)
				} else {
					err = b.waitLocalSlot(ctx, op, p, w)
				}
				if errors.Is(err, errBackOnRedis) {
					place, w.placeKey = 0, 0
					continue
				}
				return booking{local: true, w: w, kidx: k}, err
			}
			return booking{}, b.fail(ctx, op, err)
		}
		switch r.kind {
		case noKey:
			if w.cid != "" {
				// Its place in line, or a slot it took before its keys
				// were removed, would hold up the callers behind it.
				b.freeAbandoned(w.cid)
			}
			return booking{}, b.noKeysError(op)
		case refused:
			b.stats.refused.Add(1)
			return booking{}, fmt.Errorf("budget: %s %s: the next slot, %v away, lies past the deadline: %w",
				op, redisx.Quote(b.name), r.wait, context.DeadlineExceeded)
		case queued:
			// In line for a concurrency slot: a wake-up naming this caller,
			// or the earliest lease's end, sends it to look again.
			if err := b.awaitSlot(ctx, w.cid, r.wait, sw); err != nil {
				b.abandon(r, err)
				return booking{}, err
			}
			continue
		case comeBack:
			b.stats.comeBacks.Add(1)
			place, w.placeKey = r.slot, r.kidx
			if err := b.sleep(ctx, r.wait, false, nil); err != nil {
				b.abandon(r, err)
				return booking{}, err
			}
			continue
		}
		if r.other != "" {
			b.limitConflict(r.other)
		}
		b.learn(r)
		if testHookBooked != nil {
			testHookBooked(b, ctx, r, p)
		}
		if rebooked && b.pausedPast(r.slot) {
			// Booked again after a pause, and still before it: Redis
			// lost the pause (FLUSHALL, a restart, a failover to a
			// replica without it). This server keeps to the pause it
			// knows: the slot goes back whole, and the caller sleeps the
			// pause out here, then books again, rather than book slot
			// after slot up to the pause's end.
			b.stats.rebooked.Add(1)
			if args := b.giveBackArgs(r, false); args != nil {
				_, _ = b.giveBackNow(r.kidx, args)
			}
			if err := b.sleepKnownPause(ctx, op); err != nil {
				return booking{}, err
			}
			place, w.placeKey, rebooked = 0, 0, false
			continue
		}
		rebooked = false
		if r.wait <= 0 && !b.pausedPast(r.slot) {
			return r, nil
		}
		booked := r.slot - r.wait.Microseconds() // the Redis clock at the booking
		orig := r.slot
		// The slot moves with the fleet's schedule (a stretch after an
		// overshoot, a shift past a call that left late) by itself, no
		// round trip, when every move since the booking is known; seen is
		// how many moves this server had heard of when it last worked the
		// slot out (-1: not yet, a move heard before the reply counts).
		seen := int64(-1)
		moved := func(at, moves int64) bool { return at > r.slot || moves != seen || b.keyMoved(r, booked) }
		// The slot on this process's clock, by the Redis clock's lead
		// (see clock.go): not this reply's own latency after it.
		d := r.wait
		if l, ok := b.lead.until(r.slot, time.Now()); ok {
			d = min(d, l)
		}
		for {
			err = b.sleep(ctx, d, b.fine, moved)
			if !errors.Is(err, errPaused) || b.keyMoved(r, booked) {
				// A key of a pool paused, respaced or removed: book again
				// (on another key).
				break
			}
			slot, moves, ok := b.stretchOf(r.kidx, orig, booked)
			if !ok {
				break
			}
			if slot != r.slot {
				b.stats.stretched.Add(1)
			}
			r.slot, seen = slot, moves
			if b.mu.Lock(); b.pauseAt > r.slot {
				// A pause reaches past the slot: book again after it.
				b.mu.Unlock()
				break
			}
			b.mu.Unlock()
			d = time.Duration(r.slot-orig) * time.Microsecond
			if l, ok := b.lead.until(r.slot, time.Now()); ok {
				d = l
			}
			if d <= 0 {
				err = nil
				break
			}
		}
		if err == nil && (!listening || b.lost.Load() != lost) {
			// Pub/sub did not work all along (refused, not confirmed yet,
			// or Redis was away): a pause another server began meanwhile,
			// or a respace it has not heard of, may not have been heard.
			// Read them before going.
			if at, respaced, rerr := b.readPause(r.kidx); rerr == nil && (at > r.slot || respaced > booked && respaced > b.knownRespaceOf(r.kidx)) {
				b.heardOf(r.kidx, at, respaced)
				err = errPaused
			}
		}
		switch {
		case errors.Is(err, errPaused):
			// A pause began before the slot: the script puts the new
			// booking after it. The units the old booking took of the
			// meters go back first: the new one takes them again.
			b.stats.rebooked.Add(1)
			place, w.placeKey, rebooked = 0, 0, true
			if args := b.giveBackArgs(r, true); args != nil {
				_, _ = b.giveBackNow(r.kidx, args)
			}
			continue
		case err != nil:
			b.abandon(r, err)
			return booking{}, err
		}
		return r, nil
	}
}

// book runs the wait script. When ctx ends before its reply arrives, a slot
// it booked is given back in the background.
func (b *Budget) book(ctx context.Context, p Priority, place int64, w want) (booking, error) {
	patience := int64(-1)
	if dl, ok := ctx.Deadline(); ok {
		patience = max(0, time.Until(dl).Microseconds())
	}
	prio := "0"
	if p == Background {
		prio = "1"
	}
	script, keys := waitScript, []string{b.key}
	args := b.waitArgs(prio, patience, place, w)
	var sent time.Time
	var cand []int // with Keys: the keys sent, by index
	switch {
	case b.pool != nil && w.cid != "":
		// The concurrency block's arguments go last (conc.lua takes them
		// off first), after the pool's.
		n := len(args) - 4
		conc := args[n:]
		if _, args, cand = b.keyArgs(args[:n:n], w.placeKey); cand == nil {
			return booking{kind: noKey}, nil
		}
		script, keys, sent, args = keysConcWaitScript, b.conc.keys, time.Now(), append(args, conc...)
	case w.cid != "":
		script, keys, sent = waitConcScript, b.conc.keys, time.Now()
	case b.pool != nil:
		if keys, args, cand = b.keyArgs(args, w.placeKey); cand == nil {
			return booking{kind: noKey}, nil
		}
		script = keysWaitScript
	}
	return redisx.Run(ctx, b.rdb, func(ctx context.Context) (booking, error) {
		v, err := script.Run(ctx, b.rdb.Redis(), keys, args...).Result()
		if err != nil {
			return booking{}, err
		}
		var r booking
		if cand != nil {
			r, err = b.parseKeyed(v, cand)
		} else {
			r, err = parseBooking(v)
		}
		r.bg, r.w, r.prev, r.sent = p == Background, w, -1, sent
		if err == nil && r.kind == booked && r.tats != nil {
			err = b.dimTats(&r)
		}
		return r, err
	}, func(r booking, err error) {
		switch {
		case err == nil && r.kind != refused:
			b.giveBack(r)
		case w.cid != "" && redisx.MayHaveRun(err):
			// Here, not by b.later, which refuses work once Close has
			// begun: Close waits for this goroutine (see redisx.Run).
			b.freeAbandoned(w.cid)
		}
	})
}

// waitArgs returns the wait script's ARGV for a booking of w.
func (b *Budget) waitArgs(prio string, patience, place int64, w want) []any {
	k := &b.boxed
	n := 12
	if w.calls != 1 || len(b.dims) > 0 || w.cid != "" {
		n += 1 + 5*len(b.dims)
	}
	if w.cid != "" {
		n += 4
	}
	args := make([]any, 0, n)
	args = append(args, k.t, k.tau, prio, patience, k.tb, k.horizon, place, k.ahead, k.sig,
		b.mineTAT.Load(), b.knownRespace(), k.halfLife)
	if n == 12 {
		return args
	}
	args = append(args, w.calls)
	for i, d := range b.dims {
		if w.units[i] > 0 {
			args = append(args, d.field, d.boxed[0], d.boxed[1], w.units[i], d.cap)
		}
	}
	if w.cid != "" {
		// The concurrency block's (conc.lua), taken off first.
		c := b.conc
		args = append(args, c.args[0], c.args[1], c.args[2], w.cid)
	}
	return args
}

// dimTats spreads the tats of r's reply (the tat before the booking, then
// each dimension booked's new tat and the one before it) over the budget's
// extra dimensions.
func (b *Budget) dimTats(r *booking) error {
	got := r.tats
	if len(got)%2 != 1 {
		return fmt.Errorf("unexpected wait reply: %d tats", len(got))
	}
	r.prev, got = got[0], got[1:]
	r.tats, r.prevs = make([]int64, len(b.dims)), make([]int64, len(b.dims))
	for i := range b.dims {
		if r.w.units[i] > 0 {
			if len(got) == 0 {
				return fmt.Errorf("unexpected wait reply: too few tats")
			}
			r.tats[i], r.prevs[i], got = got[0], got[1], got[2:]
		}
	}
	return nil
}

func parseBooking(v any) (booking, error) {
	a, ok := v.([]any)
	if !ok || len(a) < 2 {
		return booking{}, fmt.Errorf("unexpected wait reply %v (%T)", v, v)
	}
	var tats []int64
	if len(a) == 7 {
		// The extra dimensions' tats.
		x, _ := a[6].([]any)
		for _, t := range x {
			n, ok := t.(int64)
			if !ok {
				return booking{}, fmt.Errorf("unexpected wait reply %v (%T)", v, t)
			}
			tats = append(tats, n)
		}
		a = a[:6]
	}
	var other string
	if len(a) == 6 {
		// The limit another server booked with, or 0.
		other, _ = a[5].(string)
		a = a[:5]
	}
	n := make([]int64, len(a))
	for i, x := range a {
		if n[i], ok = x.(int64); !ok {
			return booking{}, fmt.Errorf("unexpected wait reply %v (%T)", v, x)
		}
	}
	r := booking{kind: n[0], wait: time.Duration(n[1]) * time.Microsecond}
	switch {
	case r.kind == queued && len(n) == 2:
	case r.kind == booked && len(n) == 5:
		r.slot, r.tat, r.gated, r.other, r.tats = n[2], n[3], n[4] == 1, other, tats
	case r.kind == comeBack && len(n) == 3:
		r.slot, r.place = n[2], n[2] > 0
	case r.kind != refused:
		return booking{}, fmt.Errorf("unexpected wait reply %v", v)
	}
	return r, nil
}

// errPaused is sleep's error when a pause began before the slot.
var errPaused = errors.New("paused")

// sleep sleeps for d, until ctx ends (returning ctx.Err()), the Budget is
// closed (ErrClosed), or, when paused is not nil, paused reports true for
// the end of the pause heard of and the count of moves of the schedule
// heard of (errPaused).
func (b *Budget) sleep(ctx context.Context, d time.Duration, precise bool, paused func(at, moves int64) bool) error {
	deadline := time.Now().Add(d)
	if !precise || d < fineWindow {
		precise = false
	} else {
		d -= fineWindow
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		b.mu.Lock()
		at, moves, ch := b.pauseAt, b.moves, b.paused
		b.mu.Unlock()
		if paused != nil && paused(at, moves) {
			return errPaused
		}
		select {
		case <-timer.C:
			if precise {
				fine.Sleep(deadline)
				// A move heard during the fine sleep, which cannot be
				// woken, is not too late to keep to.
				b.mu.Lock()
				at, moves = b.pauseAt, b.moves
				b.mu.Unlock()
				if paused != nil && paused(at, moves) {
					return errPaused
				}
			}
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-b.done:
			return ErrClosed
		case <-ch:
		}
	}
}

// learn records what a booking in Redis tells this server: the tat it set,
// its slot, and the Redis clock's lead on this process's.
func (b *Budget) learn(r booking) {
	if r.kidx > 0 {
		b.keyLearn(r)
	}
	// A booking made before a respace this server has heard of belongs to
	// the old schedule: its tat must not push the new one back out. (The
	// reply and the respace's message come on different connections, in
	// either order; heard lowers what was learned before.)
	if r.slot-r.wait.Microseconds() >= b.knownRespace() {
		b.know(r.tat, r.slot)
	}
	now := time.Now()
	b.lead.sample(r.slot-r.wait.Microseconds(), now)
	b.clock.Store(r.slot - now.Add(r.wait).UnixMicro())
}

// know raises what this server knows of the budget to tat and slot (µs of
// the Redis clock; 0 for unknown).
func (b *Budget) know(tat, slot int64) {
	for m := b.mineTAT.Load(); tat > m && !b.mineTAT.CompareAndSwap(m, tat); m = b.mineTAT.Load() {
	}
	for m := b.mineSlot.Load(); slot > m && !b.mineSlot.CompareAndSwap(m, slot); m = b.mineSlot.Load() {
	}
}
