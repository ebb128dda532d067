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
// # Failures
//
// A loader error is not cached: the lock is released and the failure
// published, so every waiter returns it at once instead of each calling the
// upstream in turn. An error wrapping [ErrNotFound] is cached as an absence
// for Options.NegativeTTL. A loader panic is re-raised in every caller of the
// process, as x/sync/singleflight does; a panic in a background refresh,
// which no caller waits for, is a failed refresh (counted, backed off, seen
// by the Observer) logged with its stack, and a codec or Observer that
// panics on a goroutine of the Cache is an error, logged, never a crash of
// the process. When Redis cannot be reached, or
// cannot serve now (a failover, a restart), Get runs the loader anyway (the
// in-process merge still holds) unless Options.FailClosed is set; an outage
// is remembered, so calls during it do not each pay the client's dial
// retries. Entries that cannot be decoded are counted and treated as
// misses, never served.
package fill

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/envelope"
	"github.com/locksmith-go/locksmith/internal/flight"
	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/notify"
	"github.com/locksmith-go/locksmith/internal/redisx"
	"github.com/locksmith-go/locksmith/observe"
)

// Cache is a fleet-wide single-flight cache on one Redis. It is safe for
// concurrent use. It shares one pub/sub connection with every Cache and
// budget.Budget on the same Redis client, opened when a flight first waits
// on another server (or at once with a local tier); the last of them to
// close closes it.
type Cache struct {
	rdb     *redisx.Client
	opt     Options
	err     error          // the options' error, returned by every call
	hub     *notify.Shared // shared with the Budgets and Caches on rdb
	flights *flight.Group[flightKey]
	base    context.Context // ends, with cause ErrClosed, at Close
	cancel  context.CancelCauseFunc
	stats   counters
	local   *local // nil when off

	invalChannel            string // where stores and deletes announce themselves
	swrArg, sieArg, pttlArg string // the stale windows and whether a PTTL is wanted, for the claim script

	mu         sync.Mutex // guards closed and wg.Add
	closed     bool
	wg         sync.WaitGroup // flights and refreshes running
	failedOpen bool           // a fail-open was logged in this outage; guarded by mu
}

// New returns a Cache on rdb, which may be a *redis.Client, a
// *redis.ClusterClient, a failover (Sentinel) client or a *redis.Ring. A nil
// opt gives the defaults. New cannot fail: a nil rdb, or options that
// cannot work (a Prefix with '{' or '}'), make every call return an error
// saying why, wrapping [ErrInvalid].
func New(rdb redis.UniversalClient, opt *Options) *Cache {
	o, err := opt.withDefaults()
	if isNil(rdb) {
		rdb = nil // a nil *redis.Client in the interface, too
		err = errors.Join(fmt.Errorf("%w: nil Redis client", ErrInvalid), err)
	}
	c := &Cache{
		rdb:          redisx.New(rdb),
		opt:          o,
		err:          err,
		flights:      flight.New[flightKey](),
		invalChannel: o.Prefix + "invalidate",
		swrArg:       lease.Millis(o.StaleWhileRevalidate),
		sieArg:       lease.Millis(o.StaleIfError),
		pttlArg:      "0",
	}
	if o.Local != nil || o.EarlyRefresh {
		c.pttlArg = "1"
	}
	c.base, c.cancel = context.WithCancelCause(context.Background())
	hopt := &notify.Options{OnError: func(err error) {
		c.log("pub/sub refused; waiters poll every PollInterval", "err", err)
	}}
	if o.Local != nil {
		// Copies are served only while a heartbeat came back within
		// MaxStaleness: send several per MaxStaleness.
		hopt.Heartbeat = min(200*time.Millisecond, o.Local.MaxStaleness/4)
	}
	c.hub = notify.Share(rdb, hopt)
	c.rdb.SetOnOutage(func(err error) {
		c.log("redis unreachable", "err", err)
		c.event(context.Background(), observe.Event{Kind: observe.OutageStart, Err: err})
	}, func(d time.Duration) {
		c.mu.Lock()
		c.failedOpen = false
		c.mu.Unlock()
		c.log("redis reachable again", "outage", d)
		c.event(context.Background(), observe.Event{Kind: observe.OutageEnd, Duration: d})
	})
	if o.Local != nil && err == nil {
		c.local = newLocal(c, *o.Local)
	}
	return c
}

