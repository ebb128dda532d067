package fill

import (
	"context"
	_ "embed"
	"errors"
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
//     held, without a break since it popped the batch; one that finds it
//     lost (a pause) leaves its batch to its successor, locks untouched.
//     A gatherer that takes the lease anew (its own had run out) keeps only
//     the batches still on the loading list: the keys of the others were
//     taken over while it was away.

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
	gatherAudit   = "a"
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

	mu       sync.Mutex // guards running, pending, leaseEnd, term, loading, resync, tookLease, settled and first
	running  bool       // the gather loop runs
	pending  []*flight.Call
	leaseEnd time.Time // the lease surely ends then unless renewed
	// term counts the times this server took the lease anew; loading maps
	// the items this server's loads settle to the term they belong to: an
	// item of an earlier term may have been taken over.
	term    uint64
	loading map[string]uint64
	resync  bool // a batch was abandoned: the next pop asks for the loading list
	// tookLease: a hand-off took the lease anew; the next pop counts as
	// taking it (see gatherer.handOff).
	tookLease bool
	// settled holds the items this server's batches settled, still on the
	// loading list: its next call of the gather script takes them off
	// (see gather.lua).
	settled []string
	// first is the earliest Get of the keys handed off here since the loop
	// last looked (see wake); zero for none.
	first time.Time
	// popRTT is a pop's round trip, and setup the time from a pop's reply
	// to its batch's loader call (the goroutine the batch starts, its
	// leases, its contexts), moving averages in ns: a pop is sent about
	// that long before it is due (see ahead).
	popRTT, setup atomic.Int64
	// waiting holds the keys handed off here whose flights have not
	// landed, by item; auditing: a goroutine looks for them (see
	// gatheraudit.go). Guarded by mu.
	waiting  map[string]handedKey
	auditing bool
}

func newGatherer[T any](b *batch[T]) *gatherer[T] {
	base := redisx.Key(b.c.opt.Prefix, "batch:"+b.opt.Name)
	return &gatherer[T]{b: b, token: lease.NewToken(), handed: make(chan struct{}, 1), ended: make(chan struct{}, 1), loading: map[string]uint64{},
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
	var first time.Time // the earliest Get of the keys
	g.mu.Lock()
	for i, l := range claimed {
		items[i] = item(l)
		g.pending = append(g.pending, l.f)
		if !l.at.IsZero() && (first.IsZero() || l.at.Before(first)) {
			first = l.at
		}
	}
	g.mu.Unlock()
	took, err := g.run(fctx, gatherHandOff, items...)
	if err != nil {
		g.mayHaveTaken(err)
		b.c.stats.redisErrors.Add(1)
		b.c.log("handing a batch's keys off to the fleet's gatherer failed; loading them here", "err", err)
		for chunk := range slices.Chunk(claimed, b.opt.MaxSize) {
			wg.Go(func() { b.lead(fctx, chunk, cl, nil, nil, wg) })
		}
		return
	}
	if n, _ := took.(int64); n == 1 {
		// The lease was free, and is this server's now: as a pop that
		// takes it anew, the next pop takes over the loading list a
		// gatherer whose lease ran out may have left.
		g.mu.Lock()
		g.tookLease = true
		g.mu.Unlock()
	}
	g.wake(first)
	// Held by the claims' tokens, now the gatherer's to settle: each flight
	// waits for its key with a token of its own, and keeps the claim's
	// lease until then (a key may wait in the queue while a batch loads,
	// longer than the lease), as the gatherer does once it popped the
	// key. The leases are renewed together: the keys of a hand-off of
	// thousands cost one call per renewal.
	keepers := b.c.keepClaims(claimed, nil)
	names := make([]string, len(claimed))
	for i, l := range claimed {
		names[i] = items[i].(string)
		l.claimKeeper = keepers[i]
	}
	g.watch(names, claimed)
	for _, l := range claimed {
		l.r = claimReply{state: held, pttl: b.c.opt.LockTTL, holder: l.token}
		l.token = lease.NewToken()
		l.handedOff = true
	}
	b.awaitHeld(fctx, claimed, cl, wg)
}

// wake makes sure the gather loop runs, and pops within a Window of first,
// the earliest Get of the keys handed off (zero: now).
func (g *gatherer[T]) wake(first time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if first.IsZero() {
		first = time.Now()
	}
	if g.first.IsZero() || first.Before(g.first) {
		g.first = first
	}
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

// held reports whether the gatherer surely still holds its lease, and has
// held it without a break since it popped items: their loader may be
// called.
func (g *gatherer[T]) held(items []string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, s := range items {
		if term, ok := g.loading[s]; !ok || term != g.term {
			return false
		}
	}
	// A margin for the call to reach the upstream.
	return time.Until(g.leaseEnd) >= g.lease()/3
}

// load loads and settles the keys of items, one loader call, then takes
// them off the loading list. Recovered items (a gatherer that died popped
// them) are loaded only if their lock still holds their claim's token: a
// key its first gatherer settled is not loaded again. The items were
// popped by a reply that came at replied: the time until the loader call
// is a sample of the gatherer's setup, unless a budget's slot came between.
func (g *gatherer[T]) load(items []string, recovered bool, replied time.Time) {
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
			if !l.r.now.Before(chunk[i].r.now) {
				chunk[i] = l
			}
			continue
		}
		byKey[l.key] = len(chunk)
		chunk = append(chunk, l)
	}
	if recovered {
		if held, err := g.stillClaimed(fctx, chunk); err == nil {
			chunk = held
		} // else all: the settle checks each token anyway
	}
	timed := !recovered && c.budget(fctx) == nil
	around := func(call func() (any, error)) (any, error) {
		if !g.held(items) {
			return nil, errAbandoned
		}
		if timed {
			g.sample(&g.setup, time.Since(replied))
		}
		return call()
	}
	abandoned := false
	// parts counts the parts whose loads began, of last (several only
	// when recovered).
	parts, last := 0, (len(chunk)+b.opt.MaxSize-1)/b.opt.MaxSize
	// However the batch ends (a loader's runtime.Goexit unwinds this
	// goroutine, lead having settled its keys as failures), its items are
	// no longer this server's loads.
	defer func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, s := range items {
			delete(g.loading, s)
		}
		if abandoned || parts < last {
			// Abandoned, or unwound (a loader's runtime.Goexit) before
			// its last part began: left on the loading list, for the
			// next gatherer, which loads those still claimed; this
			// server's to load again should it hold the lease, which its
			// next pop looks at.
			g.resync = true
			return
		}
		// Taken off the loading list by the loop's next call: a call sent
		// now would reach Redis as the batch's values reach the fleet's
		// waiters, and hold some of them up (see gatherer.loop).
		g.settled = append(g.settled, items...)
	}()
	var wg sync.WaitGroup
	for part := range slices.Chunk(chunk, b.opt.MaxSize) {
		parts++
		abandoned = b.lead(fctx, part, b.callOptions(), nil, around, &wg) || abandoned
	}
	wg.Wait()
}

