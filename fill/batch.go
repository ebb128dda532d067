package fill

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/codec"
	"github.com/locksmith-go/locksmith/internal/flight"
	"github.com/locksmith-go/locksmith/internal/notify"
	"github.com/locksmith-go/locksmith/internal/redisx"
	"github.com/locksmith-go/locksmith/observe"
)

// BatchOptions configure batches: [GetMany] calls and [Batcher]s.
type BatchOptions struct {
	// MaxSize is the most keys one loader call gets: GetMany splits
	// larger batches, and a Batcher sends its batch as soon as it holds
	// this many keys.
	// default: 100
	MaxSize int

	// Window is how long a Batcher collects keys before it sends them.
	// With FleetWide, it is how long the fleet's gatherer collects the keys
	// handed off to it, from the first Get of the keys its own server
	// handed off (each Batcher hands its keys off within 2ms and two round
	// trips, which the Window covers), and the least time between two of
	// its loader calls.
	// default: 2ms
	Window time.Duration

	// CostPerKey makes a batch loader call reserve one call's cost (one
	// call, or WithCost's) per key instead of one per loader call, for an
	// upstream whose limit counts ids rather than requests: a call of n keys
	// books n times the cost, in one reservation.
	// default: false (one call's cost per loader call)
	CostPerKey bool

	// FleetWide makes a [Batcher]'s batches the fleet's rather than its
	// server's: the keys it claims are handed off to a queue in Redis, and
	// one gatherer for the fleet (whichever server's Batcher of the same
	// Name holds the gatherer's lease) loads up to MaxSize of them per
	// loader call, every Window, whichever servers missed them. Each key
	// is still loaded once across the fleet, its waiters everywhere woken
	// by push. A gatherer that crashes or pauses is replaced within its
	// lease (2s, or three Windows if longer), and its keys are loaded by
	// its successor. Every server's Batcher of a Name must load the same
	// way, on Caches of the same Prefix: any of them may load the keys of
	// any other. A loader error reaches every caller wrapped in
	// [ErrLoadFailed], on the gatherer's server too. While Redis is
	// unreachable, each server loads its own keys, as without FleetWide. [GetMany] ignores it: its loader is the
	// call's.
	// default: false (each server batches the keys it missed)
	FleetWide bool

	// Name names a FleetWide Batcher's batches across the fleet: the
	// gatherer's keys in Redis are P{batch:Name}:gatherer, :queue and
	// :loading, in one Cluster slot. Required with FleetWide; one Batcher
	// per Name on each Cache.
	Name string
}

func (o *BatchOptions) withDefaults() BatchOptions {
	var opt BatchOptions
	if o != nil {
		opt = *o
	}
	if opt.MaxSize <= 0 {
		opt.MaxSize = 100
	}
	if opt.Window <= 0 {
		opt.Window = 2 * time.Millisecond
	}
	return opt
}

// BatchError is the error of a [GetMany] call for which some keys have no
// value: it maps each such key to its error. An absence cached or reported
// by the loader is not an error: such keys are simply missing from the
// result.
type BatchError struct {
	Errs map[string]error
}

func (e *BatchError) Error() string {
	keys := make([]string, 0, len(e.Errs))
	for k := range e.Errs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "fill: %d of the keys failed", len(keys))
	for i, k := range keys {
		if i == 3 {
			fmt.Fprintf(&b, "; …")
			break
		}
		fmt.Fprintf(&b, "; %s: %v", redisx.Quote(k), e.Errs[k])
	}
	return b.String()
}

// Unwrap returns the keys' errors, for errors.Is and errors.As.
func (e *BatchError) Unwrap() []error {
	errs := make([]error, 0, len(e.Errs))
	for _, err := range e.Errs {
		errs = append(errs, err)
	}
	return errs
}

