package fill

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/locksmith-go/locksmith/internal/flight"
	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/observe"
)

// Loading a batch's claimed keys, a chunk of at most MaxSize keys per
// loader call, and settling each key's outcome in one pipelined round trip.

// lead loads the claimed keys of one chunk with one loader call, and stores
// the outcome of each, in one pipelined round trip. join, if not nil, lets
// the keys that arrive while the chunk waits for its budget slot join it.
// around, if not nil, makes the loader call, call (see chunkLoad.around):
// an error wrapping errAbandoned abandons the chunk, its locks left as they
// are, and lead reports true.
func (b *batch[T]) lead(ctx context.Context, chunk []*batchLook, cl callOptions, join joiner,
	around aroundCall, wg *sync.WaitGroup) (abandoned bool) {
	lctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ch := &chunkLoad[T]{b: b, ctx: ctx, cl: cl, wg: wg, cancel: cancel, around: around}
	ch.add(chunk)
	pat := chunkPatience(ctx, chunk)
	defer pat.stop()
	wctx := pat.ctx
	ch.pat = pat
	if join != nil {
		join.hold()
		ch.join = join
		defer func() {
			if ch.join != nil {
				ch.join.take(0)
			}
		}()
	}
	returned := false
	defer func() {
		if !returned { // runtime.Goexit in the loader
			pat.stop()
			ch.goexit()
		}
	}()
	var ov ttlOverride
	out, took := b.loadChunk(context.WithValue(lctx, ttlKey{}, &ov), wctx, len(chunk), cl.cost, ch.run)
	returned = true
	lost := make([]error, len(ch.looks))
	for i, k := range ch.keepers {
		lost[i] = k.Stop()
	}
	cancel(nil)
	if errors.Is(out.err, errAbandoned) {
		b.c.log("the fleet's gatherer found its lease lost before a batch's loader call; its successor loads the batch",
			"batch", b.opt.Name, "keys", len(ch.looks))
		return true
	}
	sctx, scancel := settleContext(ctx)
	defer scancel()
	var (
		stores   []storeCall
		fails    []settleReq
		outcomes []flight.Outcome
	)
	if out.panicked != nil || (out.err != nil && !errors.Is(out.err, ErrNotFound)) {
		fails, outcomes = ch.failed(sctx, wctx, out, took)
	} else {
		// A loader error wrapping ErrNotFound: every key is absent.
		m, _ := out.val.(map[string]T)
		stores, fails, outcomes = ch.values(sctx, m, took, lost, &ov)
	}
	b.c.settleMany(sctx, stores, fails)
	// The keys' patience watches go before they land: a landing would
	// start a goroutine for each.
	pat.stop()
	b.land(ch.looks, outcomes, out.panicked)
	return false
}

// batchLook is the first look of one key of a batch.
type batchLook struct {
	look
	key string
	f   *flight.Call // nil for a gatherer's key (see gather.go)
	ks  keyset
	at  time.Time // the batchItem's

	handedOff bool // claimed here, then handed off to the fleet's gatherer
	// claimKeeper keeps the lease of a key handed off until its flight
	// lands (see gatherer.handOff); nil for the others.
	claimKeeper *lease.Keeper
}

// chunkLoad is one loader call of a batch as the keys' claimer: its keys
// and their leases, growing while it waits for its budget slot.
type chunkLoad[T any] struct {
	b      *batch[T]
	ctx    context.Context // the batch's: the loader's ends with the load
	cl     callOptions
	wg     *sync.WaitGroup
	cancel context.CancelCauseFunc // ends the loader's ctx
	join   joiner                  // nil once the keys that arrived joined
	around aroundCall              // makes the loader call; nil: a plain call

	pat     *patience // the chunk's: the keys that join it count in it
	looks   []*batchLook
	keys    []string
	keepers []*lease.Keeper
	held    atomic.Int32 // leases not lost
}

// add makes the keys of ls the chunk's, their leases kept while the
// loader runs, renewed together. The loader's ctx ends when every key's
// lease is lost: nothing it loads could be stored any more.
func (ch *chunkLoad[T]) add(ls []*batchLook) {
	if len(ls) == 0 {
		return
	}
	c := ch.b.c
	ch.held.Add(int32(len(ls)))
	keepers := c.keepClaims(ls, func(i int) {
		key := ls[i].key
		c.event(ch.ctx, observe.Event{Kind: observe.LeaseLost, Key: key})
		c.log("fill lock lost during a batch load; its value will not be stored", "key", key)
		if ch.held.Add(-1) == 0 {
			ch.cancel(errLeaseLost)
		}
	})
	for i, l := range ls {
		// A loader hung past the batch's ctx keeps the lock no longer.
		ch.keepers = append(ch.keepers, keepers[i].Until(ch.ctx))
		ch.looks = append(ch.looks, l)
		ch.keys = append(ch.keys, l.key)
	}
}