// takeSettled returns args followed by the items settled and not yet
// taken off the loading list, and those items, which are the call's that
// carries them from now on: two calls (a loop's last and the next loop's
// first) never send, nor forget, each other's. A call that fails gives
// them back (putBack). g.mu must be held.
func (g *gatherer[T]) takeSettled(args ...any) ([]any, []string) {
	items := g.settled
	g.settled = nil
	for _, s := range items {
		args = append(args, s)
	}
	return args, items
}

// putBack returns items taken by a call that failed, for the next call.
// g.mu must be held.
func (g *gatherer[T]) putBack(items []string) {
	g.settled = append(items, g.settled...)
}

// stillClaimed returns the looks of chunk whose lock still holds their
// claim's token, in one pipelined round trip; an error if one lock could
// not be read.
func (g *gatherer[T]) stillClaimed(ctx context.Context, chunk []*batchLook) ([]*batchLook, error) {
	held, err := g.claimsHeld(ctx, chunk)
	var out []*batchLook
	for i, l := range chunk {
		if err[i] != nil {
			return nil, err[i]
		}
		if held[i] {
			out = append(out, l)
		}
	}
	return out, nil
}

// claimsHeld reads the lock of each look of chunk in one pipelined round
// trip: held[i] tells whether chunk[i]'s still holds its claim's token,
// unless err[i] says it could not be read.
func (g *gatherer[T]) claimsHeld(ctx context.Context, chunk []*batchLook) (held []bool, err []error) {
	c := g.b.c
	held, err = make([]bool, len(chunk)), make([]error, len(chunk))
	cmds, rerr := redisx.Run(ctx, c.rdb, func(ctx context.Context) ([]*redis.StringCmd, error) {
		pipe := c.rdb.Redis().Pipeline()
		cmds := make([]*redis.StringCmd, len(chunk))
		for i, l := range chunk {
			cmds[i] = pipe.Get(ctx, l.ks.lock)
		}
		_, _ = pipe.Exec(ctx) // each command carries its own reply
		return cmds, nil
	}, nil)
	for i, l := range chunk {
		switch {
		case rerr != nil:
			err[i] = rerr
		case cmds[i].Err() != nil && !errors.Is(cmds[i].Err(), redis.Nil):
			err[i] = cmds[i].Err()
		default:
			held[i] = cmds[i].Val() == l.token
		}
	}
	return held, err
}
