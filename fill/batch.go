package fill

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/codec"
	"github.com/locksmith-go/locksmith/internal/envelope"
	"github.com/locksmith-go/locksmith/internal/flight"
	"github.com/locksmith-go/locksmith/internal/lease"
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
	// default: 2ms
	Window time.Duration

	// CostPerKey makes a batch wait for one budget slot per key instead of
	// one per call, for an upstream whose limit counts ids rather than
	// requests.
	// default: false (one slot per loader call)
	CostPerKey bool
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
// by default; pass a *BatchOptions among opts); keys another server is
// loading are awaited by push, as Get awaits them (subscribed together and
// looked at again in one more pipelined round trip once subscribed); keys
// already in flight in this process join that flight. Each loader call waits for the budget
// once (see BatchOptions.CostPerKey). A key whose fill lock is lost during
// the load gets its value but does not store it, as with Get; the loader's
// ctx ends (cause wrapping lock.ErrNotHeld) once the locks of all its keys
// are lost.
//
// The loader returns the values it found. A key missing from its map is
// cached as absent, for NegativeTTL, as a Get whose loader returned
// ErrNotFound; such keys, and keys with a cached absence, are left out of
// the result, without an error. A loader error is not cached; it reaches
// every waiter of the keys of that call, here and on other servers, as for
// Get.
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
	if load == nil {
		return out, errors.New("fill: GetMany called with a nil loader")
	}
	if err := ctx.Err(); err != nil {
		return out, err
	}
	if err := c.check(); err != nil {
		return out, err
	}
	bopt := (*BatchOptions)(nil)
	cl := callOptions{ttl: c.opt.TTL, negativeTTL: c.opt.NegativeTTL}
	for _, o := range opts {
		if b, ok := o.(*BatchOptions); ok {
			bopt = b
			continue
		}
		o.apply(&cl)
	}
	b := newBatch[T](c, load, bopt.withDefaults())
	calls := make(map[string]*flight.Call, len(keys))
	var items []batchItem
	for _, key := range keys {
		if _, dup := calls[key]; dup {
			continue
		}
		if c.local != nil {
			if v, absent, ok := c.local.get(key); ok {
				if t, isT := v.(T); ok && (absent || isT) {
					c.localHit(ctx, key)
					calls[key] = nil
					if !absent {
						out[key] = t
					}
					continue
				}
			}
		}
		f, leader, err := c.flights.Join(flightKey{key: key, typ: b.o.typ})
		if err != nil {
			return out, ErrClosed
		}
		calls[key] = f
		if leader {
			items = append(items, batchItem{key: key, f: f})
		} else {
			c.stats.localMerges.Add(1)
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
		v, err := f.Wait(ctx)
		switch {
		case err == nil:
			out[key], _ = v.(T)
		case errors.Is(err, ErrNotFound):
		default:
			errs[key] = c.gaveUp(ctx, key, err)
		}
	}
	if len(errs) > 0 {
		return out, &BatchError{Errs: errs}
	}
	return out, nil
}

// apply makes *BatchOptions an Option of GetMany; for Get it does nothing.
func (o *BatchOptions) apply(*callOptions) {}

// Batcher gathers single-key Gets that arrive within BatchOptions.Window of
// one another (or until BatchOptions.MaxSize keys) into one batch, read or
// claimed together as [GetMany] does and loaded with one loader call:
// dataloader's pattern, with fill's fleet-wide guarantee that each key is
// loaded once. Each caller waits with its own ctx; a caller that gives up
// never cancels the batch, which runs detached from its callers, like a
// flight. A key another server is loading never enters this server's
// batch: it is awaited by push instead. With a budget (one slot per call),
// the keys that arrive while a batch waits for its slot join it, up to
// MaxSize: a budget-bound Batcher sends full batches rather than one small
// batch per Window. It is safe for concurrent use.
type Batcher[T any] struct {
	b *batch[T]

	mu      sync.Mutex // guards pending, timer and holders
	pending []batchItem
	timer   *time.Timer
	holders int // batches waiting for their budget slot: new keys wait to join them
}

