package fill

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/flight"
	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/redisx"
)

// Fleet-wide batches (BatchOptions.FleetWide): the keys a server claims are
// handed off to a queue in Redis instead of being loaded by that server,
// and one gatherer per batch name, elected by a lease, pops up to MaxSize
// of them every Window, loads them with one loader call and settles each
// with its claim's token (gather.lua). The claimer waits for its keys by
// push, as for keys another server loads.
//
// What keeps each key loaded once:
//   - A key is claimed (claim.lua) before it is handed off: only its claimer
//     queues it, and the gatherer settles it only while the claim's token
//     still holds its lock; the gatherer keeps the key's lease while it
//     loads it.
//   - The gatherer moves the keys it pops onto a loading list in the same
//     script, and takes them off once settled. A gatherer whose lease runs
//     out (it crashed, or paused) leaves them there: the next gatherer takes
//     them as its own when it takes the lease, and loads those whose lock
//     still holds the claim's token.
//   - A gatherer calls its loader only while it knows its lease is still
//     held; one that finds it lost (a pause) leaves its batch to its
//     successor, locks untouched.

var (
	//go:embed gather.lua
	gatherLua    string
	gatherScript = redis.NewScript(gatherLua)
)

// The modes of the gather script.
const (
	gatherHandOff = "h"
	gatherPop     = "g"
	gatherDone    = "d"
	gatherQuit    = "q"
	gatherResign  = "r"
)

// gatherLease is the gatherer's lease: a gatherer that crashed is replaced
// within it. A gatherer renews it with every pop, at least every third of
// it (see gatherer.lease).
const gatherLease = 2 * time.Second

// errAbandoned is what a gatherer's loader call returns when the gatherer
// found its lease lost before the call: its successor loads the keys.
var errAbandoned = errors.New("fill: the gatherer's lease was lost before its loader call")

// gatherer is a FleetWide Batcher's side of the fleet's batches on one
// server: it hands the keys the Batcher claimed off to the queue, and
// gathers (pops, loads and settles) while this server holds the lease and
// keys are queued, or polls the lease while keys it handed off are not
// settled, so that it takes over from a gatherer that died.
type gatherer[T any] struct {
	b     *batch[T]
	keys  []string // the lease, the queue, the loading list
	token string   // this server's, in the lease
	// handed and ended wake the loop: keys were handed off here, a batch
	// ended.
	handed, ended chan struct{}

	mu       sync.Mutex // guards running, pending, leaseEnd and loading
	running  bool       // the gather loop runs
	pending  []*flight.Call
	leaseEnd time.Time       // the lease surely ends then unless renewed
	loading  map[string]bool // the items this server's loads settle
}

func newGatherer[T any](b *batch[T]) *gatherer[T] {
	base := redisx.Key(b.c.opt.Prefix, "batch:"+b.opt.Name)
	return &gatherer[T]{b: b, token: lease.NewToken(), handed: make(chan struct{}, 1), ended: make(chan struct{}, 1), loading: map[string]bool{},
		keys: []string{base + ":gatherer", base + ":queue", base + ":loading"}}
}

// lease is the gatherer's lease for b's window: long enough to be renewed
// by three pops.
func (g *gatherer[T]) lease() time.Duration { return max(gatherLease, 3*g.b.opt.Window) }

// item is the queue's entry for a claimed key: its token, its stamp, the
// key.
func item(l *batchLook) string {
	return l.token + " " + strconv.FormatInt(l.r.now.UnixMilli(), 10) + " " + l.key
}

// parseItem is the look of a claimed key whose queue entry is s.
func (g *gatherer[T]) parseItem(s string) (*batchLook, bool) {
	token, rest, ok1 := strings.Cut(s, " ")
	stamp, key, ok2 := strings.Cut(rest, " ")
	ms, err := strconv.ParseInt(stamp, 10, 64)
	if !ok1 || !ok2 || err != nil {
		return nil, false
	}
	return &batchLook{key: key, ks: g.b.c.keyset(key), look: look{token: token, sent: time.Now(),
		r: claimReply{state: acquired, now: time.UnixMilli(ms)}}}, true
}

