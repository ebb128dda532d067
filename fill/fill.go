package fill

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/envelope"
	"github.com/locksmith-go/locksmith/internal/flight"
	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/notify"
	"github.com/locksmith-go/locksmith/internal/redisx"
	"github.com/locksmith-go/locksmith/observe"
)

// The fill algorithm for one key: Get, its flight (start, fly), the wait
// for another server's load (waiter) and the load as the key's claimer
// (leader). What Get shares with GetMany and Batcher is in call.go.

// Get returns the value cached for key, or runs load to make it, once across
// every Cache on the same Redis and prefix. Each caller waits with its own
// ctx: a caller that gives up gets ctx.Err() (wrapped together with
// [budget.ErrRateLimited] while Options.Budget is paused) and leaves the
// flight running for the others; a ctx that has already ended starts nothing. load runs on
// a context detached from the callers' cancellation but carrying the first
// caller's values, bounded by Options.LoadTimeout, and cancelled if the fill
// lock's lease is lost or the Cache is closed.
//
// A loader error reaches every caller waiting for it (here as the loader's
// own error value, on other servers wrapped in [ErrLoadFailed]); an error
// wrapping [ErrNotFound] is also cached for Options.NegativeTTL, and later
// calls get an error naming the key and wrapping ErrNotFound. A loader
// panic is re-raised in every caller in this process as a *[PanicError];
// when every caller has given up by then, it is re-raised on the flight's
// own goroutine, as an unrecovered panic in any goroutine would be: a panic
// is never swallowed.
//
// The value returned may be shared with other callers: treat it as
// read-only.
func Get[T any](ctx context.Context, c *Cache, key string, load func(ctx context.Context) (T, error), opts ...Option) (T, error) {
	if err := begin(ctx, c, load == nil, "Get called"); err != nil {
		var zero T
		return zero, err
	}
	return call[T](ctx, c, key, func(f *flight.Call) {
		o := typedOps[T](c.opt.Codec, func(ctx context.Context, _ string) (any, error) { return load(ctx) })
		c.start(ctx, f, &job{ks: c.keyset(key), cl: c.callOptions(opts), o: o})
	})
}

// start runs a new flight. Its caller makes the first round trip itself,
// which is the whole flight on a hit: a hit costs no hand-off between
// goroutines. The rest (a wait for another server, or a load) runs on a
// goroutine of the flight's own, detached from the caller, unless the
// caller's ctx cannot end: then the caller runs it too.
func (c *Cache) start(ctx context.Context, f *flight.Call, j *job) {
	if !c.enter() {
		c.flights.Land(f, flight.Outcome{Err: ErrClosed})
		return
	}
	l := c.look(ctx, j.ks, lease.NewToken(), j.o, modeRead, "")
	if out, ok := c.served(ctx, j, &l); ok {
		if l.r.state == found {
			c.maybeEarlyRefresh(ctx, j, &l)
		}
		c.wg.Done()
		c.flights.Land(f, out)
		return
	}
	first := &l
	if l.err != nil && ctx.Err() != nil {
		// This caller gave up mid-call; the others have not. The abandoned
		// call cleans up after itself (see claim).
		first = nil
	}
	if ctx.Done() == nil {
		c.fly(ctx, f, j, first)
		return
	}
	go c.fly(ctx, f, j, first)
}

// fly runs one flight to its outcome and hands it to the waiting callers.
// first, if not nil, is the outcome of the flight's first round trip.
func (c *Cache) fly(caller context.Context, f *flight.Call, j *job, first *look) {
	defer c.wg.Done()
	fctx, cancel := c.flightContext(caller)
	defer cancel()
	// Waits end when nobody waits for the flight any more.
	wctx, wcancel := context.WithCancel(fctx)
	stop := context.AfterFunc(f.Patience(), wcancel)
	var out outcome
	returned := false
	defer func() {
		if !returned {
			out = outcome{err: errGoexit}
		}
		// Stopped before landing, which ends the flight's patience: a
		// landing then starts no goroutine to cancel what is done anyway.
		stop()
		wcancel()
		c.flights.Land(f, out.landed())
	}()
	out = c.newWaiter(fctx, wctx, j, first).run()
	returned = true
}

// saturatedWait is how long a flight waits before trying again when the
// client's connection pool had no free connection.
const saturatedWait = 10 * time.Millisecond

