package faults_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/lock"
)

// newCache returns a fill.Cache closed in t.Cleanup.
func newCache(t testing.TB, rdb redis.UniversalClient, opt *fill.Options) *fill.Cache {
	c := fill.New(rdb, opt)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// servers returns n Caches, each on its own client: n app servers.
func servers(t testing.TB, s *redistest.Server, n int, opt *fill.Options) []*fill.Cache {
	cs := make([]*fill.Cache, n)
	for i := range cs {
		cs[i] = newCache(t, s.Client(t, nil), opt)
	}
	return cs
}

func totalLoads(cs ...*fill.Cache) uint64 {
	var n uint64
	for _, c := range cs {
		n += c.Stats().Loads
	}
	return n
}

// waitSubscribed waits until n connections are subscribed to the channel of
// key: callers on other servers are then waiting for its fill.
func waitSubscribed(t testing.TB, ctx context.Context, rdb *redis.Client, key string, n int64) {
	t.Helper()
	ch := lockKey(key)
	waitFor(t, fmt.Sprintf("%d subscribers on %s", n, ch), func() bool {
		m, err := rdb.PubSubNumSub(ctx, ch).Result()
		return err == nil && m[ch] >= n
	})
}

// result is one Get's outcome.
type result struct {
	v     string
	err   error
	panic any
}

// get runs fill.Get on its own goroutine, turning a panic into a result.
func get(ctx context.Context, c *fill.Cache, key string, load func(context.Context) (string, error)) <-chan result {
	ch := make(chan result, 1)
	go func() {
		var r result
		defer func() {
			r.panic = recover()
			ch <- r
		}()
		r.v, r.err = fill.Get(ctx, c, key, load)
	}()
	return ch
}

func await(t testing.TB, what string, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(hangTimeout):
		t.Fatalf("%s did not return within %v", what, hangTimeout)
		return result{}
	}
}

// noLockLeft checks that the fill lock on key is free.
func noLockLeft(t testing.TB, ctx context.Context, rdb *redis.Client, key string) {
	t.Helper()
	l := newLocker(t, rdb, nil)
	lk, err := l.TryObtain(ctx, key)
	if err != nil {
		t.Fatalf("the fill lock on %q is left behind: %v", key, err)
	}
	if err := lk.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// gatedLoader returns a loader that signals started, waits for release (or
// hangTimeout), then finishes with finish. It counts its calls.
type gatedLoader struct {
	started, release chan struct{}
	calls            atomic.Int32
	ctxErr           atomic.Value // the cause of its ctx's end when released, if it had ended
}

func newGate() *gatedLoader {
	return &gatedLoader{started: make(chan struct{}), release: make(chan struct{})}
}

func (g *gatedLoader) load(finish func() (string, error)) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		if g.calls.Add(1) == 1 {
			close(g.started)
		}
		select {
		case <-g.release:
		case <-time.After(hangTimeout):
		}
		if ctx.Err() != nil {
			g.ctxErr.Store(context.Cause(ctx))
		}
		return finish()
	}
}

func (g *gatedLoader) waitStarted(t testing.TB) {
	t.Helper()
	select {
	case <-g.started:
	case <-time.After(hangTimeout):
		t.Fatalf("the loader did not start within %v", hangTimeout)
	}
}

// countingLoader returns v and counts its calls.
func countingLoader(n *atomic.Int32, v string) func(context.Context) (string, error) {
	return func(context.Context) (string, error) {
		n.Add(1)
		return v, nil
	}
}

