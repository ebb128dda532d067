package redistest

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestSentinel(t *testing.T) {
	t.Parallel()
	start := time.Now()
	s := StartSentinel(t, nil)
	t.Logf("StartSentinel took %v", time.Since(start))
	if s.MasterName() != "mymaster" {
		t.Errorf("MasterName() = %q; want \"mymaster\"", s.MasterName())
	}
	if got := len(s.SentinelAddrs()); got != 3 {
		t.Errorf("SentinelAddrs() = %v; want 3 addresses", s.SentinelAddrs())
	}
	servers := s.Servers()
	if len(servers) != 2 {
		t.Fatalf("Servers() = %d servers; want 2", len(servers))
	}
	if m := s.Master(); m != servers[0] {
		t.Fatalf("Master() = %s; want the first server, %s", m.Addr(), servers[0].Addr())
	}

	c := s.FailoverClient(t, &redis.FailoverOptions{DisableIdentity: true})
	ctx := Context(t, 2*time.Minute)
	if err := c.Set(ctx, "before", "1", 0).Err(); err != nil {
		t.Fatalf("SET before: %v", err)
	}
	// Only a write the replica has acknowledged survives the failover.
	if n, err := c.Wait(ctx, 1, 0).Result(); err != nil || n != 1 {
		t.Fatalf("WAIT 1 0 = %d, %v; want 1", n, err)
	}

	for i, want := range []*Server{servers[1], servers[0]} {
		start := time.Now()
		oldAddr, newAddr := s.Failover(t)
		t.Logf("Failover %d (%s to %s) took %v", i+1, oldAddr, newAddr, time.Since(start))
		if newAddr != want.Addr() || oldAddr == newAddr {
			t.Fatalf("Failover %d: %s to %s; want to %s", i+1, oldAddr, newAddr, want.Addr())
		}
		if m := s.Master(); m != want {
			t.Fatalf("Master() after Failover %d = %s; want %s", i+1, m.Addr(), want.Addr())
		}
		key := "after" + string(rune('1'+i))
		setUntilAccepted(ctx, t, c, key)
		if got := want.Do(t, "GET", key); got != "v" {
			t.Fatalf("GET %s on the new master %s = %#v; want \"v\"", key, want.Addr(), got)
		}
		if got, err := c.Get(ctx, "before").Result(); err != nil || got != "1" {
			t.Fatalf("GET before after Failover %d = %q, %v; want \"1\"", i+1, got, err)
		}
	}
}

// setUntilAccepted sets key to "v" through the failover client c, retrying
// until the master accepts it: right after a switch, c may still hold
// connections to the old master, which now refuses writes as a replica.
func setUntilAccepted(ctx context.Context, t *testing.T, c *redis.Client, key string) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		err := c.Set(ctx, key, "v", 0).Err()
		if err == nil {
			if attempt > 1 {
				t.Logf("SET %s accepted at attempt %d", key, attempt)
			}
			return
		}
		t.Logf("SET %s, attempt %d: %v", key, attempt, err)
		if ctx.Err() != nil {
			t.Fatalf("SET %s not accepted before the test's deadline: %v", key, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}