// GetMany returns the values cached for keys, and loads the missing ones
// with load, in as few round trips and loader calls as it can, keeping
// fill's guarantee: each key is loaded once across the fleet.
//
// Duplicate keys are read once, and an empty list calls neither Redis nor
// the loader. The keys are read, or claimed, together: one pipelined round
// trip (on a Cluster, one per node). Keys found are returned; keys this call
// claimed go to load, in calls of at most BatchOptions.MaxSize keys (100
// by default; see [WithBatchOptions]); keys another server is
// loading are awaited by push, as Get awaits them (subscribed together and
// looked at again in one more pipelined round trip once subscribed); keys
// already in flight in this process join that flight. Each loader call reserves its cost
// in the budget once (see [WithCost] and BatchOptions.CostPerKey), and its ctx carries
// the reservation (budget.FromContext). A key whose fill lock is lost during
// the load gets its value but does not store it, as with Get; the loader's
// ctx ends (cause wrapping lock.ErrNotHeld) once the locks of all its keys
// are lost.
//
// The loader returns the values it found. A key missing from its map is
// cached as absent, for NegativeTTL, as a Get whose loader returned
// ErrNotFound; such keys, and keys with a cached absence, are left out of
// the result, without an error. A loader error wrapping ErrNotFound makes
// every key of that call such an absence. Any other loader error is not
// cached; it reaches every waiter of the keys of that call, here and on
// other servers, as for Get.
//
// The result holds every key that has a value, also when the error is not
// nil: the error is a *[BatchError] naming each key that has neither a
// value nor a known absence (its load failed, Redis failed, or ctx ended
// before its value came). The loads go on when ctx ends, for the other
// callers and the cache. GetMany shares entries, absences and flights with
// [Get] and [Batcher] on the same keys and type.
func GetMany[T any](ctx context.Context, c *Cache, keys []string,
	load func(ctx context.Context, keys []string) (map[string]T, error), opts ...Option) (map[string]T, error) {
	out := make(map[string]T, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	if err := begin(ctx, c, load == nil, "GetMany called"); err != nil {
		return out, err
	}
	cl := c.callOptions(opts)
	b := newBatch[T](c, load, cl.batch.withDefaults())
	calls := make(map[string]*flight.Call, len(keys))
	var items []batchItem
	for _, key := range keys {
		if _, dup := calls[key]; dup {
			continue
		}
		if c.local != nil {
			if t, err, ok := fromLocal[T](ctx, c, key); ok {
				calls[key] = nil
				if err == nil {
					out[key] = t
				}
				continue
			}
		}
		f, leader, err := c.join(key, b.o.typ)
		if err != nil {
			// Closed midway: the flights led so far end here, or the
			// callers in this process that joined them would wait on.
			for _, it := range items {
				c.flights.Land(it.f, flight.Outcome{Err: ErrClosed})
			}
			return out, ErrClosed
		}
		calls[key] = f
		if leader {
			items = append(items, batchItem{key: key, f: f})
		}
	}
	if len(items) > 0 {
		b.run(ctx, items, cl, nil)
	}
	errs := map[string]error{}
	for key, f := range calls {
		if f == nil {
			continue
		}
		t, err := await[T](ctx, c, key, f)
		switch {
		case err == nil:
			out[key] = t
		case errors.Is(err, ErrNotFound):
		default:
			errs[key] = err
		}
	}
	if len(errs) > 0 {
		return out, &BatchError{Errs: errs}
	}
	return out, nil
}

// batchItem is one key of a batch and the in-process flight it leads.
type batchItem struct {
	key string
	f   *flight.Call
	at  time.Time // when a Batcher's Get asked for it; zero for GetMany
}

// batch is the typed part of a batch: its loader and options, and the ops
// each key's flight uses should it load alone (another server's load failed
// and its lease ran out, say).
type batch[T any] struct {
	c    *Cache
	load func(ctx context.Context, keys []string) (map[string]T, error)
	opt  BatchOptions
	o    ops

	fleet *gatherer[T] // a FleetWide Batcher's; nil otherwise
}

func newBatch[T any](c *Cache, load func(ctx context.Context, keys []string) (map[string]T, error), opt BatchOptions) *batch[T] {
	b := &batch[T]{c: c, load: load, opt: opt}
	var cdc codec.Codec
	if c != nil { // else every call returns c.check()'s error
		cdc = c.opt.Codec
	}
	b.o = typedOps[T](cdc, func(ctx context.Context, key string) (any, error) {
		// A key loading alone: a batch of one.
		m, err := load(ctx, []string{key})
		if err != nil {
			return nil, err
		}
		v, ok := m[key]
		if !ok {
			return nil, notFound(key)
		}
		return v, nil
	})
	return b
}

// job returns the job of l's key, should it go its own way: loaded alone,
// refreshed, or awaited as Get awaits it.
func (b *batch[T]) job(l *batchLook, cl callOptions) *job {
	return &job{ks: l.ks, cl: cl, o: b.o}
}

func (b *batch[T]) callOptions() callOptions { return b.c.callOptions(nil) }

// handOffWindow is the longest a FleetWide Batcher collects keys before it
// claims them (in one pipeline) and hands them off: the fleet's gatherer
// collects them for Window.
const handOffWindow = 2 * time.Millisecond

// window is how long a Batcher collects keys before it sends them: Window,
// or with FleetWide, at most handOffWindow.
func (b *batch[T]) window() time.Duration {
	if b.fleet != nil {
		return min(b.opt.Window, handOffWindow)
	}
	return b.opt.Window
}

// run reads or claims items together, lands the keys found, loads the keys
// claimed in chunks, and has the keys held elsewhere awaited. It returns
// once every flight has a goroutine to land it; the work goes on detached
// from caller's cancellation. join, if not nil, lets the first chunk that
// waits for the budget take the keys that arrive meanwhile.
func (b *batch[T]) run(caller context.Context, items []batchItem, cl callOptions, join joiner) {
	c := b.c
	if !c.enter() {
		for _, it := range items {
			c.flights.Land(it.f, flight.Outcome{Err: ErrClosed})
		}
		return
	}
	go func() {
		defer c.wg.Done()
		fctx, cancel := c.flightContext(caller)
		defer cancel()
		var wg sync.WaitGroup
		claimed, open, waiting := b.dispatch(fctx, c.lookMany(fctx, items, b.o), cl, &wg)
		if len(waiting) > 0 {
			wg.Go(func() { b.awaitHeld(fctx, waiting, cl, &wg) })
		}
		if handed := claimed; b.fleet != nil && len(handed) > 0 {
			wg.Go(func() { b.fleet.handOff(fctx, handed, cl, &wg) })
			claimed = nil
		}
		for i, chunk := range slices.Collect(slices.Chunk(claimed, b.opt.MaxSize)) {
			var j joiner
			if i == 0 && join != nil && c.budget(caller) != nil && !b.opt.CostPerKey && len(chunk) < b.opt.MaxSize {
				j = join
			}
			wg.Go(func() { b.lead(fctx, chunk, cl, j, nil, &wg) })
		}
		for chunk := range slices.Chunk(open, b.opt.MaxSize) {
			wg.Go(func() { b.failOpen(fctx, chunk, cl) })
		}
		wg.Wait()
	}()
}

// dispatch lands the keys found, and returns the keys claimed, the keys
// held elsewhere (see awaitHeld) and, while Redis is unavailable, the keys
// to load without the lock; any other key goes to the single-key algorithm
// on a goroutine of wg.
func (b *batch[T]) dispatch(fctx context.Context, looks []batchLook, cl callOptions, wg *sync.WaitGroup) (claimed, open, waiting []*batchLook) {
	c := b.c
	for i := range looks {
		l := &looks[i]
		if out, ok := c.served(fctx, b.job(l, cl), &l.look); ok {
			c.flights.Land(l.f, out)
			continue
		}
		switch {
		case l.err != nil && redisx.Outage(l.err) && !c.opt.FailClosed:
			c.stats.redisErrors.Add(1)
			open = append(open, l)
		case l.err == nil && l.r.state == acquired:
			c.stats.misses.Add(1)
			c.event(fctx, observe.Event{Kind: observe.Miss, Key: l.key})
			claimed = append(claimed, l)
		case l.err == nil && l.r.state == held:
			waiting = append(waiting, l)
		default:
			// Stale past the revalidate window, or a Redis failure: the
			// single-key algorithm takes it from here, with this look as
			// its first.
			var first *look
			if l.err == nil {
				first = &l.look
			}
			b.single(fctx, l, cl, first, nil, wg)
		}
	}
	return claimed, open, waiting
}

// single has the single-key algorithm finish key l's flight on a goroutine
// of wg, with first as its first look (nil for none); prep, if not nil,
// sets up the flight's waiter (see awaitHeld).
func (b *batch[T]) single(fctx context.Context, l *batchLook, cl callOptions, first *look, prep func(*waiter), wg *sync.WaitGroup) {
	wg.Go(func() {
		wctx, wcancel := context.WithCancel(fctx)
		stop := context.AfterFunc(l.f.Patience(), wcancel)
		defer stop()
		defer wcancel()
		w := b.c.newWaiter(fctx, wctx, b.job(l, cl), first)
		if prep != nil {
			prep(w)
		}
		out := flight.Outcome{Err: errGoexit} // unless run returns
		defer func() {
			// Stopped before landing, which ends the flight's patience: a
			// landing then starts no goroutine (as in fly).
			stop()
			b.c.flights.Land(l.f, out)
			if l.claimKeeper != nil {
				_ = l.claimKeeper.Stop()
			}
		}()
		out = w.run().landed()
	})
}

// awaitHeld waits for the keys of a batch that other servers hold, as
// fill does for one key, but together: it subscribes to every key's
// channel, and once they are ready looks at all the keys again in one
// pipelined round trip (which takes the outcomes their holders reached
// meanwhile, or claims the keys they released); each key still held then
// waits for its holder's message on a goroutine of wg. A key whose
// subscription is not ready within its holder's lease or PollInterval
// takes the single-key path from its first look.
func (b *batch[T]) awaitHeld(fctx context.Context, waiting []*batchLook, cl callOptions, wg *sync.WaitGroup) {
	c := b.c
	since := time.Now()
	subs := make([]*notify.Sub, len(waiting))
	wait := c.opt.PollInterval
	for i, l := range waiting {
		subs[i] = c.hub.Subscribe(l.ks.lock)
		wait = min(wait, max(l.r.pttl, time.Millisecond))
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	ready := make([]*batchLook, 0, len(waiting))
	readySubs := make([]*notify.Sub, 0, len(waiting))
	late := false
	for i, l := range waiting {
		if !late {
			select {
			case <-subs[i].Ready():
			case <-timer.C:
				late = true
			case <-fctx.Done():
				late = true
			}
		}
		if late {
			select {
			case <-subs[i].Ready():
			default:
				subs[i].Close()
				b.single(fctx, l, cl, &l.look, nil, wg)
				continue
			}
		}
		ready = append(ready, l)
		readySubs = append(readySubs, subs[i])
	}
	if len(ready) == 0 {
		return
	}
	looks := c.relookMany(fctx, ready, b.o)
	for i, l := range ready {
		if looks[i].err != nil {
			// The single-key algorithm handles a failed look from
			// scratch (an outage, a saturated pool, ...).
			readySubs[i].Close()
			b.single(fctx, l, cl, nil, nil, wg)
			continue
		}
		sub := readySubs[i]
		b.single(fctx, l, cl, &looks[i], func(w *waiter) {
			w.missed = l.handedOff // counted when claimed
			w.afterHeld(sub, since)
		}, wg)
	}
}

// failOpen loads chunk without the fleet-wide lock: Redis is unavailable.
func (b *batch[T]) failOpen(ctx context.Context, chunk []*batchLook, cl callOptions) {
	c := b.c
	c.stats.failOpens.Add(uint64(len(chunk)))
	c.event(ctx, observe.Event{Kind: observe.FailOpen, N: len(chunk), Err: chunk[0].err})
	keys := make([]string, len(chunk))
	for i, l := range chunk {
		keys[i] = l.key
	}
	pat := chunkPatience(ctx, chunk)
	defer pat.stop()
	wctx := pat.ctx
	out, _ := b.loadChunk(ctx, wctx, len(keys), cl.cost, func(ctx context.Context) (any, error) { return b.call(ctx, keys) })
	m, _ := out.val.(map[string]T)
	outcomes := make([]flight.Outcome, len(chunk))
	for i, l := range chunk {
		outcomes[i] = flight.Outcome{Err: out.err}
		if out.panicked != nil {
			outcomes[i] = flight.Outcome{Panic: out.panicked}
		} else if out.err == nil {
			v, ok := m[l.key]
			outcomes[i] = flight.Outcome{Val: v, Err: absentErr(!ok, l.key)}
		}
	}
	pat.stop() // before the landings, which would start a goroutine per watch
	b.land(chunk, outcomes, out.panicked)
}

// loadChunk runs a batch loader call of n keys, run, under a reservation
// of cost (n times cost with CostPerKey), once its budget allows, and again
// while the upstream rate-limits and someone waits, as [Cache.load] does
// for one key.
func (b *batch[T]) loadChunk(ctx, wctx context.Context, n int, cost budget.Cost, run func(context.Context) (any, error)) (outcome, time.Duration) {
	if b.opt.CostPerKey {
		cost = scaleCost(cost, n)
	}
	return b.c.load(ctx, wctx, fmt.Sprintf("a batch of %d keys", n), run, budget.Foreground, cost)
}

// scaleCost returns n times c: c.Calls (0 meaning 1) and each meter's units.
func scaleCost(c budget.Cost, n int) budget.Cost {
	out := budget.Cost{Calls: max(c.Calls, 1) * n}
	if len(c.Meters) > 0 {
		out.Meters = make(map[string]int64, len(c.Meters))
		for name, units := range c.Meters {
			out.Meters[name] = units * int64(n)
		}
	}
	return out
}
