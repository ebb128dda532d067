package fill

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestGatherAhead: a pop is sent a moving average of its round trips and
// a quarter more ahead of when it is due, never more than a quarter of the
// Window, and not at all before the first pop; one pop held up by a pause
// moves the average little, and it comes back within a few pops.
func TestGatherAhead(t *testing.T) {
	g := &gatherer[string]{b: &batch[string]{opt: BatchOptions{Window: 8 * time.Millisecond}}}
	if d := g.ahead(); d != 0 {
		t.Fatalf("ahead before any pop: %v; want 0", d)
	}
	g.sample(&g.popRTT, 400*time.Microsecond)
	if d := g.ahead(); d != 500*time.Microsecond {
		t.Errorf("ahead after a 400µs pop: %v; want 500µs", d)
	}
	g.sample(&g.popRTT, 800*time.Microsecond) // average (3×400 + 800) / 4 = 500
	if d := g.ahead(); d != 625*time.Microsecond {
		t.Errorf("ahead after pops of 400µs, 800µs: %v; want 625µs", d)
	}
	g.sample(&g.popRTT, 5*time.Second) // a pause, counted as 2ms: (3×500 + 2000) / 4 = 875
	if d := g.ahead(); d != 875*time.Microsecond*5/4 {
		t.Errorf("ahead after a 5s pop: %v; want %v", d, 875*time.Microsecond*5/4)
	}
	for range 8 {
		g.sample(&g.popRTT, 400*time.Microsecond)
	}
	if d := g.ahead(); d > 600*time.Microsecond {
		t.Errorf("ahead 8 pops of 400µs after the pause: %v; want it back under 600µs", d)
	}
	for range 8 {
		g.sample(&g.popRTT, time.Hour)
	}
	if d := g.ahead(); d != 2*time.Millisecond {
		t.Errorf("ahead after pops of an hour: %v; want the cap, 2ms", d)
	}
}

// TestGatherPopCountsFromDue: a pop sent ahead counts as made when it was
// due, ahead after it was sent: the next pop, a Window after the last,
// keeps a whole Window from it rather than one less ahead.
func TestGatherPopCountsFromDue(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := New(rdb, nil)
	defer c.Close()
	load := func(_ context.Context, keys []string) (map[string]string, error) {
		m := map[string]string{}
		for _, k := range keys {
			m[k] = "v"
		}
		return m, nil
	}
	bt := NewBatcher(c, load, &BatchOptions{Window: 8 * time.Millisecond, FleetWide: true, Name: "due"})
	g := bt.b.fleet
	g.sample(&g.popRTT, time.Millisecond) // ahead 1.25ms
	ctx := context.Background()
	if _, err := g.run(ctx, gatherHandOff, "token 1 k"); err != nil {
		t.Fatal(err)
	}
	ls := &gatherLoop{}
	before := time.Now()
	g.pop(ctx, ls)
	after := time.Now()
	ls.batches.Wait()
	ahead := 1250 * time.Microsecond
	if ls.lastPop.Before(before.Add(ahead)) || ls.lastPop.After(after.Add(ahead)) {
		t.Errorf("last pop at %v after the call; want %v (ahead) to %v", ls.lastPop.Sub(before), ahead, after.Add(ahead).Sub(before))
	}
}

