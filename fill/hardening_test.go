package fill_test

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestEndedContextStartsNothing: a Get whose ctx has already ended returns
// ctx.Err() and neither loads nor calls Redis.
func TestEndedContextStartsNothing(t *testing.T) {
	_, rdb := redistest.Mini(t)
	var h countHook
	rdb.AddHook(&h)
	c := newCache(t, rdb, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) {
		t.Error("loader ran for an ended ctx")
		return 1, nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v; want Canceled", err)
	}
	if n := h.n.Load(); n != 0 {
		t.Errorf("%d Redis calls for an ended ctx", n)
	}
}

// TestStoreRefusedOutOfMemory: under maxmemory-policy noeviction, Redis
// refuses the value's SET. The lock is still released and the waiters told
// at once: given the value when it fits in the message, an error when they
// would have had to read it.
func TestStoreRefusedOutOfMemory(t *testing.T) {
	s := redistest.Start(t, &redistest.ServerOptions{Args: []string{"--maxmemory-policy", "noeviction"}})
	a := newCache(t, s.Client(t, nil), &fill.Options{PublishLimit: 1 << 10})
	b := newCache(t, s.Client(t, nil), &fill.Options{PollInterval: time.Hour})
	ctx := redistest.Context(t, 30*time.Second)
	for _, tc := range []struct {
		name  string
		value string
	}{
		{"published value", "small"},
		{"value too large to publish", incompressible(4 << 10)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := tc.name
			g := make(chan struct{})
			leader := make(chan error, 1)
			go func() {
				_, err := fill.Get(ctx, a, key, func(context.Context) (string, error) { <-g; return tc.value, nil })
				leader <- err
			}()
			redistest.WaitFor(t, "the leader holds the lock", func() bool { return s.Do(t, "EXISTS", "__locksmith:{"+key+"}") == int64(1) })
			follower := make(chan error, 1)
			var got string
			looks := scriptCalls(t, s)
			go func() {
				v, err := fill.Get(ctx, b, key, func(context.Context) (string, error) { return "", errors.New("the follower loaded") })
				got = v
				follower <- err
			}()
			// The follower looked, subscribed and looked again: it waits.
			redistest.WaitFor(t, "the follower waits", func() bool { return scriptCalls(t, s) >= looks+2 })
			// Redis' own use (≈1 MB) exceeds this: every write is refused.
			s.SetMaxMemory(t, 1, "")
			defer s.SetMaxMemory(t, 0, "")
			close(g)
			if err := <-leader; err != nil {
				t.Fatalf("leader: %v", err)
			}
			select {
			case err := <-follower:
				if tc.value == "small" && (err != nil || got != "small") {
					t.Errorf("follower: got %q, %v; want the published value", got, err)
				}
				if tc.value != "small" && (!errors.Is(err, fill.ErrLoadFailed) || !strings.Contains(err.Error(), "OOM")) {
					t.Errorf("follower: got %v; want a failure saying the value was not stored", err)
				}
			case <-ctx.Done():
				t.Fatal("the follower waited out the lease")
			}
			if s.Do(t, "EXISTS", "__locksmith:{"+key+"}") != int64(0) {
				t.Error("the lock is still held")
			}
		})
	}
	if n := a.Stats().StoreErrors; n != 2 {
		t.Errorf("StoreErrors = %d; want 2", n)
	}
}

// TestPoolSaturated: a connection pool with no free connection is not an
// outage: callers wait their turn within their ctx, and no key is loaded
// twice while Redis is up.
func TestPoolSaturated(t *testing.T) {
	s := redistest.Start(t, nil)
	opts := &redis.Options{PoolSize: 2, PoolTimeout: time.Millisecond}
	caches := []*fill.Cache{newCache(t, s.Client(t, opts), nil), newCache(t, s.Client(t, opts), nil)}
	ctx := redistest.Context(t, 60*time.Second)
	// Pool timeouts taken for outages (fail open) loaded most of these
	// keys twice or more.
	const keys, callers = 300, 4
	var loads [keys]atomic.Int32
	var wg sync.WaitGroup
	for k := range keys {
		for i := range callers {
			wg.Go(func() {
				c := caches[i%2]
				v, err := fill.Get(ctx, c, fmt.Sprint(k), func(context.Context) (int, error) {
					loads[k].Add(1)
					time.Sleep(5 * time.Millisecond)
					return k, nil
				})
				if err != nil || v != k {
					t.Errorf("key %d: got %v, %v", k, v, err)
				}
			})
		}
	}
	wg.Wait()
	for k := range keys {
		if n := loads[k].Load(); n != 1 {
			t.Errorf("key %d loaded %d times; want once", k, n)
		}
	}
	if n := caches[0].Stats().FailOpens + caches[1].Stats().FailOpens; n != 0 {
		t.Errorf("FailOpens = %d with Redis up", n)
	}
}