// keepClaims keeps the leases of the claims of ls, renewed together (see
// lease.KeepAll), from the earliest claim; onLost(i), if not nil, is told
// the loss of ls[i]'s.
func (c *Cache) keepClaims(ls []*batchLook, onLost func(i int)) []*lease.Keeper {
	locks, tokens := make([]string, len(ls)), make([]string, len(ls))
	since := time.Now()
	for i, l := range ls {
		locks[i], tokens[i] = l.ks.lock, l.token
		if l.sent.Before(since) {
			since = l.sent
		}
	}
	return lease.KeepAll(c.rdb, locks, tokens, c.opt.LockTTL, since, onLost)
}

// run is the chunk's loader call, once its budget slot came: the keys that
// arrived meanwhile join first.
func (ch *chunkLoad[T]) run(ctx context.Context) (any, error) {
	if ch.join != nil {
		ch.absorb()
	}
	if ch.around != nil {
		return ch.around(func() (any, error) { return ch.b.call(ctx, ch.keys) })
	}
	return ch.b.call(ctx, ch.keys)
}

// aroundCall makes a chunk's loader call, call, with what its caller does
// around it (a gatherer checks its lease first).
type aroundCall func(call func() (any, error)) (any, error)

// absorb brings the keys that arrived while the chunk waited for its
// budget slot into it: read or claimed together, the claimed ones loaded
// with the chunk's keys.
func (ch *chunkLoad[T]) absorb() {
	b, ctx, wg := ch.b, ch.ctx, ch.wg
	items := ch.join.take(b.opt.MaxSize - len(ch.looks))
	ch.join = nil
	if len(items) == 0 {
		return
	}
	claimed, open, waiting := b.dispatch(ctx, b.c.lookMany(ctx, items, b.o), ch.cl, wg)
	if len(waiting) > 0 {
		wg.Go(func() { b.awaitHeld(ctx, waiting, ch.cl, wg) })
	}
	ch.add(claimed)
	for _, l := range claimed {
		ch.pat.add(l)
	}
	if len(open) > 0 {
		wg.Go(func() { b.failOpen(ctx, open, ch.cl) })
	}
}

// failed settles a loader call that failed or panicked: each key's failure
// goes to its waiters, unless the Cache closed, or nobody waits any more
// and the load never started: then each lock is released.
func (ch *chunkLoad[T]) failed(sctx, wctx context.Context, out outcome, took time.Duration) ([]settleReq, []flight.Outcome) {
	c := ch.b.c
	fails := make([]settleReq, 0, len(ch.looks))
	outcomes := make([]flight.Outcome, len(ch.looks))
	if out.panicked != nil {
		c.stats.loadErrors.Add(1)
		msg := lease.Message(lease.Panicked, limitText(fmt.Sprint(out.panicked.Value)))
		for i, l := range ch.looks {
			fails = append(fails, failReq(l, msg))
			outcomes[i] = flight.Outcome{Panic: out.panicked}
		}
		return fails, outcomes
	}
	closed := c.closing(ch.ctx)
	if !closed {
		c.stats.loadErrors.Add(1)
	}
	msg := lease.Message(lease.Failed, limitText(out.err.Error()))
	for i, l := range ch.looks {
		if closed || (took == 0 && wctx.Err() != nil) {
			c.release(sctx, l.ks, l.token)
		} else {
			fails = append(fails, failReq(l, msg))
		}
		outcomes[i] = flight.Outcome{Err: out.err}
		if closed {
			outcomes[i].Err = ErrClosed
		}
	}
	return fails, outcomes
}

// goexit ends a chunk whose loader called runtime.Goexit, as lead's
// goroutine unwinds: the leases stop being kept, each key's failure goes
// to its waiters, and each flight lands with it, as a single key's does.
func (ch *chunkLoad[T]) goexit() {
	c := ch.b.c
	ch.cancel(nil)
	for _, k := range ch.keepers {
		_ = k.Stop()
	}
	sctx, scancel := settleContext(ch.ctx)
	defer scancel()
	msg := lease.Message(lease.Panicked, errGoexit.Error())
	fails := make([]settleReq, len(ch.looks))
	outcomes := make([]flight.Outcome, len(ch.looks))
	for i, l := range ch.looks {
		fails[i] = failReq(l, msg)
		outcomes[i] = flight.Outcome{Err: errGoexit}
	}
	c.stats.loadErrors.Add(1)
	c.settleMany(sctx, nil, fails)
	ch.b.land(ch.looks, outcomes, nil)
}

// failReq is the settle of l's key's failure, msg.
func failReq(l *batchLook, msg string) settleReq {
	return settleReq{ks: l.ks, token: l.token, mode: settleFail, msg: msg}
}

