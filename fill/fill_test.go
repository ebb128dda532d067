package fill_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/lock"
)

func TestMain(m *testing.M) {
	if helperMain() {
		return
	}
	goleak.VerifyTestMain(m)
}

type user struct {
	ID   int       `json:"id"`
	Name string    `json:"name"`
	Seen time.Time `json:"seen"`
	Tags []string
}

// withoutStamps leaves out the keys' last stamps (P{K}:stamp), which live
// a second after each claim and delete.
func withoutStamps(keys []string) []string {
	return slices.DeleteFunc(keys, func(k string) bool { return strings.HasSuffix(k, ":stamp") })
}

func newCache(t *testing.T, rdb redis.UniversalClient, opt *fill.Options) *fill.Cache {
	c := fill.New(rdb, opt)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// gate is a loader that counts its calls and blocks until opened.
type gate struct {
	calls   atomic.Int32
	started chan struct{}
	open    chan struct{}
	once    sync.Once
}

func newGate() *gate {
	return &gate{started: make(chan struct{}, 100), open: make(chan struct{})}
}

func (g *gate) release() { g.once.Do(func() { close(g.open) }) }

func (g *gate) load(v user) func(context.Context) (user, error) {
	return func(ctx context.Context) (user, error) {
		g.calls.Add(1)
		g.started <- struct{}{}
		select {
		case <-g.open:
			return v, nil
		case <-ctx.Done():
			return user{}, ctx.Err()
		}
	}
}

func TestHitAndMiss(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := newCache(t, rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	want := user{ID: 7, Name: "ada", Seen: time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC), Tags: []string{"x"}}
	var calls atomic.Int32
	load := func(context.Context) (user, error) { calls.Add(1); return want, nil }
	for i := 0; i < 3; i++ {
		got, err := fill.Get(ctx, c, "u:7", load)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != want.ID || got.Name != want.Name || !got.Seen.Equal(want.Seen) || len(got.Tags) != 1 {
			t.Fatalf("got %+v; want %+v", got, want)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("loads: got %d; want 1", n)
	}
	st := c.Stats()
	if st.Hits != 2 || st.Misses != 1 || st.Loads != 1 {
		t.Errorf("stats: got %+v; want 2 hits, 1 miss, 1 load", st)
	}
	if got := withoutStamps(m.Keys()); len(got) != 1 || got[0] != "__locksmith:{u:7}:value" {
		t.Errorf("keys after fill: %v; want the value alone (no lock, no fencing counter)", got)
	}
	ttl := m.TTL("__locksmith:{u:7}:value")
	if ttl > time.Hour || ttl < 54*time.Minute {
		t.Errorf("TTL: got %v; want within 10%% jitter below 1h", ttl)
	}
}

func TestWithTTL(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := newCache(t, rdb, &fill.Options{Jitter: -1})
	ctx := redistest.Context(t, 20*time.Second)
	if _, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) { return 1, nil }, fill.WithTTL(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := m.TTL("__locksmith:{k}:value"); got != 5*time.Second {
		t.Errorf("TTL: got %v; want 5s", got)
	}
	m.FastForward(6 * time.Second)
	var calls int
	if _, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) { calls++; return 2, nil }); err != nil || calls != 1 {
		t.Errorf("after expiry: err %v, loads %d; want a new load", err, calls)
	}
}

func TestLocalMerge(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := newCache(t, rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	g := newGate()
	const callers = 50
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := fill.Get(ctx, c, "hot", g.load(user{ID: 1}))
			if err == nil && v.ID != 1 {
				err = fmt.Errorf("got %+v", v)
			}
			errs <- err
		}()
	}
	<-g.started
	redistest.WaitFor(t, "all callers merged", func() bool { return c.Stats().LocalMerges == callers-1 })
	g.release()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := g.calls.Load(); n != 1 {
		t.Errorf("loads: got %d; want 1", n)
	}
}

