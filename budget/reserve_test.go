package budget_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/budgetctx"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// tokens is a Cost of n tokens.
func tokens(n int64) budget.Cost { return budget.Cost{Meters: map[string]int64{"tokens": n}} }

// hash reads a budget's whole hash.
func hash(t *testing.T, rdb redis.UniversalClient, b *budget.Budget) map[string]string {
	t.Helper()
	m, err := rdb.HGetAll(context.Background(), budget.Key(b)).Result()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// reserve reserves c on b with a deadline d away, and fails the test on an
// error.
func reserve(t *testing.T, b *budget.Budget, c budget.Cost, d time.Duration) *budget.Reservation {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	r, err := b.Reserve(ctx, budget.Foreground, c)
	if err != nil {
		t.Fatalf("Reserve(%v): %v", c, err)
	}
	return r
}

// refused asserts that a Reserve of c on b with a deadline d away is
// refused at once.
func refused(t *testing.T, b *budget.Budget, c budget.Cost, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	r, err := b.Reserve(ctx, budget.Foreground, c)
	if !errors.Is(err, context.DeadlineExceeded) || r != nil {
		t.Fatalf("Reserve(%v) = %v, %v; want nil and an error wrapping DeadlineExceeded", c, r, err)
	}
	if ctx.Err() != nil {
		t.Errorf("Reserve(%v) returned at its deadline; want at once", c)
	}
}

// TestReserveAtomic: a Reserve refused by any one of its limits books
// nothing in any of them.
func TestReserveAtomic(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	opt := &budget.Options{
		Also:   []budget.Limit{{Rate: 1, Per: 10 * time.Second, Burst: 2}},
		Meters: map[string][]budget.Limit{"tokens": {{Rate: 1000, Burst: 1000}, {Rate: 5000, Per: time.Minute, Burst: 2000}}},
	}
	b := newBudget(t, rdb, "atomic", budget.Limit{Rate: 100, Burst: 10}, opt)
	reserve(t, b, tokens(900), time.Second)
	before := hash(t, rdb, b)
	for _, f := range []string{"tat", "a1", "m:tokens:0", "m:tokens:1"} {
		if before[f] == "" {
			t.Errorf("field %s missing after a booking: %v", f, before)
		}
	}
	refused(t, b, tokens(500), 100*time.Millisecond) // the first tokens limit: 400ms away
	reserve(t, b, budget.Cost{}, time.Second)        // the second call of Also's burst, no tokens
	before = hash(t, rdb, b)
	refused(t, b, budget.Cost{}, time.Second) // Also: 10s away
	refused(t, b, tokens(1), time.Second)
	if after := hash(t, rdb, b); !maps.Equal(before, after) {
		t.Errorf("a refused Reserve changed the budget:\nbefore %v\nafter  %v", before, after)
	}
	if st := b.Stats(); st.Refused != 3 || st.Waits != 2 {
		t.Errorf("Stats: Refused %d, Waits %d; want 3, 2", st.Refused, st.Waits)
	}
}

// weighted is a booking of units at slot.
type weighted struct{ slot, units int64 }

// maxUnitsInWindow returns the most units booked within any half-open
// window of length w.
func maxUnitsInWindow(ws []weighted, w int64) int64 {
	ws = slices.Clone(ws)
	slices.SortFunc(ws, func(x, y weighted) int { return int(x.slot - y.slot) })
	var most, sum int64
	for i, j := 0, 0; j < len(ws); j++ {
		sum += ws[j].units
		for ws[j].slot-ws[i].slot >= w {
			sum -= ws[i].units
			i++
		}
		most = max(most, sum)
	}
	return most
}

// reserveFleet has servers Budgets on clients of their own, each with
// goroutines callers reserving cost() in a loop, until n reservations were
// made; it returns each reservation's slot and cost.
func reserveFleet(t *testing.T, s *redistest.Server, name string, l budget.Limit, opt *budget.Options, servers, goroutines, n int, cost func(*rand.Rand) budget.Cost) []weighted {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var got []weighted
	var wg sync.WaitGroup
	for i := range servers {
		b := newBudget(t, s.Client(t, nil), name, l, opt)
		for j := range goroutines {
			rng := rand.New(rand.NewPCG(uint64(i), uint64(j)))
			wg.Go(func() {
				for ctx.Err() == nil {
					c := cost(rng)
					r, err := b.Reserve(ctx, budget.Foreground, c)
					if err != nil {
						if ctx.Err() == nil {
							t.Errorf("Reserve: %v", err)
						}
						return
					}
					mu.Lock()
					got = append(got, weighted{budget.Slot(r), c.Meters["tokens"]})
					if len(got) >= n {
						cancel()
					}
					mu.Unlock()
					if err := r.Done(ctx); err != nil && ctx.Err() == nil {
						t.Errorf("Done: %v", err)
					}
				}
			})
		}
	}
	wg.Wait()
	return got
}

// TestReserveAlsoHeld: 4 servers × 5 callers under a limit and a further
// one (Also): in any window of each limit's Per, at most Rate+Burst-1 slots.
func TestReserveAlsoHeld(t *testing.T) {
	s := redistest.Start(t, nil)
	l := budget.Limit{Rate: 20, Per: 200 * time.Millisecond, Burst: 3}
	also := budget.Limit{Rate: 30, Per: time.Second, Burst: 5}
	got := reserveFleet(t, s, "also", l, &budget.Options{Also: []budget.Limit{also}}, 4, 5, 75,
		func(*rand.Rand) budget.Cost { return budget.Cost{} })
	var slots []int64
	for _, w := range got {
		slots = append(slots, w.slot)
	}
	for _, x := range []budget.Limit{l, also} {
		most := maxInWindow(slots, x.Per.Microseconds())
		t.Logf("%d slots; at most %d in a window of %v (Rate+Burst-1 = %d)", len(slots), most, x.Per, x.Rate+x.Burst-1)
		if most > x.Rate+x.Burst-1 {
			t.Errorf("%d slots in a window of %v; want at most %d", most, x.Per, x.Rate+x.Burst-1)
		}
	}
	// The tighter limit binds: the run spans its rate, not the other's.
	span := time.Duration(slices.Max(slots)-slices.Min(slots)) * time.Microsecond
	if want := time.Duration(len(slots)-also.Burst-1) * also.Per / time.Duration(also.Rate); span < want {
		t.Errorf("%d slots within %v; want at least %v (Also's rate)", len(slots), span, want)
	}
}

// TestReserveMetersHeld: 4 servers × 4 callers reserving 1 to 150 tokens
// under a meter of 1000 tokens per 500ms, burst 200: in any window of
// 500ms, at most Rate+Burst-1 tokens are booked.
func TestReserveMetersHeld(t *testing.T) {
	s := redistest.Start(t, nil)
	m := budget.Limit{Rate: 1000, Per: 500 * time.Millisecond, Burst: 200}
	opt := &budget.Options{Meters: map[string][]budget.Limit{"tokens": {m}}}
	got := reserveFleet(t, s, "meters", budget.Limit{Rate: 1000, Burst: 100}, opt, 4, 4, 60,
		func(rng *rand.Rand) budget.Cost { return tokens(1 + rng.Int64N(150)) })
	var total int64
	for _, w := range got {
		total += w.units
	}
	most := maxUnitsInWindow(got, m.Per.Microseconds())
	t.Logf("%d reservations, %d tokens; at most %d in a window of %v (Rate+Burst-1 = %d)",
		len(got), total, most, m.Per, m.Rate+m.Burst-1)
	if most > int64(m.Rate+m.Burst-1) {
		t.Errorf("%d tokens in a window of %v; want at most %d", most, m.Per, m.Rate+m.Burst-1)
	}
}

// tokensBudget is a budget with a meter of 100 tokens per second, burst 100
// (10ms a token), and plenty of calls.
func tokensBudget(t *testing.T, rdb redis.UniversalClient, name string) *budget.Budget {
	return newBudget(t, rdb, name, budget.Limit{Rate: 100, Burst: 10},
		&budget.Options{Meters: map[string][]budget.Limit{"tokens": {{Rate: 100, Burst: 100}}}})
}

// TestReserveSpentBelow: a call that spent less than its estimate gives the
// difference back at once, even with a reservation booked after it: later
// callers move up.
func TestReserveSpentBelow(t *testing.T) {
	s := redistest.Start(t, nil)
	b := tokensBudget(t, s.Client(t, nil), "spent-below")
	other := tokensBudget(t, s.Client(t, nil), "spent-below")
	a := reserve(t, b, tokens(100), time.Second) // the whole bucket
	// Booked after a: 50 tokens, 500ms away.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	var rec recorder
	rec.watch(other)
	go func() {
		r, err := other.Reserve(ctx, budget.Foreground, tokens(50))
		if err == nil {
			err = r.Done(ctx)
		}
		done <- err
	}()
	redistest.WaitFor(t, "the second booking", func() bool { return rec.len() == 1 })
	// Without a's 80 tokens back, 30 more are 800ms away.
	refused(t, other, tokens(30), 300*time.Millisecond)
	a.Spent(tokens(20))
	if err := a.Done(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Now 30 tokens are there at once; the call goes when the reservation
	// booked before it does (booking order), less the calls' burst
	// tolerance: about 420ms away, not 800ms.
	r := reserve(t, other, tokens(30), 600*time.Millisecond)
	if err := r.Done(context.Background()); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-done
}

// TestReserveSpentAbove: a call that spent more than its estimate books the
// extra, which later callers wait for.
func TestReserveSpentAbove(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	b := tokensBudget(t, rdb, "spent-above")
	r := reserve(t, b, tokens(10), time.Second)
	tat := field(t, rdb, b, "m:tokens:0")
	r.Spent(tokens(60))
	if err := r.Done(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := field(t, rdb, b, "m:tokens:0"); got < tat+50*10000 {
		t.Errorf("m:tokens:0 moved by %dµs; want at least 50 tokens, 500000µs", got-tat)
	}
	// 40 tokens left: 60 more are 200ms away; with only the estimate
	// booked, 90 would be left.
	refused(t, b, tokens(60), 100*time.Millisecond)
	reserve(t, b, tokens(40), 100*time.Millisecond)
}

// TestReserveCancel: Cancel gives back the meters' units at once, and the
// call's slot (in the Limit and Also) while it is the latest booking; a
// second Cancel or Done does nothing; a ctx ending while Reserve sleeps
// cancels it.
func TestReserveCancel(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	b := newBudget(t, rdb, "cancel", budget.Limit{Rate: 10, Burst: 2}, &budget.Options{
		Also:   []budget.Limit{{Rate: 5, Burst: 2}},
		Meters: map[string][]budget.Limit{"tokens": {{Rate: 100, Burst: 100}}},
	})
	ctx := context.Background()
	a := reserve(t, b, tokens(60), time.Second)
	afterA := hash(t, rdb, b)
	c := reserve(t, b, tokens(30), time.Second)
	if err := c.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	after := hash(t, rdb, b)
	for _, f := range []string{"tat", "a1", "m:tokens:0"} {
		if after[f] != afterA[f] {
			t.Errorf("after the latest booking was cancelled %s = %s; want %s, as before it", f, after[f], afterA[f])
		}
	}
	if st := b.Stats(); st.GivenBack != 1 {
		t.Errorf("GivenBack = %d; want 1", st.GivenBack)
	}
	for _, end := range []func(context.Context) error{c.Cancel, c.Done} {
		if err := end(ctx); err != nil {
			t.Errorf("ending a cancelled reservation again: %v; want nil", err)
		}
	}
	if got := hash(t, rdb, b); !maps.Equal(got, after) {
		t.Errorf("ending a reservation twice changed the budget:\nbefore %v\nafter  %v", after, got)
	}

	// Not the latest: the slot stays booked, the tokens go back.
	reserve(t, b, budget.Cost{}, time.Second)
	before := hash(t, rdb, b)
	if err := a.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	after = hash(t, rdb, b)
	if after["tat"] != before["tat"] || after["a1"] != before["a1"] {
		t.Errorf("cancelling a booking with a later one moved tat %s → %s, a1 %s → %s; want them kept",
			before["tat"], after["tat"], before["a1"], after["a1"])
	}
	if got := field(t, rdb, b, "m:tokens:0"); got > redisNow(t, rdb) {
		t.Errorf("m:tokens:0 = %d, ahead of now after its 60 tokens came back; want the bucket full", got)
	}

	// A Reserve sleeping on its slot whose ctx ends gives it all back.
	reserve(t, b, tokens(100), time.Second)
	before = hash(t, rdb, b)
	var rec recorder
	rec.watch(b)
	sctx, scancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := b.Reserve(sctx, budget.Foreground, tokens(50))
		done <- err
	}()
	redistest.WaitFor(t, "a sleeping reservation", func() bool { return rec.len() == 1 })
	scancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Reserve = %v; want context.Canceled", err)
	}
	redistest.WaitFor(t, "the reservation given back", func() bool { return b.Stats().GivenBack == 2 })
	after = hash(t, rdb, b)
	for _, f := range []string{"tat", "a1", "m:tokens:0"} {
		if after[f] != before[f] {
			t.Errorf("after a sleeping Reserve gave up %s = %s; want %s", f, after[f], before[f])
		}
	}
}

// TestReserveOrder: reservations of various costs from three servers get
// slots in booking order.
func TestReserveOrder(t *testing.T) {
	s := redistest.Start(t, nil)
	var rec recorder
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range 3 {
		b := tokensBudget(t, s.Client(t, nil), "order")
		rec.watch(b)
		for j := range 5 {
			wg.Go(func() {
				_, _ = b.Reserve(ctx, budget.Foreground, tokens(int64(20+10*i+j)))
			})
		}
	}
	redistest.WaitFor(t, "15 bookings", func() bool { return rec.len() == 15 })
	cancel()
	wg.Wait()
	k := rec.inOrder()
	for i := 1; i < len(k); i++ {
		if k[i].Slot < k[i-1].Slot {
			t.Errorf("booking %d: slot %dµs before the previous one's", i, k[i-1].Slot-k[i].Slot)
		}
	}
	if d := time.Duration(k[len(k)-1].Slot-k[0].Slot) * time.Microsecond; d < 2*time.Second {
		t.Errorf("15 reservations of at least 20 tokens within %v; want at least 2s at 100 tokens/s", d)
	}
}

// TestTokensCap: OpenAI's "500 tokens remaining, reset in 6 minutes",
// observed on one server, lets reservations anywhere spend 500 tokens at
// once, and no more before the reset.
func TestTokensCap(t *testing.T) {
	s := redistest.Start(t, nil)
	opt := &budget.Options{Meters: map[string][]budget.Limit{"tokens": {{Rate: 100000, Per: time.Minute, Burst: 100000}}}}
	a := newBudget(t, s.Client(t, nil), "tokens-cap", budget.Limit{Rate: 100, Burst: 10}, opt)
	b := newBudget(t, s.Client(t, nil), "tokens-cap", budget.Limit{Rate: 100, Burst: 10}, opt)
	ctx := context.Background()
	h := http.Header{}
	h.Set("x-ratelimit-limit-tokens", "100000")
	h.Set("x-ratelimit-remaining-tokens", "500")
	h.Set("x-ratelimit-reset-tokens", "6m0s")
	if err := a.Observe(ctx, h, http.StatusOK); err != nil {
		t.Fatal(err)
	}
	if st := a.Stats(); st.PullDowns != 1 {
		t.Errorf("PullDowns = %d; want 1", st.PullDowns)
	}
	r := reserve(t, b, tokens(300), 10*time.Second)
	if d := time.Until(time.UnixMicro(budget.Slot(r))); d > 0 {
		t.Errorf("300 of 500 tokens left went %v later; want at once", d)
	}
	refused(t, b, tokens(300), time.Minute) // 200 left: the reset, 6 minutes away
	reserve(t, b, tokens(200), 10*time.Second)
	refused(t, a, tokens(1), time.Minute)
	reserve(t, a, budget.Cost{}, 10*time.Second) // calls without tokens go
	// Plenty left (more than the budget allows in a second, burst included)
	// costs no round trip.
	h.Set("x-ratelimit-remaining-tokens", "150000")
	h.Set("x-ratelimit-reset-tokens", "1s")
	rdb := s.Client(t, nil)
	c := newBudget(t, rdb, "tokens-cap", budget.Limit{Rate: 100, Burst: 10}, opt)
	sc := &scripts{}
	rdb.AddHook(sc)
	if err := c.Observe(ctx, h, http.StatusOK); err != nil {
		t.Fatal(err)
	}
	if n := sc.n.Load(); n != 0 {
		t.Errorf("150000 tokens remaining ran %d scripts; want none", n)
	}
}

// TestReserveBadInput: costs the budget cannot book are refused before any
// round trip.
func TestReserveBadInput(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := tokensBudget(t, rdb, "bad")
	ctx := context.Background()
	for _, c := range []budget.Cost{
		{Calls: -1},
		{Meters: map[string]int64{"tokens": -5}},
		{Meters: map[string]int64{"points": 1}},
	} {
		if r, err := b.Reserve(ctx, budget.Foreground, c); err == nil {
			t.Errorf("Reserve(%v) = %v, nil; want an error", c, r)
		}
	}
	if n := rdb.Exists(ctx, budget.Key(b)).Val(); n != 0 {
		t.Errorf("refused costs wrote the budget")
	}
	r := reserve(t, b, tokens(5), time.Second)
	r.Spent(budget.Cost{Meters: map[string]int64{"points": 1}})
	if err := r.Done(ctx); err == nil {
		t.Errorf("Done after Spent of an unknown meter = nil; want an error")
	}
	for _, o := range []*budget.Options{
		{Also: []budget.Limit{{Rate: 0}}},
		{Meters: map[string][]budget.Limit{"tokens": {{Rate: -1}}}},
		{Meters: map[string][]budget.Limit{"": {{Rate: 1}}}},
	} {
		if err := budget.New(rdb, "bad", budget.Limit{Rate: 1}, o).Wait(ctx, budget.Foreground); err == nil {
			t.Errorf("Wait on a budget with options %+v = nil; want an error", o)
		}
	}
}

// TestFromContext: the reservation a context carries.
func TestFromContext(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := tokensBudget(t, rdb, "ctx")
	ctx := context.Background()
	if r := budget.FromContext(ctx); r != nil {
		t.Errorf("FromContext(Background) = %v; want nil", r)
	}
	r := reserve(t, b, tokens(5), time.Second)
	if got := budget.FromContext(budgetctx.WithReservation(ctx, r)); got != r {
		t.Errorf("FromContext = %p; want %p", got, r)
	}
	if got := r.Key(); got != "" {
		t.Errorf("Key = %q; want \"\"", got)
	}
	if err := r.Observe(ctx, http.Header{}, http.StatusOK); err != nil {
		t.Error(err)
	}
	var nilRes *budget.Reservation
	if nilRes.Done(ctx) != nil || nilRes.Cancel(ctx) != nil {
		t.Error("a nil Reservation's Done or Cancel returned an error")
	}
}

// TestReserveCalls: a Cost of several calls takes as many of the Limit's
// bucket (and Also's): 3 calls of a burst of 5 go at once, 3 more wait
// until the bucket holds 3.
func TestReserveCalls(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb, "calls", budget.Limit{Rate: 10, Burst: 5}, &budget.Options{
		Also: []budget.Limit{{Rate: 10, Burst: 5}},
	})
	first := reserve(t, b, budget.Cost{Calls: 3}, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var rec recorder
	rec.watch(b)
	r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{Calls: 3})
	if err != nil {
		t.Fatal(err)
	}
	// 2 calls left, one more every 100ms: 3 are there 100ms after the first.
	if d := budget.Slot(r) - budget.Slot(first); d < 100000 || d > 110000 {
		t.Errorf("3 calls after 3 of a burst of 5 went %dµs after them; want 100ms", d)
	}
	if k := rec.inOrder(); len(k) != 1 || k[0].Wait <= 0 {
		t.Errorf("bookings %+v; want one that waited", k)
	}
}