// values settles the values a loader call returned, m (took long; lost[i]
// says the lease of the chunk's key i was lost; ov is the TTL the loader
// set, if any): a key missing from m is an absence.
func (ch *chunkLoad[T]) values(sctx context.Context, m map[string]T, took time.Duration, lost []error,
	ov *ttlOverride) ([]storeCall, []settleReq, []flight.Outcome) {
	b, c := ch.b, ch.b.c
	setTTL, haveTTL := ov.get()
	window := c.opt.window()
	stores := make([]storeCall, 0, len(ch.looks))
	var fails []settleReq
	outcomes := make([]flight.Outcome, len(ch.looks))
	for i, l := range ch.looks {
		v, ok := m[l.key]
		absent := !ok
		var (
			entry []byte
			val   any
			err   error
		)
		if ok {
			entry, val, err = c.entryOf(l.key, b.o, &l.look, v, took)
		} else {
			entry = c.absentEntry(b.o, &l.look, took)
		}
		outcomes[i] = flight.Outcome{Val: val, Err: absentErr(absent, l.key)}
		switch {
		case err != nil:
			c.stats.loadErrors.Add(1)
			fails = append(fails, failReq(l, lease.Message(lease.Failed, limitText(err.Error()))))
			outcomes[i] = flight.Outcome{Err: err}
		case lost[i] != nil:
			c.stats.staleStores.Add(1)
		case haveTTL && setTTL <= 0:
			c.publishOnly(sctx, l.ks, l.token, entry)
		default:
			ttl := c.jitter(ch.cl.ttl)
			if haveTTL {
				ttl = setTTL
			}
			if absent {
				ttl = c.jitter(ch.cl.negativeTTL)
			}
			w := window
			if absent {
				w = 0
			}
			ttl = min(ttl, maxTTL)
			stores = append(stores, c.storeCall(l.ks, &l.look, entry, keyTTL(ttl, w), ttl, val, absent))
		}
	}
	return stores, fails, outcomes
}

// land hands each key of chunk its outcome; a panic nobody is left to
// re-raise is re-raised here, as an unrecovered panic would be. A key
// without a flight (a gatherer's, see gather.go) has its outcome in Redis
// only: its callers, on every server, get the panic as a failure, and a
// gatherer's panic is logged, not re-raised (the gatherer serves the fleet,
// and no caller could recover it).
func (b *batch[T]) land(chunk []*batchLook, outcomes []flight.Outcome, panicked *PanicError) {
	flights := false
	for i, l := range chunk {
		if l.f != nil {
			flights = true
			b.c.flights.Land(l.f, outcomes[i])
		}
	}
	switch {
	case panicked == nil:
	case !flights:
		b.c.log("a fleet-wide batch's loader panicked; its keys failed on every server",
			"batch", b.opt.Name, "keys", len(chunk), "panic", fmt.Sprint(panicked.Value), "stack", string(panicked.Stack))
	case allGone(chunk):
		panic(panicked)
	}
}

// call is one call of the batch's loader for keys, reported to the
// events handler.
func (b *batch[T]) call(ctx context.Context, keys []string) (any, error) {
	if b.c.base.Err() != nil {
		// Closing: released, not loaded with an ended ctx (see
		// Cache.loader); after a gatherer's check of its lease, which
		// leaves a batch it lost to its successor, locks untouched.
		return nil, errNotStarted
	}
	start := time.Now()
	m, err := b.load(ctx, keys)
	b.c.event(ctx, observe.Event{Kind: observe.Batch, N: len(keys), Duration: time.Since(start), Err: err})
	return m, err
}

// chunkPatience returns the patience of chunk: a context that ends when
// nobody waits for any key of chunk any more (the keys that join it later
// included, see patience.add): the budget and its retries wait only as
// long. A key without a flight (a gatherer's, see gather.go) waits for as
// long as the batch's ctx.
func chunkPatience(ctx context.Context, chunk []*batchLook) *patience {
	p := &patience{}
	p.ctx, p.cancel = context.WithCancel(ctx)
	for _, l := range chunk {
		p.add(l)
	}
	return p
}

// patience is a chunk's: see chunkPatience.
type patience struct {
	ctx    context.Context
	cancel context.CancelFunc

	mu    sync.Mutex // guards the fields below
	left  int        // keys whose callers still wait
	stops []func() bool
	whole bool // a key without a flight: the ctx ends with the batch's only
}

// add makes l's key one whose callers the chunk waits for.
func (p *patience) add(l *batchLook) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.whole {
		return
	}
	if l.f == nil {
		p.whole = true
		return
	}
	p.left++
	p.stops = append(p.stops, context.AfterFunc(l.f.Patience(), p.gone))
}

// gone counts a key whose callers all gave up.
func (p *patience) gone() {
	p.mu.Lock()
	p.left--
	end := p.left == 0 && !p.whole
	p.mu.Unlock()
	if end {
		p.cancel()
	}
}

// stop releases the patience's watches and ends its ctx.
func (p *patience) stop() {
	p.mu.Lock()
	stops := p.stops
	p.stops = nil
	p.mu.Unlock()
	for _, stop := range stops {
		stop()
	}
	p.cancel()
}

func absentErr(absent bool, key string) error {
	if absent {
		return notFound(key)
	}
	return nil
}

// allGone reports whether no caller waits for any key of chunk: a panic
// then has nobody to be re-raised in.
func allGone(chunk []*batchLook) bool {
	for _, l := range chunk {
		if l.f != nil && l.f.Waiters() > 0 {
			return false
		}
	}
	return true
}
