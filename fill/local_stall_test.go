package fill_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestLocalBoundWhenRedisStops: with Redis stopped (SIGSTOP), no heartbeat
// comes back, and no Get that starts more than MaxStaleness after the stop
// is served from the local tier: a newer value may have been stored just
// before it, its invalidation never sent.
func TestLocalBoundWhenRedisStops(t *testing.T) {
	s := redistest.Start(t, nil)
	const maxStale = 300 * time.Millisecond
	c := localFleet(t, s, 1, maxStale)[0]
	ctx := redistest.Context(t, 30*time.Second)
	load := func(context.Context) (int, error) { return 1, nil }
	warmLocal(t, ctx, c, "k", load)
	s.Pause(t)
	stopped := time.Now()
	resumed := false
	defer func() {
		if !resumed {
			s.Resume(t)
		}
	}()
	local := 0
	for end := stopped.Add(3 * maxStale); time.Now().Before(end); {
		start := time.Now()
		before := c.Stats().LocalHits
		gctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		_, _ = fill.Get(gctx, c, "k", load) // Redis stopped: an error, or a load without it
		cancel()
		if c.Stats().LocalHits == before {
			continue
		}
		local++
		if since := start.Sub(stopped); since > maxStale {
			t.Fatalf("a Get %v after Redis stopped was served from the local tier; MaxStaleness is %v", since, maxStale)
		}
	}
	if local == 0 {
		t.Log("no local hit right after the stop (a slow machine): the bound held trivially")
	}
	s.Resume(t)
	resumed = true
	warmLocal(t, ctx, c, "k", load)
}

// TestLocalBoundWhenPubSubStalls: a proxy in front of the pub/sub
// connection alone stops forwarding Redis's bytes: invalidations and
// heartbeats no longer arrive, while commands still work. A value stored
// meanwhile by another server is served by every Get that starts more than
// MaxStaleness after the store, never the old copy.
func TestLocalBoundWhenPubSubStalls(t *testing.T) {
	s := redistest.Start(t, nil)
	proxy := redistest.NewProxy(t, s.Addr())
	// The Cache's first connection is its pub/sub connection, opened at
	// New with a local tier: it alone goes through the proxy.
	var dials atomic.Int32
	rdb := s.Client(t, &redis.Options{Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if dials.Add(1) == 1 {
			addr = proxy.Addr()
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}})
	const maxStale = 300 * time.Millisecond
	b := newCache(t, rdb, &fill.Options{Local: &fill.LocalOptions{MaxStaleness: maxStale}})
	a := newCache(t, s.Client(t, nil), nil)
	ctx := redistest.Context(t, 30*time.Second)
	var version atomic.Int32
	version.Store(1)
	load := func(context.Context) (int, error) { return int(version.Load()), nil }
	warmLocal(t, ctx, b, "k", load)
	if n := proxy.Conns(); n != 1 {
		t.Fatalf("%d connections through the proxy; want the pub/sub connection alone", n)
	}
	proxy.HoldReplies()
	defer proxy.ReleaseReplies()
	// A newer value, stored by another server: its invalidation is held.
	if _, err := s.Client(t, nil).Del(ctx, "__locksmith:{k}:value").Result(); err != nil {
		t.Fatal(err)
	}
	version.Store(2)
	if v, err := fill.Get(ctx, a, "k", load); err != nil || v != 2 {
		t.Fatalf("store of version 2: got %v, %v", v, err)
	}
	stored := time.Now()
	for {
		start := time.Now()
		v, err := fill.Get(ctx, b, "k", load)
		if err != nil {
			t.Fatal(err)
		}
		if v == 2 {
			break
		}
		if since := start.Sub(stored); since > maxStale {
			t.Fatalf("a Get %v after a newer value was stored returned the old copy; MaxStaleness is %v", since, maxStale)
		}
	}
}