// TestRemoteMerge: two Caches on separate clients (two servers); the second
// waits for the first's load and takes its value from the notification.
func TestRemoteMerge(t *testing.T) {
	for _, size := range []int{10, 200 << 10} { // published, and too large to publish
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			m, rdb := redistest.Mini(t)
			a := newCache(t, rdb, nil)
			b := newCache(t, redistest.Client(t, m.Addr()), &fill.Options{PollInterval: time.Minute})
			ctx := redistest.Context(t, 20*time.Second)
			g := newGate()
			want := user{ID: 2, Name: strings.Repeat("n", size)}
			got := make(chan user, 1)
			go func() {
				v, err := fill.Get(ctx, a, "k", g.load(want))
				if err != nil {
					t.Error(err)
				}
				got <- v
			}()
			<-g.started
			bres := make(chan error, 1)
			go func() {
				v, err := fill.Get(ctx, b, "k", func(context.Context) (user, error) {
					return user{}, errors.New("second load")
				})
				if err == nil && v.Name != want.Name {
					err = fmt.Errorf("got %d-byte name; want %d", len(v.Name), len(want.Name))
				}
				bres <- err
			}()
			redistest.WaitFor(t, "b waiting", func() bool { return b.Stats().Misses == 1 })
			redistest.WaitFor(t, "b subscribed", func() bool {
				return len(m.PubSubNumSub("__locksmith:{k}")) == 1 && m.PubSubNumSub("__locksmith:{k}")["__locksmith:{k}"] == 1
			})
			g.release()
			if err := <-bres; err != nil {
				t.Fatal(err)
			}
			<-got
			if st := b.Stats(); st.RemoteMerges != 1 || st.Loads != 0 {
				t.Errorf("b stats: got %+v; want 1 remote merge, 0 loads", st)
			}
		})
	}
}

func TestCallerGivesUp(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := newCache(t, rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	g := newGate()
	quitter, quit := context.WithCancel(ctx)
	first := make(chan error, 1)
	go func() {
		_, err := fill.Get(quitter, c, "k", g.load(user{ID: 3}))
		first <- err
	}()
	<-g.started
	second := make(chan user, 1)
	go func() {
		v, err := fill.Get(ctx, c, "k", g.load(user{ID: 99}))
		if err != nil {
			t.Error(err)
		}
		second <- v
	}()
	redistest.WaitFor(t, "second merged", func() bool { return c.Stats().LocalMerges == 1 })
	quit()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("quitter: got %v; want Canceled", err)
	}
	g.release()
	if v := <-second; v.ID != 3 {
		t.Fatalf("second: got %+v; want the first load's value", v)
	}
	if n := g.calls.Load(); n != 1 {
		t.Errorf("loads: got %d; want 1", n)
	}
}

func TestAllCallersGiveUp(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := newCache(t, rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	g := newGate()
	quitter, quit := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := fill.Get(quitter, c, "k", g.load(user{ID: 4}))
		done <- err
	}()
	<-g.started
	quit()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v; want Canceled", err)
	}
	g.release()
	// The flight goes on without callers and stores the value.
	redistest.WaitFor(t, "value stored", func() bool { return m.Exists("__locksmith:{k}:value") })
	v, err := fill.Get(ctx, c, "k", g.load(user{ID: 5}))
	if err != nil || v.ID != 4 {
		t.Fatalf("got %+v, %v; want the stored value", v, err)
	}
}