// TestGatherSetup: the time from a pop's reply to its batch's loader call
// counts in how far ahead pops are sent, measured only without a budget
// (with one, the wait for the call's slot is the budget's, not setup).
func TestGatherSetup(t *testing.T) {
	_, rdb := redistest.Mini(t)
	load := func(_ context.Context, keys []string) (map[string]string, error) {
		m := map[string]string{}
		for _, k := range keys {
			m[k] = "v"
		}
		return m, nil
	}
	window := 8 * time.Millisecond
	for _, withBudget := range []bool{false, true} {
		var opt *Options
		if withBudget {
			bud := budget.New(rdb, "setup", budget.Limit{Rate: 1000}, nil)
			defer bud.Close()
			opt = &Options{Budget: bud}
		}
		c := New(rdb, opt)
		defer c.Close()
		name := fmt.Sprintf("setup-%v", withBudget)
		g := NewBatcher(c, load, &BatchOptions{Window: window, FleetWide: true, Name: name}).b.fleet
		ctx := context.Background()
		key, tok := "k-"+name, lease.NewToken()
		if err := rdb.Set(ctx, c.keyset(key).lock, tok, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := g.run(ctx, gatherHandOff, tok+" 1 "+key); err != nil {
			t.Fatal(err)
		}
		ls := &gatherLoop{}
		g.pop(ctx, ls)
		ls.batches.Wait()
		rtt, setup := time.Duration(g.popRTT.Load()), time.Duration(g.setup.Load())
		switch {
		case withBudget && setup != 0:
			t.Errorf("with a budget: setup %v; want none measured", setup)
		case !withBudget && (setup <= 0 || setup > window/4):
			t.Errorf("setup %v; want more than 0, at most a quarter of the Window", setup)
		}
		if want := min(rtt+rtt/4+setup, window/4); g.ahead() != want {
			t.Errorf("ahead %v; want the round trip %v and a quarter, and the setup %v: %v", g.ahead(), rtt, setup, want)
		}
		if v, err := rdb.Get(ctx, c.keyset(key).value).Result(); err != nil || v == "" {
			t.Errorf("the key's value after the batch: %q, %v; want it stored", v, err)
		}
	}
}

// handGatherer returns the gatherer of a FleetWide Batcher named "n" (its
// loader finds nothing, MaxSize 1) on a new Cache on rdb with opt, for a
// test to drive by hand.
func handGatherer(t *testing.T, rdb redis.UniversalClient, opt *Options) (*Cache, *gatherer[string]) {
	c := New(rdb, opt)
	t.Cleanup(func() { _ = c.Close() })
	bt := NewBatcher(c, func(context.Context, []string) (map[string]string, error) { return nil, nil },
		&BatchOptions{FleetWide: true, Name: "n", MaxSize: 1})
	return c, bt.b.fleet
}

// TestGatherSettledTakenOff: the items a gatherer's batches settled come
// off the fleet's loading list with its next call of the gather script,
// whichever it is: a pop, the quit of a leader whose queue is empty, the
// end of a loop that lost the lease, the resign at Close (which releases
// the lease too). Left there, they
// would keep the lease from ever being released (quit waits for an empty
// loading list) until the list expired.
func TestGatherSettledTakenOff(t *testing.T) {
	ends := map[string]func(ctx context.Context, g *gatherer[string]){
		"pop": func(ctx context.Context, g *gatherer[string]) {
			g.pop(ctx, &gatherLoop{})
		},
		"quit": func(ctx context.Context, g *gatherer[string]) {
			if !g.stop(ctx, true) {
				t.Error("the leader did not quit")
			}
		},
		"lost lease": func(ctx context.Context, g *gatherer[string]) {
			if !g.stop(ctx, false) {
				t.Error("the loop did not end")
			}
			g.finish(ctx, &gatherLoop{})
		},
		"closed": func(ctx context.Context, g *gatherer[string]) {
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			g.stop(cctx, false)
			g.finish(cctx, &gatherLoop{})
			if n, _ := g.b.c.rdb.Redis().Exists(ctx, g.keys[0]).Result(); n != 0 {
				t.Error("the lease is still held after Close")
			}
		},
	}
	for name, end := range ends {
		t.Run(name, func(t *testing.T) {
			_, rdb := redistest.Mini(t)
			_, g := handGatherer(t, rdb, nil)
			ctx := context.Background()
			settled, other := "tok1 1 a", "tok2 1 b"
			if err := rdb.SAdd(ctx, g.keys[2], settled, other).Err(); err != nil {
				t.Fatal(err)
			}
			if name != "lost lease" {
				if err := rdb.Set(ctx, g.keys[0], g.token, time.Minute).Err(); err != nil {
					t.Fatal(err)
				}
			}
			if name == "quit" {
				if err := rdb.SRem(ctx, g.keys[2], other).Err(); err != nil {
					t.Fatal(err)
				}
			}
			g.settled = []string{settled}
			end(ctx, g)
			left, err := rdb.SMembers(ctx, g.keys[2]).Result()
			if err != nil {
				t.Fatal(err)
			}
			if slices.Contains(left, settled) {
				t.Errorf("the settled item is still on the loading list: %q", left)
			}
			if name != "quit" && !slices.Contains(left, other) {
				t.Errorf("an item not settled was taken off the loading list: %q", left)
			}
			if len(g.settled) != 0 {
				t.Errorf("%d settled items still to send", len(g.settled))
			}
		})
	}
}

// TestGatherCloseMidBatch: a Close while the gatherer's batch loads leaves
// nothing on the fleet's loading list once Close returns: the batch ends
// (its loader's ctx ends with the Cache), is settled, and its items come
// off the list after the lease is resigned.
func TestGatherCloseMidBatch(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := New(rdb, nil)
	called := make(chan struct{})
	var once sync.Once
	load := func(ctx context.Context, keys []string) (map[string]string, error) {
		// Called again, its ctx ended, by a Get that claims the key once
		// the batch failed as the Cache closed.
		once.Do(func() { close(called) })
		<-ctx.Done()
		return nil, ctx.Err()
	}
	bt := NewBatcher(c, load, &BatchOptions{FleetWide: true, Name: "n", Window: time.Millisecond})
	got := make(chan error, 1)
	go func() {
		_, err := bt.Get(context.Background(), "k")
		got <- err
	}()
	select {
	case <-called:
	case <-time.After(10 * time.Second):
		t.Fatal("the loader was not called within 10s")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err == nil {
		t.Error("Get succeeded; want the Close's error")
	}
	g := bt.b.fleet
	n, err := rdb.Exists(context.Background(), g.keys[0], g.keys[2]).Result()
	if err != nil || n != 0 {
		t.Errorf("after Close: %d of the lease and the loading list left, %v; want none", n, err)
	}
}

// TestGatherPopKeepsListsAlive: every pop, the gatherer's or a waiting
// server's that finds another gathering, renews the queue's and the loading
// list's life: keys queued behind a batch that loads longer than they would
// live untouched (LockTTL + the lease) are not lost with them, their Gets
// waiting for LoadTimeout.
func TestGatherPopKeepsListsAlive(t *testing.T) {
	for _, leader := range []bool{true, false} {
		t.Run(fmt.Sprintf("leader=%v", leader), func(t *testing.T) {
			_, rdb := redistest.Mini(t)
			c, g := handGatherer(t, rdb, &Options{LockTTL: time.Second})
			ctx := context.Background()
			holder := g.token
			if !leader {
				holder = "another"
			}
			if err := rdb.Set(ctx, g.keys[0], holder, time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
			// Two queued (one is popped), two loading, each about to go.
			if err := rdb.ZAdd(ctx, g.keys[1], redis.Z{Score: 1, Member: "tok 1 a"}, redis.Z{Score: 1, Member: "tok 1 b"}).Err(); err != nil {
				t.Fatal(err)
			}
			if err := rdb.SAdd(ctx, g.keys[2], "tok 1 a", "tok 1 b").Err(); err != nil {
				t.Fatal(err)
			}
			for _, k := range g.keys[1:] {
				if err := rdb.PExpire(ctx, k, 50*time.Millisecond).Err(); err != nil {
					t.Fatal(err)
				}
			}
			ls := &gatherLoop{}
			g.pop(ctx, ls)
			ls.batches.Wait()
			want := c.opt.LockTTL + g.lease() - time.Second
			for _, k := range g.keys[1:] {
				if d := rdb.PTTL(ctx, k).Val(); d < want {
					t.Errorf("%s lives %v more after a pop; want about LockTTL + the lease, %v", k, d, c.opt.LockTTL+g.lease())
				}
			}
		})
	}
}

// TestGatherSettledOwnedByCall: a loop's last call and the next loop's
// pop, in flight together (a loop ends as another starts: a failed pop,
// a lease lost), each send the settled items they took, and forget only
// those: none is sent by neither, and the pop's reply does not drop items
// the other sent (it once dropped them by position, and panicked holding
// the gatherer's lock when they were gone: the Batcher hung for good).
func TestGatherSettledOwnedByCall(t *testing.T) {
	_, rdb := redistest.Mini(t)
	items := []string{"tok1 1 a", "tok2 1 b", "tok3 1 c"}
	hook := redistest.NewHoldScript(items[0]) // the pop that carries it
	rdb.AddHook(hook)
	_, g := handGatherer(t, rdb, nil)
	ctx := context.Background()
	if err := rdb.SAdd(ctx, g.keys[2], items).Err(); err != nil {
		t.Fatal(err)
	}
	// Another server gathers now: the pop loads nothing.
	if err := rdb.Set(ctx, g.keys[0], "another", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	g.settled = []string{items[0]}
	popped := make(chan struct{})
	go func() {
		defer close(popped)
		g.pop(ctx, &gatherLoop{})
	}()
	<-hook.Held
	// The other loop's batch ends, and that loop's last call goes, while
	// the pop is on its way.
	g.mu.Lock()
	g.settled = append(g.settled, items[1])
	g.mu.Unlock()
	g.finish(ctx, &gatherLoop{})
	g.mu.Lock()
	g.settled = append(g.settled, items[2]) // settled after finish's call
	g.mu.Unlock()
	close(hook.Release)
	<-popped
	left := rdb.SMembers(ctx, g.keys[2]).Val()
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(left) != 1 || left[0] != items[2] || !slices.Equal(g.settled, items[2:]) {
		t.Errorf("loading list %q, still to send %q; want %q on both", left, g.settled, items[2:])
	}
}

// TestGatherAfterBatchNotPrecise: the pop that follows a batch's end (a
// round trip after it, its load having outlasted the Window) waits on the
// Go timer alone: the fine timer blocks a thread, and spins a CPU at its
// end, as the batch's values reach the fleet's waiters on the same host.
// So do the pops made while a batch loads, which take full batches only:
// on the fine timer, a gatherer spun a CPU every Window for as long as a
// batch loaded. The pop due a Window after a Get sleeps on it.
func TestGatherAfterBatchNotPrecise(t *testing.T) {
	sleeps := countFineSleeps(t)
	_, rdb := redistest.Mini(t)
	pops := &gatherPops{}
	rdb.AddHook(pops)
	c := New(rdb, nil)
	defer c.Close()
	loading, release := make(chan struct{}), make(chan struct{})
	load := func(_ context.Context, keys []string) (map[string]string, error) {
		close(loading)
		<-release
		m := map[string]string{}
		for _, k := range keys {
			m[k] = "v:" + k
		}
		return m, nil
	}
	// A long Window: the pop due a Window after the last stays far off
	// while the batch ends and the pop after it is made.
	bt := NewBatcher(c, load, &BatchOptions{Window: 100 * time.Millisecond, FleetWide: true, Name: "precise"})
	got := make(chan error, 1)
	go func() {
		v, err := bt.Get(context.Background(), "k")
		if err == nil && v != "v:k" {
			err = fmt.Errorf("got %q", v)
		}
		got <- err
	}()
	<-loading // popped by the first pop, a Window after the Get
	// The second, a Window later, pops full batches only while the batch
	// loads: it replied before the batch ends.
	redistest.WaitFor(t, "a pop during the load", func() bool { return pops.n.Load() == 2 })
	close(release)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	g := bt.b.fleet
	// The third follows the batch's end: it takes the batch off the
	// loading list, finds the queue empty, and resigns; the loop ends.
	redistest.WaitFor(t, "the gather loop to end", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return !g.running
	})
	if n, err := rdb.Exists(context.Background(), g.keys...).Result(); err != nil || n != 0 {
		t.Fatalf("%d of the lease, queue and loading list left (%v); want none once the loop ended", n, err)
	}
	if n := pops.n.Load(); n != 3 {
		t.Fatalf("%d pops; want 3: the first, one during the load, one after it", n)
	}
	if n := sleeps.Load(); n != 1 {
		t.Errorf("%d pops slept on the fine timer; want 1, the first, due a Window after the Get", n)
	}
}

// gatherPops counts the pops of the gather script that got a reply.
type gatherPops struct{ n atomic.Int32 }

func (h *gatherPops) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *gatherPops) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		args := cmd.Args()
		if len(args) > 9 && (args[1] == gatherScript.Hash() || args[1] == gatherLua) && args[9] == gatherPop && err == nil {
			h.n.Add(1)
		}
		return err
	}
}
func (h *gatherPops) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestGatherRecoveredGoexit: a recovered batch larger than MaxSize (a
// gatherer took over a loading list) is loaded in parts; a loader that
// calls runtime.Goexit in the first ends the batch there. Its items stay
// on the loading list, for the next pop to look at again: those of the
// parts not loaded are still claimed, and loaded then. They were all taken
// off the list, as if settled: nobody loaded the keys of the later parts.
func TestGatherRecoveredGoexit(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := New(rdb, nil)
	t.Cleanup(func() { _ = c.Close() })
	var calls atomic.Int32
	bt := NewBatcher(c, func(context.Context, []string) (map[string]string, error) {
		calls.Add(1)
		runtime.Goexit()
		return nil, nil
	}, &BatchOptions{FleetWide: true, Name: "n", MaxSize: 1})
	g := bt.b.fleet
	items := []string{"tok1 1 a", "tok2 1 b"}
	recoveredBy(t, g, map[string]string{"a": "tok1", "b": "tok2"}, items)
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.load(items, true, time.Now())
	}()
	<-done
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d loader calls; want 1, ended by Goexit", n)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.settled) != 0 || !g.resync {
		t.Errorf("after Goexit in the first part: settled %q, resync %v; want none settled, the list looked at again", g.settled, g.resync)
	}
}