// TestFillLoaderFailures: the loader panics or fails while callers on the
// same server and on another one wait. The panic is re-raised in every
// caller of the process as a *fill.PanicError; the error reaches every
// caller; the other server gets ErrLoadFailed without loading; nothing is
// cached and no lock is left behind, so the next Get loads again.
func TestFillLoaderFailures(t *testing.T) {
	errBoom := errors.New("upstream is down")
	for _, tc := range []struct {
		name   string
		finish func() (string, error)
	}{
		{"panic", func() (string, error) { panic("boom") }},
		{"error", func() (string, error) { return "", errBoom }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t, testTimeout)
			s := redistest.Start(t, nil)
			direct := s.Client(t, nil)
			cs := servers(t, s, 2, &fill.Options{LockTTL: 2 * time.Second})
			g := newGate()
			var others atomic.Int32
			leader := get(ctx, cs[0], "k", g.load(tc.finish))
			g.waitStarted(t)
			local := get(ctx, cs[0], "k", countingLoader(&others, "local"))
			remote := get(ctx, cs[1], "k", countingLoader(&others, "remote"))
			waitSubscribed(t, ctx, direct, "k", 1)
			waitFor(t, "the local caller to join the flight", func() bool { return cs[0].Stats().LocalMerges == 1 })
			close(g.release)

			for _, who := range []string{"leader", "local"} {
				ch := leader
				if who == "local" {
					ch = local
				}
				r := await(t, who+" Get", ch)
				switch tc.name {
				case "panic":
					pe, ok := r.panic.(*fill.PanicError)
					if !ok || pe.Value != "boom" {
						t.Errorf("%s caller: got panic %v, value %q, error %v; want a *fill.PanicError with value boom", who, r.panic, r.v, r.err)
					}
				case "error":
					if r.panic != nil || !errors.Is(r.err, errBoom) {
						t.Errorf("%s caller: got panic %v, error %v; want the loader's error", who, r.panic, r.err)
					}
				}
			}
			r := await(t, "other server's Get", remote)
			if r.panic != nil || !errors.Is(r.err, fill.ErrLoadFailed) {
				t.Errorf("other server's caller: got panic %v, value %q, error %v; want ErrLoadFailed", r.panic, r.v, r.err)
			}
			t.Logf("other server's caller: %v", r.err)
			if n := others.Load(); n != 0 {
				t.Errorf("%d other loaders ran; want 0", n)
			}
			if n := totalLoads(cs...); n != 1 {
				t.Errorf("loads: %d; want 1", n)
			}
			noLockLeft(t, ctx, direct, "k")
			if exists(t, ctx, direct, lockKey("k")+":value") {
				t.Errorf("a failed load left a value behind")
			}
			v, err := fill.Get(ctx, cs[1], "k", countingLoader(&others, "fresh"))
			if err != nil || v != "fresh" {
				t.Errorf("Get after the failure: %q, %v; want a fresh load", v, err)
			}
		})
	}
}

// TestFillSlowLoader: the loader takes ten times the fill lock's lease. The
// lease is renewed all along, so callers on three other servers wait for it
// instead of loading themselves: one load in all, and every caller gets its
// value.
func TestFillSlowLoader(t *testing.T) {
	const lockTTL = 300 * time.Millisecond
	ctx := ctxT(t, testTimeout)
	s := redistest.Start(t, nil)
	// LoadTimeout at its default (10m): only the lease is short.
	cs := servers(t, s, 4, &fill.Options{LockTTL: lockTTL})
	var loads atomic.Int32
	slow := slowLoader(&loads, 10*lockTTL)
	leader := get(ctx, cs[0], "slow", slow)
	waitFor(t, "the leader to claim the key", func() bool { return loads.Load() == 1 })
	var waiters []<-chan result
	for _, c := range cs[1:] {
		waiters = append(waiters, get(ctx, c, "slow", slow))
	}
	for i, ch := range append([]<-chan result{leader}, waiters...) {
		r := await(t, "Get", ch)
		if r.err != nil || r.v != "slow" {
			t.Errorf("server %d: got %q, %v; want the slow loader's value", i, r.v, r.err)
		}
	}
	st := cs[0].Stats()
	if n := totalLoads(cs...); n != 1 || loads.Load() != 1 {
		t.Errorf("loads: %d (loader calls %d); want 1", n, loads.Load())
	}
	if st.StaleStores != 0 || st.LoadErrors != 0 {
		t.Errorf("leader stats %+v: the lease was lost during the load", st)
	}
	t.Logf("slow loader (%v, lease %v): 1 load; leader stats %+v", 10*lockTTL, lockTTL, st)
}

// slowLoader returns a loader that counts its calls and returns "slow" after
// d, or the cause of its ctx's end.
func slowLoader(loads *atomic.Int32, d time.Duration) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		loads.Add(1)
		select {
		case <-time.After(d):
			return "slow", nil
		case <-ctx.Done():
			return "", context.Cause(ctx)
		}
	}
}

