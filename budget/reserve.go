package budget

// Reservations: a call that books every limit and meter of the budget at
// once (Reserve, one round trip of wait.lua), then settles what it really
// spent (Done) or gives it back (Cancel), both by giveback.lua.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"

	"github.com/locksmith-go/locksmith/internal/budgetctx/reskey"
	"github.com/locksmith-go/locksmith/internal/redisx"
)

// Cost is what a call spends of a budget: calls, counted by the Limit and
// every limit of [Options].Also, and units of each meter of
// [Options].Meters. When reserving it is an estimate; given to
// [Reservation.Spent], the real figure.
type Cost struct {
	// Calls are the units of the Limit and of Also; 0 means 1.
	Calls int
	// Meters are the units of each meter, by its name in Options.Meters: an
	// estimate when reserving, the real figure in Spent. A meter left out
	// spends nothing.
	Meters map[string]int64
}

// dim is an extra dimension of a budget: a limit of Also or of a meter.
type dim struct {
	field  string // the field of its tat in the hash: a1, a2..., m:NAME:0...
	meter  string // the meter's name; "" for a limit of Also
	cap    string // the field of the meter's cap on its first limit, else ""
	t, tau int64  // µs per unit
	boxed  [2]any // t and tau, as the wait script's arguments
}

// dimsOf returns the extra dimensions of opt: Also's limits in order, then
// each meter's, meters by name.
func dimsOf(opt Options) []dim {
	var dims []dim
	add := func(d dim, l Limit) {
		l = l.withDefaults()
		d.t = interval(l).Microseconds()
		d.tau = int64(l.Burst-1) * d.t
		d.boxed = [2]any{d.t, d.tau}
		dims = append(dims, d)
	}
	for i, l := range opt.Also {
		add(dim{field: "a" + strconv.Itoa(i+1)}, l)
	}
	names := make([]string, 0, len(opt.Meters))
	for name := range opt.Meters {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		for i, l := range opt.Meters[name] {
			d := dim{field: "m:" + name + ":" + strconv.Itoa(i), meter: name}
			if i == 0 {
				d.cap = "m:" + name + ":cap"
			}
			add(d, l)
		}
	}
	return dims
}

// want is what a booking takes: calls, and units of each of the budget's
// extra dimensions (0: the dimension is left out).
type want struct {
	calls int64
	units []int64
	cid   string // the holder id of a reservation's concurrency slot, or ""
	// placeKey is, with Options.Keys, the key of the caller's place in the
	// background line (1 + its index), or 0.
	placeKey int
}

// wantOf returns what booking c takes.
func (b *Budget) wantOf(c Cost) want {
	w := want{calls: int64(max(c.Calls, 1)), units: make([]int64, len(b.dims))}
	for i, d := range b.dims {
		if d.meter == "" {
			w.units[i] = w.calls
		} else {
			w.units[i] = c.Meters[d.meter]
		}
	}
	return w
}

// checkCost returns an error when c cannot be booked on b: negative
// figures, or a meter the budget does not have.
func (b *Budget) checkCost(op string, c Cost) error {
	if c.Calls < 0 {
		return fmt.Errorf("budget: %s %s: %d calls: want 0 (1) or more", op, redisx.Quote(b.name), c.Calls)
	}
	for name, n := range c.Meters {
		if _, ok := b.opt.Meters[name]; !ok {
			return fmt.Errorf("budget: %s %s: no meter %q in Options.Meters", op, redisx.Quote(b.name), name)
		}
		if n < 0 || n >= maxCount {
			return fmt.Errorf("budget: %s %s: %d units of %q: want 0 or more, below 2^53", op, redisx.Quote(b.name), n, name)
		}
	}
	return nil
}

// Reserve waits until a call of cost c may go to the upstream, as
// [Budget.Wait] does, booking at once, in one round trip, the same slot in
// the Limit, every limit of [Options].Also and every meter c names: the
// slot is the earliest that all of them allow, and either all of them are
// booked for it or none is. Callers are served in booking order across the
// fleet, with the priorities, pauses and caps Wait obeys.
//
// When ctx has a deadline and the slot lies past it, Reserve books nothing
// and returns at once an error wrapping context.DeadlineExceeded. When ctx
// ends while Reserve sleeps, Reserve returns ctx.Err() at once and cancels
// the reservation, as [Reservation.Cancel] does. When Redis is unreachable,
// the local limiter decides (see [Options].FleetSize): it books the
// estimate, and the reservation's Done and Cancel do nothing.
//
// With [Options].Concurrency, the booking also takes one of the fleet's
// concurrency slots, in the same round trip; when none is free, Reserve
// waits in line, first come first served across the fleet, until a slot
// frees (see the package documentation). The reservation holds the slot
// until Done or Cancel; run the call under [Reservation.Context], which
// ends if the slot is lost.
//
// After the call, report what it really spent with [Reservation.Spent] and
// end the reservation with [Reservation.Done]; when the call was not made,
// end it with [Reservation.Cancel].
func (b *Budget) Reserve(ctx context.Context, p Priority, c Cost) (*Reservation, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	if err := b.checkCost("reserve", c); err != nil {
		return nil, err
	}
	w := b.wantOf(c)
	if b.conc != nil {
		w.cid = b.conc.newID()
	}
	r, err := b.run(ctx, "reserve", p, w)
	if err != nil {
		if w.cid != "" {
			b.conc.drop(w.cid, context.Canceled)
		}
		return nil, err
	}
	res := &Reservation{b: b, r: r, est: w, ctx: ctx}
	switch {
	case w.cid != "" && r.local:
		b.conc.drop(w.cid, context.Canceled)
		res.localSlot = true
	case w.cid != "":
		res.cid = w.cid
		res.ctx = b.conc.took(ctx, w.cid, r.sent)
	}
	return res, nil
}

