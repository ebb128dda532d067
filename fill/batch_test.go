package fill_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// batchLoader records its calls and returns "v:"+key for every key but
// those in missing.
type batchLoader struct {
	mu      sync.Mutex
	calls   [][]string
	missing map[string]bool
	err     error
	gate    chan struct{}
	delay   time.Duration // each call takes this long, as an upstream's would
}

func (b *batchLoader) load(ctx context.Context, keys []string) (map[string]string, error) {
	b.mu.Lock()
	b.calls = append(b.calls, slices.Clone(keys))
	gate, err := b.gate, b.err
	b.mu.Unlock()
	if b.delay > 0 {
		time.Sleep(b.delay)
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, k := range keys {
		if !b.missing[k] {
			m[k] = "v:" + k
		}
	}
	return m, nil
}

func (b *batchLoader) loaded() (calls int, keys []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.calls {
		keys = append(keys, c...)
	}
	sort.Strings(keys)
	return len(b.calls), keys
}

func TestGetMany(t *testing.T) {
	m, rdb := redistest.Mini(t)
	var h countHook
	rdb.AddHook(&h)
	c := newCache(t, rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	if _, err := fill.Get(ctx, c, "a", func(context.Context) (string, error) { return "v:a", nil }); err != nil {
		t.Fatal(err)
	}
	bl := &batchLoader{missing: map[string]bool{"gone": true}}
	// Warm the scripts and the connection: their first use costs more.
	if _, err := fill.GetMany(ctx, c, []string{"warm"}, bl.load); err != nil {
		t.Fatal(err)
	}
	bl.calls = nil
	var p pipeHook
	rdb.AddHook(&p)
	h.n.Store(0)
	got, err := fill.GetMany(ctx, c, []string{"a", "b", "c", "b", "gone"}, bl.load)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a": "v:a", "b": "v:b", "c": "v:c"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v; want %v", got, want)
	}
	calls, keys := bl.loaded()
	if calls != 1 || fmt.Sprint(keys) != "[b c gone]" {
		t.Fatalf("loader: %d calls for %v; want one call for [b c gone]", calls, keys)
	}
	// One pipeline to read or claim the 4 distinct keys, one to store the
	// 3 loaded.
	if n, pipes := h.n.Load(), p.n.Load(); n != 7 || pipes != 2 {
		t.Errorf("%d commands in %d pipelines; want 4 claims and 3 stores in 2", n, pipes)
	}
	// The absence is cached, as for Get.
	if _, err := fill.Get(ctx, c, "gone", func(context.Context) (string, error) { return "x", nil }); !errors.Is(err, fill.ErrNotFound) {
		t.Errorf("Get of an absent key: got %v; want ErrNotFound", err)
	}
	if !m.Exists("__locksmith:{c}:value") {
		t.Error("c not stored")
	}
	// All cached now: no loader call.
	got, err = fill.GetMany(ctx, c, []string{"a", "b", "c", "gone"}, bl.load)
	if err != nil || len(got) != 3 {
		t.Fatalf("again: got %v, %v", got, err)
	}
	if calls, _ := bl.loaded(); calls != 1 {
		t.Errorf("loader called again for cached keys")
	}
	// An empty list calls nothing.
	h.n.Store(0)
	if got, err := fill.GetMany(ctx, c, nil, bl.load); err != nil || len(got) != 0 || h.n.Load() != 0 {
		t.Errorf("empty list: %v, %v, %d commands", got, err, h.n.Load())
	}
}