// waiter finishes a key's flight after its first look: it looks again, and
// waits for another server's load, until the key has a value (or a known
// absence, or a failure) to hand out or this flight claimed it; the
// claimed key is then loaded by a leader. Its steps run one at a time, on
// the flight's goroutine.
type waiter struct {
	c    *Cache
	j    *job
	ctx  context.Context // bounds the flight's work
	wctx context.Context // ends when nobody waits for the flight any more: bounds its waits
	// rctx is for Redis calls: callers wait with their own ctx, and the
	// waits honour wctx, so a call needs no bound beyond the client's own
	// timeouts, and making it on this goroutine saves a hand-off.
	rctx  context.Context
	token string

	first *look       // a look already made, taken as the first step's
	sub   *notify.Sub // the key's subscription, when made before the wait

	// looks counts the steps; must, the first ones that look whatever
	// (the first, and the one once the subscription is ready); told, a
	// message asked for a look. Any other look only polls (see step).
	looks, must int
	told        bool

	// Written by the steps.
	missed    bool      // the miss was counted: a value found now is another server's
	waitStart time.Time // when the flight first found the key held or stale
	awaited   string    // the holder the flight waits for
	claimed   *look     // this flight claimed the key: a leader loads it
	fallback  *look     // a stale value to serve if the load or refresh fails
	val       any
	valErr    error
}

// newWaiter returns the waiter of j's flight; first, if not nil, is the
// flight's first look.
func (c *Cache) newWaiter(ctx, wctx context.Context, j *job, first *look) *waiter {
	w := &waiter{c: c, j: j, ctx: ctx, wctx: wctx, rctx: context.WithoutCancel(ctx), first: first}
	if first != nil {
		w.token = first.token
	} else {
		w.token = lease.NewToken()
	}
	return w
}

// afterHeld says that the waiter's first look was sent once the key's
// subscription sub was ready, the key having been found held at since: the
// miss was earlier, and the wait began then.
func (w *waiter) afterHeld(sub *notify.Sub, since time.Time) {
	w.sub = sub
	w.miss()
	w.waitStart = since
}

// run waits, then hands the key to a leader if the flight claimed it.
func (w *waiter) run() outcome {
	w.must = 2
	if w.sub != nil {
		w.must = 1
	}
	err := w.c.hub.AwaitSub(w.wctx, w.j.ks.lock, w.sub, w.step, w.message)
	if !w.waitStart.IsZero() && w.claimed == nil {
		werr := err
		if werr == nil {
			werr = w.valErr
		}
		if errors.Is(werr, ErrNotFound) {
			werr = nil
		}
		w.c.event(w.ctx, observe.Event{Kind: observe.WaitRemote, Key: w.j.ks.name, Duration: time.Since(w.waitStart), Err: werr})
	}
	return w.end(err)
}

// miss counts the flight's miss, once.
func (w *waiter) miss() {
	if !w.missed {
		w.c.stats.misses.Add(1)
		w.c.event(w.ctx, observe.Event{Kind: observe.Miss, Key: w.j.ks.name})
		w.missed = true
		w.waitStart = time.Now()
	}
}

var stepDone = notify.Step{Done: true}

// step looks at the key (the first time, takes the look already made) and
// says whether the flight is done or how long to wait for a message.
func (w *waiter) step() (notify.Step, error) {
	var l look
	told := w.told
	w.looks++
	w.told = false
	switch {
	case w.first != nil:
		l, w.first = *w.first, nil
	case w.looks > w.must && !told:
		// A look because PollInterval passed, no message having come:
		// it finds out what a lost message would have said, or that the
		// holder died. Skipped while half the pool polls already, so
		// that many waiting flights cannot starve the loads they wait
		// for of connections (their looks queued in the pool past its
		// timeout, the loads' calls behind them).
		var ok bool
		if l, ok = w.poll(); !ok {
			return notify.Step{Wait: jittered(w.c.opt.PollInterval)}, nil
		}
	default:
		l = w.c.look(w.rctx, w.j.ks, w.token, w.j.o, modeRead, w.awaited)
	}
	if l.err != nil {
		if redisx.Classify(l.err) == redisx.Saturated {
			// Redis is up; the client's pool is full: wait our turn. A
			// look that had to be made still has to be.
			w.looks, w.told = w.looks-1, told
			return notify.Step{Wait: saturatedWait}, nil
		}
		return notify.Step{}, l.err
	}
	switch l.r.state {
	case found:
		if w.missed {
			w.c.stats.remoteMerges.Add(1)
			w.c.keepLocal(w.j.ks.name, &l)
		} else {
			w.c.hit(w.ctx, w.j.ks.name, &l)
		}
		w.val, w.valErr = l.val, l.valErr
		return stepDone, nil
	case stale:
		return w.stale(&l)
	case acquired:
		w.miss()
		w.claimed = &l
		if l.r.bare {
			// The value is gone (deleted, or past its stale window): a
			// stale value read before is not to be served should the
			// load fail.
			w.fallback = nil
		}
		return stepDone, nil
	case failed:
		// The awaited holder ended while this flight was not listening:
		// its outcome, a failure or a value it did not store, was left for
		// its waiters.
		w.c.stats.remoteMerges.Add(1)
		if kind, body := lease.ParseMessage(l.r.msg); kind != lease.Value || !w.take(body) {
			w.val, w.valErr = w.c.remoteFailure(w.ctx, w.j.ks.name, l.r.msg, w.fallback)
		}
		return stepDone, nil
	}
	w.miss()
	w.awaited = l.r.holder
	return notify.Step{Wait: min(l.r.pttl, w.c.opt.PollInterval)}, nil
}