// run runs the gather script in mode with args.
func (g *gatherer[T]) run(ctx context.Context, mode string, args ...any) (any, error) {
	c := g.b.c
	argv := append([]any{g.token, lease.Millis(g.lease()), lease.Millis(c.opt.LockTTL + g.lease()), mode}, args...)
	return redisx.Run(ctx, c.rdb, func(ctx context.Context) (any, error) {
		return gatherScript.Run(ctx, c.rdb.Redis(), g.keys, argv...).Result()
	}, nil)
}

// handOff queues the keys of claimed for the fleet's gatherer, and has
// each awaited by push, as awaitHeld awaits keys other servers load. Should
// the hand-off fail, this server loads them itself: when it is unknown
// whether it reached Redis (a timeout), a gatherer may load them too,
// which costs an upstream call rather than a wait for their leases.
func (g *gatherer[T]) handOff(fctx context.Context, claimed []*batchLook, cl callOptions, wg *sync.WaitGroup) {
	b := g.b
	items := make([]any, len(claimed))
	g.mu.Lock()
	for i, l := range claimed {
		items[i] = item(l)
		g.pending = append(g.pending, l.f)
	}
	g.mu.Unlock()
	if _, err := g.run(fctx, gatherHandOff, items...); err != nil {
		b.c.stats.redisErrors.Add(1)
		b.c.log("handing a batch's keys off to the fleet's gatherer failed; loading them here", "err", err)
		for chunk := range slices.Chunk(claimed, b.opt.MaxSize) {
			wg.Go(func() { b.lead(fctx, chunk, cl, nil, nil, wg) })
		}
		return
	}
	g.wake()
	for _, l := range claimed {
		// Held by the claim's token, now the gatherer's to settle: this
		// flight waits for it with a token of its own.
		l.r = claimReply{state: held, pttl: b.c.opt.LockTTL, holder: l.token}
		l.token = lease.NewToken()
		l.handedOff = true
	}
	b.awaitHeld(fctx, claimed, cl, wg)
}

// wake makes sure the gather loop runs, and pops within a Window.
func (g *gatherer[T]) wake() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.running && g.b.c.enter() {
		g.running = true
		go g.loop()
	}
	signal(g.handed)
}

// busy reports whether keys this server handed off are not settled yet.
// g.mu must be held.
func (g *gatherer[T]) busy() bool {
	g.pending = slices.DeleteFunc(g.pending, func(f *flight.Call) bool {
		select {
		case <-f.Done():
			return true
		default:
			return false
		}
	})
	return len(g.pending) > 0
}

// gathered is the gather script's reply to a pop.
type gathered struct {
	leader            bool
	pttl              time.Duration // another gatherer's lease
	popped, recovered []string
}

func parseGathered(v any) (gathered, error) {
	a, ok := v.([]any)
	if ok && len(a) == 2 {
		if n, ok := a[1].(int64); ok {
			return gathered{pttl: lease.PTTL(n)}, nil
		}
	}
	if ok && len(a) == 3 {
		p, ok1 := a[1].([]any)
		r, ok2 := a[2].([]any)
		if ok1 && ok2 {
			out := gathered{leader: true}
			for _, s := range p {
				s, _ := s.(string)
				out.popped = append(out.popped, s)
			}
			for _, s := range r {
				s, _ := s.(string)
				out.recovered = append(out.recovered, s)
			}
			return out, nil
		}
	}
	return gathered{}, fmt.Errorf("fill: unexpected gather reply %v (%T)", v, v)
}