func TestLoaderError(t *testing.T) {
	m, rdb := redistest.Mini(t)
	a := newCache(t, rdb, nil)
	b := newCache(t, redistest.Client(t, m.Addr()), &fill.Options{PollInterval: time.Minute})
	ctx := redistest.Context(t, 20*time.Second)
	boom := errors.New("upstream 503")
	started, open := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	failing := func(context.Context) (int, error) {
		calls.Add(1)
		close(started)
		<-open
		return 0, boom
	}
	aerr := make(chan error, 1)
	go func() { _, err := fill.Get(ctx, a, "k", failing); aerr <- err }()
	<-started
	berr := make(chan error, 1)
	go func() {
		_, err := fill.Get(ctx, b, "k", func(context.Context) (int, error) { calls.Add(1); return 1, nil })
		berr <- err
	}()
	redistest.WaitFor(t, "b subscribed", func() bool { return m.PubSubNumSub("__locksmith:{k}")["__locksmith:{k}"] == 1 })
	close(open)
	if err := <-aerr; !errors.Is(err, boom) {
		t.Errorf("a: got %v; want the loader's own error", err)
	}
	if err := <-berr; !errors.Is(err, fill.ErrLoadFailed) || !strings.Contains(err.Error(), "upstream 503") {
		t.Errorf("b: got %v; want ErrLoadFailed with the loader's message", err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("loads: got %d; want 1", n)
	}
	// Not cached: the next call loads again.
	v, err := fill.Get(ctx, a, "k", func(context.Context) (int, error) { return 42, nil })
	if err != nil || v != 42 {
		t.Errorf("after the error: got %v, %v; want 42", v, err)
	}
	if st := a.Stats(); st.LoadErrors != 1 {
		t.Errorf("LoadErrors: got %d; want 1", st.LoadErrors)
	}
}

func TestNegativeCaching(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := newCache(t, rdb, &fill.Options{NegativeTTL: 10 * time.Second, Jitter: -1})
	other := newCache(t, redistest.Client(t, m.Addr()), nil)
	ctx := redistest.Context(t, 20*time.Second)
	var calls atomic.Int32
	missing := func(context.Context) (user, error) {
		calls.Add(1)
		return user{}, fmt.Errorf("user 404: %w", fill.ErrNotFound)
	}
	if _, err := fill.Get(ctx, c, "gone", missing); !errors.Is(err, fill.ErrNotFound) || !strings.Contains(err.Error(), "user 404") {
		t.Fatalf("first: got %v; want the loader's ErrNotFound", err)
	}
	for _, cc := range []*fill.Cache{c, other} {
		if _, err := fill.Get(ctx, cc, "gone", missing); !errors.Is(err, fill.ErrNotFound) {
			t.Fatalf("cached: got %v; want ErrNotFound", err)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("loads: got %d; want 1", n)
	}
	if got := m.TTL("__locksmith:{gone}:value"); got != 10*time.Second {
		t.Errorf("negative TTL: got %v; want 10s", got)
	}
	m.FastForward(11 * time.Second)
	if _, err := fill.Get(ctx, c, "gone", missing); !errors.Is(err, fill.ErrNotFound) || calls.Load() != 2 {
		t.Errorf("after the negative TTL: err %v, loads %d; want a new load", err, calls.Load())
	}
}

func TestLoaderPanic(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := newCache(t, rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	func() {
		defer func() {
			r := recover()
			pe, ok := r.(*fill.PanicError)
			if !ok || pe.Value != "kaboom" || !strings.Contains(string(pe.Stack), "fill_test.go") {
				t.Fatalf("recovered %v; want a *PanicError with the value and the loader's stack", r)
			}
		}()
		_, _ = fill.Get(ctx, c, "k", func(context.Context) (int, error) { panic("kaboom") })
		t.Fatal("Get returned; want a panic")
	}()
	if m.Exists("__locksmith:{k}") {
		t.Error("lock left behind after the panic")
	}
	if v, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) { return 1, nil }); err != nil || v != 1 {
		t.Errorf("after the panic: got %v, %v", v, err)
	}
}

func TestLoaderGoexit(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := newCache(t, rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	_, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) {
		runtime.Goexit()
		return 0, nil
	})
	if err == nil || !strings.Contains(err.Error(), "Goexit") {
		t.Fatalf("got %v; want an error naming runtime.Goexit", err)
	}
	if m.Exists("__locksmith:{k}") {
		t.Error("lock left behind after Goexit")
	}
}

func TestCorruptEntry(t *testing.T) {
	for _, tc := range []struct{ name, value string }{
		{"foreign", "hello world"},
		{"empty", ""},
		{"envelope of another type", "\xe5\x01\x00\x00\x00\xa3abc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, rdb := redistest.Mini(t)
			c := newCache(t, rdb, nil)
			ctx := redistest.Context(t, 20*time.Second)
			if err := m.Set("__locksmith:{k}:value", tc.value); err != nil {
				t.Fatal(err)
			}
			v, err := fill.Get(ctx, c, "k", func(context.Context) (user, error) { return user{ID: 9}, nil })
			if err != nil || v.ID != 9 {
				t.Fatalf("got %+v, %v; want the loaded value", v, err)
			}
			if st := c.Stats(); st.Corrupt < 1 || st.Loads != 1 {
				t.Errorf("stats: got %+v; want corrupt counted and one load", st)
			}
			v, err = fill.Get(ctx, c, "k", func(context.Context) (user, error) { return user{}, errors.New("no") })
			if err != nil || v.ID != 9 {
				t.Fatalf("after repair: got %+v, %v; want the stored value", v, err)
			}
		})
	}
}

