package fill

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestSlowLoadSettles: a load that takes longer than a settle may (an
// upstream call of a minute, as a model's, against a settle's few
// seconds) is still stored, and its lock released, when Redis is away for
// a moment as it ends: the settle's time, and its retries, count from the
// load's end, not from its start. For Get and GetMany, which settle one
// key and a pipeline of keys (as Batchers and a fleet's gatherer do).
func TestSlowLoadSettles(t *testing.T) {
	old := settleTimeout
	settleTimeout = time.Second
	t.Cleanup(func() { settleTimeout = old })
	const (
		slow   = 1200 * time.Millisecond // longer than settleTimeout
		outage = 300 * time.Millisecond
	)
	mr, _ := redistest.Mini(t)
	// go-redis's own retries would ride out the outage: one try each.
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1, DialerRetries: 1})
	defer rdb.Close()
	c := New(rdb, nil)
	defer c.Close()
	ctx := context.Background()

	// away ends a slow load: Redis goes away as it ends, and is back
	// outage later, its data kept.
	var wg sync.WaitGroup
	defer wg.Wait()
	away := func() {
		time.Sleep(slow)
		mr.Close()
		wg.Go(func() {
			time.Sleep(outage)
			if err := mr.Restart(); err != nil {
				t.Error(err)
			}
		})
	}
	stored := func(key string) {
		t.Helper()
		ks := c.keyset(key)
		if v, err := rdb.Get(ctx, ks.value).Result(); err != nil || v == "" {
			t.Errorf("%s after a load of %v: value %q, %v; want it stored", key, slow, v, err)
		}
		if err := rdb.Get(ctx, ks.lock).Err(); !errors.Is(err, redis.Nil) {
			t.Errorf("%s after a load of %v: its lock is still there (%v); want it released", key, slow, err)
		}
	}

	v, err := Get(ctx, c, "one", func(context.Context) (string, error) {
		away()
		return "v", nil
	})
	if err != nil || v != "v" {
		t.Fatalf("Get: %q, %v", v, err)
	}
	wg.Wait()
	stored("one")

	loadMany := func(_ context.Context, keys []string) (map[string]string, error) {
		away()
		m := map[string]string{}
		for _, k := range keys {
			m[k] = "v"
		}
		return m, nil
	}
	vs, err := GetMany(ctx, c, []string{"many-a", "many-b"}, loadMany)
	if err != nil || len(vs) != 2 {
		t.Fatalf("GetMany: %v, %v", vs, err)
	}
	wg.Wait()
	stored("many-a")
	stored("many-b")
}