// isNil reports whether rdb is nil, or a nil pointer in the interface.
func isNil(rdb redis.UniversalClient) bool {
	if rdb == nil {
		return true
	}
	v := reflect.ValueOf(rdb)
	return v.Kind() == reflect.Pointer && v.IsNil()
}

// errNilCache is what calls on a nil *Cache return.
var errNilCache = fmt.Errorf("%w: nil *fill.Cache", ErrInvalid)

// check returns the error every call of c returns, if any: c is nil, or
// New was given what cannot work.
func (c *Cache) check() error {
	if c == nil {
		return errNilCache
	}
	return c.err
}

// Close ends the loads and waits in progress and waits for them to return,
// then closes the pub/sub connection. A load ended by Close releases its
// fill lock without a failure, so waiters on other servers look again and
// one of them loads; callers in this process get [ErrClosed]. Get then
// returns ErrClosed. Close of a nil *Cache does nothing.
func (c *Cache) Close() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.flights.Close()
	c.cancel(ErrClosed)
	c.wg.Wait()
	if c.local != nil {
		c.local.close()
	}
	err := c.hub.Close()
	c.rdb.Close()
	return err
}

// Budget returns Options.Budget: the budget every load of the Cache waits
// for, or nil.
func (c *Cache) Budget() *budget.Budget {
	if c == nil {
		return nil
	}
	return c.opt.Budget
}

// enter registers work that Close waits for; false once closed.
func (c *Cache) enter() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	return true
}

// flightKey tells flights apart by key and by the type loaded: two calls for
// one key with different types each decode their own value.
type flightKey struct {
	key string
	typ reflect.Type
}

// outcome is how a flight or a load ended.
type outcome struct {
	val      any
	err      error
	panicked *PanicError
}

func (o outcome) landed() flight.Outcome {
	if o.panicked != nil {
		return flight.Outcome{Panic: o.panicked}
	}
	return flight.Outcome{Val: o.val, Err: o.err}
}

// ops are the typed operations of one Get call, erased to any so the flight
// machinery is not generic.
type ops struct {
	typ    reflect.Type
	load   func(context.Context) (any, error)
	decode func([]byte) (any, error)
}

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
	var zero T
	if load == nil {
		return zero, errors.New("fill: Get called with a nil loader")
	}
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	if err := c.check(); err != nil {
		return zero, err
	}
	if c.local != nil {
		if t, err, ok := fromLocal[T](ctx, c, key); ok {
			return t, err
		}
	}
	fk := flightKey{key: key, typ: reflect.TypeFor[T]()}
	f, leader, err := c.flights.Join(fk)
	if err != nil {
		return zero, ErrClosed
	}
	if leader {
		cl := callOptions{ttl: c.opt.TTL, negativeTTL: c.opt.NegativeTTL}
		for _, o := range opts {
			o.apply(&cl)
		}
		cdc := c.opt.Codec
		c.start(ctx, f, key, cl, ops{
			typ:  fk.typ,
			load: func(ctx context.Context) (any, error) { return load(ctx) },
			decode: func(b []byte) (any, error) {
				var v T
				err := cdc.Unmarshal(b, &v)
				return v, err
			},
		})
	} else {
		c.stats.localMerges.Add(1)
	}
	v, err := f.Wait(ctx)
	if err != nil {
		return zero, c.gaveUp(ctx, key, err)
	}
	t, _ := v.(T)
	return t, nil
}