// TestReserveLimitConflict: servers whose Also or Meters differ disagree on
// the budget's limit.
func TestReserveLimitConflict(t *testing.T) {
	_, rdb := redistest.Mini(t)
	l := budget.Limit{Rate: 100, Burst: 10}
	a := newBudget(t, rdb, "conflict", l, nil)
	b := newBudget(t, rdb, "conflict", l, &budget.Options{Also: []budget.Limit{{Rate: 1000, Per: time.Hour}}})
	for _, x := range []*budget.Budget{a, b} {
		if err := x.Wait(context.Background(), budget.Foreground); err != nil {
			t.Fatal(err)
		}
	}
	if n := b.Stats().LimitConflicts; n != 1 {
		t.Errorf("LimitConflicts = %d; want 1", n)
	}
}

// TestDoneAfterContext: Done settles even when the call's ctx has ended.
func TestDoneAfterContext(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := tokensBudget(t, rdb, "done-ctx")
	ctx, cancel := context.WithCancel(context.Background())
	r, err := b.Reserve(ctx, budget.Foreground, tokens(100))
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	r.Spent(tokens(0))
	if err := r.Done(ctx); err != nil {
		t.Fatal(err)
	}
	reserve(t, b, tokens(100), 100*time.Millisecond) // the 100 tokens came back
}