// TestTransientReplies: READONLY (a failover under way) is an outage, not
// a permanent error: fail open loads, fail closed returns it.
func TestTransientReplies(t *testing.T) {
	s := redistest.Start(t, nil)
	ctx := redistest.Context(t, 30*time.Second)
	// A replica of a master that cannot be reached answers READONLY to
	// every write, as a demoted master does during a failover.
	s.Do(t, "REPLICAOF", "127.0.0.1", "1")
	t.Cleanup(func() { s.Do(t, "REPLICAOF", "NO", "ONE") })
	open := newCache(t, s.Client(t, &redis.Options{MaxRetries: -1}), nil)
	v, err := fill.Get(ctx, open, "k", func(context.Context) (int, error) { return 5, nil })
	if err != nil || v != 5 {
		t.Fatalf("fail open: got %v, %v; want the loader's value", v, err)
	}
	if n := open.Stats().FailOpens; n != 1 {
		t.Errorf("FailOpens = %d; want 1", n)
	}
	closed := newCache(t, s.Client(t, &redis.Options{MaxRetries: -1}), &fill.Options{FailClosed: true})
	_, err = fill.Get(ctx, closed, "k", func(context.Context) (int, error) { t.Error("loaded"); return 5, nil })
	if err == nil || !strings.Contains(err.Error(), "READONLY") {
		t.Fatalf("fail closed: got %v; want READONLY", err)
	}
}

// TestRing: fill on a real three-shard Ring, each key's lock, value and
// channel on the shard that owns it: one load per key, followers woken.
func TestRing(t *testing.T) {
	addrs := map[string]string{}
	for i := range 3 {
		addrs[fmt.Sprint("s", i)] = redistest.Start(t, nil).Addr()
	}
	var caches []*fill.Cache
	for range 3 {
		ring := redis.NewRing(&redis.RingOptions{Addrs: addrs})
		t.Cleanup(func() { _ = ring.Close() })
		caches = append(caches, newCache(t, ring, &fill.Options{PollInterval: time.Hour}))
	}
	ctx := redistest.Context(t, 30*time.Second)
	const keys = 12
	var loads atomic.Int32
	var wg sync.WaitGroup
	for k := range keys {
		for _, c := range caches {
			wg.Go(func() {
				v, err := fill.Get(ctx, c, fmt.Sprint("k", k), func(context.Context) (int, error) {
					loads.Add(1)
					time.Sleep(20 * time.Millisecond)
					return k, nil
				})
				if err != nil || v != k {
					t.Errorf("key %d: got %v, %v", k, v, err)
				}
			})
		}
	}
	wg.Wait()
	if n := loads.Load(); n != keys {
		t.Errorf("loads = %d; want %d", n, keys)
	}
}