// Reservation is a call's booking in a [Budget], made by [Budget.Reserve]:
// its slot, and the units it booked in each limit and meter. End it with
// Done once the call was made, or with Cancel if it was not. Its methods are
// safe for concurrent use.
type Reservation struct {
	b   *Budget
	r   booking
	est want
	// ctx is the reservation's context: Reserve's, or, holding a
	// concurrency slot in Redis (holder id cid), one that ends when the
	// slot is lost. localSlot: it holds a slot of the local cap.
	ctx       context.Context
	cid       string
	localSlot bool

	mu    sync.Mutex // guards spent, ended and accepted
	spent *want
	ended bool
	// accepted: a response that the upstream accepted the call was
	// observed (Options.Adaptive counts a call once).
	accepted bool
}

// Key returns the credential the call should use: the key of
// [Options].Keys the reservation was booked on. It is "" without Keys.
func (r *Reservation) Key() string {
	if r == nil || r.r.kidx == 0 {
		return ""
	}
	return r.b.pool.creds[r.r.kidx-1]
}

// Spent records what the call really spent (a response's
// usage.total_tokens, say), for Done to settle against the estimate
// Reserve booked. A later Spent replaces an earlier one; a meter left out
// spent nothing. Costs that cannot be booked (negative, a meter the budget
// does not have) are ignored by Done, which reports them.
func (r *Reservation) Spent(c Cost) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.b.checkCost("spent", c) != nil {
		r.spent = &want{calls: -1}
		return
	}
	w := r.b.wantOf(c)
	r.spent = &w
}

// Done ends the reservation of a call that was made, settling what it
// spent against the estimate Reserve booked, in one round trip when they
// differ (none when Spent was not called or matches the estimate): more
// units are booked in their meters (and more calls in the limits on calls)
// after the fact, since the call already went, so later reservations wait
// for them; fewer are given back at once, so that the reservations made
// from then on go earlier, even when others were booked since (a token
// bucket can always take units back; slots already booked stay). Fewer
// calls than booked are given back only while the reservation is the
// latest booking, as a Wait whose ctx ends gives its slot back: pacing is
// never broken. A meter capped by the upstream's headers is settled too.
//
// With [Options].Concurrency, Done frees the reservation's slot in the same
// round trip (so Done always costs one), and wakes the callers in line it
// lets through; when the slot was lost before (its lease ran out, or the
// Budget was closed), Done still settles, and returns an error wrapping
// [ErrSlotLost].
//
// Done and Cancel end the reservation once: a second call of either does
// nothing and returns nil. Done settles even when ctx has ended (a load's
// ctx often has by then), within a second; its error is the round trip's,
// if any. While Redis is unreachable nothing is settled.
func (r *Reservation) Done(ctx context.Context) error {
	if !r.end() {
		return nil
	}
	r.mu.Lock()
	spent := r.spent
	r.mu.Unlock()
	b := r.b
	lost := r.release()
	if spent != nil && spent.calls < 0 {
		err := fmt.Errorf("budget: done %s: Spent was given a cost that cannot be booked", redisx.Quote(b.name))
		return errors.Join(err, r.settle(ctx, nil, lost))
	}
	var groups []any
	if spent != nil && !r.r.local {
		groups = r.settleArgs(*spent)
	}
	return r.settle(ctx, groups, lost)
}

// end marks the reservation ended, and reports whether it was not already.
func (r *Reservation) end() bool {
	if r == nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ended {
		return false
	}
	r.ended = true
	return true
}

// release lets go of the reservation's concurrency slot in this process,
// and returns ErrSlotLost, wrapped, when it was lost before.
func (r *Reservation) release() error {
	switch {
	case r.localSlot:
		r.b.releaseLocal()
	case r.cid != "" && !r.b.conc.drop(r.cid, context.Canceled):
		return fmt.Errorf("budget: done %s: %w (its lease ran out, or the Budget was closed)", redisx.Quote(r.b.name), ErrSlotLost)
	}
	return nil
}

