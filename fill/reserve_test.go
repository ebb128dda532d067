package fill_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/budgetctx"
	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/observe"
)

// Loads under a budget reservation: the estimate booked (WithCost), the
// reservation in the loader's ctx, what it spent settled after the call, a
// load never made cancelled.

// tokenInterval is the emission interval of tokensBudget's meter.
const tokenInterval = 60 * time.Millisecond

// tokensBudget is a budget "api" of plenty of calls and a meter of 1000
// tokens a minute, burst 1000: 60ms a token.
func tokensBudget(t *testing.T, s *redistest.Server) *budget.Budget {
	b := budget.New(s.Client(t, nil), "api", budget.Limit{Rate: 1000, Burst: 100}, &budget.Options{
		Meters: map[string][]budget.Limit{"tokens": {{Rate: 1000, Per: time.Minute, Burst: 1000}}},
	})
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func tokens(n int64) budget.Cost { return budget.Cost{Meters: map[string]int64{"tokens": n}} }

// tokensBooked returns the tokens booked in tokensBudget's meter since it
// was full: how far its first limit's tat lies ahead of now.
func tokensBooked(t *testing.T, s *redistest.Server) int64 {
	t.Helper()
	return callsBooked(t, s, "__locksmith:{api}:budget", tokenInterval, "m:tokens:0")
}

// near reports whether got is want within 2 (the time between the booking
// and the reading of the hash).
func near(got, want int64) bool { return got >= want-2 && got <= want+2 }

// TestLoadSpent: a loader reads its reservation with budget.FromContext and
// reports what the call spent; fill settles it once the loader returns: the
// meter holds what was spent, not the estimate, above it or below it.
func TestLoadSpent(t *testing.T) {
	s := redistest.Start(t, nil)
	b := tokensBudget(t, s)
	c := newCache(t, s.Client(t, nil), &fill.Options{Budget: b})
	ctx := redistest.Context(t, 20*time.Second)
	spending := func(n int64) func(context.Context) (int, error) {
		return func(ctx context.Context) (int, error) {
			r := budget.FromContext(ctx)
			if r == nil {
				return 0, errors.New("no reservation in the loader's ctx")
			}
			r.Spent(tokens(n))
			return 1, nil
		}
	}
	if _, err := fill.Get(ctx, c, "above", spending(400), fill.WithCost(tokens(100))); err != nil {
		t.Fatal(err)
	}
	if n := tokensBooked(t, s); !near(n, 400) {
		t.Errorf("tokens booked = %d after a call estimated at 100 spent 400; want 400", n)
	}
	if _, err := fill.Get(ctx, c, "below", spending(50), fill.WithCost(tokens(300))); err != nil {
		t.Fatal(err)
	}
	if n := tokensBooked(t, s); !near(n, 450) {
		t.Errorf("tokens booked = %d after a call estimated at 300 spent 50; want 400+50", n)
	}
	// Without Spent, the estimate stands; a loader that fails made its
	// call all the same.
	if _, err := fill.Get(ctx, c, "failed", func(context.Context) (int, error) {
		return 0, errors.New("upstream: bad gateway")
	}, fill.WithCost(tokens(30))); err == nil {
		t.Fatal("the failed load returned no error")
	}
	if n := tokensBooked(t, s); !near(n, 480) {
		t.Errorf("tokens booked = %d after a failed call estimated at 30; want 450+30", n)
	}
	if w := b.Stats().Waits; w != 3 {
		t.Errorf("budget waits = %d; want 3, one per load", w)
	}
}

// TestLoadReservationScope: a load without a budget sees no reservation,
// not even one its ctx carried from an outer load; a cost the budget cannot
// book fails the load without calling the loader.
func TestLoadReservationScope(t *testing.T) {
	s := redistest.Start(t, nil)
	b := tokensBudget(t, s)
	outer := newCache(t, s.Client(t, nil), &fill.Options{Budget: b})
	inner := newCache(t, s.Client(t, nil), &fill.Options{Prefix: "inner:"})
	ctx := redistest.Context(t, 20*time.Second)
	v, err := fill.Get(ctx, outer, "k", func(ctx context.Context) (string, error) {
		if budget.FromContext(ctx) == nil {
			return "", errors.New("no reservation in the outer load")
		}
		return fill.Get(ctx, inner, "k", func(ctx context.Context) (string, error) {
			if r := budget.FromContext(ctx); r != nil {
				return "", errors.New("the inner load, without a budget, sees the outer one's reservation")
			}
			return "ok", nil
		})
	})
	if err != nil || v != "ok" {
		t.Fatalf("Get = %q, %v; want ok", v, err)
	}
	var calls atomic.Int32
	_, err = fill.Get(ctx, outer, "bad", func(context.Context) (int, error) {
		calls.Add(1)
		return 1, nil
	}, fill.WithCost(budget.Cost{Meters: map[string]int64{"points": 1}}))
	if err == nil || calls.Load() != 0 {
		t.Errorf("a cost on a meter the budget lacks: err %v, %d loader calls; want an error and none", err, calls.Load())
	}
	// A reservation carried by the caller's ctx is not the load's.
	r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Done(ctx)
	_, err = fill.Get(budgetctx.WithReservation(ctx, r), outer, "own", func(ctx context.Context) (int, error) {
		if budget.FromContext(ctx) == r {
			return 0, errors.New("the load runs under its caller's reservation")
		}
		return 1, nil
	})
	if err != nil {
		t.Error(err)
	}
}

// TestLoadNeverMadeCancelled: a load whose reservation came when its load
// was no longer wanted (here, the Cache closed) does not call the loader
// and cancels the reservation: the meter's units go back at once.
func TestLoadNeverMadeCancelled(t *testing.T) {
	s := redistest.Start(t, nil)
	b := tokensBudget(t, s)
	var c *fill.Cache
	closing := make(chan error, 1)
	c = newCache(t, s.Client(t, nil), &fill.Options{Budget: b, Events: observe.Func(func(ctx context.Context, e observe.Event) {
		if e.Kind != observe.BudgetWait || e.Err != nil {
			return
		}
		// The reservation is booked: close the Cache, and go on once the
		// load's ctx has ended.
		if n := tokensBooked(t, s); !near(n, 500) {
			t.Errorf("tokens booked = %d once reserved; want the estimate, 500", n)
		}
		go func() { closing <- c.Close() }()
		select {
		case <-ctx.Done():
		case <-time.After(redistest.WaitTimeout):
			t.Error("the load's ctx did not end when the Cache closed")
		}
	})})
	ctx := redistest.Context(t, 20*time.Second)
	var calls atomic.Int32
	_, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) {
		calls.Add(1)
		return 1, nil
	}, fill.WithCost(tokens(500)))
	if !errors.Is(err, fill.ErrClosed) {
		t.Errorf("Get = %v; want ErrClosed", err)
	}
	if err := <-closing; err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("loader calls = %d; want none", n)
	}
	if n := tokensBooked(t, s); n > 0 {
		t.Errorf("tokens booked = %d after the reservation of a load never made; want none: cancelled", n)
	}
	if st := b.Stats(); st.GivenBack != 1 {
		t.Errorf("GivenBack = %d; want 1", st.GivenBack)
	}
}