func TestGetManyChunks(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := newCache(t, rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	var keys []string
	for i := range 250 {
		keys = append(keys, fmt.Sprint(i))
	}
	bl := &batchLoader{}
	got, err := fill.GetMany(ctx, c, keys, bl.load, fill.WithBatchOptions(&fill.BatchOptions{MaxSize: 100}))
	if err != nil || len(got) != 250 {
		t.Fatalf("got %d values, %v", len(got), err)
	}
	calls, loaded := bl.loaded()
	if calls != 3 || len(loaded) != 250 {
		t.Errorf("%d loader calls for %d keys; want 3 for 250", calls, len(loaded))
	}
}

// TestGetManyFailure: a loader error reaches every waiter of the batch's
// keys, here and on other servers; keys with values are still returned.
func TestGetManyFailure(t *testing.T) {
	m, rdb := redistest.Mini(t)
	a := newCache(t, rdb, nil)
	b := newCache(t, redistest.Client(t, m.Addr()), &fill.Options{PollInterval: time.Hour})
	ctx := redistest.Context(t, 20*time.Second)
	if v, err := fill.Get(ctx, a, "cached", func(context.Context) (string, error) { return "v:cached", nil }); err != nil || v != "v:cached" {
		t.Fatalf("caching a value first: got %q, %v", v, err)
	}
	bl := &batchLoader{err: errors.New("upstream 503"), gate: make(chan struct{})}
	res := make(chan error, 1)
	var got map[string]string
	go func() {
		var err error
		got, err = fill.GetMany(ctx, a, []string{"cached", "x", "y"}, bl.load)
		res <- err
	}()
	redistest.WaitFor(t, "the batch loads", func() bool { n, _ := bl.loaded(); return n == 1 })
	remote := make(chan error, 1)
	go func() {
		_, err := fill.Get(ctx, b, "y", func(context.Context) (string, error) { return "", errors.New("loaded") })
		remote <- err
	}()
	redistest.WaitFor(t, "the other server waits", func() bool { return b.Stats().Misses == 1 })
	close(bl.gate)
	err := <-res
	var be *fill.BatchError
	if !errors.As(err, &be) || len(be.Errs) != 2 || got["cached"] != "v:cached" {
		t.Fatalf("got %v, %v; want the cached value and a BatchError for x and y", got, err)
	}
	if err := <-remote; !errors.Is(err, fill.ErrLoadFailed) {
		t.Fatalf("the other server: got %v; want ErrLoadFailed", err)
	}
}

// TestGetManyAwaitsOtherServers: a key another server is loading is not
// loaded again: the batch waits for it.
func TestGetManyAwaitsOtherServers(t *testing.T) {
	m, rdb := redistest.Mini(t)
	a := newCache(t, rdb, nil)
	b := newCache(t, redistest.Client(t, m.Addr()), nil)
	ctx := redistest.Context(t, 20*time.Second)
	started, open := make(chan struct{}), make(chan struct{})
	go fill.Get(ctx, b, "held", func(context.Context) (string, error) {
		close(started)
		<-open
		return "from b", nil
	})
	<-started
	bl := &batchLoader{}
	res := make(chan map[string]string, 1)
	go func() {
		got, err := fill.GetMany(ctx, a, []string{"held", "free"}, bl.load)
		if err != nil {
			t.Error(err)
		}
		res <- got
	}()
	redistest.WaitFor(t, "the free key loads", func() bool { n, _ := bl.loaded(); return n == 1 })
	close(open)
	got := <-res
	if got["held"] != "from b" || got["free"] != "v:free" {
		t.Fatalf("got %v", got)
	}
	if _, keys := bl.loaded(); fmt.Sprint(keys) != "[free]" {
		t.Errorf("the batch loaded %v; want only [free]", keys)
	}
}

// heldKeys is a batch of keys that server b holds (its GetMany's loader
// waits at gate) while server a asks for them with a GetMany of its own.
type heldKeys struct {
	keys   []string
	gate   chan struct{}          // close to let b's loader return
	bDone  chan error             // b's GetMany's error
	aRes   chan map[string]string // a's GetMany's result
	aLoads *batchLoader           // a's loader
}

// holdThenAsk has b claim n keys named prefix:i and load them behind a
// gate, calls beforeAsk (if not nil) once b loads, then has a ask for the
// same keys, and returns once a waits for every one of them.
func holdThenAsk(t *testing.T, ctx context.Context, a, b *fill.Cache, prefix string, n int, beforeAsk func()) *heldKeys {
	t.Helper()
	h := &heldKeys{gate: make(chan struct{}), bDone: make(chan error, 1),
		aRes: make(chan map[string]string, 1), aLoads: &batchLoader{}}
	for i := range n {
		h.keys = append(h.keys, fmt.Sprint(prefix, ":", i))
	}
	held := &batchLoader{gate: h.gate}
	go func() {
		_, err := fill.GetMany(ctx, b, h.keys, held.load)
		h.bDone <- err
	}()
	redistest.WaitFor(t, "b to load the keys", func() bool { n, _ := held.loaded(); return n == 1 })
	if beforeAsk != nil {
		beforeAsk()
	}
	misses := a.Stats().Misses
	go func() {
		got, err := fill.GetMany(ctx, a, h.keys, h.aLoads.load)
		if err != nil {
			t.Error(err)
		}
		h.aRes <- got
	}()
	redistest.WaitFor(t, "a to wait for every key", func() bool { return a.Stats().Misses-misses == uint64(n) })
	return h
}

// values waits for a's result and checks that it holds every key's value.
func (h *heldKeys) values(t *testing.T) {
	t.Helper()
	got := <-h.aRes
	for _, k := range h.keys {
		if got[k] != "v:"+k {
			t.Fatalf("%s = %q", k, got[k])
		}
	}
}

// TestGetManyHeldKeysTogether: keys another server holds are looked at
// again together, in one pipeline once their subscriptions are ready, not
// one round trip each; their values then arrive by push.
func TestGetManyHeldKeysTogether(t *testing.T) {
	s := redistest.Start(t, nil)
	rdbA := s.Client(t, nil)
	a := newCache(t, rdbA, nil)
	b := newCache(t, s.Client(t, nil), nil)
	ctx := redistest.Context(t, 20*time.Second)
	warm := &batchLoader{}
	if _, err := fill.GetMany(ctx, a, []string{"warm"}, warm.load); err != nil {
		t.Fatal(err)
	}
	// Round trips that run a script: the pub/sub connection's hand-shake
	// and the heartbeats are not the batch's.
	var p scriptTrips
	h := holdThenAsk(t, ctx, a, b, "held", 100, func() { rdbA.AddHook(&p) })
	if n := p.n.Load(); n != 2 {
		t.Errorf("a sent %d round trips before waiting; want 2 pipelines (a look, and a look again once subscribed)", n)
	}
	close(h.gate)
	h.values(t)
	if err := <-h.bDone; err != nil {
		t.Fatal(err)
	}
	if n, _ := h.aLoads.loaded(); n != 0 {
		t.Errorf("a's loader called %d times; want 0", n)
	}
	if st := a.Stats(); st.RemoteMerges != uint64(len(h.keys)) {
		t.Errorf("RemoteMerges = %d; want %d", st.RemoteMerges, len(h.keys))
	}
	if n := p.n.Load(); n != 2 {
		t.Errorf("a sent %d round trips in all; want 2 (the values came in the messages)", n)
	}
}

// TestGetManyHeldKeysOnCluster: on a Redis Cluster, keys held by another
// server across every node's slots are awaited together (sharded
// subscriptions on each master, the second look pipelined per node) and
// arrive by push.
func TestGetManyHeldKeysOnCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	// A poll a minute away: only a push can bring the values in time.
	a := newCache(t, cl.Client(t, nil), &fill.Options{PollInterval: time.Minute})
	b := newCache(t, cl.Client(t, nil), nil)
	ctx := redistest.Context(t, 30*time.Second)
	h := holdThenAsk(t, ctx, a, b, "cluster-held", 30, nil)
	close(h.gate)
	h.values(t)
	if err := <-h.bDone; err != nil {
		t.Fatal(err)
	}
	if n, _ := h.aLoads.loaded(); n != 0 {
		t.Errorf("a's loader called %d times; want 0", n)
	}
	if st := a.Stats(); st.RemoteMerges != uint64(len(h.keys)) || st.NotifyErrors != 0 {
		t.Errorf("RemoteMerges %d, NotifyErrors %d; want %d, 0", st.RemoteMerges, st.NotifyErrors, len(h.keys))
	}
}