func TestWrongType(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := newCache(t, rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	m.HSet("__locksmith:{k}:value", "f", "v")
	var calls int
	_, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) { calls++; return 1, nil })
	if err == nil || !strings.Contains(err.Error(), "WRONGTYPE") || calls != 0 {
		t.Fatalf("got %v after %d loads; want WRONGTYPE and no load", err, calls)
	}
	if m.HGet("__locksmith:{k}:value", "f") != "v" {
		t.Error("foreign key modified")
	}
}

func TestRedisDown(t *testing.T) {
	down := func(t *testing.T) *redis.Client {
		rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialerRetries: 1})
		t.Cleanup(func() { _ = rdb.Close() })
		return rdb
	}
	t.Run("fail open", func(t *testing.T) {
		c := newCache(t, down(t), nil)
		v, err := fill.Get(redistest.Context(t, 20*time.Second), c, "k", func(context.Context) (int, error) { return 5, nil })
		if err != nil || v != 5 {
			t.Fatalf("got %v, %v; want the loader's value", v, err)
		}
		if st := c.Stats(); st.RedisErrors < 1 || st.Loads != 1 {
			t.Errorf("stats: got %+v", st)
		}
	})
	t.Run("fail closed", func(t *testing.T) {
		c := newCache(t, down(t), &fill.Options{FailClosed: true})
		var calls int
		_, err := fill.Get(redistest.Context(t, 20*time.Second), c, "k", func(context.Context) (int, error) { calls++; return 5, nil })
		if err == nil || calls != 0 {
			t.Fatalf("got %v after %d loads; want an error and no load", err, calls)
		}
	})
}

// TestDeleteDuringLoad: a Delete while a load runs breaks the fill: the
// load's value reaches its caller but is not stored over the delete.
func TestDeleteDuringLoad(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := newCache(t, rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	g := newGate()
	got := make(chan user, 1)
	go func() {
		v, err := fill.Get(ctx, c, "k", g.load(user{ID: 1}))
		if err != nil {
			t.Error(err)
		}
		got <- v
	}()
	<-g.started
	if err := c.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	g.release()
	if v := <-got; v.ID != 1 {
		t.Fatalf("caller got %+v; want the loaded value", v)
	}
	redistest.WaitFor(t, "store refused", func() bool { return c.Stats().StaleStores == 1 })
	if m.Exists("__locksmith:{k}:value") {
		t.Error("value stored over the delete")
	}
	if _, err := fill.Get(ctx, c, "k", func(context.Context) (user, error) { return user{ID: 2}, nil }); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if m.Exists("__locksmith:{k}:value") {
		t.Error("value still there after Delete")
	}
}

// TestExcludesLock: a fill and a lock.Locker on the same name exclude each other.
func TestExcludesLock(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := newCache(t, rdb, &fill.Options{PollInterval: time.Minute})
	l := lock.New(redistest.Client(t, m.Addr()), nil)
	t.Cleanup(func() { _ = l.Close() })
	ctx := redistest.Context(t, 20*time.Second)
	lk, err := l.Obtain(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	res := make(chan error, 1)
	go func() {
		_, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) { calls.Add(1); return 1, nil })
		res <- err
	}()
	redistest.WaitFor(t, "fill waiting", func() bool { return c.Stats().Misses == 1 })
	redistest.WaitFor(t, "fill subscribed", func() bool { return m.PubSubNumSub("__locksmith:{k}")["__locksmith:{k}"] == 1 })
	if calls.Load() != 0 {
		t.Fatal("loader ran while the lock was held")
	}
	if err := lk.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-res; err != nil || calls.Load() != 1 {
		t.Fatalf("after release: err %v, loads %d", err, calls.Load())
	}
}