// TestFillLoadTimeout: a loader slower than Options.LoadTimeout has its ctx
// ended; its callers get DeadlineExceeded, and the server waiting for it gets
// the failure at once (ErrLoadFailed) instead of loading again: one load.
func TestFillLoadTimeout(t *testing.T) {
	const lockTTL = 300 * time.Millisecond
	ctx := ctxT(t, testTimeout)
	s := redistest.Start(t, nil)
	direct := s.Client(t, nil)
	// The other server's own flights may run longer, so that the failure it
	// is told of cannot race its own deadline on a slow machine.
	cs := []*fill.Cache{
		newCache(t, s.Client(t, nil), &fill.Options{LockTTL: lockTTL, LoadTimeout: 2 * lockTTL}),
		newCache(t, s.Client(t, nil), &fill.Options{LockTTL: lockTTL, LoadTimeout: 20 * lockTTL}),
	}
	var loads atomic.Int32
	slow := slowLoader(&loads, 10*lockTTL)
	leader := get(ctx, cs[0], "slow", slow)
	waitFor(t, "the leader to claim the key", func() bool { return loads.Load() == 1 })
	other := get(ctx, cs[1], "slow", slow)
	waitSubscribed(t, ctx, direct, "slow", 1)
	r0, r1 := await(t, "leader's Get", leader), await(t, "other server's Get", other)
	if !errors.Is(r0.err, context.DeadlineExceeded) {
		t.Errorf("leader's caller: got %q, %v; want DeadlineExceeded from the loader's ctx", r0.v, r0.err)
	}
	if !errors.Is(r1.err, fill.ErrLoadFailed) {
		t.Errorf("other server: got %q, %v; want ErrLoadFailed", r1.v, r1.err)
	}
	if n := totalLoads(cs...); n != 1 || loads.Load() != 1 {
		t.Errorf("loads: %d (loader calls %d); want 1", n, loads.Load())
	}
	t.Logf("loader of %v, LoadTimeout %v: leader's caller got %v; other server's got %v; %d load",
		10*lockTTL, 2*lockTTL, r0.err, r1.err, totalLoads(cs...))
}