// TestGetManyHolderCloses: when the server holding a batch's keys closes
// mid-load, it releases them plainly and the server waiting for them, by
// push after looking again together, loads them itself.
func TestGetManyHolderCloses(t *testing.T) {
	s := redistest.Start(t, nil)
	a := newCache(t, s.Client(t, nil), nil)
	b := fill.New(s.Client(t, nil), nil)
	defer b.Close()
	ctx := redistest.Context(t, 20*time.Second)
	h := holdThenAsk(t, ctx, a, b, "closing", 20, nil)
	b.Close()
	if err := <-h.bDone; !errors.Is(err, fill.ErrClosed) {
		t.Errorf("b's GetMany: %v; want ErrClosed", err)
	}
	h.values(t)
	if _, loaded := h.aLoads.loaded(); len(loaded) != len(h.keys) {
		t.Errorf("a loaded %d keys; want %d", len(loaded), len(h.keys))
	}
}

// TestBatcher: Gets arriving together go out as one batch; each key is
// loaded once across a fleet of Batchers; a caller giving up cancels
// nothing.
func TestBatcher(t *testing.T) {
	s := redistest.Start(t, nil)
	const servers, keys = 4, 200
	bl := &batchLoader{missing: map[string]bool{"k7": true}}
	var batchers []*fill.Batcher[string]
	for range servers {
		c := newCache(t, s.Client(t, nil), nil)
		batchers = append(batchers, fill.NewBatcher(c, bl.load, &fill.BatchOptions{Window: 5 * time.Millisecond}))
	}
	ctx := redistest.Context(t, 30*time.Second)
	quitter, quit := context.WithCancel(ctx)
	quit()
	var wg sync.WaitGroup
	for i := range servers {
		for k := range keys {
			wg.Go(func() {
				key := fmt.Sprint("k", k)
				if i == 0 && k == 3 {
					// Gave up before asking: nothing starts.
					if _, err := batchers[i].Get(quitter, key); !errors.Is(err, context.Canceled) {
						t.Errorf("ended ctx: got %v", err)
					}
					return
				}
				v, err := batchers[i].Get(ctx, key)
				switch {
				case key == "k7":
					if !errors.Is(err, fill.ErrNotFound) {
						t.Errorf("absent key: got %q, %v; want ErrNotFound", v, err)
					}
				case err != nil || v != "v:"+key:
					t.Errorf("%s: got %q, %v", key, v, err)
				}
			})
		}
	}
	wg.Wait()
	calls, loaded := bl.loaded()
	if len(loaded) != keys || len(slices.Compact(loaded)) != keys {
		t.Errorf("%d keys loaded (%d distinct); want each of %d once", len(loaded), len(slices.Compact(loaded)), keys)
	}
	t.Logf("%d loader calls, %.1f keys per call", calls, float64(len(loaded))/float64(calls))
	if calls > keys/4 {
		t.Errorf("%d loader calls for %d keys; want batches", calls, keys)
	}
}

