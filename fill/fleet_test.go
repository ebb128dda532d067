package fill_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
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

// fleetBatchers returns a FleetWide Batcher for each client, each on a
// Cache of its own (a server of a fleet), loading with its own batchLoader.
// Each call of a loader takes delay.
func fleetBatchers(t *testing.T, clients []redis.UniversalClient, opt *fill.Options, bo fill.BatchOptions,
	delay time.Duration) ([]*fill.Batcher[string], []*batchLoader, []*fill.Cache) {
	var bts []*fill.Batcher[string]
	var loaders []*batchLoader
	var caches []*fill.Cache
	bo.FleetWide = true
	for _, rdb := range clients {
		bl := &batchLoader{missing: map[string]bool{"k7": true}, delay: delay}
		c := newCache(t, rdb, opt)
		bts = append(bts, fill.NewBatcher(c, bl.load, &bo))
		loaders = append(loaders, bl)
		caches = append(caches, c)
	}
	return bts, loaders, caches
}

// getAll has every Batcher Get each key whose index modulo the number of
// Batchers is its own or the next one's (so each key is missed on two
// servers), all at once, and checks the values.
func getAll(t *testing.T, ctx context.Context, bts []*fill.Batcher[string], keys []string) {
	var wg sync.WaitGroup
	for i, bt := range bts {
		for k, key := range keys {
			if k%len(bts) != i && (k+1)%len(bts) != i {
				continue
			}
			wg.Go(func() {
				v, err := bt.Get(ctx, key)
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
}

// fleetLoads sums the loader calls and keys of every server.
func fleetLoads(loaders []*batchLoader) (calls int, keys []string) {
	for _, bl := range loaders {
		n, k := bl.loaded()
		calls += n
		keys = append(keys, k...)
	}
	slices.Sort(keys)
	return calls, keys
}

func checkOnce(t *testing.T, loaded []string, n int) {
	t.Helper()
	if len(loaded) != n || len(slices.Compact(slices.Clone(loaded))) != n {
		t.Errorf("%d keys loaded (%d distinct); want each of %d once", len(loaded), len(slices.Compact(slices.Clone(loaded))), n)
	}
}

func keyList(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprint("k", i)
	}
	return keys
}

// TestFleetWideBatcher: keys missed on 16 servers go out in the fleet's
// batches, full ones, not one batch per server: about ids ÷ MaxSize loader
// calls across the fleet, each key loaded once.
func TestFleetWideBatcher(t *testing.T) {
	s := redistest.Start(t, nil)
	const servers, keys, maxSize = 16, 400, 100
	var clients []redis.UniversalClient
	for range servers {
		clients = append(clients, s.Client(t, nil))
	}
	bts, loaders, _ := fleetBatchers(t, clients, nil, fill.BatchOptions{Name: "users", MaxSize: maxSize, Window: 20 * time.Millisecond}, 50*time.Millisecond)
	ctx := redistest.Context(t, 30*time.Second)
	getAll(t, ctx, bts, keyList(keys))
	calls, loaded := fleetLoads(loaders)
	checkOnce(t, loaded, keys)
	t.Logf("%d loader calls for %d keys on %d servers", calls, keys, servers)
	if want := 2 * keys / maxSize; calls > want {
		t.Errorf("%d loader calls for %d keys; want at most %d (twice ids ÷ MaxSize)", calls, keys, want)
	}
	// Nothing is left behind in Redis but the values.
	redistest.WaitFor(t, "the gatherer to quit", func() bool {
		n, _ := s.Client(t, nil).Exists(ctx, "__locksmith:{batch:users}:gatherer",
			"__locksmith:{batch:users}:queue", "__locksmith:{batch:users}:loading").Result()
		return n == 0
	})
}

// TestFleetWideNeedsName: a FleetWide Batcher without a Name cannot work.
func TestFleetWideNeedsName(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := newCache(t, rdb, nil)
	bt := fill.NewBatcher(c, (&batchLoader{}).load, &fill.BatchOptions{FleetWide: true})
	if _, err := bt.Get(context.Background(), "a"); !errors.Is(err, fill.ErrInvalid) {
		t.Errorf("got %v; want ErrInvalid", err)
	}
}

// TestFleetWideOnCluster: the gatherer's keys share one slot of a real
// Cluster, the batch's keys spread over every node.
func TestFleetWideOnCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	const servers, keys = 4, 200
	var clients []redis.UniversalClient
	for range servers {
		clients = append(clients, cl.Client(t, nil))
	}
	bts, loaders, _ := fleetBatchers(t, clients, nil, fill.BatchOptions{Name: "users", Window: 20 * time.Millisecond}, 50*time.Millisecond)
	ctx := redistest.Context(t, 30*time.Second)
	getAll(t, ctx, bts, keyList(keys))
	calls, loaded := fleetLoads(loaders)
	checkOnce(t, loaded, keys)
	if calls > 4 {
		t.Errorf("%d loader calls for %d keys; want at most 4", calls, keys)
	}
}

// TestFleetWideRedisDown: with Redis unreachable, each server loads its own
// keys, in one loader call.
func TestFleetWideRedisDown(t *testing.T) {
	s := redistest.Start(t, nil)
	bts, loaders, _ := fleetBatchers(t, []redis.UniversalClient{s.Client(t, nil)}, nil,
		fill.BatchOptions{Name: "users", Window: 5 * time.Millisecond}, 0)
	ctx := redistest.Context(t, 20*time.Second)
	s.Kill(t)
	var wg sync.WaitGroup
	for _, key := range []string{"a", "b", "c"} {
		wg.Go(func() {
			if v, err := bts[0].Get(ctx, key); err != nil || v != "v:"+key {
				t.Errorf("%s: got %q, %v", key, v, err)
			}
		})
	}
	wg.Wait()
	if calls, _ := loaders[0].loaded(); calls != 1 {
		t.Errorf("%d loader calls; want one", calls)
	}
}

// cutOffClient returns a client of a server reaching Redis through p, which
// a test cuts off: it gives up on a call within 200ms, and never retries.
func cutOffClient(p *redistest.Proxy) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: p.Addr(), MaxRetries: -1, DialTimeout: 200 * time.Millisecond,
		ReadTimeout: 200 * time.Millisecond, WriteTimeout: 200 * time.Millisecond})
}