// gaveUp returns the error of a caller whose wait for key's flight ended
// with err: when the caller's ctx ended while the fleet's budget is paused,
// err wrapped together with [budget.ErrRateLimited], so that the caller can
// tell a rate-limit stall from a slow upstream.
func (c *Cache) gaveUp(ctx context.Context, key string, err error) error {
	if b := c.budget(ctx); b != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) && b.Paused() {
		return fmt.Errorf("fill: %s: %w while the upstream rate-limits: %w", redisx.Quote(key), err, budget.ErrRateLimited)
	}
	return err
}

// start runs a new flight. Its caller makes the first round trip itself,
// which is the whole flight on a hit: a hit costs no hand-off between
// goroutines. The rest (a wait for another server, or a load) runs on a
// goroutine of the flight's own, detached from the caller, unless the
// caller's ctx cannot end: then the caller runs it too.
func (c *Cache) start(ctx context.Context, f *flight.Call, key string, cl callOptions, o ops) {
	if !c.enter() {
		c.flights.Land(f, flight.Outcome{Err: ErrClosed})
		return
	}
	ks := c.keyset(key)
	l := c.look(ctx, ks, lease.NewToken(), o, modeRead, "")
	if l.err == nil && l.r.state == found {
		c.stats.hits.Add(1)
		c.event(ctx, observe.Event{Kind: observe.Hit, Key: key})
		c.keepLocal(key, &l)
		c.maybeEarlyRefresh(ctx, key, cl, o, &l)
		c.wg.Done()
		c.flights.Land(f, flight.Outcome{Val: l.val, Err: l.valErr})
		return
	}
	if l.err == nil && l.r.state == stale && l.valErr == nil &&
		(l.r.sub == staleBackoff || l.entry.StaleWindow-l.r.pttl <= c.opt.StaleWhileRevalidate) {
		c.serveStale(ctx, key, &l)
		if l.r.sub == staleClaimed {
			c.refresh(ctx, key, cl, o, &l)
		}
		c.wg.Done()
		c.flights.Land(f, flight.Outcome{Val: l.val})
		return
	}
	first := &l
	if l.err != nil && ctx.Err() != nil {
		// This caller gave up mid-call; the others have not. The abandoned
		// call cleans up after itself (see claim).
		first = nil
	}
	if ctx.Done() == nil {
		c.fly(ctx, f, key, cl, o, first)
		return
	}
	go c.fly(ctx, f, key, cl, o, first)
}

// flightContext returns the context a flight's work runs on: the caller's
// values without its cancellation, ended by Close (cause ErrClosed) and
// after LoadTimeout.
func (c *Cache) flightContext(caller context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(caller))
	stop := context.AfterFunc(c.base, func() { cancel(ErrClosed) })
	tctx, tcancel := context.WithTimeout(ctx, c.opt.LoadTimeout)
	return tctx, func() {
		tcancel()
		stop()
		cancel(nil)
	}
}

// fly runs one flight to its outcome and hands it to the waiting callers.
// first, if not nil, is the outcome of the flight's first round trip.
func (c *Cache) fly(caller context.Context, f *flight.Call, key string, cl callOptions, o ops, first *look) {
	defer c.wg.Done()
	fctx, cancel := c.flightContext(caller)
	defer cancel()
	// Waits end when nobody waits for the flight any more.
	wctx, wcancel := context.WithCancel(fctx)
	defer context.AfterFunc(f.Patience(), wcancel)()
	defer wcancel()
	var out outcome
	returned := false
	defer func() {
		if !returned {
			out = outcome{err: errGoexit}
		}
		c.flights.Land(f, out.landed())
	}()
	out = c.fill(fctx, wctx, key, cl, o, first, nil)
	returned = true
}

// look is one read-or-claim round trip for a flight, and what it found.
type look struct {
	token    string
	sent     time.Time // when the request was sent: the lease runs from then
	r        claimReply
	err      error
	val      any            // the decoded value, when r.state is found or stale
	valErr   error          // ErrNotFound for a cached absence, or a type conflict
	entry    envelope.Entry // the decoded entry, payload aside
	replaced string         // the type of an entry that could not be read as ours
}