// TestBatcherCallerGivesUp: a caller that gives up does not cancel the
// batch for the others.
func TestBatcherCallerGivesUp(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := newCache(t, rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	bl := &batchLoader{gate: make(chan struct{})}
	bt := fill.NewBatcher(c, bl.load, nil)
	quitter, quit := context.WithCancel(ctx)
	errs := make(chan error, 2)
	go func() { _, err := bt.Get(quitter, "a"); errs <- err }()
	var got atomic.Value
	go func() {
		v, err := bt.Get(ctx, "b")
		got.Store(v)
		errs <- err
	}()
	redistest.WaitFor(t, "the batch loads", func() bool { n, _ := bl.loaded(); return n == 1 })
	quit()
	if err := <-errs; !errors.Is(err, context.Canceled) {
		t.Fatalf("quitter: got %v", err)
	}
	close(bl.gate)
	if err := <-errs; err != nil || got.Load() != "v:b" {
		t.Fatalf("the other caller: got %v, %v", got.Load(), err)
	}
	if _, keys := bl.loaded(); fmt.Sprint(keys) != "[a b]" {
		t.Errorf("loaded %v", keys)
	}
}

// TestGetManyOnCluster: a batch across the slots of a real Cluster.
func TestGetManyOnCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	a := newCache(t, cl.Client(t, nil), nil)
	b := newCache(t, cl.Client(t, nil), nil)
	ctx := redistest.Context(t, 30*time.Second)
	var keys []string
	for i := range 60 {
		keys = append(keys, fmt.Sprint("user:", i))
	}
	bl := &batchLoader{}
	got, err := fill.GetMany(ctx, a, keys, bl.load)
	if err != nil || len(got) != len(keys) {
		t.Fatalf("got %d values, %v", len(got), err)
	}
	got, err = fill.GetMany(ctx, b, keys, bl.load)
	if err != nil || len(got) != len(keys) {
		t.Fatalf("other server: got %d values, %v", len(got), err)
	}
	if calls, loaded := bl.loaded(); calls != 1 || len(loaded) != len(keys) {
		t.Errorf("%d calls for %d keys; want 1 for %d", calls, len(loaded), len(keys))
	}
}