// TestGatherHandOffTookLeaseDuringPop: a hand-off that takes the lease
// anew (it had run out: a pause) while a pop is on its way leaves that pop
// renewing a lease that had a break, before or after it. No batch popped
// before is surely the gatherer's any more (a successor may have taken it
// over): none calls its loader until the next pop, which counts as taking
// the lease anew and asks for the loading list. They went ahead: the pop
// renewed the lease as if it had been held all along. A pop that found
// another server gathering leaves the hand-off's news for the next pop
// too.
func TestGatherHandOffTookLeaseDuringPop(t *testing.T) {
	for _, holder := range []string{"this server", "another"} {
		t.Run(holder, func(t *testing.T) {
			_, rdb := redistest.Mini(t)
			_, g := handGatherer(t, rdb, nil)
			ctx := context.Background()
			old := "tok 1 a"
			g.mu.Lock()
			g.loading[old] = g.term
			g.leaseEnd = time.Now().Add(-time.Second) // ran out
			g.mu.Unlock()
			rdb.AddHook(beforePop(func() {
				// The lease as the pop finds it (the hand-off's script
				// took it, or another server did), and the hand-off's
				// reply read as the pop goes.
				token := g.token
				if holder == "another" {
					token = "another"
				}
				if err := rdb.Set(ctx, g.keys[0], token, time.Minute).Err(); err != nil {
					t.Error(err)
				}
				g.mu.Lock()
				g.tookLease = true
				g.mu.Unlock()
			}))
			g.pop(ctx, &gatherLoop{})
			if g.held([]string{old}) {
				t.Error("a batch popped before the lease's break may still call its loader")
			}
			g.mu.Lock()
			defer g.mu.Unlock()
			if !g.tookLease {
				t.Error("the hand-off's new lease was forgotten: the next pop does not count as taking it anew")
			}
		})
	}
}