// TestFleetWideGathererDies: the gatherer loses its connection to Redis in
// the middle of its batches (its loader called, never to settle), perhaps
// with keys queued: another server takes the gatherer's lease once it runs
// out, and loads the keys the dead gatherer had popped and those queued,
// each once, for every waiter.
func TestFleetWideGathererDies(t *testing.T) {
	s := redistest.Start(t, nil)
	p := redistest.NewProxy(t, s.Addr())
	opt := &fill.Options{LockTTL: 30 * time.Second}
	bo := fill.BatchOptions{Name: "users", Window: 10 * time.Millisecond}
	dead, deadLoads, _ := fleetBatchers(t, []redis.UniversalClient{cutOffClient(p)}, opt, bo, 0)
	deadLoads[0].gate = make(chan struct{})
	live, liveLoads, _ := fleetBatchers(t, []redis.UniversalClient{s.Client(t, nil), s.Client(t, nil)}, opt, bo, 0)
	ctx := redistest.Context(t, 30*time.Second)
	rdb := s.Client(t, nil)

	// The first server misses k0..k9, gathers them itself and calls its
	// loader, which does not return.
	gone, giveUp := context.WithCancel(ctx)
	defer giveUp()
	keys := keyList(20)
	for _, key := range keys[:10] {
		go func() { _, _ = dead[0].Get(gone, key) }()
	}
	redistest.WaitFor(t, "the gatherer's loader call", func() bool { n, _ := deadLoads[0].loaded(); return n == 1 })
	// The others miss the same keys, which they await, and ten more, which
	// they hand off: queued behind the batch loading, or popped too, as a
	// batch of their own (the first one being slow), whose loader call does
	// not return either.
	done := make(chan struct{})
	go func() {
		defer close(done)
		getAll(t, ctx, live, keys)
	}()
	redistest.WaitFor(t, "ten keys queued or popped", func() bool {
		_, popped := deadLoads[0].loaded()
		return int(rdb.ZCard(ctx, "__locksmith:{batch:users}:queue").Val())+len(popped) == len(keys)
	})
	// The gatherer is cut off, its callers gone: its lease runs out.
	giveUp()
	p.Refuse(true)
	p.DropAll()
	<-done
	calls, loaded := fleetLoads(liveLoads)
	checkOnce(t, loaded, len(keys))
	t.Logf("the successor loaded %d keys in %d calls", len(loaded), calls)
	if n, popped := deadLoads[0].loaded(); n > 2 || len(popped) > len(keys) {
		t.Errorf("the dead gatherer's loader was called %d times for %d keys; want at most 2 for %d", n, len(popped), len(keys))
	}
	close(deadLoads[0].gate)
}