// scriptTrips counts the round trips (a pipeline counts one) that run a
// script.
type scriptTrips struct{ n atomic.Int64 }

func isScript(cmd redis.Cmder) bool {
	switch cmd.Name() {
	case "eval", "evalsha", "eval_ro", "evalsha_ro":
		return true
	}
	return false
}

func (h *scriptTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *scriptTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if isScript(cmd) {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (h *scriptTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if slices.ContainsFunc(cmds, isScript) {
			h.n.Add(1)
		}
		return next(ctx, cmds)
	}
}

// pipeHook counts pipelines and single commands sent.
type pipeHook struct{ n atomic.Int64 }

func (h *pipeHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *pipeHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.n.Add(1); return next(ctx, cmd) }
}
func (h *pipeHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.n.Add(1); return next(ctx, cmds) }
}

// TestGetManyPanic: a batch loader's panic is re-raised in the caller.
func TestGetManyPanic(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := newCache(t, rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	defer func() {
		var pe *fill.PanicError
		if r := recover(); r == nil || !errors.As(r.(error), &pe) || pe.Value != "boom" {
			t.Fatalf("recovered %v; want a *PanicError with boom", r)
		}
	}()
	fill.GetMany(ctx, c, []string{"a", "b"}, func(context.Context, []string) (map[string]int, error) { panic("boom") })
	t.Fatal("GetMany did not panic")
}

// TestGetManyRedisDown: with Redis unreachable, a batch fails open as one
// loader call, not one per key.
func TestGetManyRedisDown(t *testing.T) {
	s := redistest.Start(t, nil)
	c := newCache(t, s.Client(t, nil), nil)
	ctx := redistest.Context(t, 20*time.Second)
	s.Kill(t)
	bl := &batchLoader{}
	got, err := fill.GetMany(ctx, c, []string{"a", "b", "c"}, bl.load)
	if err != nil || len(got) != 3 {
		t.Fatalf("got %v, %v", got, err)
	}
	if calls, _ := bl.loaded(); calls != 1 {
		t.Errorf("%d loader calls; want one for the batch", calls)
	}
	if n := c.Stats().FailOpens; n != 3 {
		t.Errorf("FailOpens = %d; want 3", n)
	}
}

// TestBatcherClose: Close during a batch load ends it: its callers get
// ErrClosed, and its locks are released for others to load.
func TestBatcherClose(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := fill.New(rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	bl := &batchLoader{gate: make(chan struct{})}
	bt := fill.NewBatcher(c, bl.load, nil)
	res := make(chan error, 1)
	go func() { _, err := bt.Get(ctx, "a"); res <- err }()
	redistest.WaitFor(t, "the batch loads", func() bool { n, _ := bl.loaded(); return n == 1 })
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-res; !errors.Is(err, fill.ErrClosed) {
		t.Fatalf("got %v; want ErrClosed", err)
	}
	if m.Exists("__locksmith:{a}") {
		t.Error("the lock is still held after Close")
	}
	if _, err := bt.Get(ctx, "a"); !errors.Is(err, fill.ErrClosed) {
		t.Errorf("Get after Close: %v", err)
	}
}

// tripHook counts round trips, a pipeline counting one, leaving out the
// handshakes of new connections.
type tripHook struct{ n atomic.Int64 }

func handshake(cmd redis.Cmder) bool { return cmd.Name() == "hello" || cmd.Name() == "client" }

func (h *tripHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *tripHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !handshake(cmd) {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (h *tripHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !slices.ContainsFunc(cmds, handshake) {
			h.n.Add(1)
		}
		return next(ctx, cmds)
	}
}

// scriptsLoaded returns a Cache on a new miniredis at addr, through rdb,
// whose scripts one batch has loaded.
func scriptsLoaded(t *testing.T) (addr string, rdb *redis.Client, c *fill.Cache, ctx context.Context) {
	m, _ := redistest.Mini(t)
	rdb = redistest.Client(t, m.Addr())
	c = newCache(t, rdb, nil)
	ctx = redistest.Context(t, 20*time.Second)
	bl := &batchLoader{}
	if _, err := fill.GetMany(ctx, c, []string{"warm-up"}, bl.load); err != nil {
		t.Fatal(err)
	}
	return m.Addr(), rdb, c, ctx
}

// TestGetManyScriptsFlushed: a batch on a Redis that has not seen the
// claim script (a restart, a failover, a new replica) loads it once and
// sends the pipeline again, instead of claiming each key alone.
func TestGetManyScriptsFlushed(t *testing.T) {
	_, rdb, c, ctx := scriptsLoaded(t)
	bl := &batchLoader{}
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	keys := make([]string, 300)
	for i := range keys {
		keys[i] = fmt.Sprint("k", i)
	}
	h := &tripHook{}
	rdb.AddHook(h)
	got, err := fill.GetMany(ctx, c, keys, bl.load)
	if err != nil || len(got) != len(keys) {
		t.Fatalf("got %d values, %v", len(got), err)
	}
	// Claims: a pipeline, SCRIPT LOAD, the pipeline again; then the same
	// for each of three chunks' settles at worst (they run together).
	n := h.n.Load()
	t.Logf("%d round trips for %d cold keys", n, len(keys))
	if n > 12 {
		t.Errorf("%d round trips for %d cold keys; want at most 12", n, len(keys))
	}
}

// loseSettleReply runs the first pipelined store of a batch and then
// reports its connection lost, as when the replies never arrived.
type loseSettleReply struct{ done atomic.Bool }

func (h *loseSettleReply) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *loseSettleReply) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *loseSettleReply) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if err == nil && scriptMode(cmds[0]) == "s" && h.done.CompareAndSwap(false, true) {
			return io.ErrUnexpectedEOF
		}
		return err
	}
}

