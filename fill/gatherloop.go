package fill

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/locksmith-go/locksmith/internal/fine"
	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/redisx"
)

// The gather loop of a FleetWide Batcher's server (see gather.go): while
// keys it handed off wait, it pops the fleet's batches as the gatherer, or
// watches the lease of the server that gathers, to take over should that
// one die.

// gathered is the gather script's reply to a pop.
type gathered struct {
	leader            bool
	fresh             bool          // the lease was taken anew, not renewed
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
	if ok && len(a) == 4 {
		p, ok1 := a[1].([]any)
		r, ok2 := a[2].([]any)
		fresh, ok3 := a[3].(int64)
		if ok1 && ok2 && ok3 {
			out := gathered{leader: true, fresh: fresh == 1}
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
// lease once the last batch ended.
func (g *gatherer[T]) loop() {
	c, opt := g.b.c, g.b.opt
	defer c.wg.Done()
	ctx := c.base
	ls := &gatherLoop{}
	defer g.finish(ctx, ls)
	// A pop is sent its round trip ahead of when it is due (g.ahead), so
	// that the batch's loader is called as its Window ends rather than a
	// round trip later. The timer fires fine.Window before that, and the
	// rest is slept on the fine timer: a pop a Go timer wakes up to a
	// millisecond late would hold every Get of its batch that much longer.
	// A pop that only has to come after something (a batch's end), or
	// that pops only a full batch (see gatherLoop.fullOnly), is not
	// precise: it sleeps on the Go timer alone, since the fine timer
	// blocks a thread, and spins a CPU at its end, just as the batch's
	// values are handed out.
	precise := true
	early := func(at time.Time) time.Duration {
		if !precise {
			return max(0, time.Until(at)-g.ahead())
		}
		return max(0, time.Until(at)-g.ahead()-fine.Window)
	}
	due := time.Now().Add(opt.Window)
	timer := time.NewTimer(early(due))
	defer timer.Stop()
	// sooner moves the next pop to at, if at comes first; exact: the pop
	// must not come late (see precise).
	sooner := func(at time.Time, exact bool) {
		if at.Before(due) && timer.Stop() {
			due, precise = at, exact
			timer.Reset(early(at))
		}
	}
	for {
		select {
		case <-ctx.Done():
			g.stop(ctx, false)
			return
		case <-g.handed:
			// Pop within a Window of the first Get of the keys handed off
			// here (their hand-off overlaps the Window), rather than
			// after another gatherer's lease; never within a Window of
			// the last pop, nor within the hand-off window (or Window, if
			// shorter) of now: the keys other servers missed at the same
			// time are handed off about now too.
			at := g.firstHanded().Add(opt.Window)
			if soonest := time.Now().Add(min(opt.Window, handOffWindow)); at.Before(soonest) {
				at = soonest
			}
			if next := ls.lastPop.Add(opt.Window); at.Before(next) {
				at = next
			}
			sooner(at, true)
			continue
		case <-g.ended:
			// A batch ended: the keys queued while it loaded go now (a
			// Window after the last pop at the earliest), and its items
			// come off the loading list; a round trip after it ended at
			// the earliest: its values are on their way to the fleet's
			// waiters, this server's among them, and a call sent at once
			// would be handled beside them, by this server's CPUs and by
			// Redis's, and hold some up.
			at, exact := ls.lastPop.Add(opt.Window), true
			if soonest := time.Now().Add(g.ahead() + time.Duration(g.popRTT.Load())); at.Before(soonest) {
				at, exact = soonest, false
			}
			sooner(at, exact)
			continue
		case <-timer.C:
		}
		if precise && ls.fullOnly(opt.Window) {
			// A pop that takes only a full batch (a batch loads) need
			// not be precise: keys wait for the load to end anyway. On
			// the fine timer, a loop would block a thread and spin a CPU
			// every Window for as long as a batch loads.
			precise = false
			if d := time.Until(due) - g.ahead(); d > 0 {
				timer.Reset(d)
				continue
			}
		}
		if precise {
			fineSleep(due.Add(-g.ahead()))
		}
		next, done := g.pop(ctx, ls)
		if done {
			return
		}
		due, precise = time.Now().Add(next), true
		timer.Reset(early(due))
	}
}

// fineSleep is fine.Sleep; tests count its calls.
var fineSleep = fine.Sleep

// gatherLoop is the state of a gather loop.
type gatherLoop struct {
	batches  sync.WaitGroup
	inflight atomic.Int32 // batches loading
	took     atomic.Int64 // a batch's load and settle, a moving average, in ns
	lastPop  time.Time    // when the last pop that popped keys was due
	resync   bool         // a pop's reply was lost: ask for the loading list
}

// ahead is how long before it is due a pop is sent: a pop's round trip
// and a quarter more (a round trip after a pause varies, and a pop late by
// its round trip holds its batch back as long), and the setup of its
// batch until the loader call, at most a quarter of the Window. A key
// handed off in that last stretch goes with the next batch.
func (g *gatherer[T]) ahead() time.Duration {
	rtt := time.Duration(g.popRTT.Load())
	return min(rtt+rtt/4+time.Duration(g.setup.Load()), g.b.opt.Window/4)
}

// sample adds d to the moving average avg (popRTT or setup), d taken as at
// most a quarter of the Window: one pop held up by a pause (a stopped
// process, a failover) moves the average by a sixteenth of the Window at
// most, and later pops bring it back within a few Windows.
func (g *gatherer[T]) sample(avg *atomic.Int64, d time.Duration) {
	d = min(d, g.b.opt.Window/4)
	if old := avg.Load(); old != 0 {
		d = (3*time.Duration(old) + d) / 4
	}
	avg.Store(int64(d))
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
	// A pop is due ahead after it is sent (see loop): the next pop counts
	// its Window from then, so that pops sent ahead still keep a Window
	// apart.
	sent, ahead := time.Now(), g.ahead()
	fullOnly, resync := "0", "0"
	if ls.fullOnly(opt.Window) {
		fullOnly = "1"
	}
	g.mu.Lock()
	tookLease := g.tookLease
	if ls.resync || g.resync || tookLease {
		resync = "1"
	}
	args, settled := g.takeSettled(opt.MaxSize, fullOnly, resync)
	g.mu.Unlock()
	v, err := g.run(ctx, gatherPop, args...)
	broke := false
	g.mu.Lock()
	if err != nil {
		g.putBack(settled) // the script, had it run, took them off: sent again, they are not found
	} else {
		// A hand-off that took the lease anew while this pop was on its
		// way leaves tookLease set for the next pop. The lease had a
		// break, before this pop or after it: this pop does not renew
		// it as far as the gatherer knows (see held), so that no batch
		// calls its loader until the next pop, which counts as taking it
		// anew.
		broke = g.tookLease && !tookLease
		g.tookLease = g.tookLease && !tookLease
	}
	g.mu.Unlock()
	var r gathered
	if err == nil {
		r, err = parseGathered(v)
	}
	switch {
	case err != nil:
		c.log("the fleet's gatherer could not reach redis", "err", err)
		ls.resync = ls.resync || redisx.MayHaveRun(err)
		if ls.inflight.Load() > 0 {
			// Batches load: the next pop renews the lease they load
			// under, should it still be this server's, rather than let
			// it run out and another server load them again.
			return min(max(c.opt.PollInterval, opt.Window), g.lease()/8), false
		}
		return max(c.opt.PollInterval, opt.Window), g.stop(ctx, false)
	case !r.leader:
		return max(min(r.pttl+time.Millisecond, g.lease()/8), opt.Window), g.stop(ctx, false)
	}
	replied := time.Now()
	ls.resync = false
	g.sample(&g.popRTT, replied.Sub(sent))
	g.mu.Lock()
	if resync == "1" {
		g.resync = false
	}
	if !broke {
		g.leaseEnd = sent.Add(g.lease())
	}
	if r.fresh || tookLease {
		g.term++
	}
	// Keys this gatherer loads already are not recovered: still on the
	// loading list, they are still its own, in this term.
	r.recovered = slices.DeleteFunc(r.recovered, func(s string) bool {
		_, ok := g.loading[s]
		if ok {
			g.loading[s] = g.term
		}
		return ok
	})
	for _, items := range [][]string{r.recovered, r.popped} {
		for _, s := range items {
			g.loading[s] = g.term
		}
	}
	g.mu.Unlock()
	if len(r.popped) > 0 {
		ls.lastPop = sent.Add(ahead)
	}
	for i, items := range [][]string{r.recovered, r.popped} {
		if len(items) > 0 {
			ls.inflight.Add(1)
			ls.batches.Go(func() {
				defer signal(g.ended)
				defer ls.inflight.Add(-1)
				start := time.Now()
				g.load(items, i == 0, replied)
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

// firstHanded returns the earliest Get of the keys handed off here since
// it was last called, and forgets it.
func (g *gatherer[T]) firstHanded() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	first := g.first
	g.first = time.Time{}
	if first.IsZero() {
		first = time.Now()
	}
	return first
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
		args, settled := g.takeSettled()
		v, err := g.run(ctx, gatherQuit, args...)
		if err != nil {
			g.putBack(settled)
		}
		if n, _ := v.(int64); err != nil || n != 1 {
			return false
		}
	case g.busy():
		return false
	}
	g.running = false
	return true
}

// finish ends a loop once its batches ended: the items they settled come
// off the loading list, and at Close (ctx ended), the lease is resigned,
// however the loop ended (a pop that failed as the Cache closed ends it
// too). A failure is logged: what is left on the list is a successor's to
// look at and drop (its keys are settled), the lease runs out.
func (g *gatherer[T]) finish(ctx context.Context, ls *gatherLoop) {
	ls.batches.Wait()
	mode := gatherDone
	if ctx.Err() != nil {
		mode = gatherResign
	}
	g.mu.Lock()
	args, settled := g.takeSettled()
	g.mu.Unlock()
	if mode == gatherDone && len(settled) == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lease.CleanupTimeout)
	defer cancel()
	if _, err := g.run(cctx, mode, args...); err != nil {
		g.b.c.log("taking settled keys off the fleet's loading list failed", "err", err)
	}
}