// TestFleetWideGathererCloses: a gatherer closed in the middle of a batch
// releases its keys and resigns its lease: the other servers load the keys
// they wait for, each once.
func TestFleetWideGathererCloses(t *testing.T) {
	s := redistest.Start(t, nil)
	bo := fill.BatchOptions{Name: "users", Window: 10 * time.Millisecond}
	closing, closingLoads, caches := fleetBatchers(t, []redis.UniversalClient{s.Client(t, nil)}, nil, bo, 0)
	closingLoads[0].gate = make(chan struct{})
	defer close(closingLoads[0].gate)
	live, liveLoads, _ := fleetBatchers(t, []redis.UniversalClient{s.Client(t, nil), s.Client(t, nil)}, nil, bo, 0)
	ctx := redistest.Context(t, 30*time.Second)
	keys := keyList(10)
	errs := make(chan error, len(keys))
	for _, key := range keys {
		go func() { _, err := closing[0].Get(ctx, key); errs <- err }()
	}
	redistest.WaitFor(t, "the gatherer's loader call", func() bool { n, _ := closingLoads[0].loaded(); return n == 1 })
	done := make(chan struct{})
	go func() {
		defer close(done)
		getAll(t, ctx, live, keys)
	}()
	if err := caches[0].Close(); err != nil {
		t.Fatal(err)
	}
	for range keys {
		if err := <-errs; !errors.Is(err, fill.ErrClosed) {
			t.Errorf("the closed server's Get: %v; want ErrClosed", err)
		}
	}
	<-done
	_, loaded := fleetLoads(liveLoads)
	checkOnce(t, loaded, len(keys))
}

// TestFleetWideLoaderError: a failed loader call reaches the waiters of its
// keys on every server, wrapped in ErrLoadFailed, and is not cached: the
// next Get loads again.
func TestFleetWideLoaderError(t *testing.T) {
	_, rdb := redistest.Mini(t)
	bts, loaders, _ := fleetBatchers(t, []redis.UniversalClient{rdb, redistest.Client(t, rdb.Options().Addr)}, nil,
		fill.BatchOptions{Name: "users", Window: 5 * time.Millisecond}, 0)
	for _, bl := range loaders {
		bl.err = errors.New("upstream down")
	}
	ctx := redistest.Context(t, 20*time.Second)
	var wg sync.WaitGroup
	for _, bt := range bts {
		wg.Go(func() {
			if _, err := bt.Get(ctx, "a"); !errors.Is(err, fill.ErrLoadFailed) {
				t.Errorf("got %v; want ErrLoadFailed", err)
			}
		})
	}
	wg.Wait()
	calls, _ := fleetLoads(loaders)
	if calls != 1 {
		t.Errorf("%d loader calls; want 1", calls)
	}
	for _, bl := range loaders {
		bl.mu.Lock()
		bl.err = nil
		bl.mu.Unlock()
	}
	if v, err := bts[1].Get(ctx, "a"); err != nil || v != "v:a" {
		t.Errorf("after the failure: got %q, %v", v, err)
	}
}