// TestGetManyRetriedSettle: a batch's store whose replies were lost ran
// all the same; its retry, finding the locks released, counts no stale
// store, and the local tier keeps the values, as for a single key.
func TestGetManyRetriedSettle(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	c := newCache(t, rdb, &fill.Options{Local: &fill.LocalOptions{MaxStaleness: time.Minute}})
	ctx := redistest.Context(t, 20*time.Second)
	one := func(context.Context) (int, error) { return 1, nil }
	warmLocal(t, ctx, c, "warm", one)
	h := &loseSettleReply{}
	rdb.AddHook(h)
	got, err := fill.GetMany(ctx, c, []string{"a", "b"}, func(_ context.Context, keys []string) (map[string]int, error) {
		m := map[string]int{}
		for _, k := range keys {
			m[k] = 7
		}
		return m, nil
	})
	if err != nil || len(got) != 2 {
		t.Fatalf("got %v, %v", got, err)
	}
	if !h.done.Load() {
		t.Fatal("no store's replies were lost")
	}
	if n := c.Stats().StaleStores; n != 0 {
		t.Errorf("StaleStores = %d; want 0: the values were stored", n)
	}
	before := c.Stats().LocalHits
	if v, err := fill.Get(ctx, c, "a", func(context.Context) (int, error) { return 0, errors.New("loaded") }); err != nil || v != 7 {
		t.Fatalf("got %v, %v", v, err)
	}
	if c.Stats().LocalHits == before {
		t.Error("the batch's value was not kept in the local tier")
	}
}