// TestNoChannelPermission: with an ACL user that may not subscribe or
// publish, fill still works: waiters poll, the refusals are counted, and
// nothing loads twice.
func TestNoChannelPermission(t *testing.T) {
	s := redistest.Start(t, nil)
	s.Do(t, "ACL", "SETUSER", "nochan", "on", ">pw", "~*", "+@all", "resetchannels")
	opts := &redis.Options{Username: "nochan", Password: "pw"}
	a := newCache(t, s.Client(t, opts), nil)
	b := newCache(t, s.Client(t, opts), &fill.Options{PollInterval: 50 * time.Millisecond})
	ctx := redistest.Context(t, 30*time.Second)
	g := make(chan struct{})
	leader := make(chan error, 1)
	go func() {
		_, err := fill.Get(ctx, a, "k", func(context.Context) (int, error) { <-g; return 1, nil })
		leader <- err
	}()
	redistest.WaitFor(t, "the leader holds the lock", func() bool { return s.Do(t, "EXISTS", "__locksmith:{k}") == int64(1) })
	follower := make(chan error, 1)
	go func() {
		v, err := fill.Get(ctx, b, "k", func(context.Context) (int, error) { return 2, nil })
		if err == nil && v != 1 {
			err = fmt.Errorf("got %d; want the leader's 1", v)
		}
		follower <- err
	}()
	redistest.WaitFor(t, "the follower waits", func() bool { return b.Stats().Misses >= 1 })
	close(g)
	if err := <-leader; err != nil {
		t.Fatal(err)
	}
	if err := <-follower; err != nil {
		t.Fatal(err)
	}
	if n := a.Stats().NotifyErrors; n == 0 {
		t.Error("the leader's refused PUBLISH was not counted")
	}
	if n := b.Stats().NotifyErrors; n == 0 {
		t.Error("the follower's refused SUBSCRIBE was not counted")
	}
}

// TestBadPrefix: a prefix with a brace is refused with a clear error, and
// nothing is written or loaded.
func TestBadPrefix(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := newCache(t, rdb, &fill.Options{Prefix: "app{"})
	ctx := redistest.Context(t, 10*time.Second)
	_, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) { t.Error("loaded"); return 1, nil })
	if err == nil || !strings.Contains(err.Error(), "prefix") {
		t.Fatalf("got %v; want an error about the prefix", err)
	}
	if err := c.Delete(ctx, "k"); err == nil {
		t.Error("Delete: got nil error")
	}
	if keys := m.Keys(); len(keys) != 0 {
		t.Errorf("keys written: %v", keys)
	}
}

// TestOddNamesOnCluster: every key works on a Redis Cluster, the empty key
// and keys beginning with '}' included.
func TestOddNamesOnCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	c := newCache(t, cl.Client(t, nil), nil)
	ctx := redistest.Context(t, 30*time.Second)
	for _, key := range []string{"", "}", "}a{b}", "\xff", "{", "{}"} {
		v, err := fill.Get(ctx, c, key, func(context.Context) (string, error) { return "v" + key, nil })
		if err != nil || v != "v"+key {
			t.Fatalf("Get(%q): got %q, %v", key, v, err)
		}
		v, err = fill.Get(ctx, c, key, func(context.Context) (string, error) { return "", errors.New("loaded again") })
		if err != nil || v != "v"+key {
			t.Fatalf("Get(%q) again: got %q, %v; want a hit", key, v, err)
		}
		if err := c.Delete(ctx, key); err != nil {
			t.Fatalf("Delete(%q): %v", key, err)
		}
	}
}

// TestHugeHolderTTL: a foreign lock with a PTTL beyond what a
// time.Duration holds makes waiters poll at PollInterval, not every
// millisecond.
func TestHugeHolderTTL(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	c := newCache(t, rdb, &fill.Options{PollInterval: 200 * time.Millisecond})
	s.Do(t, "SET", "__locksmith:{k}", "foreign", "PX", fmt.Sprint(int64(1)<<60))
	before := scriptCalls(t, s)
	ctx, cancel := context.WithTimeout(redistest.Context(t, 20*time.Second), time.Second)
	defer cancel()
	_, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) { return 1, nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v; want DeadlineExceeded", err)
	}
	if n := scriptCalls(t, s) - before; n > 10 {
		t.Errorf("%d claims in 1s with a 200ms poll; want about 5", n)
	}
}

// scriptCalls returns how many scripts the server ran.
func scriptCalls(t *testing.T, s *redistest.Server) int64 {
	t.Helper()
	info, _ := s.Do(t, "INFO", "commandstats").(string)
	var n int64
	for _, line := range strings.Split(info, "\r\n") {
		for _, cmd := range []string{"cmdstat_evalsha:calls=", "cmdstat_eval:calls="} {
			if rest, ok := strings.CutPrefix(line, cmd); ok {
				var v int64
				fmt.Sscan(rest[:strings.IndexByte(rest, ',')], &v)
				n += v
			}
		}
	}
	return n
}