// TestFleetQueuedClaimKept: keys handed off while the gatherer's batches
// load wait in the queue (only full batches go out meanwhile) for as long
// as they load, here longer than the lock's lease: their claimer keeps the
// claims' leases meanwhile, so its own waiters do not claim and load them
// again, before the gatherer loads them a second time; and renews the
// leases of one hand-off together, one call for them all rather than one
// each at the same instant. Real redis-server: the lease runs out in real
// time.
func TestFleetQueuedClaimKept(t *testing.T) {
	s := redistest.Start(t, nil)
	const ttl = 300 * time.Millisecond
	rdb := s.Client(t, nil)
	renewals := &renewalCalls{}
	rdb.AddHook(renewals)
	c := newCache(t, rdb, &fill.Options{LockTTL: ttl, PollInterval: 20 * time.Millisecond})
	var mu sync.Mutex
	calls := map[string]int{}
	gates := map[string]chan struct{}{"a": make(chan struct{}), "b": make(chan struct{})}
	var opened sync.Map
	open := func(name string) {
		if _, done := opened.LoadOrStore(name, true); !done {
			close(gates[name])
		}
	}
	// Registered after the Cache's Close: runs before it, so that a
	// failed test does not leave a load blocked and Close waiting.
	t.Cleanup(func() { open("a"); open("b") })
	called := make(chan string, 10)
	load := func(_ context.Context, keys []string) (map[string]string, error) {
		mu.Lock()
		for _, k := range keys {
			calls[k]++
		}
		mu.Unlock()
		called <- keys[0]
		if g := gates[keys[0]]; g != nil {
			<-g
		}
		m := map[string]string{}
		for _, k := range keys {
			m[k] = "v:" + k
		}
		return m, nil
	}
	bt := fill.NewBatcher(c, load, &fill.BatchOptions{FleetWide: true, Name: "queued", Window: 2 * time.Millisecond})
	ctx := redistest.Context(t, 20*time.Second)
	get := func(key string) chan error {
		done := make(chan error, 1)
		go func() {
			v, err := bt.Get(ctx, key)
			if err == nil && v != "v:"+key {
				err = fmt.Errorf("got %q", v)
			}
			done <- err
		}()
		return done
	}
	wantCall := func(key string) {
		t.Helper()
		if k := <-called; k != key {
			t.Fatalf("a loader call for %s; want one for %s", k, key)
		}
	}
	// Batch a loads for 3 leases; b, popped meanwhile (the gatherer does
	// not know yet how long its batches take), is still loading when a
	// ends: from then on, the gatherer pops only full batches until b
	// ends or has taken twice as long as a.
	a := get("a")
	wantCall("a")
	b := get("b")
	wantCall("b")
	time.Sleep(3 * ttl)
	open("a")
	if err := <-a; err != nil {
		t.Fatal(err)
	}
	const queuedKeys = 20
	waits := []chan error{b}
	locks := map[string]bool{}
	for i := range queuedKeys {
		key := "queued:" + strconv.Itoa(i)
		locks[lease.LockKey(fill.DefaultPrefix, key)] = true
		waits = append(waits, get(key))
	}
	// Two leases while b loads and the keys wait in the queue: nobody
	// may load them.
	select {
	case k := <-called:
		t.Fatalf("%s loaded while b held the queue; want it to wait, its claim kept", k)
	case <-time.After(2 * ttl):
	}
	open("b")
	for _, done := range waits {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range queuedKeys {
		if n := calls["queued:"+strconv.Itoa(i)]; n != 1 {
			t.Errorf("queued key %d was loaded %d times; want once", i, n)
		}
	}
	alone, together, most := renewals.counts(locks)
	if alone != 0 || together == 0 || most < 2 {
		t.Errorf("the queued keys' leases were renewed %d times alone, %d in calls of several (at most %d in one); want none alone",
			alone, together, most)
	}
}

// renewalCalls records the lease renewals a client sends: alone, the lock
// of each; in a pipeline, the locks of each pipeline.
type renewalCalls struct {
	mu    sync.Mutex // guards alone and piped
	alone []string
	piped [][]string
}

// counts returns how many renewals of locks went alone, how many
// pipelines carried some, and the most one carried.
func (h *renewalCalls) counts(locks map[string]bool) (alone, together, most int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, k := range h.alone {
		if locks[k] {
			alone++
		}
	}
	for _, p := range h.piped {
		n := 0
		for _, k := range p {
			if locks[k] {
				n++
			}
		}
		if n > 0 {
			together++
			most = max(most, n)
		}
	}
	return alone, together, most
}

func (h *renewalCalls) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *renewalCalls) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if k, ok := lease.IsRenewal(cmd); ok {
			h.mu.Lock()
			h.alone = append(h.alone, k)
			h.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}
func (h *renewalCalls) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		var locks []string
		for _, cmd := range cmds {
			if k, ok := lease.IsRenewal(cmd); ok {
				locks = append(locks, k)
			}
		}
		if len(locks) > 0 {
			h.mu.Lock()
			h.piped = append(h.piped, locks)
			h.mu.Unlock()
		}
		return next(ctx, cmds)
	}
}

// TestFleetWideLoaderPanic: a FleetWide batch's loader that panics fails
// its keys on every server, the gatherer's own included, with an error
// wrapping ErrLoadFailed that names the panic. It used to re-raise the
// panic on the gatherer's goroutine, where no caller could recover it: the
// whole process died.
func TestFleetWideLoaderPanic(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := newCache(t, rdb, nil)
	bt := fill.NewBatcher(c, func(context.Context, []string) (map[string]int, error) { panic("boom") },
		&fill.BatchOptions{FleetWide: true, Name: "panics"})
	ctx := redistest.Context(t, 10*time.Second)
	_, err := bt.Get(ctx, "a")
	if !errors.Is(err, fill.ErrLoadFailed) || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("Get: %v; want ErrLoadFailed naming the panic", err)
	}
}