// TestReserveRedisDown: while Redis is unreachable, the local limiter keeps
// each limit of Also and each meter at its Rate/FleetSize too.
func TestReserveRedisDown(t *testing.T) {
	b := newBudget(t, unreachable(t), "down", budget.Limit{Rate: 1000, Burst: 100}, &budget.Options{
		FleetSize: 2,
		Also:      []budget.Limit{{Rate: 4, Per: 10 * time.Second, Burst: 4}},
		Meters:    map[string][]budget.Limit{"tokens": {{Rate: 200, Per: 10 * time.Second, Burst: 200}}},
	})
	// Locally: Also 2 per 10s, burst 2; tokens 100 per 10s, burst 100. The
	// first call finds Redis unreachable (it may take a few dials).
	r := reserve(t, b, tokens(60), 10*time.Second)
	refused(t, b, tokens(60), time.Second) // 40 tokens left
	if err := r.Done(context.Background()); err != nil {
		t.Errorf("Done of a local reservation = %v; want nil", err)
	}
	reserve(t, b, tokens(40), time.Second)
	refused(t, b, budget.Cost{}, time.Second) // Also: 2 calls used
	if st := b.Stats(); st.LocalWaits != 4 || st.Refused != 2 {
		t.Errorf("Stats: LocalWaits %d, Refused %d; want 4, 2", st.LocalWaits, st.Refused)
	}
}