// settleArgs returns the give-back script's groups that settle spent
// against the estimate, or nil when they match.
func (r *Reservation) settleArgs(spent want) []any {
	b := r.b
	var groups []any
	add := func(kind, field string, t, units, tat int64, cap string) {
		groups = append(groups, kind, field, t, units, tat, -1, cap)
	}
	if d := spent.calls - r.est.calls; d > 0 {
		add("u", "tat", b.t, d, -1, "cap")
	} else if d < 0 {
		add("l", "tat", b.t, -d, r.r.tat, "cap")
	}
	for i, x := range b.dims {
		d := spent.units[i] - r.est.units[i]
		switch {
		case d == 0:
		case x.meter != "" || d > 0:
			add("u", x.field, x.t, d, -1, x.cap)
		case r.r.tats != nil && r.est.units[i] > 0:
			add("l", x.field, x.t, -d, r.r.tats[i], x.cap)
		}
	}
	return groups
}

// settle runs, in one round trip, the give-back script's groups (if any)
// and the freeing of the concurrency slot held in Redis (if any); lost is
// the slot's loss, returned with the round trip's error.
func (r *Reservation) settle(ctx context.Context, groups []any, lost error) error {
	b := r.b
	if len(groups) == 0 && (r.cid == "" || lost != nil) {
		return lost
	}
	ctx, cancel := settleContext(ctx)
	defer cancel()
	var err error
	switch {
	case len(groups) == 0:
		var n int64
		if n, err = b.freeCount(ctx, r.cid); err == nil && n == 0 {
			lost = b.lostInRedis()
		}
	case r.cid != "" && lost == nil:
		var freed int64
		_, freed, err = b.runGiveBackConc(ctx, r.r.kidx, append([]any{"slot", r.r.slot, 0}, groups...), r.cid)
		if err == nil && freed == 0 {
			lost = b.lostInRedis()
		}
	default:
		_, err = b.runGiveBack(ctx, r.r.kidx, append([]any{"slot", r.r.slot, 0}, groups...))
	}
	switch {
	case err != nil && redisx.Outage(err):
		return lost
	case err != nil:
		return errors.Join(lost, b.fail(ctx, "done", err))
	}
	return lost
}

// lostInRedis is Done's error when freeing a slot freed none: Redis had
// ended its lease (this process paused past it, say) before this process
// noticed, and another may have held the slot since.
func (b *Budget) lostInRedis() error {
	return fmt.Errorf("budget: done %s: %w (its lease ran out in Redis)", redisx.Quote(b.name), ErrSlotLost)
}

// Cancel ends the reservation of a call that was not made, giving back
// what can be, in one round trip: the units of every meter at once, and
// the call's slot in the limits on calls while the reservation is the
// latest booking (see [Budget.Wait]): pacing is never broken; and the
// concurrency slot, if any (Options.Concurrency). Done and
// Cancel end the reservation once: a second call of either does nothing and
// returns nil. Cancel gives back even when ctx has ended, within a second;
// its error is the round trip's, if any. While Redis is unreachable nothing
// is given back.
func (r *Reservation) Cancel(ctx context.Context) error {
	if !r.end() {
		return nil
	}
	if r.localSlot {
		r.b.releaseLocal()
	}
	if r.r.local {
		return nil
	}
	ctx, cancel := settleContext(ctx)
	defer cancel()
	return r.b.giveBackCtx(ctx, r.r)
}

// Context returns the reservation's context: the ctx given to Reserve,
// which, when the reservation holds a concurrency slot in Redis
// (Options.Concurrency), also ends when the slot is lost, with cause
// [ErrSlotLost] (see [context.Cause]), and when Done or Cancel is called.
// A call made under a concurrency slot should run under it, as package lock's
// Do runs its function under a context that ends with the lease: once the
// slot's lease ran out, the fleet may have given the slot to another call.
func (r *Reservation) Context() context.Context {
	if r == nil {
		return context.Background()
	}
	return r.ctx
}

// settleContext returns the context Done and Cancel run their round trip
// in: ctx's values without its end, bounded by giveBackTimeout. What a call
// spent is the fleet's to know whatever became of the caller.
func settleContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), giveBackTimeout)
}

// Observe applies the call's response to the budget: see [Budget.Observe].
// With [Options].Adaptive, the call counts once as accepted, however many
// 2xx responses are observed for it.
//
// With [Options].Keys, it is applied to the reservation's key: a 429 or
// "remaining 0" pauses that key only, and a 401 removes it from the pool.
func (r *Reservation) Observe(ctx context.Context, h http.Header, status int) error {
	if r == nil {
		return nil
	}
	return r.b.Observe(context.WithValue(ctx, reskey.Key{}, r), h, status)
}

// FromContext returns the reservation that ctx carries: the one a fill
// load or an httpfill request runs under, or nil. A loader reads its
// credential from it ([Reservation.Key]) and reports what it spent
// ([Reservation.Spent]).
func FromContext(ctx context.Context) *Reservation {
	r, _ := ctx.Value(reskey.Key{}).(*Reservation)
	return r
}