// TestFleetWideBatchOverUnpack: a FleetWide batch of more keys than Redis's
// Lua unpacks at once (about 8,000) is queued, popped and loaded in one
// call. Every pop of one used to fail ("too many results to unpack"),
// logged as Redis unreachable and tried again for good, while every queued
// key of the fleet waited.
func TestFleetWideBatchOverUnpack(t *testing.T) {
	s := redistest.Start(t, nil)
	c := newCache(t, s.Client(t, nil), nil)
	var calls, loaded atomic.Int32
	bt := fill.NewBatcher(c, func(_ context.Context, keys []string) (map[string]int, error) {
		calls.Add(1)
		loaded.Add(int32(len(keys)))
		m := make(map[string]int, len(keys))
		for _, k := range keys {
			m[k] = 1
		}
		return m, nil
	}, &fill.BatchOptions{FleetWide: true, Name: "big", MaxSize: 20000, Window: 500 * time.Millisecond})
	const n = 8500
	ctx := redistest.Context(t, 60*time.Second)
	var wg sync.WaitGroup
	var fails atomic.Int32
	for i := range n {
		wg.Go(func() {
			if _, err := bt.Get(ctx, fmt.Sprint("k", i)); err != nil {
				if fails.Add(1) == 1 {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if fails.Load() > 0 || loaded.Load() != n {
		t.Fatalf("%d of %d Gets failed; %d keys loaded in %d calls", fails.Load(), n, loaded.Load(), calls.Load())
	}
	t.Logf("%d keys in %d loader calls", n, calls.Load())
}

// TestPollsLeaveRoomForLoads: flights waiting by push look at their keys
// again every PollInterval; with more waiting than Redis answers looks
// per PollInterval, those looks used to take every connection of the
// client's pool, and the gatherer's pop and its batch's settle waited
// behind them past the pool's timeout, tried again, and waited again (the
// settle's values were lost as failures): the keys everyone waited for
// were never loaded. Looks that only poll take at most half the pool.
func TestPollsLeaveRoomForLoads(t *testing.T) {
	s := redistest.Start(t, nil)
	// A slow Redis: each script call (or pipeline of them) holds its
	// connection 2ms, so the pool answers about 2,000 a second, fewer than
	// the 150,000 a second that 3,000 flights polling every 20ms ask for.
	var scripts atomic.Int64 // script calls sent
	rdb := s.Client(t, &redis.Options{PoolSize: 4, PoolTimeout: 200 * time.Millisecond,
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			conn, err := d.DialContext(ctx, network, addr)
			return slowConn{conn, &scripts}, err
		}})
	var logged redistest.Buffer
	logger := slog.New(slog.NewTextHandler(&logged, nil))
	c := newCache(t, rdb, &fill.Options{PollInterval: 20 * time.Millisecond, Logger: logger})
	var calls, loaded atomic.Int32
	bt := fill.NewBatcher(c, func(_ context.Context, keys []string) (map[string]int, error) {
		calls.Add(1)
		loaded.Add(int32(len(keys)))
		time.Sleep(time.Second)
		m := make(map[string]int, len(keys))
		for _, k := range keys {
			m[k] = 1
		}
		return m, nil
	}, &fill.BatchOptions{FleetWide: true, Name: "polled", Window: 20 * time.Millisecond, MaxSize: 5000})
	const n = 3000
	ctx := redistest.Context(t, 30*time.Second)
	var wg sync.WaitGroup
	var fails atomic.Int32
	get := func(i int) {
		wg.Go(func() {
			if _, err := bt.Get(ctx, fmt.Sprint("k", i)); err != nil {
				if fails.Add(1) == 1 {
					t.Error(err)
				}
			}
		})
	}
	for i := range n - 10 {
		get(i)
	}
	// Ten more keys once the first batch loads and its keys' waiters poll:
	// their batch needs a pop.
	redistest.WaitFor(t, "the first batch's load", func() bool { return calls.Load() >= 1 })
	from := scripts.Load()
	redistest.WaitFor(t, "the waiters to poll", func() bool { return scripts.Load() >= from+200 })
	for i := n - 10; i < n; i++ {
		get(i)
	}
	wg.Wait()
	// Each key once, unless a batch outlived the gatherer's lease on a
	// busy host (then loaded again by design): every Get succeeds.
	if fails.Load() > 0 || loaded.Load() < n {
		t.Fatalf("%d of %d Gets failed; %d keys loaded in %d calls; logged:\n%s", fails.Load(), n, loaded.Load(), calls.Load(), logged.String())
	}
}

// slowConn holds its connection 2ms before each write of script calls,
// which it counts.
type slowConn struct {
	net.Conn
	scripts *atomic.Int64
}

func (c slowConn) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("evalsha")) {
		c.scripts.Add(1)
		time.Sleep(2 * time.Millisecond)
	}
	return c.Conn.Write(p)
}