// loop gathers while this server holds the lease: it pops up to MaxSize
// keys a Window after the first were handed off, and at most once a Window
// after that, and loads each batch popped on a goroutine of its own. While
// a batch loads, it pops only full batches (see gatherLoop.fullOnly): the
// keys missed meanwhile wait for the load to end, and go out together
// (group commit), so a fleet whose misses arrive steadily makes one call
// per load rather than one per Window. While another server gathers, it
// looks at the lease every eighth of it, for as long as keys this server
// handed off are not settled, and takes over once the lease is free. It
// ends when there is nothing left to do, and at Close, which resigns the
// lease.
func (g *gatherer[T]) loop() {
	c, opt := g.b.c, g.b.opt
	defer c.wg.Done()
	ls := &gatherLoop{}
	defer ls.batches.Wait()
	ctx := c.base
	due := time.Now().Add(opt.Window)
	timer := time.NewTimer(opt.Window)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lease.CleanupTimeout)
			_, _ = g.run(cctx, gatherResign)
			cancel()
			g.stop(ctx, false)
			return
		case <-g.handed:
			// Pop within a Window of the keys handed off here, rather than
			// after another gatherer's lease.
			if at := time.Now().Add(opt.Window); at.Before(due) && timer.Stop() {
				due = at
				timer.Reset(opt.Window)
			}
			continue
		case <-g.ended:
			// A batch ended: the keys queued while it loaded go now (a
			// Window after the last pop at the earliest).
			at := ls.lastPop.Add(opt.Window)
			if now := time.Now(); at.Before(now) {
				at = now
			}
			if at.Before(due) && timer.Stop() {
				due = at
				timer.Reset(time.Until(at))
			}
			continue
		case <-timer.C:
		}
		next, done := g.pop(ctx, ls)
		if done {
			return
		}
		due = time.Now().Add(next)
		timer.Reset(next)
	}
}

// gatherLoop is the state of a gather loop.
type gatherLoop struct {
	batches  sync.WaitGroup
	inflight atomic.Int32 // batches loading
	took     atomic.Int64 // a batch's load and settle, a moving average, in ns
	lastPop  time.Time    // of the last pop that popped keys
	resync   bool         // a pop's reply was lost: ask for the loading list
}

// fullOnly reports whether the loop pops only a full batch: while a batch
// loads, unless the last batch popped has taken twice as long as batches
// do (a slow call, a cold start), which the keys queued since then need
// not wait for.
func (ls *gatherLoop) fullOnly(window time.Duration) bool {
	expected := max(time.Duration(ls.took.Load()), window)
	return ls.inflight.Load() > 0 && time.Since(ls.lastPop) < 2*expected
}

// pop pops once (see loop), and returns when to pop next, or that the loop
// ends.
func (g *gatherer[T]) pop(ctx context.Context, ls *gatherLoop) (next time.Duration, done bool) {
	c, opt := g.b.c, g.b.opt
	sent := time.Now()
	fullOnly, resync := "0", "0"
	if ls.fullOnly(opt.Window) {
		fullOnly = "1"
	}
	if ls.resync {
		resync = "1"
	}
	v, err := g.run(ctx, gatherPop, opt.MaxSize, fullOnly, resync)
	var r gathered
	if err == nil {
		r, err = parseGathered(v)
	}
	switch {
	case err != nil:
		c.log("the fleet's gatherer could not reach redis", "err", err)
		ls.resync = ls.resync || redisx.MayHaveRun(err)
		return max(c.opt.PollInterval, opt.Window), g.stop(ctx, false)
	case !r.leader:
		return max(min(r.pttl+time.Millisecond, g.lease()/8), opt.Window), g.stop(ctx, false)
	}
	ls.resync = false
	g.mu.Lock()
	g.leaseEnd = sent.Add(g.lease())
	// Keys this gatherer loads already are not recovered.
	r.recovered = slices.DeleteFunc(r.recovered, func(s string) bool { return g.loading[s] })
	for _, items := range [][]string{r.recovered, r.popped} {
		for _, s := range items {
			g.loading[s] = true
		}
	}
	g.mu.Unlock()
	if len(r.popped) > 0 {
		ls.lastPop = sent
	}
	for i, items := range [][]string{r.recovered, r.popped} {
		if len(items) > 0 {
			ls.inflight.Add(1)
			ls.batches.Go(func() {
				defer signal(g.ended)
				defer ls.inflight.Add(-1)
				start := time.Now()
				g.load(items, i == 0)
				d := int64(time.Since(start))
				if old := ls.took.Load(); old != 0 {
					d = (3*old + d) / 4 // racing updates may drop one: a sample
				}
				ls.took.Store(d)
			})
		}
	}
	switch {
	case len(r.popped) == opt.MaxSize:
		return 0, false
	case len(r.popped) == 0 && len(r.recovered) == 0 && ls.inflight.Load() == 0:
		return opt.Window, g.stop(ctx, true)
	}
	return opt.Window, false
}