// TestOverdraftKept: a call that spent, or booked, years of a limit (a
// loader's report of 10^12 tokens, a Cost of 2^40 calls) leaves the limit
// blocked, not forgotten: written further ahead than a field may lie, the
// tat read as corrupt, and the budget started afresh.
func TestOverdraftKept(t *testing.T) {
	_, rdb := redistest.Mini(t)
	ctx := context.Background()
	refused := func(b *budget.Budget, c budget.Cost, what string) {
		t.Helper()
		dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		r, err := b.Reserve(dctx, budget.Foreground, c)
		if err == nil {
			_ = r.Done(ctx)
			t.Errorf("%s: the next Reserve went at once; want it refused", what)
		} else if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: the next Reserve: %v; want refused by its deadline", what, err)
		}
	}
	for _, huge := range []int64{1e11, 1e12, 1e15} {
		name := fmt.Sprintf("overdraft-%d", huge)
		b := budget.New(rdb, name, budget.Limit{Rate: 1000, Burst: 1000},
			&budget.Options{Meters: map[string][]budget.Limit{"tokens": {{Rate: 1000, Burst: 1000}}}})
		defer b.Close()
		r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{Meters: map[string]int64{"tokens": 1000}})
		if err != nil {
			t.Fatal(err)
		}
		r.Spent(budget.Cost{Meters: map[string]int64{"tokens": huge}})
		if err := r.Done(ctx); err != nil {
			t.Fatal(err)
		}
		refused(b, budget.Cost{Meters: map[string]int64{"tokens": 1}}, fmt.Sprintf("after spending %d tokens", huge))
	}
	b := budget.New(rdb, "overdraft-calls", budget.Limit{Rate: 1000}, nil)
	defer b.Close()
	r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{Calls: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	_ = r.Done(ctx)
	refused(b, budget.Cost{}, "after booking 2^40 calls")
}
