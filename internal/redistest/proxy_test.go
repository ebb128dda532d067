package redistest

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// proxyClient returns a client of s through a new Proxy that neither retries
// nor outlives its context, so that every fault shows.
func proxyClient(t *testing.T, s *Server) (*Proxy, *redis.Client) {
	t.Helper()
	p := NewProxy(t, s.Addr())
	c := redis.NewClient(&redis.Options{Addr: p.Addr(), MaxRetries: -1, ContextTimeoutEnabled: true, DisableIdentity: true})
	t.Cleanup(func() { _ = c.Close() })
	return p, c
}

type result struct {
	val string
	err error
}

// goGet runs GET key on c in a new goroutine and returns where its result
// will arrive.
func goGet(ctx context.Context, c *redis.Client, key string) <-chan result {
	ch := make(chan result, 1)
	go func() {
		v, err := c.Get(ctx, key).Result()
		ch <- result{v, err}
	}()
	return ch
}

func isDeadline(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)
}

func TestProxyConns(t *testing.T) {
	t.Parallel()
	s := Start(t, nil)
	p := NewProxy(t, s.Addr())
	ctx := Context(t, 10*time.Second)
	a, b := Client(t, p.Addr()), Client(t, p.Addr())
	if got := p.Conns(); got != 0 {
		t.Fatalf("Conns() before any client = %d; want 0", got)
	}
	if err := a.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET through the proxy: %v", err)
	}
	if got, err := b.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET through the proxy = %q, %v; want \"v\"", got, err)
	}
	WaitFor(t, "2 proxied connections", func() bool { return p.Conns() == 2 })

	if err := a.Close(); err != nil {
		t.Fatalf("closing a client: %v", err)
	}
	WaitFor(t, "1 proxied connection once a client closed", func() bool { return p.Conns() == 1 })

	// The server closing its side closes the client's too.
	s.Do(t, "CLIENT", "KILL", "TYPE", "normal")
	WaitFor(t, "no proxied connection once the server closed them", func() bool { return p.Conns() == 0 })
	if got, err := b.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET through the proxy after CLIENT KILL = %q, %v; want \"v\"", got, err)
	}
}

func TestProxyHoldReplies(t *testing.T) {
	t.Parallel()
	s := Start(t, nil)
	p, c := proxyClient(t, s)
	ctx := Context(t, 10*time.Second)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}

	p.HoldReplies()
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := c.Get(short, "k").Err(); !isDeadline(err) {
		t.Fatalf("GET with replies held: err = %v; want a deadline error", err)
	}
	// Requests still go through while replies are held.
	if got := s.Do(t, "GET", "k"); got != "v" {
		t.Fatalf("GET on the server directly = %#v; want \"v\"", got)
	}
	p.ReleaseReplies()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after ReleaseReplies: %v", err)
	}

	// A held reply arrives late, once released.
	p.HoldReplies()
	got := goGet(ctx, c, "k")
	WaitFor(t, "the GET reply to be held", func() bool { return p.Held() > 0 })
	select {
	case r := <-got:
		t.Fatalf("GET returned %q, %v while its reply was held", r.val, r.err)
	default:
	}
	p.ReleaseReplies()
	if r := <-got; r.err != nil || r.val != "v" {
		t.Fatalf("GET after ReleaseReplies = %q, %v; want \"v\"", r.val, r.err)
	}
	if n := p.Held(); n != 0 {
		t.Fatalf("Held() after ReleaseReplies = %d; want 0", n)
	}
}

func TestProxyDropAll(t *testing.T) {
	t.Parallel()
	s := Start(t, nil)
	p, c := proxyClient(t, s)
	ctx := Context(t, 10*time.Second)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	WaitFor(t, "1 proxied connection", func() bool { return p.Conns() == 1 })

	// A call in flight when its connection drops fails, and its held reply
	// never arrives.
	p.HoldReplies()
	got := goGet(ctx, c, "k")
	WaitFor(t, "the GET reply to be held", func() bool { return p.Held() > 0 })
	p.DropAll()
	if n := p.Conns(); n != 0 {
		t.Fatalf("Conns() after DropAll = %d; want 0", n)
	}
	if n := p.Held(); n != 0 {
		t.Fatalf("Held() after DropAll = %d; want 0", n)
	}
	r := <-got
	t.Logf("GET in flight at DropAll: %q, %v", r.val, r.err)
	if r.err == nil || isDeadline(r.err) {
		t.Fatalf("GET in flight at DropAll = %q, %v; want a connection error", r.val, r.err)
	}

	// The client then reconnects.
	p.ReleaseReplies()
	if v, err := c.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("GET after DropAll = %q, %v; want \"v\"", v, err)
	}
	WaitFor(t, "1 proxied connection after reconnecting", func() bool { return p.Conns() == 1 })
}

func TestProxyRefuse(t *testing.T) {
	t.Parallel()
	s := Start(t, nil)
	p, before := proxyClient(t, s)
	ctx := Context(t, 10*time.Second)
	if err := before.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING: %v", err)
	}

	p.Refuse(true)
	after := redis.NewClient(&redis.Options{Addr: p.Addr(), MaxRetries: -1, ContextTimeoutEnabled: true, DisableIdentity: true})
	t.Cleanup(func() { _ = after.Close() })
	err := after.Ping(ctx).Err()
	t.Logf("PING on a new connection while refusing: %v", err)
	if err == nil || isDeadline(err) {
		t.Fatalf("PING on a new connection while refusing: err = %v; want a connection error", err)
	}
	if err := before.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING on an open connection while refusing: %v", err)
	}
	if n := p.Conns(); n != 1 {
		t.Fatalf("Conns() while refusing = %d; want 1", n)
	}

	p.Refuse(false)
	if err := after.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Refuse(false): %v", err)
	}
}