// beforePop runs fn before each pop of the gather script.
type beforePop func()

func (h beforePop) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h beforePop) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if args := cmd.Args(); len(args) > 9 && (args[1] == gatherScript.Hash() || args[1] == gatherLua) && args[9] == gatherPop {
			h()
		}
		return next(ctx, cmd)
	}
}
func (h beforePop) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestGatherPreciseAfterQuickBatch: a pop is precise unless, when it is
// due, a batch still loads (it takes full batches only then): in steady
// traffic, where each batch ends before the next pop, the pop of the keys
// handed off meanwhile sleeps its last stretch on the fine timer. Decided
// as the loop re-armed its timer, just after a pop had started its batch,
// every pop but the first after idle went on the Go timer, up to a
// millisecond late, holding back every Get of its batch.
func TestGatherPreciseAfterQuickBatch(t *testing.T) {
	sleeps := countFineSleeps(t)
	_, rdb := redistest.Mini(t)
	c := New(rdb, nil)
	defer c.Close()
	load := func(_ context.Context, keys []string) (map[string]string, error) {
		m := map[string]string{}
		for _, k := range keys {
			m[k] = "v:" + k
		}
		return m, nil
	}
	bt := NewBatcher(c, load, &BatchOptions{Window: 50 * time.Millisecond, FleetWide: true, Name: "steady"})
	ctx := redistest.Context(t, 10*time.Second)
	// Each Get is handed off within a Window of the last pop, whose batch
	// has ended by then.
	keys := []string{"a", "b", "c", "d", "e", "f"}
	for _, key := range keys {
		if v, err := bt.Get(ctx, key); err != nil || v != "v:"+key {
			t.Fatalf("Get(%s): %q, %v", key, v, err)
		}
	}
	if n := sleeps.Load(); n < int32(len(keys)) {
		t.Errorf("%d pops slept on the fine timer; want every one that popped a key, %d", n, len(keys))
	}
}