// TestBatchReservation: a batch loader call runs under one reservation of
// WithCost's estimate (times its keys with CostPerKey), and what it spent is
// settled; so does a Batcher's.
func TestBatchReservation(t *testing.T) {
	s := redistest.Start(t, nil)
	b := tokensBudget(t, s)
	c := newCache(t, s.Client(t, nil), &fill.Options{Budget: b})
	ctx := redistest.Context(t, 20*time.Second)
	var calls atomic.Int32
	load := func(perKey int64) func(context.Context, []string) (map[string]int, error) {
		return func(ctx context.Context, keys []string) (map[string]int, error) {
			calls.Add(1)
			r := budget.FromContext(ctx)
			if r == nil {
				return nil, errors.New("no reservation in the batch loader's ctx")
			}
			if perKey > 0 {
				r.Spent(tokens(perKey * int64(len(keys))))
			}
			m := map[string]int{}
			for i, k := range keys {
				m[k] = i
			}
			return m, nil
		}
	}
	if _, err := fill.GetMany(ctx, c, []string{"a", "b", "c", "d", "e"}, load(7), fill.WithCost(tokens(10))); err != nil {
		t.Fatal(err)
	}
	if n := tokensBooked(t, s); !near(n, 35) {
		t.Errorf("tokens booked = %d after a batch of 5 keys spent 7 each; want 35", n)
	}
	if w, n := b.Stats().Waits, calls.Load(); w != 1 || n != 1 {
		t.Errorf("budget waits %d, loader calls %d; want 1 each", w, n)
	}
	perKey := fill.WithBatchOptions(&fill.BatchOptions{CostPerKey: true})
	if _, err := fill.GetMany(ctx, c, []string{"f", "g", "h"}, load(0), fill.WithCost(tokens(10)), perKey); err != nil {
		t.Fatal(err)
	}
	if n := tokensBooked(t, s); !near(n, 35+30) {
		t.Errorf("tokens booked = %d after a batch of 3 keys estimated at 10 each, CostPerKey; want 35+30", n)
	}
	if w, n := b.Stats().Waits, calls.Load(); w != 2 || n != 2 {
		t.Errorf("budget waits %d, loader calls %d; want 2 each", w, n)
	}
	bt := fill.NewBatcher(c, load(5), nil)
	if _, err := bt.Get(ctx, "i"); err != nil {
		t.Fatal(err)
	}
	if n := tokensBooked(t, s); !near(n, 35+30+5) {
		t.Errorf("tokens booked = %d after a Batcher's call spent 5; want 35+30+5", n)
	}
}