// countHook counts the commands a client sends.
type countHook struct{ n atomic.Int64 }

func (h *countHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.n.Add(1); return next(ctx, cmd) }
}
func (h *countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// TestRoundTrips: a miss costs exactly 2 round trips plus the loader, a hit 1.
func TestRoundTrips(t *testing.T) {
	m, _ := redistest.Mini(t)
	rdb := redistest.Client(t, m.Addr())
	c := newCache(t, rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	load := func(context.Context) (int, error) { return 1, nil }
	if _, err := fill.Get(ctx, c, "warm-up", load); err != nil { // loads the scripts
		t.Fatal(err)
	}
	h := &countHook{}
	rdb.AddHook(h)
	if _, err := fill.Get(ctx, c, "k", load); err != nil {
		t.Fatal(err)
	}
	if got := h.n.Swap(0); got != 2 {
		t.Errorf("miss: got %d round trips; want 2", got)
	}
	if _, err := fill.Get(ctx, c, "k", load); err != nil {
		t.Fatal(err)
	}
	if got := h.n.Load(); got != 1 {
		t.Errorf("hit: got %d round trips; want 1", got)
	}
}

// TestReadFirst: with ReadFirst, a hit is one plain GET and a miss three
// round trips; everything else behaves the same.
func TestReadFirst(t *testing.T) {
	m, _ := redistest.Mini(t)
	rdb := redistest.Client(t, m.Addr())
	c := newCache(t, rdb, &fill.Options{ReadFirst: true})
	ctx := redistest.Context(t, 20*time.Second)
	load := func(context.Context) (int, error) { return 1, nil }
	if _, err := fill.Get(ctx, c, "warm-up", load); err != nil {
		t.Fatal(err)
	}
	var names []string
	var mu sync.Mutex
	rdb.AddHook(namesHook(func(name string) { mu.Lock(); names = append(names, name); mu.Unlock() }))
	if v, err := fill.Get(ctx, c, "k", load); err != nil || v != 1 {
		t.Fatalf("miss: %v, %v", v, err)
	}
	if got := strings.Join(names, " "); got != "get evalsha evalsha" {
		t.Errorf("miss: got %q; want a GET and two scripts", got)
	}
	names = nil
	if v, err := fill.Get(ctx, c, "k", load); err != nil || v != 1 {
		t.Fatalf("hit: %v, %v", v, err)
	}
	if got := strings.Join(names, " "); got != "get" {
		t.Errorf("hit: got %q; want one GET", got)
	}
	if err := m.Set("__locksmith:{bad}:value", "junk"); err != nil {
		t.Fatal(err)
	}
	if v, err := fill.Get(ctx, c, "bad", load); err != nil || v != 1 || c.Stats().Corrupt != 1 {
		t.Fatalf("corrupt entry: %v, %v, stats %+v; want a reload", v, err, c.Stats())
	}
}

// TestReadFirstOnItsOwn: by default a Cache whose reads nearly all find a
// fresh value reads by GET first, and goes back to the read-or-claim
// script when its reads miss: a hot key's hit becomes one GET, and a run of
// misses costs two scripts each again. Values with a stale window, which a
// GET cannot judge, never switch it.
func TestReadFirstOnItsOwn(t *testing.T) {
	m, _ := redistest.Mini(t)
	rdb := redistest.Client(t, m.Addr())
	c := newCache(t, rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	load := func(context.Context) (int, error) { return 1, nil }
	swr := newCache(t, rdb, &fill.Options{TTL: time.Minute, StaleWhileRevalidate: time.Minute, Prefix: "swr:"})
	for _, c := range []*fill.Cache{c, swr} {
		if _, err := fill.Get(ctx, c, "warm-up", load); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	var mu sync.Mutex
	rdb.AddHook(namesHook(func(name string) { mu.Lock(); names = append(names, name); mu.Unlock() }))
	get := func(key string) string {
		t.Helper()
		mu.Lock()
		names = nil
		mu.Unlock()
		if v, err := fill.Get(ctx, c, key, load); err != nil || v != 1 {
			t.Fatalf("Get %s: %v, %v", key, v, err)
		}
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(names, " ")
	}
	if got := get("hot"); got != "evalsha evalsha" {
		t.Errorf("first miss: got %q; want two scripts", got)
	}
	if got := get("hot"); got != "evalsha" {
		t.Errorf("a hit on a new Cache: got %q; want the script", got)
	}
	for range 100 {
		get("hot")
	}
	if got := get("hot"); got != "get" {
		t.Errorf("a hit after 100 hits: got %q; want one GET", got)
	}
	var cold string
	for i := range 100 {
		cold = get("cold" + strconv.Itoa(i))
	}
	if cold != "evalsha evalsha" {
		t.Errorf("a miss after 100 misses: got %q; want two scripts", cold)
	}

	for range 100 {
		if _, err := fill.Get(ctx, swr, "hot", load); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	names = nil
	mu.Unlock()
	if _, err := fill.Get(ctx, swr, "hot", load); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if got := strings.Join(names, " "); got != "evalsha" {
		t.Errorf("a hit with a stale window after 100 hits: got %q; want the script alone", got)
	}
}

// namesHook reports the name of every command a client sends.
type namesHook func(name string)

func (h namesHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h namesHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h(cmd.Name()); return next(ctx, cmd) }
}
func (h namesHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func TestTypes(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := newCache(t, rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	p, err := fill.Get(ctx, c, "ptr", func(context.Context) (*user, error) { return &user{ID: 1}, nil })
	if err != nil || p == nil || p.ID != 1 {
		t.Fatalf("pointer: %+v, %v", p, err)
	}
	p, err = fill.Get(ctx, c, "ptr", func(context.Context) (*user, error) { return nil, errors.New("no") })
	if err != nil || p == nil || p.ID != 1 {
		t.Fatalf("pointer hit: %+v, %v", p, err)
	}
	m, err := fill.Get(ctx, c, "map", func(context.Context) (map[string]int, error) { return map[string]int{"a": 1}, nil })
	if err != nil || m["a"] != 1 {
		t.Fatalf("map: %v, %v", m, err)
	}
	// The same key read as another type: decoded for that type, or reloaded
	// when the bytes do not fit it.
	s, err := fill.Get(ctx, c, "map", func(context.Context) (string, error) { return "s", nil })
	if err != nil || s != "s" {
		t.Fatalf("other type: %q, %v", s, err)
	}
	if _, err := fill.Get[int](ctx, c, "nil", nil); err == nil {
		t.Fatal("nil loader: got nil error")
	}
}

// TestClose: Close during a load ends it without a failure: callers in the
// closing process get ErrClosed, and a waiter on another server, instead of
// a shared failure, looks again and loads itself.
func TestClose(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := fill.New(rdb, nil)
	other := newCache(t, redistest.Client(t, m.Addr()), &fill.Options{PollInterval: time.Hour})
	ctx := redistest.Context(t, 20*time.Second)
	g := newGate()
	res := make(chan error, 1)
	go func() { _, err := fill.Get(ctx, c, "k", g.load(user{})); res <- err }()
	<-g.started
	remote := make(chan result, 1)
	go func() {
		v, err := fill.Get(ctx, other, "k", func(context.Context) (user, error) { return user{ID: 77}, nil })
		remote <- result{v, err}
	}()
	// The other server waits, subscribed to the key's channel: only a
	// message tells it the lock was released (its poll is an hour).
	redistest.WaitFor(t, "the other server subscribes", func() bool {
		return other.Stats().Misses == 1 && m.PubSubNumSub("__locksmith:{k}")["__locksmith:{k}"] == 1
	})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-res; !errors.Is(err, fill.ErrClosed) {
		t.Errorf("in-flight Get: got %v; want ErrClosed", err)
	}
	select {
	case r := <-remote:
		if r.err != nil || r.v.ID != 77 {
			t.Errorf("the other server: got %+v, %v; want its own load's value", r.v, r.err)
		}
	case <-ctx.Done():
		t.Fatal("the other server's waiter was not told the lock was released")
	}
	if _, err := fill.Get(ctx, c, "k", g.load(user{})); !errors.Is(err, fill.ErrClosed) {
		t.Errorf("Get after Close: got %v; want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

type result struct {
	v   user
	err error
}
