package budget

// The local fallback: while Redis is unreachable, each server keeps to
// Rate/FleetSize on its own clock (the Limit, each limit of Also and each
// meter's), taking over from its latest slot in Redis and handing its
// latest local slot back on Redis's return.

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/locksmith-go/locksmith/internal/redisx"
)

// sleepLocalPause sleeps until the end of a pause kept locally.
func (b *Budget) sleepLocalPause(ctx context.Context, op string) error {
	for {
		b.mu.Lock()
		d := time.Until(b.localPause)
		b.mu.Unlock()
		if d <= 0 {
			return nil
		}
		if err := b.sleepOut(ctx, op, d); err != nil {
			return err
		}
	}
}

// sleepOut sleeps for d, the rest of a pause, or refuses at once when d
// ends past ctx's deadline, as a booking past it is.
func (b *Budget) sleepOut(ctx context.Context, op string, d time.Duration) error {
	if dl, ok := ctx.Deadline(); ok && time.Now().Add(d).After(dl) {
		b.stats.refused.Add(1)
		return fmt.Errorf("budget: %s %s: paused for %v, past the deadline: %w",
			op, redisx.Quote(b.name), d, context.DeadlineExceeded)
	}
	return b.sleep(ctx, d, false, nil)
}

// pausedPast reports whether the latest pause this server heard of ends
// after slot (µs of the Redis clock).
func (b *Budget) pausedPast(slot int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pauseAt > slot
}

// sleepKnownPause sleeps until the latest pause this server heard of ends,
// by its reckoning of the Redis clock; a pause that ends past ctx's
// deadline refuses at once, as a booking past it is.
func (b *Budget) sleepKnownPause(ctx context.Context, op string) error {
	b.mu.Lock()
	at := b.pauseAt
	b.mu.Unlock()
	d := time.Duration(at-(time.Now().UnixMicro()+b.clock.Load())) * time.Microsecond
	if d <= 0 {
		return nil
	}
	return b.sleepOut(ctx, op, d)
}

// waitLocal is Wait (or Reserve: op) of w while Redis is unreachable: a
// local limiter at Rate/FleetSize decides, for the Limit and every limit of
// Also and of the meters w books (the meters at the estimate: a local
// reservation settles nothing). Background calls book no further ahead than
// the horizon, as with Redis; there is no background share. The local limiter
// goes on from this server's latest slot in Redis, one local interval
// after it, not with a full burst: its calls booked there still go; and
// not before the end of the fleet's schedule this server last heard of
// (the tat of its latest booking): the calls the other servers booked
// there go first.
func (b *Budget) waitLocal(ctx context.Context, op string, p Priority, w want) error {
	return b.waitLocalOn(ctx, op, p, w, b.local)
}

// waitLocalOn is waitLocal on the local limiter ll: the budget's, or a
// key's (Options.Keys).
func (b *Budget) waitLocalOn(ctx context.Context, op string, p Priority, w want, ll *localLimiter) error {
	b.stats.localWaits.Add(1)
	horizon := time.Duration(b.horizon) * time.Microsecond
	backs := b.backs.Load()
	for {
		if err := b.sleepLocalPause(ctx, op); err != nil {
			return err
		}
		if s := b.mineSlot.Load(); s > 0 {
			ll.seed(time.UnixMicro(s - b.clock.Load()).Add(ll.lims[0].t))
		}
		if tat := b.mineTAT.Load(); ll == b.local && tat > 0 {
			// The fleet's schedule as this server last heard of it: the
			// calls other servers booked in Redis before it became
			// unreachable go first.
			ll.seed(time.UnixMicro(tat - b.tau - b.clock.Load()))
		}
		now := time.Now()
		slot, k := ll.reserve(now, w)
		d := slot.Sub(now)
		if dl, ok := ctx.Deadline(); ok && slot.After(dl) {
			ll.cancel(k)
			b.stats.refused.Add(1)
			return fmt.Errorf("budget: %s %s (local limit, Redis unreachable): the next slot, %v away, lies past the deadline: %w",
				op, redisx.Quote(b.name), d, context.DeadlineExceeded)
		}
		if p == Background && d > horizon {
			ll.cancel(k)
			b.stats.comeBacks.Add(1)
			if err := b.sleep(ctx, d-horizon, false, nil); err != nil {
				return err
			}
			continue
		}
		if testHookBooked != nil {
			testHookBooked(b, ctx, booking{slot: slot.UnixMicro(), wait: d, local: true}, p)
		}
		// Back on Redis, this server brings the slot of each call gone:
		// the next may follow T later, without a burst.
		gone := func() { b.know(slot.UnixMicro()+b.clock.Load()+b.t+b.tau, 0) }
		if d <= 0 {
			gone()
			return nil
		}
		b.mu.Lock()
		pause := b.localPause
		b.mu.Unlock()
		err := b.sleep(ctx, d, b.fine, func(int64, int64) bool {
			if b.backs.Load() != backs {
				return true
			}
			b.mu.Lock()
			defer b.mu.Unlock()
			return b.localPause.After(pause)
		})
		switch {
		case errors.Is(err, errPaused) && b.backs.Load() != backs:
			// Redis is back: the slot is booked there, where the fleet
			// sees it, rather than kept here, where the servers back on
			// Redis cannot.
			ll.cancel(k)
			return errBackOnRedis
		case errors.Is(err, errPaused):
			ll.cancel(k)
			b.stats.rebooked.Add(1)
			continue
		case err != nil:
			ll.cancel(k)
			if !errors.Is(err, ErrClosed) {
				b.stats.abandoned.Add(1)
			}
			return err
		}
		gone()
		return nil
	}
}