// TestBatchLoaderGoexit: a batch loader that calls runtime.Goexit ends
// its keys as a single key's does: each caller gets an error naming
// Goexit at once, and each lock is released, not renewed for the life of
// the process; through GetMany, a Batcher, and a fleet's gatherer.
func TestBatchLoaderGoexit(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := newCache(t, rdb, nil)
	goexit := func(context.Context, []string) (map[string]string, error) {
		runtime.Goexit()
		return nil, nil
	}
	released := func(keys ...string) {
		t.Helper()
		for _, k := range keys {
			if m.Exists("__locksmith:{" + k + "}") {
				t.Errorf("the lock on %s is left after Goexit", k)
			}
		}
	}
	ctx := redistest.Context(t, 5*time.Second)
	_, err := fill.GetMany(ctx, c, []string{"many-a", "many-b"}, goexit)
	var be *fill.BatchError
	if !errors.As(err, &be) || !strings.Contains(err.Error(), "Goexit") || ctx.Err() != nil {
		t.Fatalf("GetMany: %v; want a BatchError naming runtime.Goexit, before the ctx ends", err)
	}
	released("many-a", "many-b")

	// A key another holder had: GetMany waits for it, then claims it when
	// the holder goes without a word, and loads it alone.
	cp := newCache(t, rdb, &fill.Options{PollInterval: 20 * time.Millisecond})
	if err := rdb.Set(ctx, "__locksmith:{held}", "another", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := fill.GetMany(ctx, cp, []string{"held"}, goexit)
		done <- err
	}()
	redistest.WaitFor(t, "GetMany waiting for the held key", func() bool { return cp.Stats().Misses == 1 })
	m.Del("__locksmith:{held}")
	if err := <-done; err == nil || !strings.Contains(err.Error(), "Goexit") || ctx.Err() != nil {
		t.Fatalf("GetMany of a key held, then free: %v; want an error naming runtime.Goexit, before the ctx ends", err)
	}
	released("held")

	for _, opt := range []*fill.BatchOptions{nil, {FleetWide: true, Name: "goexit"}} {
		bt := fill.NewBatcher(c, goexit, opt)
		key := fmt.Sprintf("batcher-%v", opt != nil)
		ctx := redistest.Context(t, 5*time.Second)
		if _, err := bt.Get(ctx, key); err == nil || !strings.Contains(err.Error(), "Goexit") || ctx.Err() != nil {
			t.Fatalf("Batcher (%+v) Get: %v; want an error naming runtime.Goexit, before the ctx ends", opt, err)
		}
		released(key)
	}
}

// TestBatchLoaderNotFound: a batch loader error wrapping ErrNotFound makes
// every key of its call an absence, cached for NegativeTTL, as Get's
// loader's is: a Get waiting on another server gets ErrNotFound, and the
// next GetMany finds the absence without a loader call. It used to be a
// failure: the other server's Get got ErrLoadFailed, and nothing was cached.
func TestBatchLoaderNotFound(t *testing.T) {
	m, rdb := redistest.Mini(t)
	a := newCache(t, rdb, nil)
	b := newCache(t, redistest.Client(t, m.Addr()), nil)
	ctx := redistest.Context(t, 10*time.Second)
	var calls atomic.Int32
	gate := make(chan struct{})
	load := func(context.Context, []string) (map[string]int, error) {
		if calls.Add(1) == 1 {
			<-gate
		}
		return nil, fmt.Errorf("no such user: %w", fill.ErrNotFound)
	}
	res := make(chan error, 1)
	go func() {
		out, err := fill.GetMany(ctx, a, []string{"u"}, load)
		if len(out) != 0 {
			t.Errorf("GetMany: %v; want nothing", out)
		}
		res <- err
	}()
	redistest.WaitFor(t, "the batch's loader call", func() bool { return calls.Load() == 1 })
	bres := make(chan error, 1)
	go func() {
		_, err := fill.Get(ctx, b, "u", func(context.Context) (int, error) { return 0, errors.New("loaded twice") })
		bres <- err
	}()
	redistest.WaitFor(t, "the other server waiting", func() bool { return b.Stats().Misses == 1 })
	close(gate)
	if err := <-res; err != nil {
		t.Errorf("GetMany: %v; want nil (an absence)", err)
	}
	if err := <-bres; !errors.Is(err, fill.ErrNotFound) {
		t.Errorf("the other server's Get: %v; want ErrNotFound", err)
	}
	if _, err := fill.GetMany(ctx, a, []string{"u"}, load); err != nil || calls.Load() != 1 {
		t.Errorf("second GetMany: %v, %d loader calls; want the cached absence, 1 call", err, calls.Load())
	}
}