// dialCounter counts dials.
type dialCounter struct{ n atomic.Int32 }

func (d *dialCounter) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		d.n.Add(1)
		return next(ctx, network, addr)
	}
}
func (d *dialCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (d *dialCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestOutageRemembered: once Redis is found down, fail-open Gets load at
// once without dialling Redis each (only a background probe does), and
// Redis is used again once the probe finds it back.
func TestOutageRemembered(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	var dials dialCounter
	rdb.AddHook(&dials)
	c := newCache(t, rdb, nil)
	ctx := redistest.Context(t, 30*time.Second)
	if _, err := fill.Get(ctx, c, "warm", func(context.Context) (int, error) { return 0, nil }); err != nil {
		t.Fatal(err)
	}
	s.Kill(t)
	start := dials.n.Load()
	const gets = 200
	for i := range gets {
		v, err := fill.Get(ctx, c, fmt.Sprint(i), func(context.Context) (int, error) { return i, nil })
		if err != nil || v != i {
			t.Fatalf("Get %d with Redis down: got %v, %v", i, v, err)
		}
	}
	// The first Get finds Redis down (the client's dial retries); then
	// only probes dial, at most one every 50ms.
	if n := dials.n.Load() - start; n > 40 {
		t.Errorf("%d dials for %d Gets during an outage; want the first Get's and a few probes'", n, gets)
	}
	if st := c.Stats(); st.Outages != 1 || st.FailOpens != gets {
		t.Errorf("Outages %d, FailOpens %d; want 1, %d", st.Outages, st.FailOpens, gets)
	}
	s.Restart(t)
	redistest.WaitFor(t, "Redis used again", func() bool {
		before := c.Stats().FailOpens
		_, err := fill.Get(ctx, c, "after", func(context.Context) (int, error) { return 1, nil })
		return err == nil && c.Stats().FailOpens == before
	})
}

// incompressible returns n bytes of pseudo-random text.
func incompressible(n int) string {
	b := make([]byte, n)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = 'a' + byte(x%26)
	}
	return string(b)
}

// TestTTLForever: a TTL of math.MaxInt64 ("for ever"), set by SetTTL or
// WithTTL, keeps the value ten years, its stale window included. With a
// stale window the key's life overflowed and the value was kept a
// millisecond: every Get loaded it again.
func TestTTLForever(t *testing.T) {
	for name, get := range map[string]func(context.Context, *fill.Cache, func(context.Context) (int, error)) (int, error){
		"SetTTL": func(ctx context.Context, c *fill.Cache, load func(context.Context) (int, error)) (int, error) {
			return fill.Get(ctx, c, "k", func(ctx context.Context) (int, error) {
				fill.SetTTL(ctx, math.MaxInt64)
				return load(ctx)
			})
		},
		"WithTTL": func(ctx context.Context, c *fill.Cache, load func(context.Context) (int, error)) (int, error) {
			return fill.Get(ctx, c, "k", load, fill.WithTTL(math.MaxInt64))
		},
	} {
		t.Run(name, func(t *testing.T) {
			m, rdb := redistest.Mini(t)
			c := newCache(t, rdb, &fill.Options{StaleWhileRevalidate: time.Minute, Jitter: -1})
			ctx := redistest.Context(t, 10*time.Second)
			var calls atomic.Int32
			load := func(context.Context) (int, error) { calls.Add(1); return 1, nil }
			for range 3 {
				if _, err := get(ctx, c, load); err != nil {
					t.Fatal(err)
				}
				m.FastForward(time.Second)
			}
			if ttl := m.TTL(fill.DefaultPrefix + "{k}:value"); ttl < 365*24*time.Hour {
				t.Errorf("value kept %v; want years", ttl)
			}
			if n := calls.Load(); n != 1 {
				t.Errorf("%d loads; want 1", n)
			}
		})
	}
}

// TestValueRefusedByRedis: a value Redis refuses at the protocol level
// (over its proto-max-bulk-len: the settle script never runs) is settled
// as a failure: the lock is released and another server's waiting Get
// returns the refusal. The lock was left for its whole lease, the other
// server's Get waiting.
func TestValueRefusedByRedis(t *testing.T) {
	s := redistest.Start(t, &redistest.ServerOptions{Args: []string{"--proto-max-bulk-len", "1mb"}})
	a := newCache(t, s.Client(t, nil), nil)
	b := newCache(t, s.Client(t, nil), &fill.Options{PollInterval: time.Minute})
	ctx := redistest.Context(t, 30*time.Second)
	big := make([]byte, 2<<20) // random: not compressed below the limit
	if _, err := crand.Read(big); err != nil {
		t.Fatal(err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	aDone := make(chan error, 1)
	go func() {
		_, err := fill.Get(ctx, a, "k", func(context.Context) ([]byte, error) {
			close(started)
			<-release
			return big, nil
		})
		aDone <- err
	}()
	<-started
	bDone := make(chan error, 1)
	go func() {
		_, err := fill.Get(ctx, b, "k", func(context.Context) ([]byte, error) { return []byte("small"), nil })
		bDone <- err
	}()
	redistest.WaitFor(t, "the other server waiting", func() bool { return b.Stats().Misses == 1 })
	close(release)
	if err := <-aDone; err != nil {
		t.Errorf("the loading server's Get: %v; want its value", err)
	}
	if n := s.Client(t, nil).Exists(ctx, fill.DefaultPrefix+"{k}").Val(); n != 0 {
		t.Error("the fill lock is left held after the load ended")
	}
	select {
	case err := <-bDone:
		if !errors.Is(err, fill.ErrLoadFailed) || !strings.Contains(err.Error(), "not stored") {
			t.Errorf("the other server's Get: %v; want ErrLoadFailed, value not stored", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the other server's Get still waits 10 s after the load ended")
	}
}

// TestHungLoaderLetsGo: a loader that hangs, its ctx ignored, keeps the
// fill lock no longer than LoadTimeout and a lease: then another server
// loads the key (a Get's loader, a batch loader's). Its lock was renewed for
// as long as it hung: no server could load the key until the process died.
func TestHungLoaderLetsGo(t *testing.T) {
	keys := []string{"k1", "k2"}
	batchLoad := func(_ context.Context, keys []string) (map[string]int, error) {
		m := map[string]int{}
		for _, k := range keys {
			m[k] = 2
		}
		return m, nil
	}
	for _, tc := range []struct {
		name string
		hang func(ctx context.Context, c *fill.Cache, block func())
		got  func(ctx context.Context, c *fill.Cache) bool
	}{
		{"Get", func(ctx context.Context, c *fill.Cache, block func()) {
			_, _ = fill.Get(ctx, c, "k", func(context.Context) (int, error) { block(); return 1, nil })
		}, func(ctx context.Context, c *fill.Cache) bool {
			v, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) { return 2, nil })
			return err == nil && v == 2
		}},
		{"GetMany", func(ctx context.Context, c *fill.Cache, block func()) {
			_, _ = fill.GetMany(ctx, c, keys, func(context.Context, []string) (map[string]int, error) { block(); return nil, nil })
		}, func(ctx context.Context, c *fill.Cache) bool {
			m, err := fill.GetMany(ctx, c, keys, batchLoad)
			return err == nil && len(m) == 2
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := redistest.Start(t, nil)
			opt := &fill.Options{LoadTimeout: 200 * time.Millisecond, LockTTL: 300 * time.Millisecond, PollInterval: 50 * time.Millisecond}
			a, b := newCache(t, s.Client(t, nil), opt), newCache(t, s.Client(t, nil), opt)
			ctx := redistest.Context(t, 30*time.Second)
			hang, started, aDone := make(chan struct{}), make(chan struct{}), make(chan struct{})
			go func() {
				defer close(aDone)
				tc.hang(ctx, a, func() { close(started); <-hang }) // its ctx ignored
			}()
			defer func() { close(hang); <-aDone }()
			<-started
			redistest.WaitFor(t, "another server loading", func() bool { return tc.got(ctx, b) })
		})
	}
}