// poll looks at the key, holding one of the Cache's poll tokens; false,
// without a look, when none is free.
func (w *waiter) poll() (look, bool) {
	select {
	case w.c.polls <- struct{}{}:
	default:
		return look{}, false
	}
	defer func() { <-w.c.polls }() // a hook's panic or Goexit frees it too
	return w.c.look(w.rctx, w.j.ks, w.token, w.j.o, modeRead, w.awaited), true
}

// stale is the step of a look that found a stale value.
func (w *waiter) stale(l *look) (notify.Step, error) {
	c := w.c
	switch {
	case l.valErr != nil:
		// A stale absence or a type conflict: nothing to serve.
		w.val, w.valErr = nil, l.valErr
		if l.r.sub == staleClaimed {
			lease.Cleanup(c.rdb, w.j.ks.lock, w.token)
		}
		return stepDone, nil
	case c.servable(l):
		c.serveStale(w.ctx, w.j, l)
		w.val = l.val
		return stepDone, nil
	case l.r.sub == staleClaimed:
		// Past the revalidate window, within stale-if-error: load now, and
		// serve the old value if the load fails.
		w.miss()
		w.claimed, w.fallback = l, l
		return stepDone, nil
	}
	w.miss()
	w.fallback, w.awaited = l, l.r.holder
	return notify.Step{Wait: c.opt.PollInterval}, nil
}

// take makes the value in a message's body the flight's outcome; false
// when it cannot be decoded.
func (w *waiter) take(body string) bool {
	var l look
	w.c.decode(w.j.ks, body, w.j.o, &l)
	if errors.Is(l.valErr, envelope.ErrCorrupt) {
		return false
	}
	w.val, w.valErr = l.val, l.valErr
	return true
}

// message handles a message on the key's channel: true when it ends the
// flight.
func (w *waiter) message(p string) (bool, error) {
	w.told = true // the next look, if any, is no poll
	kind, body := lease.ParseMessage(p)
	switch kind {
	case lease.Value:
		if !w.take(body) {
			return false, nil
		}
	case lease.Failed, lease.Panicked:
		w.val, w.valErr = w.c.remoteFailure(w.ctx, w.j.ks.name, p, w.fallback)
	case lease.Deleted:
		// The stale value read before is deleted too: not to be served
		// should the next load fail.
		w.fallback = nil
		return false, nil
	default:
		return false, nil // released, stored too large, or reconnected: look again
	}
	w.c.stats.remoteMerges.Add(1)
	return true, nil
}

// end returns the flight's outcome once the wait ended with err.
func (w *waiter) end(err error) outcome {
	c, key := w.c, w.j.ks.name
	switch {
	case err == nil && w.claimed != nil:
		return c.lead(w.ctx, w.wctx, w.j, w.claimed, w.fallback, false)
	case err == nil:
		return outcome{val: w.val, err: w.valErr}
	case errors.Is(err, notify.ErrClosed) || context.Cause(w.ctx) == ErrClosed:
		return outcome{err: ErrClosed}
	case w.wctx.Err() != nil:
		return outcome{err: fmt.Errorf("fill: %s: %w", redisx.Quote(key), err)}
	}
	c.stats.redisErrors.Add(1)
	if c.opt.FailClosed || !redisx.Outage(err) {
		// An error reply (a key of the wrong type, out of memory, ...) is
		// not an outage: loading would not make it go away.
		return outcome{err: fmt.Errorf("fill: %s: %w", redisx.Quote(key), err)}
	}
	return c.failOpen(w.ctx, w.wctx, w.j, err)
}

// errLeaseLost is the cause of a loader's ctx cancellation when the fill
// lock's lease was lost.
var errLeaseLost = fmt.Errorf("fill: %w: the fill lock was lost during the load", lease.ErrNotHeld)

// leader is one claimed key's load: lead runs the loader, and settles
// its outcome on ctx (settling must happen even when the flight's ctx has
// run out).
type leader struct {
	c        *Cache
	j        *job
	ctx      context.Context // the flight's
	wctx     context.Context // ends when nobody waits any more
	sctx     context.Context // for settling, set once the load ended (see settleContext)
	claimed  *look           // how the key was claimed
	fallback *look           // a stale value served if the load fails, or nil
	bg       bool            // a background refresh
}