// TestGatherTakeBack: of the keys a server handed off and waits for, those
// whose items are queued or loading are left to the gatherer, however long
// they wait. One whose item is in neither (lost) and whose lock its claim
// still holds is queued again; lost a second time, it is taken back: its
// lease is no longer kept, and its lock released. One whose lock its claim
// no longer holds (settled meanwhile) is only forgotten.
func TestGatherTakeBack(t *testing.T) {
	rdb, c, g := otherGathers(t)
	ctx := context.Background()
	where := map[string]string{"queued": "tq 1 q", "loading": "tl 1 l", "lost": "tx 1 x", "settled": "ts 1 s", "unreadable": "tu 1 u"}
	if err := rdb.ZAdd(ctx, g.keys[1], redis.Z{Score: 1, Member: where["queued"]}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.SAdd(ctx, g.keys[2], where["loading"]).Err(); err != nil {
		t.Fatal(err)
	}
	var items []string
	g.mu.Lock()
	g.waiting = map[string]handedKey{}
	for name, s := range where {
		l, _ := g.parseItem(s)
		switch name {
		case "settled":
		case "unreadable": // GET fails: WRONGTYPE
			if err := rdb.RPush(ctx, l.ks.lock, l.token).Err(); err != nil {
				t.Fatal(err)
			}
		default:
			if err := rdb.Set(ctx, l.ks.lock, l.token, time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
		}
		k := lease.Keep(c.rdb, l.ks.lock, l.token, time.Minute, time.Now(), nil)
		t.Cleanup(func() { _ = k.Stop() })
		g.waiting[s] = handedKey{ks: l.ks, token: l.token, keeper: k}
		items = append(items, s)
	}
	g.mu.Unlock()
	check := func(when string, want map[string][2]bool) {
		t.Helper()
		for name, s := range where {
			l, _ := g.parseItem(s)
			held := rdb.Get(ctx, l.ks.lock).Val() == l.token
			g.mu.Lock()
			_, waits := g.waiting[s]
			g.mu.Unlock()
			if w := want[name]; held != w[0] || waits != w[1] {
				t.Errorf("%s, %s: lock held %v, still awaited %v; want %v, %v", when, name, held, waits, w[0], w[1])
			}
		}
	}
	g.takeBack(ctx, items)
	// A lock that could not be read leaves its key awaited, to be looked
	// at again, and holds up no other.
	check("first audit", map[string][2]bool{"queued": {true, true}, "loading": {true, true}, "lost": {true, true}, "unreadable": {false, true}})
	if err := rdb.ZScore(ctx, g.keys[1], where["lost"]).Err(); err != nil {
		t.Errorf("the lost key was not queued again: %v", err)
	}
	// Lost again.
	if err := rdb.ZRem(ctx, g.keys[1], where["lost"]).Err(); err != nil {
		t.Fatal(err)
	}
	g.takeBack(ctx, []string{where["queued"], where["loading"], where["lost"]})
	check("second audit", map[string][2]bool{"queued": {true, true}, "loading": {true, true}, "unreadable": {false, true}})
}

// TestGatherQueueAgainMayHaveRun: a key queued again by a hand-off whose
// reply was lost (it may have run) is not taken back: released, it would
// be loaded by its waiters and, queued after all, by the gatherer too. It
// waits for the next audit; and the next pop counts as taking the lease
// anew, which that hand-off may have done.
func TestGatherQueueAgainMayHaveRun(t *testing.T) {
	rdb, c, g := otherGathers(t)
	ctx := context.Background()
	item := "tx 1 x"
	l, _ := g.parseItem(item)
	if err := rdb.Set(ctx, l.ks.lock, l.token, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	k := lease.Keep(c.rdb, l.ks.lock, l.token, time.Minute, time.Now(), nil)
	t.Cleanup(func() { _ = k.Stop() })
	g.mu.Lock()
	g.waiting = map[string]handedKey{item: {ks: l.ks, token: l.token, keeper: k}}
	g.mu.Unlock()
	rdb.AddHook(lostHandOffReply{})
	g.takeBack(ctx, []string{item})
	if rdb.Get(ctx, l.ks.lock).Val() != l.token {
		t.Error("the lock was released")
	}
	if err := rdb.ZScore(ctx, g.keys[1], item).Err(); err != nil {
		t.Errorf("not queued: %v", err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if h, ok := g.waiting[item]; !ok || h.again {
		t.Errorf("awaited %v, queued again once %v; want awaited, to be looked at again as at first", ok, h.again)
	}
	if !g.tookLease {
		t.Error("the next pop does not count as taking the lease anew")
	}
}

// lostHandOffReply makes every hand-off of the gather script fail as a
// reply lost after it ran.
type lostHandOffReply struct{}

func (lostHandOffReply) DialHook(next redis.DialHook) redis.DialHook { return next }
func (lostHandOffReply) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if args := cmd.Args(); err == nil && len(args) > 9 && (args[1] == gatherScript.Hash() || args[1] == gatherLua) && args[9] == gatherHandOff {
			err = errors.New("read tcp: i/o timeout")
			cmd.SetErr(err)
		}
		return err
	}
}
func (lostHandOffReply) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestGatherRecoveredSameKey: of two items of one key on a recovered
// loading list (its lock lapsed while it was queued, and it was claimed
// again), the later claim's is loaded, in whatever order the list gives
// them (a set's order is Redis's).
func TestGatherRecoveredSameKey(t *testing.T) {
	for _, order := range [][]string{{"early 1 a", "late 2 a"}, {"late 2 a", "early 1 a"}} {
		t.Run(order[0], func(t *testing.T) {
			_, rdb := redistest.Mini(t)
			c := New(rdb, nil)
			t.Cleanup(func() { _ = c.Close() })
			var loaded atomic.Int32
			bt := NewBatcher(c, func(_ context.Context, keys []string) (map[string]string, error) {
				loaded.Add(int32(len(keys)))
				return map[string]string{"a": "v:a"}, nil
			}, &BatchOptions{FleetWide: true, Name: "n"})
			g := bt.b.fleet
			ctx := context.Background()
			recoveredBy(t, g, map[string]string{"a": "late"}, order)
			g.load(order, true, time.Now())
			if n := loaded.Load(); n != 1 {
				t.Errorf("%d keys loaded; want a, once, under the later claim", n)
			}
			if v := rdb.Get(ctx, lease.LockKey(DefaultPrefix, "a")+":value").Val(); v == "" {
				t.Error("no value stored under the later claim")
			}
		})
	}
}

// recoveredBy makes items g's recovered batch, its lease held: the lock of
// each key of locks held by its token, each item on g's loading list in
// its current term.
func recoveredBy(t *testing.T, g *gatherer[string], locks map[string]string, items []string) {
	t.Helper()
	for key, token := range locks {
		if err := g.b.c.rdb.Redis().Set(context.Background(), lease.LockKey(DefaultPrefix, key), token, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, s := range items {
		g.loading[s] = g.term
	}
	g.leaseEnd = time.Now().Add(time.Minute)
}

// countFineSleeps counts the gather loops' sleeps on the fine timer (each
// slept on the Go timer instead) until t ends.
func countFineSleeps(t *testing.T) *atomic.Int32 {
	var sleeps atomic.Int32
	saved := fineSleep
	t.Cleanup(func() { fineSleep = saved })
	fineSleep = func(deadline time.Time) {
		sleeps.Add(1)
		time.Sleep(time.Until(deadline))
	}
	return &sleeps
}

// otherGathers returns a server's gatherer on miniredis while another
// server holds the gatherer's lease: it pops nothing.
func otherGathers(t *testing.T) (*redis.Client, *Cache, *gatherer[string]) {
	_, rdb := redistest.Mini(t)
	c, g := handGatherer(t, rdb, nil)
	if err := rdb.Set(context.Background(), g.keys[0], "another", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	return rdb, c, g
}