// look reads key's value or claims its lock. A value that cannot be decoded
// is never served: the lock is claimed regardless of it, and the load
// overwrites it.
func (c *Cache) look(ctx context.Context, ks keyset, token string, o ops, mode, awaited string) look {
	var replaced string
	if c.opt.ReadFirst && mode == modeRead {
		l := look{token: token, sent: time.Now()}
		v, err := redisx.Run(ctx, c.rdb, func(ctx context.Context) (string, error) {
			return c.rdb.Redis().Get(ctx, ks.value).Result()
		}, nil)
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			l.err = err
			return l
		case envelope.Window(v) == 0:
			// A value without a stale window is fresh until it expires.
			l.r = claimReply{state: found, value: v, pttl: -1}
			c.decode(ks, v, o, &l)
			if !errors.Is(l.valErr, envelope.ErrCorrupt) {
				return l
			}
			replaced, l.valErr = l.replaced, nil
			mode = modeClaim
		}
	}
	for {
		l := look{token: token, sent: time.Now(), replaced: replaced}
		l.r, l.err = c.claim(ctx, ks, token, mode, awaited)
		if l.err == nil && (l.r.state == found || l.r.state == stale) {
			c.decode(ks, l.r.value, o, &l)
			if errors.Is(l.valErr, envelope.ErrCorrupt) {
				replaced, mode = l.replaced, modeClaim
				continue
			}
		}
		return l
	}
}

// heldWait is what a batch hands the flight of a key held elsewhere after
// subscribing to it together with the batch's other such keys: the key's
// subscription, ready before the flight's first look was sent, and when
// the key was first found held.
type heldWait struct {
	sub   *notify.Sub
	since time.Time
}