// TestFillCallersCancelled: the callers give up while the load runs. When
// the leader's caller gives up, the others (on the same server and another)
// still get the value of the one load. When every caller gives up, the
// flight still finishes and stores its value, and leaves no goroutine.
func TestFillCallersCancelled(t *testing.T) {
	t.Run("leader's caller", func(t *testing.T) {
		ctx := ctxT(t, testTimeout)
		s := redistest.Start(t, nil)
		direct := s.Client(t, nil)
		cs := servers(t, s, 2, nil)
		g := newGate()
		var others atomic.Int32
		lctx, cancel := context.WithCancel(ctx)
		leader := get(lctx, cs[0], "k", g.load(func() (string, error) { return "v", nil }))
		g.waitStarted(t)
		local := get(ctx, cs[0], "k", countingLoader(&others, "local"))
		remote := get(ctx, cs[1], "k", countingLoader(&others, "remote"))
		waitSubscribed(t, ctx, direct, "k", 1)
		waitFor(t, "the local caller to join the flight", func() bool { return cs[0].Stats().LocalMerges == 1 })
		cancel()
		if r := await(t, "cancelled leader's Get", leader); !errors.Is(r.err, context.Canceled) {
			t.Errorf("cancelled caller: got %q, %v; want context.Canceled", r.v, r.err)
		}
		close(g.release)
		for _, ch := range []<-chan result{local, remote} {
			if r := await(t, "Get", ch); r.err != nil || r.v != "v" {
				t.Errorf("remaining caller: got %q, %v; want the load's value", r.v, r.err)
			}
		}
		if n := totalLoads(cs...); n != 1 || others.Load() != 0 {
			t.Errorf("loads: %d, other loaders %d; want 1 and 0", n, others.Load())
		}
		if cause, _ := g.ctxErr.Load().(error); cause != nil {
			t.Errorf("the loader's ctx ended (%v) when its first caller gave up", cause)
		}
	})

	t.Run("every caller", func(t *testing.T) {
		ctx := ctxT(t, testTimeout)
		s := redistest.Start(t, nil)
		direct := s.Client(t, nil)
		c := newCache(t, s.Client(t, nil), nil)
		if _, err := fill.Get(ctx, c, "warm-up", func(context.Context) (string, error) { return "w", nil }); err != nil {
			t.Fatal(err)
		}
		base := runtime.NumGoroutine()
		g := newGate()
		cctx, cancel := context.WithCancel(ctx)
		chs := []<-chan result{get(cctx, c, "k", g.load(func() (string, error) { return "v", nil }))}
		g.waitStarted(t)
		var merged atomic.Int32
		chs = append(chs, get(cctx, c, "k", countingLoader(&merged, "merged")))
		waitFor(t, "the second caller to join the flight", func() bool { return c.Stats().LocalMerges == 1 })
		cancel()
		for _, ch := range chs {
			if r := await(t, "cancelled Get", ch); !errors.Is(r.err, context.Canceled) {
				t.Errorf("cancelled caller: got %q, %v; want context.Canceled", r.v, r.err)
			}
		}
		close(g.release)
		waitFor(t, "the abandoned flight to store its value", func() bool {
			return exists(t, ctx, direct, lockKey("k")+":value")
		})
		waitFor(t, fmt.Sprintf("the goroutine count to return to %d", base), func() bool {
			return runtime.NumGoroutine() <= base
		})
		var again atomic.Int32
		v, err := fill.Get(ctx, c, "k", countingLoader(&again, "again"))
		if err != nil || v != "v" || again.Load() != 0 {
			t.Errorf("Get after the abandoned flight: %q, %v (loader ran %d times); want the stored value", v, err, again.Load())
		}
		if st := c.Stats(); st.Loads != 2 { // warm-up and k
			t.Errorf("loads: %d; want 2", st.Loads)
		}
		if g.calls.Load() != 1 {
			t.Errorf("loader calls: %d; want 1", g.calls.Load())
		}
		noLockLeft(t, ctx, direct, "k")
	})
}

// TestFillRedisRestartedMidLoad: Redis is killed and restarted, empty, while
// a load runs and another server waits for it. The loader's value still
// reaches its callers, the key is loaded at most twice (the waiting server
// finds the lock gone and loads again), and later calls work.
func TestFillRedisRestartedMidLoad(t *testing.T) {
	ctx := ctxT(t, testTimeout)
	s := redistest.Start(t, nil)
	direct := s.Client(t, nil)
	opt := &fill.Options{LockTTL: time.Second, LoadTimeout: 30 * time.Second, PollInterval: 200 * time.Millisecond}
	cs := servers(t, s, 2, opt)
	g := newGate()
	var second atomic.Int32
	leader := get(ctx, cs[0], "k", g.load(func() (string, error) { return "first", nil }))
	g.waitStarted(t)
	remote := get(ctx, cs[1], "k", countingLoader(&second, "second"))
	waitSubscribed(t, ctx, direct, "k", 1)

	s.Restart(t)
	close(g.release)
	r := await(t, "leader's Get", leader)
	if r.err != nil || r.v != "first" {
		t.Errorf("leader's caller: got %q, %v; want the loader's value", r.v, r.err)
	}
	r2 := await(t, "other server's Get", remote)
	if r2.err != nil || (r2.v != "first" && r2.v != "second") {
		t.Errorf("other server's caller: got %q, %v; want a loaded value", r2.v, r2.err)
	}
	loads := totalLoads(cs...)
	if loads > 2 {
		t.Errorf("loads: %d; want at most 2", loads)
	}
	cause, _ := g.ctxErr.Load().(error)
	t.Logf("restart mid-load: leader got %q, other server got %q; %d loads; leader's loader ctx ended with %v; stats %+v / %+v",
		r.v, r2.v, loads, cause, cs[0].Stats(), cs[1].Stats())

	for i, c := range cs {
		v, err := fill.Get(ctx, c, "k", countingLoader(&second, "third"))
		if err != nil || v == "" {
			t.Errorf("server %d: Get after the restart: %q, %v", i, v, err)
		}
		v, err = fill.Get(ctx, c, fmt.Sprint("new", i), countingLoader(&second, "new"))
		if err != nil || v != "new" {
			t.Errorf("server %d: Get of a new key after the restart: %q, %v", i, v, err)
		}
	}
	if n := totalLoads(cs...) - loads; n != 2 {
		t.Errorf("loads after the restart: %d; want 2 (the new keys)", n)
	}
	noLockLeft(t, ctx, direct, "k")
}

