package fill_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestLoadKeys: with a pool of keys (budget.Options.Keys), each load reads
// its key from its reservation, loads that go together go on different
// keys, and a 429 a loader returns pauses its key only: the load goes again
// at once on another key, not after the pause.
func TestLoadKeys(t *testing.T) {
	_, rdb := redistest.Mini(t)
	keys := []string{"token-a", "token-b", "token-c"}
	b := budget.New(rdb, "api", budget.Limit{Rate: 1, Per: 10 * time.Second}, &budget.Options{Keys: keys})
	t.Cleanup(func() { _ = b.Close() })
	c := newCache(t, rdb, &fill.Options{Budget: b})
	ctx := redistest.Context(t, 5*time.Second)

	var mu sync.Mutex
	var used []string
	load := func(ctx context.Context) (string, error) {
		k := budget.FromContext(ctx).Key()
		mu.Lock()
		defer mu.Unlock()
		used = append(used, k)
		if len(used) == 1 {
			// The upstream refuses the first call: its token is out for
			// a minute.
			return "", &budget.RateLimitedError{RetryAfter: time.Minute}
		}
		return k, nil
	}
	v, err := fill.Get(ctx, c, "timeline:1", load)
	if err != nil {
		t.Fatalf("Get: %v; want the load to go again on another key within its deadline", err)
	}
	if len(used) != 2 || used[0] == "" || used[1] == used[0] || v != used[1] {
		t.Fatalf("keys the loader was called with: %q, value %q; want two different keys, the value the second's", used, v)
	}
	// The third key is the only one free now: the next load takes it.
	v, err = fill.Get(ctx, c, "timeline:2", load)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range used[:2] {
		if v == k {
			t.Fatalf("the next load went on %s, paused or just used; want the third key", v)
		}
	}
}

// TestLoadKeysObserve: a loader that reports its response with
// budget.Budget.Observe on its ctx reports it for its own key: a 401
// removes that key from the pool, and the next loads use the other.
func TestLoadKeysObserve(t *testing.T) {
	_, rdb := redistest.Mini(t)
	keys := []string{"token-a", "token-b"}
	b := budget.New(rdb, "api", budget.Limit{Rate: 100}, &budget.Options{Keys: keys})
	t.Cleanup(func() { _ = b.Close() })
	c := newCache(t, rdb, &fill.Options{Budget: b})
	ctx := redistest.Context(t, 5*time.Second)
	var revoked string
	_, err := fill.Get(ctx, c, "revoked", func(ctx context.Context) (int, error) {
		revoked = budget.FromContext(ctx).Key()
		return 0, b.Observe(ctx, http.Header{}, http.StatusUnauthorized)
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := b.Stats().Keys; n != 1 {
		t.Fatalf("Stats().Keys = %d after a 401; want 1", n)
	}
	for i := range 3 {
		k, err := fill.Get(ctx, c, "after:"+string(rune('0'+i)), func(ctx context.Context) (string, error) {
			return budget.FromContext(ctx).Key(), nil
		})
		if err != nil || k == revoked {
			t.Fatalf("a load after the 401 went on %q (%v); want the other key", k, err)
		}
	}
}