// lead runs j's loader as the key's claimer, with the lease kept while it
// runs, then stores its outcome and releases the lock in one round trip,
// notifying the waiting servers. fallback, if not nil, is a stale value
// served if the load fails. bg marks a background refresh.
func (c *Cache) lead(ctx, wctx context.Context, j *job, claimed, fallback *look, bg bool) outcome {
	ld := &leader{c: c, j: j, ctx: ctx, wctx: wctx, claimed: claimed, fallback: fallback, bg: bg}
	lctx, cancel := context.WithCancelCause(ctx)
	key := j.ks.name
	keeper := lease.Keep(c.rdb, j.ks.lock, claimed.token, c.opt.LockTTL, claimed.sent, func() {
		cancel(errLeaseLost)
		c.event(ctx, observe.Event{Kind: observe.LeaseLost, Key: key})
		c.log("fill lock lost during a load; its value will not be stored", "key", key)
	})
	// A loader that outlives the flight's ctx (LoadTimeout, Close), its
	// own ctx ignored, keeps the lock no longer: the renewals stop, and
	// another server loads once the lease runs out.
	keeper.Until(ctx)
	returned := false
	defer func() {
		if !returned { // runtime.Goexit in the loader
			cancel(nil)
			_ = keeper.Stop()
			sctx, scancel := settleContext(ctx)
			defer scancel()
			c.settleFailure(sctx, j.ks, claimed.token, lease.Message(lease.Panicked, errGoexit.Error()), ld.backoff())
		}
	}()
	p := budget.Foreground
	if bg {
		p = budget.Background
	}
	var ov ttlOverride
	out, took := c.load(context.WithValue(lctx, ttlKey{}, &ov), wctx, key, c.loader(j), p, j.cl.cost)
	lost := keeper.Stop()
	cancel(nil)
	returned = true
	sctx, scancel := settleContext(ctx)
	defer scancel()
	ld.sctx = sctx
	return ld.settle(out, took, lost, &ov)
}

// backoff reports whether a failure backs off the key's refreshes.
func (ld *leader) backoff() bool { return ld.fallback != nil || ld.bg }

// fail counts a failed load and settles it: its message for the waiters.
// It reports whether a stale value read before the load may still be
// served: not when the lock was no longer the load's (a Delete took it,
// or the lease ran out and the key may have moved on).
func (ld *leader) fail(kind lease.Kind, text string) (staleOK bool) {
	c := ld.c
	c.stats.loadErrors.Add(1)
	if ld.bg {
		c.stats.refreshErrors.Add(1)
	}
	s, err := c.settleFailure(ld.sctx, ld.j.ks, ld.claimed.token, lease.Message(kind, limitText(text)), ld.backoff())
	c.settled(ld.j.ks.name, s, err)
	return err != nil || s.ours
}

// settle stores the load's outcome out (took long; lost, if not nil, says
// the lease was lost; ov is the TTL the loader set, if any) and returns
// the flight's outcome.
func (ld *leader) settle(out outcome, took time.Duration, lost error, ov *ttlOverride) outcome {
	c, j := ld.c, ld.j
	switch {
	case out.panicked != nil:
		ld.fail(lease.Panicked, fmt.Sprint(out.panicked.Value))
		return out
	case out.err != nil && (c.closing(ld.ctx) || (took == 0 && ld.wctx.Err() != nil)):
		// Closed, or nobody waits any more and the load never started:
		// not a failure to share. Release, so another server may load.
		c.release(ld.sctx, j.ks, ld.claimed.token)
		if c.closing(ld.ctx) {
			return outcome{err: ErrClosed}
		}
		return out
	case errors.Is(out.err, ErrNotFound):
		if lost != nil {
			c.stats.staleStores.Add(1)
			return out
		}
		c.store(ld.sctx, j.ks, c.absentEntry(j.o, ld.claimed, took), c.jitter(j.cl.negativeTTL), nil, true, ld.claimed)
		return out
	case out.err != nil:
		if f := ld.fallback; ld.fail(lease.Failed, out.err.Error()) && f.fallbackLive(time.Now()) {
			c.staleHit(ld.ctx, j.ks.name)
			return outcome{val: f.val}
		}
		return out
	}
	// The callers get the codec's copy, as every other server does.
	entry, v, err := c.entryOf(j.ks.name, j.o, ld.claimed, out.val, took)
	if err != nil {
		ld.fail(lease.Failed, err.Error())
		return outcome{err: err}
	}
	if lost != nil {
		// The value goes to the callers; a successor may be storing a newer one.
		c.stats.staleStores.Add(1)
		return outcome{val: v}
	}
	ttl := c.jitter(j.cl.ttl)
	if d, ok := ov.get(); ok {
		if d <= 0 {
			c.publishOnly(ld.sctx, j.ks, ld.claimed.token, entry)
			return outcome{val: v}
		}
		ttl = d
	}
	c.store(ld.sctx, j.ks, entry, ttl, v, false, ld.claimed)
	return outcome{val: v}
}