// fill reads key's value, or loads it, or waits for another server's load.
// ctx bounds the flight's work; wctx, ending when nobody waits for the
// flight any more, bounds its waits. first, if not nil, is the outcome of
// the flight's first round trip; hw, if not nil, says that first was sent
// once the key's subscription was ready, after the key had been found held
// (first then counts as a second look: the miss was earlier).
func (c *Cache) fill(ctx, wctx context.Context, key string, cl callOptions, o ops, first *look, hw *heldWait) outcome {
	ks := c.keyset(key)
	token := lease.NewToken()
	if first != nil {
		token = first.token
	}
	// Callers wait with their own ctx, and the waits below honour wctx, so
	// a Redis call needs no bound beyond the client's own timeouts: calling
	// it on this goroutine saves a hand-off per round trip.
	rctx := context.WithoutCancel(ctx)
	var (
		val       any
		valErr    error
		claimed   *look
		fallback  *look // a stale value to serve if the refresh fails
		awaited   string
		firstLook = true
		waitStart time.Time
	)
	miss := func() {
		if firstLook {
			c.stats.misses.Add(1)
			c.event(ctx, observe.Event{Kind: observe.Miss, Key: key})
			firstLook = false
			waitStart = time.Now()
		}
	}
	var sub *notify.Sub
	if hw != nil {
		sub = hw.sub
		miss()
		waitStart = hw.since
	}
	err := c.hub.AwaitSub(wctx, ks.lock, sub, func() (notify.Step, error) {
		var l look
		if first != nil {
			l, first = *first, nil
		} else {
			l = c.look(rctx, ks, token, o, modeRead, awaited)
		}
		if l.err != nil {
			if redisx.Classify(l.err) == redisx.Saturated {
				// Redis is up; the client's pool is full: wait our turn.
				return notify.Step{Wait: saturatedWait}, nil
			}
			return notify.Step{}, l.err
		}
		switch l.r.state {
		case found:
			if firstLook {
				c.stats.hits.Add(1)
				c.event(ctx, observe.Event{Kind: observe.Hit, Key: key})
			} else {
				c.stats.remoteMerges.Add(1)
			}
			c.keepLocal(key, &l)
			val, valErr = l.val, l.valErr
			return notify.Step{Done: true}, nil
		case stale:
			age := l.entry.StaleWindow - l.r.pttl
			if l.valErr != nil {
				// A stale absence or a type conflict: nothing to serve.
				val, valErr = nil, l.valErr
				if l.r.sub == staleClaimed {
					lease.Cleanup(c.rdb, ks.lock, token)
				}
				return notify.Step{Done: true}, nil
			}
			switch {
			case l.r.sub == staleBackoff || age <= c.opt.StaleWhileRevalidate:
				c.serveStale(ctx, key, &l)
				val = l.val
				if l.r.sub == staleClaimed {
					c.refresh(ctx, key, cl, o, &l)
				}
				return notify.Step{Done: true}, nil
			case l.r.sub == staleClaimed:
				// Past the revalidate window, within stale-if-error: load
				// now, and serve the old value if the load fails.
				miss()
				claimed, fallback = &l, &l
				return notify.Step{Done: true}, nil
			}
			miss()
			fallback, awaited = &l, l.r.holder
			return notify.Step{Wait: c.opt.PollInterval}, nil
		case acquired:
			miss()
			claimed = &l
			return notify.Step{Done: true}, nil
		case failed:
			// The awaited holder ended while this flight was not
			// listening: its outcome, a failure or a value it did not
			// store, was left for its waiters.
			c.stats.remoteMerges.Add(1)
			if kind, body := lease.ParseMessage(l.r.msg); kind == lease.Value {
				var v look
				c.decode(ks, body, o, &v)
				if !errors.Is(v.valErr, envelope.ErrCorrupt) {
					val, valErr = v.val, v.valErr
					return notify.Step{Done: true}, nil
				}
			}
			val, valErr = c.remoteFailure(ctx, key, l.r.msg, fallback)
			return notify.Step{Done: true}, nil
		}
		miss()
		awaited = l.r.holder
		return notify.Step{Wait: min(l.r.pttl, c.opt.PollInterval)}, nil
	}, func(p string) (bool, error) {
		kind, body := lease.ParseMessage(p)
		switch kind {
		case lease.Value:
			var l look
			c.decode(ks, body, o, &l)
			if errors.Is(l.valErr, envelope.ErrCorrupt) {
				return false, nil
			}
			val, valErr = l.val, l.valErr
		case lease.Failed, lease.Panicked:
			val, valErr = c.remoteFailure(ctx, key, p, fallback)
		default:
			return false, nil // released, stored too large, deleted, or reconnected: look again
		}
		c.stats.remoteMerges.Add(1)
		return true, nil
	})
	if !waitStart.IsZero() && claimed == nil {
		werr := err
		if werr == nil {
			werr = valErr
		}
		if errors.Is(werr, ErrNotFound) {
			werr = nil
		}
		c.event(ctx, observe.Event{Kind: observe.WaitRemote, Key: key, Duration: time.Since(waitStart), Err: werr})
	}
	switch {
	case err == nil && claimed != nil:
		return c.lead(ctx, wctx, ks, key, cl, o, claimed, fallback, false)
	case err == nil:
		return outcome{val: val, err: valErr}
	case errors.Is(err, notify.ErrClosed) || context.Cause(ctx) == ErrClosed:
		return outcome{err: ErrClosed}
	case wctx.Err() != nil:
		return outcome{err: fmt.Errorf("fill: %s: %w", redisx.Quote(key), err)}
	}
	c.stats.redisErrors.Add(1)
	if c.opt.FailClosed || !redisx.Outage(err) {
		// An error reply (a key of the wrong type, out of memory, ...) is
		// not an outage: loading would not make it go away.
		return outcome{err: fmt.Errorf("fill: %s: %w", redisx.Quote(key), err)}
	}
	return c.failOpen(ctx, wctx, key, o, err)
}

// saturatedWait is how long a flight waits before trying again when the
// client's connection pool had no free connection.
const saturatedWait = 10 * time.Millisecond

// errLeaseLost is the cause of a loader's ctx cancellation when the fill
// lock's lease was lost.
var errLeaseLost = fmt.Errorf("fill: %w: the fill lock was lost during the load", lease.ErrNotHeld)

