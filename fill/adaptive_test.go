package fill_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestAdaptiveBudget: with a budget that learns the upstream's unstated
// limit, a loader's RateLimitedError without RetryAfter cuts the learned
// rate, pauses nothing, and the flight loads again; loads that return a
// value count as calls the upstream accepted, and raise the rate again.
func TestAdaptiveBudget(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := budget.New(rdb, "api", budget.Limit{Rate: 100}, &budget.Options{Adaptive: true})
	t.Cleanup(func() { _ = b.Close() })
	c := newCache(t, rdb, &fill.Options{Budget: b})
	ctx := redistest.Context(t, 20*time.Second)
	var n atomic.Int32
	v, err := fill.Get(ctx, c, "refused-once", func(context.Context) (int, error) {
		if n.Add(1) == 1 {
			return 0, fmt.Errorf("upstream: %w", &budget.RateLimitedError{})
		}
		return 7, nil
	})
	if v != 7 || err != nil {
		t.Fatalf("Get = %v, %v; want 7, the load retried", v, err)
	}
	st := b.Stats()
	if st.RateCuts != 1 || st.PausesRateLimited != 0 || st.Rate > 75.01 {
		t.Errorf("budget: RateCuts %d, PausesRateLimited %d, Rate %v; want 1, 0, 75", st.RateCuts, st.PausesRateLimited, st.Rate)
	}
	// 40 loads at once queue for the learned rate: as they return values,
	// the fleet learns it may go faster.
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			if _, err := fill.Get(ctx, c, fmt.Sprint(i), func(context.Context) (int, error) { return i, nil }); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	redistest.WaitFor(t, "the learned rate raised", func() bool { return b.Stats().Rate > 75.01 })
}