// TestRefreshReservation: a background refresh runs under a reservation of
// its own, booked Background, and settles what it spent.
func TestRefreshReservation(t *testing.T) {
	s := redistest.Start(t, nil)
	b := tokensBudget(t, s)
	var bgWaits atomic.Int32
	c := newCache(t, s.Client(t, nil), &fill.Options{Budget: b, TTL: 50 * time.Millisecond, StaleWhileRevalidate: time.Minute,
		Events: observe.Func(func(_ context.Context, e observe.Event) {
			if e.Kind == observe.BudgetWait && e.Background && e.Err == nil {
				bgWaits.Add(1)
			}
		})})
	ctx := redistest.Context(t, 20*time.Second)
	var refreshed atomic.Int32
	load := func(ctx context.Context) (int, error) {
		r := budget.FromContext(ctx)
		if r == nil {
			return 0, errors.New("no reservation in the loader's ctx")
		}
		if refreshed.Add(1) == 2 {
			r.Spent(tokens(200))
		}
		return 1, nil
	}
	if _, err := fill.Get(ctx, c, "k", load, fill.WithCost(tokens(10))); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "a refresh", func() bool {
		if _, err := fill.Get(ctx, c, "k", load, fill.WithCost(tokens(10))); err != nil {
			t.Fatal(err)
		}
		return refreshed.Load() >= 2 && c.Stats().Loads >= 2
	})
	if n := bgWaits.Load(); n < 1 {
		t.Errorf("background reservations = %d; want the refresh's", n)
	}
	// 10 for the first load, 200 for the refresh; less what came back
	// since, about one token per 60ms.
	if n := tokensBooked(t, s); n < 150 || n > 212 {
		t.Errorf("tokens booked = %d; want about 210, the refresh's 200 settled", n)
	}
}

// TestLoadReserveRoundTrips: a load under a budget costs the budget the
// round trip of its reservation, as a Wait did, and no more when the call
// spent what was estimated (one call by default); one more to settle a
// figure that differs.
func TestLoadReserveRoundTrips(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	// Scripts only: the budget's pub/sub hub sends PINGs when it will.
	var h scriptTrips
	rdb.AddHook(&h)
	b := budget.New(rdb, "api", budget.Limit{Rate: 1000, Burst: 100}, &budget.Options{
		Meters: map[string][]budget.Limit{"tokens": {{Rate: 1000, Per: time.Minute, Burst: 1000}}},
	})
	t.Cleanup(func() { _ = b.Close() })
	c := newCache(t, s.Client(t, nil), &fill.Options{Budget: b})
	ctx := redistest.Context(t, 20*time.Second)
	spending := func(n int64) func(context.Context) (int, error) {
		return func(ctx context.Context) (int, error) {
			if n >= 0 {
				budget.FromContext(ctx).Spent(tokens(n))
			}
			return 1, nil
		}
	}
	// Loads the scripts.
	if _, err := fill.Get(ctx, c, "warm", spending(5), fill.WithCost(tokens(10))); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		key   string
		load  func(context.Context) (int, error)
		opts  []fill.Option
		calls int64
	}{
		{"one call", spending(-1), nil, 1},
		{"as estimated", spending(10), []fill.Option{fill.WithCost(tokens(10))}, 1},
		{"no Spent", spending(-1), []fill.Option{fill.WithCost(tokens(10))}, 1},
		{"more than estimated", spending(20), []fill.Option{fill.WithCost(tokens(10))}, 2},
	} {
		before := h.n.Load()
		if _, err := fill.Get(ctx, c, tt.key, tt.load, tt.opts...); err != nil {
			t.Fatal(err)
		}
		if n := h.n.Load() - before; n != tt.calls {
			t.Errorf("%s: %d budget round trips; want %d", tt.key, n, tt.calls)
		}
	}
}

// TestLoadUnderSlotLease: with a budget's Concurrency, a load runs under
// its slot's lease: when the slot is lost (its lease ran out, or Redis no
// longer holds it), the loader's ctx ends with budget.ErrSlotLost, as
// lock.Do's function's does, since the fleet may give the slot to another
// call.
func TestLoadUnderSlotLease(t *testing.T) {
	s := redistest.Start(t, nil)
	b := budget.New(s.Client(t, nil), "slots", budget.Limit{Rate: 1000}, &budget.Options{Concurrency: 1, SlotLease: 300 * time.Millisecond})
	t.Cleanup(func() { b.Close() })
	c := newCache(t, s.Client(t, nil), &fill.Options{Budget: b})
	ctx := redistest.Context(t, 20*time.Second)
	started := make(chan struct{})
	var cause error
	done := make(chan error, 1)
	go func() {
		_, err := fill.Get(ctx, c, "k", func(lctx context.Context) (int, error) {
			close(started)
			<-lctx.Done()
			cause = context.Cause(lctx)
			return 0, lctx.Err()
		})
		done <- err
	}()
	<-started
	if got := b.Stats().InFlight; got != 1 {
		t.Fatalf("InFlight = %d while the load runs; want 1", got)
	}
	// The fleet no longer holds the slot: the next renewal finds it gone.
	s.Do(t, "DEL", "__locksmith:{slots}:budget:slots")
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("the loader's ctx did not end when its slot was lost")
	}
	if !errors.Is(cause, budget.ErrSlotLost) {
		t.Errorf("the loader's ctx ended with cause %v; want budget.ErrSlotLost", cause)
	}
}