// TestStalledRedis: Redis is stopped (SIGSTOP) for longer than the callers'
// deadlines, on clients with go-redis default options (ContextTimeoutEnabled
// false). Every fill.Get, Obtain, Release, Refresh and Do returns by its ctx;
// once Redis resumes, the goroutine count returns to its baseline and every
// call works again.
func TestStalledRedis(t *testing.T) {
	ctx := ctxT(t, testTimeout)
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil) // go-redis defaults
	l := newLocker(t, rdb, &lock.Options{TTL: 2 * time.Second})
	c := newCache(t, rdb, &fill.Options{LockTTL: 2 * time.Second})

	// Warm up: connections, scripts, and the pub/sub connections of the
	// Locker and of the Cache (each opened when a caller first waits).
	hold, err := l.Obtain(ctx, "warm")
	if err != nil {
		t.Fatal(err)
	}
	waiter := make(chan error, 1)
	go func() {
		lk, err := l.Obtain(ctx, "warm")
		if err == nil {
			err = lk.Release(ctx)
		}
		waiter <- err
	}()
	fillWaiter := get(ctx, c, "warm", func(context.Context) (string, error) { return "w", nil })
	waitSubscribed(t, ctx, rdb, "warm", 2)
	if err := hold.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-waiter; err != nil {
		t.Fatal(err)
	}
	if r := await(t, "warm-up Get", fillWaiter); r.err != nil {
		t.Fatal(r.err)
	}
	held, err := l.Obtain(ctx, "held")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // let dials and replies settle
	base := runtime.NumGoroutine()

	s.Pause(t)
	resumed := false
	defer func() {
		if !resumed {
			s.Resume(t)
		}
	}()
	calls := map[string]func(context.Context) error{
		"fill.Get": func(ctx context.Context) error {
			_, err := fill.Get(ctx, c, "stalled", func(context.Context) (string, error) { return "v", nil })
			return err
		},
		"Obtain": func(ctx context.Context) error {
			_, err := l.Obtain(ctx, "stalled")
			return err
		},
		"TryObtain": func(ctx context.Context) error {
			_, err := l.TryObtain(ctx, "stalled-try")
			return err
		},
		"Do": func(ctx context.Context) error {
			return l.Do(ctx, "stalled-do", func(context.Context) error { return nil })
		},
		"Release":      held.Release,
		"Refresh":      held.Refresh,
		"Cache.Delete": func(ctx context.Context) error { return c.Delete(ctx, "warm") },
	}
	for name, call := range calls {
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		err := within(t, name, func() error { return call(cctx) })
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s on a stalled Redis: got %v; want an error wrapping DeadlineExceeded", name, err)
		}
	}
	time.Sleep(time.Second) // the stall outlasts every deadline above
	extra := runtime.NumGoroutine() - base
	s.Resume(t)
	resumed = true
	waitFor(t, fmt.Sprintf("the goroutine count to return to %d", base), func() bool {
		return runtime.NumGoroutine() <= base
	})
	t.Logf("stall: %d goroutines above the baseline of %d during the stall; back to the baseline after SIGCONT", extra, base)

	v, err := fill.Get(ctx, c, "after", func(context.Context) (string, error) { return "after", nil })
	if err != nil || v != "after" {
		t.Errorf("fill.Get after the stall: %q, %v", v, err)
	}
	lk, err := l.Obtain(ctx, "stalled")
	if err != nil {
		t.Fatalf("Obtain after the stall: %v", err)
	}
	if err := lk.Release(ctx); err != nil {
		t.Errorf("Release after the stall: %v", err)
	}
	if err := held.Release(ctx); err != nil && !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Release of the lock held across the stall: %v", err)
	}
}