// lead runs the loader as the key's claimer (claimed says how it was
// claimed), then stores its outcome and releases the lock in one round
// trip, notifying the waiting servers. fallback, if not nil, is a stale
// value served if the load fails. bg marks a background refresh.
func (c *Cache) lead(ctx, wctx context.Context, ks keyset, key string, cl callOptions, o ops, claimed, fallback *look, bg bool) outcome {
	token := claimed.token
	lctx, cancel := context.WithCancelCause(ctx)
	keeper := lease.Keep(c.rdb, ks.lock, token, c.opt.LockTTL, claimed.sent, func() {
		cancel(errLeaseLost)
		c.event(ctx, observe.Event{Kind: observe.LeaseLost, Key: key})
		c.log("fill lock lost during a load; its value will not be stored", "key", key)
	})
	// Settling must happen even when the flight's ctx has run out.
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), lease.CleanupTimeout)
	defer scancel()
	backoff := fallback != nil || bg
	returned := false
	defer func() {
		if !returned { // runtime.Goexit in the loader
			cancel(nil)
			_ = keeper.Stop()
			c.settleFailure(sctx, ks, token, lease.Message(lease.Panicked, errGoexit.Error()), backoff)
		}
	}()
	p := budget.Foreground
	if bg {
		p = budget.Background
	}
	var ov ttlOverride
	out, took := c.load(context.WithValue(lctx, ttlKey{}, &ov), wctx, key, o, p)
	lost := keeper.Stop()
	cancel(nil)
	returned = true

	fail := func(kind lease.Kind, text string) {
		c.stats.loadErrors.Add(1)
		if bg {
			c.stats.refreshErrors.Add(1)
		}
		s, err := c.settleFailure(sctx, ks, token, lease.Message(kind, limitText(text)), backoff)
		c.settled(key, s, err)
	}
	switch {
	case out.panicked != nil:
		fail(lease.Panicked, fmt.Sprint(out.panicked.Value))
		return out
	case out.err != nil && (context.Cause(ctx) == ErrClosed || (took == 0 && wctx.Err() != nil)):
		// Closed, or nobody waits any more and the load never started:
		// not a failure to share. Release, so another server may load.
		c.release(sctx, ks, token)
		if context.Cause(ctx) == ErrClosed {
			return outcome{err: ErrClosed}
		}
		return out
	case errors.Is(out.err, ErrNotFound):
		if lost != nil {
			c.stats.staleStores.Add(1)
			return out
		}
		entry := envelope.Encode(nil, envelope.Entry{Absent: true, CreatedAt: c.createdAt(claimed), LoadDuration: took,
			Type: typeTag(o.typ)}, 0)
		c.store(sctx, ks, key, token, entry, c.jitter(cl.negativeTTL), nil, true, claimed)
		return out
	case out.err != nil:
		fail(lease.Failed, out.err.Error())
		if fallback != nil && fallback.valErr == nil {
			c.serveStale(ctx, key, fallback)
			return outcome{val: fallback.val}
		}
		return out
	}
	// The callers get the codec's copy, as every other server does.
	payload, v, err := c.encode(key, o, out.val)
	if err != nil {
		fail(lease.Failed, err.Error())
		return outcome{err: err}
	}
	if lost != nil {
		// The value goes to the callers; a successor may be storing a newer one.
		c.stats.staleStores.Add(1)
		return outcome{val: v}
	}
	window := c.opt.window()
	entry := envelope.Encode(nil, envelope.Entry{CreatedAt: c.createdAt(claimed), LoadDuration: took,
		StaleWindow: window, Type: typeTag(o.typ), Replaced: claimed.replaced, Payload: payload}, c.opt.CompressAbove)
	ttl := c.jitter(cl.ttl)
	if d, ok := ov.get(); ok {
		if d <= 0 {
			c.publishOnly(sctx, ks, key, token, entry)
			return outcome{val: v}
		}
		ttl = d
	}
	c.store(sctx, ks, key, token, entry, ttl, v, false, claimed)
	return outcome{val: v}
}