// NewBatcher returns a Batcher on c that loads with load. A nil opt gives
// the defaults.
func NewBatcher[T any](c *Cache, load func(ctx context.Context, keys []string) (map[string]T, error), opt *BatchOptions) *Batcher[T] {
	return &Batcher[T]{b: newBatch[T](c, load, opt.withDefaults())}
}

// Get returns the value cached for key, or loads it in the next batch. An
// absent key (cached as absent, or missing from the loader's map) gives an
// error wrapping [ErrNotFound].
func (bt *Batcher[T]) Get(ctx context.Context, key string) (T, error) {
	var zero T
	c := bt.b.c
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	if err := c.check(); err != nil {
		return zero, err
	}
	if bt.b.load == nil {
		return zero, errors.New("fill: Batcher with a nil loader")
	}
	if c.local != nil {
		if t, err, ok := fromLocal[T](ctx, c, key); ok {
			return t, err
		}
	}
	f, leader, err := c.flights.Join(flightKey{key: key, typ: bt.b.o.typ})
	if err != nil {
		return zero, ErrClosed
	}
	if leader {
		bt.add(ctx, batchItem{key: key, f: f})
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

func (bt *Batcher[T]) add(ctx context.Context, it batchItem) {
	bt.mu.Lock()
	defer bt.mu.Unlock()
	bt.pending = append(bt.pending, it)
	if bt.holders > 0 {
		return // joins a batch waiting for its budget slot
	}
	switch {
	case len(bt.pending) >= bt.b.opt.MaxSize:
		if bt.timer != nil {
			bt.timer.Stop()
			bt.timer = nil
		}
		items := bt.pending
		bt.pending = nil
		go bt.b.run(ctx, items, bt.b.callOptions(), &batcherJoin[T]{bt: bt, ctx: ctx})
	case len(bt.pending) == 1:
		bt.timer = time.AfterFunc(bt.b.opt.Window, func() { bt.flush(ctx) })
	}
}

func (bt *Batcher[T]) flush(ctx context.Context) {
	bt.mu.Lock()
	if bt.holders > 0 {
		bt.mu.Unlock()
		return // the pending keys join the batch waiting for its slot
	}
	items := bt.pending
	bt.pending, bt.timer = nil, nil
	bt.mu.Unlock()
	if len(items) > 0 {
		bt.b.run(ctx, items, bt.b.callOptions(), &batcherJoin[T]{bt: bt, ctx: ctx})
	}
}

// joiner lets a batch that waits for its budget slot take the keys that
// arrived meanwhile: a budget-bound Batcher then sends full batches, not one
// small batch per Window, each waiting for a slot of its own.
type joiner interface {
	// hold is called when the batch starts waiting: keys arriving from now
	// on wait for it instead of starting a window of their own.
	hold()
	// take is called when the slot came (or the wait ended): up to n of the
	// keys that arrived join the batch; the rest start a new window.
	take(n int) []batchItem
}

type batcherJoin[T any] struct {
	bt  *Batcher[T]
	ctx context.Context
}

func (j *batcherJoin[T]) hold() {
	bt := j.bt
	bt.mu.Lock()
	defer bt.mu.Unlock()
	bt.holders++
	if bt.timer != nil {
		bt.timer.Stop()
		bt.timer = nil
	}
}

func (j *batcherJoin[T]) take(n int) []batchItem {
	bt := j.bt
	bt.mu.Lock()
	defer bt.mu.Unlock()
	bt.holders--
	n = min(n, len(bt.pending))
	items := bt.pending[:n:n]
	bt.pending = bt.pending[n:]
	if bt.holders == 0 && len(bt.pending) > 0 && bt.timer == nil {
		ctx := j.ctx
		bt.timer = time.AfterFunc(bt.b.opt.Window, func() { bt.flush(ctx) })
	}
	return items
}

// batchItem is one key of a batch and the in-process flight it leads.
type batchItem struct {
	key string
	f   *flight.Call
}

// batch is the typed part of a batch: its loader and options, and the ops
// each key's flight uses should it load alone (another server's load failed
// and its lease ran out, say).
type batch[T any] struct {
	c    *Cache
	load func(ctx context.Context, keys []string) (map[string]T, error)
	opt  BatchOptions
	o    ops
}

func newBatch[T any](c *Cache, load func(ctx context.Context, keys []string) (map[string]T, error), opt BatchOptions) *batch[T] {
	b := &batch[T]{c: c, load: load, opt: opt}
	var cdc codec.Codec
	if c != nil { // else every call returns c.check()'s error
		cdc = c.opt.Codec
	}
	b.o = ops{
		typ: reflect.TypeFor[T](),
		load: func(ctx context.Context) (any, error) {
			// A key loading alone: a batch of one.
			key, _ := ctx.Value(singleKey{}).(string)
			m, err := load(ctx, []string{key})
			if err != nil {
				return nil, err
			}
			v, ok := m[key]
			if !ok {
				return nil, notFound(key)
			}
			return v, nil
		},
		decode: func(p []byte) (any, error) {
			var v T
			err := cdc.Unmarshal(p, &v)
			return v, err
		},
	}
	return b
}

// singleKey carries, in a flight's ctx, the key a batch's loader loads
// when one key of a batch loads alone.
type singleKey struct{}

func (b *batch[T]) callOptions() callOptions {
	return callOptions{ttl: b.c.opt.TTL, negativeTTL: b.c.opt.NegativeTTL}
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
		for i, chunk := range slices.Collect(slices.Chunk(claimed, b.opt.MaxSize)) {
			var j joiner
			if i == 0 && join != nil && c.budget(caller) != nil && !b.opt.CostPerKey && len(chunk) < b.opt.MaxSize {
				j = join
			}
			wg.Go(func() { b.lead(fctx, chunk, cl, j, &wg) })
		}
		for chunk := range slices.Chunk(open, b.opt.MaxSize) {
			wg.Go(func() { b.failOpen(fctx, chunk) })
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
		switch {
		case l.err == nil && l.r.state == found:
			c.stats.hits.Add(1)
			c.event(fctx, observe.Event{Kind: observe.Hit, Key: l.key})
			c.keepLocal(l.key, &l.look)
			c.flights.Land(l.f, flight.Outcome{Val: l.val, Err: l.valErr})
		case l.err == nil && l.r.state == stale && l.valErr == nil &&
			(l.r.sub == staleBackoff || l.entry.StaleWindow-l.r.pttl <= c.opt.StaleWhileRevalidate):
			c.serveStale(fctx, l.key, &l.look)
			if l.r.sub == staleClaimed {
				c.refresh(context.WithValue(fctx, singleKey{}, l.key), l.key, cl, b.o, &l.look)
			}
			c.flights.Land(l.f, flight.Outcome{Val: l.val})
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
// of wg, with first as its first look (nil for none) and hw as fill's.
func (b *batch[T]) single(fctx context.Context, l *batchLook, cl callOptions, first *look, hw *heldWait, wg *sync.WaitGroup) {
	wg.Go(func() {
		kctx := context.WithValue(fctx, singleKey{}, l.key)
		wctx, wcancel := context.WithCancel(kctx)
		defer context.AfterFunc(l.f.Patience(), wcancel)()
		defer wcancel()
		out := b.c.fill(kctx, wctx, l.key, cl, b.o, first, hw)
		b.c.flights.Land(l.f, out.landed())
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
		b.single(fctx, l, cl, &looks[i], &heldWait{sub: readySubs[i], since: since}, wg)
	}
}

// relookMany looks at held keys again in one pipeline, each with its
// first look's token, passing the holder it found so that the holder's
// outcome, should it have failed meanwhile, is returned (see claim.lua).
func (c *Cache) relookMany(ctx context.Context, waiting []*batchLook, o ops) []look {
	reqs := make([]claimReq, len(waiting))
	for i, l := range waiting {
		reqs[i] = claimReq{ks: l.ks, token: l.token, awaited: l.r.holder}
	}
	return c.claimMany(ctx, reqs, o)
}

// batchLook is the first look of one key of a batch.
type batchLook struct {
	look
	key string
	f   *flight.Call
	ks  keyset
}

// lookMany reads or claims every item's key in one pipeline.
func (c *Cache) lookMany(ctx context.Context, items []batchItem, o ops) []batchLook {
	looks := make([]batchLook, len(items))
	reqs := make([]claimReq, len(items))
	for i, it := range items {
		looks[i] = batchLook{key: it.key, f: it.f, ks: c.keyset(it.key)}
		reqs[i] = claimReq{ks: looks[i].ks, token: lease.NewToken()}
	}
	for i, l := range c.claimMany(ctx, reqs, o) {
		looks[i].look = l
	}
	return looks
}

// claimReq is one key's read-or-claim in a pipeline: its keys, the
// caller's token, and the holder the caller waited for ("" for none; see
// claim.lua).
type claimReq struct {
	ks             keyset
	token, awaited string
}

// claimMany runs the claim script, mode read, for every request in one
// pipeline (on a Cluster, go-redis sends one per node). Should Redis not
// know the script (a restart, a failover, a new replica), it is loaded and
// the pipeline sent again. A key whose value cannot be decoded is claimed
// alone, as look does.
func (c *Cache) claimMany(ctx context.Context, reqs []claimReq, o ops) []look {
	looks := make([]look, len(reqs))
	sent := time.Now()
	lockTTL := lease.Millis(c.opt.LockTTL)
	exec := func(idx []int) ([]*redis.Cmd, error) {
		return redisx.Run(ctx, c.rdb, func(ctx context.Context) ([]*redis.Cmd, error) {
			pipe := c.rdb.Redis().Pipeline()
			cmds := make([]*redis.Cmd, len(idx))
			for k, i := range idx {
				q := reqs[i]
				cmds[k] = claimScript.EvalSha(ctx, pipe, q.ks.keys, q.token, lockTTL, modeRead, q.awaited,
					c.swrArg, c.sieArg, c.pttlArg)
			}
			_, err := pipe.Exec(ctx)
			if err != nil && !redisx.MayHaveRun(err) && redisx.Classify(err) != redisx.Reply {
				return nil, err
			}
			return cmds, nil
		}, nil)
	}
	cmds, err := exec(upTo(len(reqs)))
	if err == nil {
		rerunFlushed(ctx, c.rdb.Redis(), claimScript, cmds, exec)
	}
	for i, q := range reqs {
		l := &looks[i]
		l.token, l.sent = q.token, sent
		if err != nil {
			l.err = err
			continue
		}
		v, cerr := cmds[i].Result()
		if isNoScript(cerr) {
			// Still unknown (the load failed): this one alone, with
			// EVAL's fallback.
			*l = c.look(ctx, q.ks, q.token, o, modeRead, q.awaited)
			continue
		}
		if cerr != nil {
			l.err = cerr
			if redisx.MayHaveRun(cerr) {
				go lease.Cleanup(c.rdb, q.ks.lock, q.token)
			}
			continue
		}
		l.r, l.err = parseClaim(v)
		if l.err == nil && (l.r.state == found || l.r.state == stale) {
			c.decode(q.ks, l.r.value, o, l)
			if errors.Is(l.valErr, envelope.ErrCorrupt) {
				// Never served: claim it alone, regardless of the value.
				replaced := l.replaced
				*l = c.look(ctx, q.ks, q.token, o, modeClaim, "")
				l.replaced = replaced
			}
		}
	}
	return looks
}

// lead loads the claimed keys of one chunk with one loader call, and stores
// the outcome of each, in one pipelined round trip.
func (b *batch[T]) lead(ctx context.Context, chunk []*batchLook, cl callOptions, join joiner, wg *sync.WaitGroup) {
	c := b.c
	keys := make([]string, len(chunk))
	for i, l := range chunk {
		keys[i] = l.key
	}
	lctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var keepers []*lease.Keeper
	// The loader's ctx ends when every key's lease is lost: nothing it
	// loads could be stored any more.
	var held atomic.Int32
	keep := func(l *batchLook) {
		key := l.key
		held.Add(1)
		keepers = append(keepers, lease.Keep(c.rdb, l.ks.lock, l.token, c.opt.LockTTL, l.sent, func() {
			c.event(ctx, observe.Event{Kind: observe.LeaseLost, Key: key})
			c.log("fill lock lost during a batch load; its value will not be stored", "key", key)
			if held.Add(-1) == 0 {
				cancel(errLeaseLost)
			}
		}))
	}
	for _, l := range chunk {
		keep(l)
	}
	wctx, wcancel := chunkPatience(ctx, chunk)
	defer wcancel()
	if join != nil {
		join.hold()
		defer func() {
			if join != nil {
				join.take(0)
			}
		}()
	}
	// absorb brings the keys that arrived while the chunk waited for its
	// budget slot into it: read or claimed together, the claimed ones
	// loaded with the chunk's keys.
	bctx := ctx // the batch's: the loader's ends with the load
	absorb := func() {
		ctx := bctx
		j := join
		join = nil
		items := j.take(b.opt.MaxSize - len(chunk))
		if len(items) == 0 {
			return
		}
		claimed, open, waiting := b.dispatch(ctx, c.lookMany(ctx, items, b.o), cl, wg)
		if len(waiting) > 0 {
			wg.Go(func() { b.awaitHeld(ctx, waiting, cl, wg) })
		}
		for _, l := range claimed {
			keep(l)
			chunk = append(chunk, l)
			keys = append(keys, l.key)
		}
		if len(open) > 0 {
			wg.Go(func() { b.failOpen(ctx, open) })
		}
	}

	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), lease.CleanupTimeout)
	defer scancel()
	ops := ops{typ: b.o.typ, decode: b.o.decode, load: func(ctx context.Context) (any, error) {
		if join != nil {
			absorb()
		}
		start := time.Now()
		m, err := b.load(ctx, keys)
		c.event(ctx, observe.Event{Kind: observe.Batch, N: len(keys), Duration: time.Since(start), Err: err})
		return m, err
	}}
	var ov ttlOverride
	out, took := b.loadChunk(context.WithValue(lctx, ttlKey{}, &ov), wctx, keys, ops)
	setTTL, haveTTL := ov.get()
	lost := make([]error, len(chunk))
	for i, k := range keepers {
		lost[i] = k.Stop()
	}
	cancel(nil)

	settles := make([]settleCall, 0, len(chunk))
	outcomes := make([]flight.Outcome, len(chunk))
	switch {
	case out.panicked != nil:
		c.stats.loadErrors.Add(1)
		msg := lease.Message(lease.Panicked, limitText(fmt.Sprint(out.panicked.Value)))
		for i, l := range chunk {
			settles = append(settles, settleCall{l: l, fail: msg})
			outcomes[i] = flight.Outcome{Panic: out.panicked}
		}
	case out.err != nil:
		closed := context.Cause(ctx) == ErrClosed
		if !closed {
			c.stats.loadErrors.Add(1)
		}
		msg := lease.Message(lease.Failed, limitText(out.err.Error()))
		for i, l := range chunk {
			if closed || (took == 0 && wctx.Err() != nil) {
				c.release(sctx, l.ks, l.token)
			} else {
				settles = append(settles, settleCall{l: l, fail: msg})
			}
			outcomes[i] = flight.Outcome{Err: out.err}
			if closed {
				outcomes[i].Err = ErrClosed
			}
		}
	default:
		m, _ := out.val.(map[string]T)
		window := c.opt.window()
		for i, l := range chunk {
			v, ok := m[l.key]
			var entry []byte
			var val any
			var err error
			absent := !ok
			if ok {
				var payload []byte
				payload, val, err = c.encode(l.key, b.o, v)
				if err == nil {
					entry = envelope.Encode(nil, envelope.Entry{CreatedAt: c.createdAt(&l.look), LoadDuration: took,
						StaleWindow: window, Type: typeTag(b.o.typ), Replaced: l.replaced, Payload: payload}, c.opt.CompressAbove)
				}
			} else {
				entry = envelope.Encode(nil, envelope.Entry{Absent: true, CreatedAt: c.createdAt(&l.look), LoadDuration: took,
					Type: typeTag(b.o.typ)}, 0)
			}
			switch {
			case err != nil:
				c.stats.loadErrors.Add(1)
				settles = append(settles, settleCall{l: l, fail: lease.Message(lease.Failed, limitText(err.Error()))})
				outcomes[i] = flight.Outcome{Err: err}
			case lost[i] != nil:
				c.stats.staleStores.Add(1)
				outcomes[i] = flight.Outcome{Val: val, Err: absentErr(absent, l.key)}
			case haveTTL && setTTL <= 0:
				c.publishOnly(sctx, l.ks, l.key, l.token, entry)
				outcomes[i] = flight.Outcome{Val: val, Err: absentErr(absent, l.key)}
			default:
				ttl := c.jitter(cl.ttl)
				if haveTTL {
					ttl = setTTL
				}
				if absent {
					ttl = c.jitter(cl.negativeTTL)
				} else {
					ttl += window
				}
				settles = append(settles, settleCall{l: l, entry: entry, ttl: ttl, val: val, absent: absent,
					freshFor: ttl - window})
				outcomes[i] = flight.Outcome{Val: val, Err: absentErr(absent, l.key)}
			}
		}
	}
	c.settleMany(sctx, settles)
	for i, l := range chunk {
		c.flights.Land(l.f, outcomes[i])
	}
	if out.panicked != nil && allGone(chunk) {
		panic(out.panicked)
	}
}

// chunkPatience returns a context that ends when nobody waits for any key
// of chunk any more: the budget and its retries wait only as long.
func chunkPatience(ctx context.Context, chunk []*batchLook) (context.Context, context.CancelFunc) {
	wctx, wcancel := context.WithCancel(ctx)
	var left atomic.Int32
	left.Store(int32(len(chunk)))
	stops := make([]func() bool, len(chunk))
	for i, l := range chunk {
		stops[i] = context.AfterFunc(l.f.Patience(), func() {
			if left.Add(-1) == 0 {
				wcancel()
			}
		})
	}
	return wctx, func() {
		for _, stop := range stops {
			stop()
		}
		wcancel()
	}
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
		if l.f.Waiters() > 0 {
			return false
		}
	}
	return true
}

// failOpen loads chunk without the fleet-wide lock: Redis is unavailable.
func (b *batch[T]) failOpen(ctx context.Context, chunk []*batchLook) {
	c := b.c
	c.stats.failOpens.Add(uint64(len(chunk)))
	c.event(ctx, observe.Event{Kind: observe.FailOpen, N: len(chunk), Err: chunk[0].err})
	keys := make([]string, len(chunk))
	for i, l := range chunk {
		keys[i] = l.key
	}
	wctx, wcancel := chunkPatience(ctx, chunk)
	defer wcancel()
	out, _ := b.loadChunk(ctx, wctx, keys, ops{load: func(ctx context.Context) (any, error) {
		start := time.Now()
		m, err := b.load(ctx, keys)
		c.event(ctx, observe.Event{Kind: observe.Batch, N: len(keys), Duration: time.Since(start), Err: err})
		return m, err
	}})
	m, _ := out.val.(map[string]T)
	for _, l := range chunk {
		o := flight.Outcome{Err: out.err}
		if out.panicked != nil {
			o = flight.Outcome{Panic: out.panicked}
		} else if out.err == nil {
			v, ok := m[l.key]
			o = flight.Outcome{Val: v, Err: absentErr(!ok, l.key)}
		}
		c.flights.Land(l.f, o)
	}
	if out.panicked != nil && allGone(chunk) {
		panic(out.panicked)
	}
}

// loadChunk runs a batch loader call once its budget allows, and again
// while the upstream rate-limits and someone waits, as [Cache.load] does
// for one key.
func (b *batch[T]) loadChunk(ctx, wctx context.Context, keys []string, o ops) (outcome, time.Duration) {
	c := b.c
	if bud := c.budget(ctx); bud != nil && b.opt.CostPerKey {
		// One slot per key: all but the last waited for here, the last
		// by load.
		for range len(keys) - 1 {
			if err := bud.Wait(wctx, budget.Foreground); err != nil {
				return outcome{err: fmt.Errorf("fill: a batch of %d keys: waiting for the budget: %w", len(keys), err)}, 0
			}
		}
	}
	return c.load(ctx, wctx, fmt.Sprintf("a batch of %d keys", len(keys)), o, budget.Foreground)
}

// settleCall is one key's settle in a pipeline: a store (entry) or a
// failure (fail, the message).
type settleCall struct {
	l        *batchLook
	entry    []byte
	ttl      time.Duration // the key's, stale window included
	freshFor time.Duration
	val      any
	absent   bool
	fail     string
}

// settleMany runs the settle script for every call in one pipeline.
func (c *Cache) settleMany(ctx context.Context, calls []settleCall) {
	if len(calls) == 0 {
		return
	}
	flag := c.rdb.PublishFlag()
	backoffCap := lease.Millis(min(backoffCap, max(c.opt.window(), backoffBase)))
	markerTTL := lease.Millis(failureMarkerTTL)
	created := make([]time.Time, len(calls))
	run := func(ctx context.Context, pipe redis.Pipeliner, i int) *redis.Cmd {
		sc := calls[i]
		ks := sc.l.ks
		if sc.fail != "" {
			return settleScript.EvalSha(ctx, pipe, ks.keys, sc.l.token, flag, "f", sc.fail, markerTTL, "0", backoffCap)
		}
		msg := lease.Message(lease.Filled, "")
		if len(sc.entry) <= c.opt.PublishLimit {
			msg = lease.Message(lease.Value, string(sc.entry))
		}
		created[i] = c.createdAt(&sc.l.look)
		if c.local != nil {
			c.local.expect(sc.l.key, created[i])
		}
		return settleScript.EvalSha(ctx, pipe, ks.keys, sc.l.token, flag, "s", msg, sc.entry,
			lease.Millis(max(sc.ttl, time.Millisecond)), c.invalChannel, invalidation(sc.l.key, created[i]))
	}
	// retried[i]: calls[i] was sent again after a try whose outcome is
	// unknown, which most likely ran: a lock no longer ours then means
	// that try settled it, as in settleStore.
	retried := make([]bool, len(calls))
	exec := func(idx []int) ([]*redis.Cmd, error) {
		return lease.Retry(ctx, func(ctx context.Context, again bool) ([]*redis.Cmd, error) {
			pipe := c.rdb.Redis().Pipeline()
			cmds := make([]*redis.Cmd, len(idx))
			for k, i := range idx {
				cmds[k] = run(ctx, pipe, i)
				retried[i] = retried[i] || again
			}
			_, err := pipe.Exec(ctx)
			if err != nil && redisx.Classify(err) != redisx.Reply {
				return nil, err
			}
			return cmds, nil
		})
	}
	replies, err := exec(upTo(len(calls)))
	if err == nil {
		rerunFlushed(ctx, c.rdb.Redis(), settleScript, replies, exec)
	}
	for i, sc := range calls {
		var s settled
		serr := err
		if serr == nil {
			var v any
			if v, serr = replies[i].Result(); serr == nil {
				s, serr = parseSettled(v)
			}
		}
		if serr == nil && retried[i] && !s.ours {
			s.ours = true
		}
		c.settled(sc.l.key, s, serr)
		if sc.fail == "" && serr == nil && s.ours && s.storeErr == "" && c.local != nil {
			c.local.set(sc.l.key, sc.val, sc.absent, created[i], time.Now().Add(sc.freshFor))
		}
	}
}

// upTo returns 0, 1, ..., n-1.
func upTo(n int) []int {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	return idx
}

// isNoScript reports whether err is Redis' NOSCRIPT: the server does not
// know the script (its cache was flushed by a restart or a failover).
func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// rerunFlushed loads script and sends again, in one pipeline, the commands
// of replies that failed with NOSCRIPT, putting their new replies in their
// place; exec sends the commands of the given indexes of replies. A
// pipelined EVALSHA has no EVAL fallback: without this, each such key
// would cost a round trip of its own.
func rerunFlushed(ctx context.Context, rdb redis.Scripter, script *redis.Script, replies []*redis.Cmd,
	exec func(idx []int) ([]*redis.Cmd, error)) {
	var again []int
	for i, cmd := range replies {
		if isNoScript(cmd.Err()) {
			again = append(again, i)
		}
	}
	if len(again) == 0 || script.Load(ctx, rdb).Err() != nil {
		return
	}
	more, err := exec(again)
	if err != nil {
		return
	}
	for k, i := range again {
		replies[i] = more[k]
	}
}