// signal wakes the loop with ch, unless it has a wake-up pending there.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// stop ends the loop, when nothing is left for it to do: as gatherer
// (leader), once it released the lease, the queue and the loading list
// being empty; else once no key this server handed off waits. It reports
// whether the loop ends.
func (g *gatherer[T]) stop(ctx context.Context, leader bool) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case ctx.Err() != nil:
	case leader:
		// Under g.mu: a key handed off after the lease is released takes
		// the lease and wakes a new loop.
		v, err := g.run(ctx, gatherQuit)
		if n, _ := v.(int64); err != nil || n != 1 {
			return false
		}
	case g.busy():
		return false
	}
	g.running = false
	return true
}

// held reports whether the gatherer surely still holds its lease: its
// loader may be called.
func (g *gatherer[T]) held() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	// A margin for the call to reach the upstream.
	return time.Until(g.leaseEnd) >= g.lease()/3
}

// load loads and settles the keys of items, one loader call, then takes
// them off the loading list. Recovered items (a gatherer that died popped
// them) are loaded only if their lock still holds their claim's token: a
// key its first gatherer settled is not loaded again.
func (g *gatherer[T]) load(items []string, recovered bool) {
	b, c := g.b, g.b.c
	fctx, cancel := c.flightContext(context.Background())
	defer cancel()
	byKey := make(map[string]int, len(items))
	var chunk []*batchLook
	for _, s := range items {
		l, ok := g.parseItem(s)
		if !ok {
			continue
		}
		if i, dup := byKey[l.key]; dup {
			// Claimed again since: its lock lapsed while it was queued.
			// The later claim holds the lock.
			chunk[i] = l
			continue
		}
		byKey[l.key] = len(chunk)
		chunk = append(chunk, l)
	}
	if recovered {
		chunk = g.stillClaimed(fctx, chunk)
	}
	around := func(call func() (any, error)) (any, error) {
		if !g.held() {
			return nil, errAbandoned
		}
		return call()
	}
	abandoned := false
	var wg sync.WaitGroup
	for part := range slices.Chunk(chunk, b.opt.MaxSize) { // several only when recovered
		abandoned = b.lead(fctx, part, b.callOptions(), nil, around, &wg) || abandoned
	}
	wg.Wait()
	defer func() {
		g.mu.Lock()
		for _, s := range items {
			delete(g.loading, s)
		}
		g.mu.Unlock()
	}()
	if abandoned {
		return // left on the loading list for the next gatherer
	}
	args := make([]any, len(items))
	for i, s := range items {
		args[i] = s
	}
	cctx, ccancel := context.WithTimeout(context.WithoutCancel(fctx), lease.CleanupTimeout)
	defer ccancel()
	if _, err := g.run(cctx, gatherDone, args...); err != nil {
		c.log("taking settled keys off the fleet's loading list failed", "err", err)
	}
}

// stillClaimed returns the looks of chunk whose lock still holds their
// claim's token, in one pipelined round trip.
func (g *gatherer[T]) stillClaimed(ctx context.Context, chunk []*batchLook) []*batchLook {
	c := g.b.c
	cmds, err := redisx.Run(ctx, c.rdb, func(ctx context.Context) ([]*redis.StringCmd, error) {
		pipe := c.rdb.Redis().Pipeline()
		cmds := make([]*redis.StringCmd, len(chunk))
		for i, l := range chunk {
			cmds[i] = pipe.Get(ctx, l.ks.lock)
		}
		_, err := pipe.Exec(ctx)
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
		return cmds, nil
	}, nil)
	if err != nil {
		return chunk // the settle checks each token anyway
	}
	var held []*batchLook
	for i, l := range chunk {
		if cmds[i].Val() == l.token {
			held = append(held, l)
		}
	}
	return held
}