// errBackOnRedis is waitLocalOn's error when Redis came back while the call
// slept on a local slot: it books again in Redis.
var errBackOnRedis = errors.New("redis back")

// localLimiter is GCRA on this process's clock, one per limit: the budget
// of one server while Redis is unreachable.
type localLimiter struct {
	mu   sync.Mutex // guards the tats of lims
	lims []localGCRA
}

// localGCRA is one limit of a localLimiter: emission interval t, burst
// tolerance tau (per unit).
type localGCRA struct {
	t, tau time.Duration
	tat    time.Time
}

// newLocalLimiter returns the local limiter of a budget of limit l and
// extra dimensions dims, each at its Rate/n with a burst of max(1, Burst/n).
func newLocalLimiter(l Limit, dims []dim, n int) *localLimiter {
	gcra := func(t time.Duration, burst int64) localGCRA {
		t *= time.Duration(n)
		return localGCRA{t: t, tau: time.Duration(max(1, burst/int64(n))-1) * t}
	}
	ll := &localLimiter{lims: []localGCRA{gcra(interval(l), int64(l.Burst))}}
	for _, d := range dims {
		ll.lims = append(ll.lims, gcra(time.Duration(d.t)*time.Microsecond, d.tau/d.t+1))
	}
	return ll
}

// units returns what w takes of limit i.
func (w want) unitsOf(i int) int64 {
	if i == 0 {
		return w.calls
	}
	return w.units[i-1]
}

// localBooking is what reserve booked: the tat it set in the Limit, and
// every limit's tat before it.
type localBooking struct {
	tat  time.Time
	prev []time.Time
}

// reserve books w at the next slot from now that every limit allows, and
// returns it and the booking.
func (l *localLimiter) reserve(now time.Time, w want) (slot time.Time, k localBooking) {
	l.mu.Lock()
	defer l.mu.Unlock()
	slot = l.slot(now, w)
	k.prev = make([]time.Time, len(l.lims))
	for i := range l.lims {
		g := &l.lims[i]
		k.prev[i] = g.tat
		if c := w.unitsOf(i); c > 0 {
			if slot.After(g.tat) {
				g.tat = slot
			}
			// At most maxAhead of now, as in Redis: c·t of an overdraw of
			// years would overflow a Duration.
			limit := now.Add(maxAhead)
			if g.t > 0 && int64(c) > int64(maxAhead/g.t) {
				g.tat = limit
			} else if g.tat = g.tat.Add(time.Duration(c) * g.t); g.tat.After(limit) {
				g.tat = limit
			}
		}
	}
	k.tat = l.lims[0].tat
	return slot, k
}

// slot returns the next slot from now that every limit allows w. l.mu
// must be held.
func (l *localLimiter) slot(now time.Time, w want) time.Time {
	slot := now
	for i, g := range l.lims {
		if c := w.unitsOf(i); c > 0 {
			burst := int64(g.tau/g.t) + 1
			if s := g.tat.Add(-g.tau + time.Duration(min(c, burst)-1)*g.t); s.After(slot) {
				slot = s
			}
		}
	}
	return slot
}

// cancel undoes booking k, when no booking came after it.
func (l *localLimiter) cancel(k localBooking) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.lims[0].tat.Equal(k.tat) {
		return
	}
	for i := range l.lims {
		l.lims[i].tat = k.prev[i]
	}
}

// seed makes the Limit's next slot no earlier than at.
func (l *localLimiter) seed(at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	g := &l.lims[0]
	if at = at.Add(g.tau); at.After(g.tat) {
		g.tat = at
	}
}