// failScriptLoad fails every SCRIPT LOAD, as a client whose pool is busy,
// or a Cluster with a node away (the load goes to every node), would.
type failScriptLoad struct{}

func (failScriptLoad) DialHook(next redis.DialHook) redis.DialHook { return next }
func (failScriptLoad) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if a := cmd.Args(); len(a) > 1 && cmd.Name() == "script" && fmt.Sprint(a[1]) == "load" {
			cmd.SetErr(io.ErrUnexpectedEOF)
			return io.ErrUnexpectedEOF
		}
		return next(ctx, cmd)
	}
}
func (failScriptLoad) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestGetManySettleScriptLoadFails: a batch's settle that meets NOSCRIPT
// (Redis lost its scripts during the load) and then cannot load the
// script stores the values by EVAL. It used to report
// NOSCRIPT as Redis refusing the values: nothing was stored, and each
// key's waiters got the failure "value not stored".
func TestGetManySettleScriptLoadFails(t *testing.T) {
	addr, rdb, c, ctx := scriptsLoaded(t)
	rdb.AddHook(failScriptLoad{})
	direct := redistest.Client(t, addr)
	keys := []string{"a", "b", "c"}
	got, err := fill.GetMany(ctx, c, keys, func(ctx context.Context, keys []string) (map[string]string, error) {
		// The claims ran; the settle will meet NOSCRIPT.
		if err := direct.ScriptFlush(ctx).Err(); err != nil {
			return nil, err
		}
		out := make(map[string]string, len(keys))
		for _, k := range keys {
			out[k] = "v:" + k
		}
		return out, nil
	})
	if err != nil || len(got) != len(keys) {
		t.Fatalf("got %v, %v", got, err)
	}
	other := newCache(t, redistest.Client(t, addr), nil)
	for _, k := range keys {
		v, err := fill.Get(ctx, other, k, func(context.Context) (string, error) {
			return "", fmt.Errorf("%s loaded again: its value was not stored", k)
		})
		if err != nil || v != "v:"+k {
			t.Errorf("another server's Get(%s) = %q, %v; want the stored value", k, v, err)
		}
	}
}

// TestBatchLeasesRenewedTogether: the locks of a batch whose load outlasts
// a third of LockTTL are renewed together, one call for them all per
// renewal, not one call each at the same instant.
func TestBatchLeasesRenewedTogether(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	renewals := &renewalCalls{}
	rdb.AddHook(renewals)
	c := newCache(t, rdb, &fill.Options{LockTTL: 300 * time.Millisecond})
	ctx := redistest.Context(t, 20*time.Second)
	keys := make([]string, 20)
	locks := map[string]bool{}
	for i := range keys {
		keys[i] = "renewed:" + strconv.Itoa(i)
		locks[lease.LockKey(fill.DefaultPrefix, keys[i])] = true
	}
	m, err := fill.GetMany(ctx, c, keys, func(ctx context.Context, keys []string) (map[string]string, error) {
		// Loads until its leases were renewed twice (or one alone).
		for {
			if alone, together, _ := renewals.counts(locks); alone > 0 || together >= 2 {
				break
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
		out := map[string]string{}
		for _, k := range keys {
			out[k] = "v:" + k
		}
		return out, nil
	})
	if err != nil || len(m) != len(keys) {
		t.Fatalf("GetMany: %d values, %v", len(m), err)
	}
	if alone, _, most := renewals.counts(locks); alone != 0 || most != len(keys) {
		t.Errorf("the batch's leases were renewed %d times alone, at most %d in one call; want all %d in each",
			alone, most, len(keys))
	}
}
