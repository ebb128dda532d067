package budget_test

import (
	"context"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestOvershoot: a 429 whose Retry-After is the whole second a shorter wait
// rounds up to costs one interval and widens the spacing (doubling, from an
// eighth of the most to the most), not a fleet-wide pause of a second; the
// same 429 reported twice counts once; only a run of them within one Per,
// the spacing already at its widest, pauses for Retry-After. The Redis clock
// is miniredis's, set by the test.
func TestOvershoot(t *testing.T) {
	m, rdb := redistest.Mini(t)
	clock := time.Now()
	m.SetTime(clock)
	b := newBudget(t, rdb, "overshoot", budget.Limit{Rate: 5}, nil) // T = 200ms
	rec := &recorder{}
	rec.watch(b)
	ctx := context.Background()
	const T, most, first = 200000, 200000, 200000 / 48
	h := http.Header{"Retry-After": {"1"}}
	observe := func() {
		t.Helper()
		if err := b.Observe(ctx, h, http.StatusTooManyRequests); err != nil {
			t.Fatal(err)
		}
	}
	// The next 429 is another one: T/2 after the last.
	apart := func() {
		clock = clock.Add(T / 2 * time.Microsecond)
		m.SetTime(clock)
	}

	now := redisNow(t, rdb)
	observe()
	if d := field(t, rdb, b, "pause") - now; d > T {
		t.Errorf("paused for %dµs after one 429; want one interval, %dµs", d, T)
	}
	if got, want := field(t, rdb, b, "slack"), int64(first); got != want {
		t.Errorf("slack = %dµs; want T/48, %dµs", got, want)
	}
	observe() // the same 429, through PauseFor
	if st := b.Stats(); st.Overshoots != 1 || st.PausesRateLimited != 0 {
		t.Errorf("Stats: Overshoots %d, PausesRateLimited %d; want 1, 0", st.Overshoots, st.PausesRateLimited)
	}
	// A booking after it is paced at T + slack.
	if s := bookTwo(t, b, rec); s[1]-s[0] != T+first {
		t.Errorf("slots %v; want T + slack, %dµs apart", s, T+first)
	}

	// The slack doubles with each overshoot, to the most, T.
	for _, want := range []int64{2 * first, 4 * first, 8 * first, 16 * first, 32 * first, most} {
		apart()
		observe()
		if got := field(t, rdb, b, "slack"); got != want {
			t.Errorf("slack = %dµs; want %dµs", got, want)
		}
	}
	if st := b.Stats(); st.Overshoots != 7 || st.PausesRateLimited != 0 {
		t.Errorf("Stats: Overshoots %d, PausesRateLimited %d; want 7, 0", st.Overshoots, st.PausesRateLimited)
	}
	// At the most, a storm: the eighth overshoot within a Per.
	apart()
	now = redisNow(t, rdb)
	observe()
	if d := field(t, rdb, b, "pause") - now; d < 900000 {
		t.Errorf("paused for %dµs after a storm of 429s; want Retry-After, 1s", d)
	}
	if st := b.Stats(); st.PausesRateLimited != 1 {
		t.Errorf("PausesRateLimited = %d; want 1", st.PausesRateLimited)
	}
}

// TestMeteredRefusalPauses: a 429 whose headers say that a limit on other
// units than calls (tokens) has nothing left is that limit's refusal, not
// an overshoot of the calls' pace: the fleet pauses for its Retry-After.
func TestMeteredRefusalPauses(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb, "metered", budget.Limit{Rate: 500, Per: time.Minute}, nil)
	now := redisNow(t, rdb)
	h := http.Header{}
	h.Set("Retry-After", "1")
	h.Set("X-Ratelimit-Remaining-Requests", "499")
	h.Set("X-Ratelimit-Remaining-Tokens", "0")
	h.Set("X-Ratelimit-Reset-Tokens", "800ms")
	if err := b.Observe(context.Background(), h, http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	if st := b.Stats(); st.Overshoots != 0 || st.PausesRateLimited != 1 {
		t.Errorf("Stats: Overshoots %d, PausesRateLimited %d; want 0, 1", st.Overshoots, st.PausesRateLimited)
	}
	if d := field(t, rdb, b, "pause") - now; d < 900000 {
		t.Errorf("paused for %dµs; want Retry-After, 1s", d)
	}
}

// TestOvershootSlackDecays: the learned slack halves every half-life (100
// intervals, 20 s here) without an overshoot, so a fleet whose jitter passed goes back to
// its full rate.
func TestOvershootSlackDecays(t *testing.T) {
	m, rdb := redistest.Mini(t)
	clock := time.Now()
	m.SetTime(clock)
	b := newBudget(t, rdb, "decay", budget.Limit{Rate: 5}, nil) // T = 200ms
	rec := &recorder{}
	rec.watch(b)
	ctx := context.Background()
	const T, most = 200000, 200000
	h := http.Header{"Retry-After": {"1"}}
	for range 7 {
		clock = clock.Add(T * time.Microsecond)
		m.SetTime(clock)
		if err := b.Observe(ctx, h, http.StatusTooManyRequests); err != nil {
			t.Fatal(err)
		}
	}
	if got := field(t, rdb, b, "slack"); got != most {
		t.Fatalf("slack = %dµs; want the most, %dµs", got, most)
	}
	for i, want := range []int64{most, most / 2, most / 4} {
		if i > 0 {
			clock = clock.Add(100 * T * time.Microsecond)
			m.SetTime(clock)
		}
		if s := bookTwo(t, b, rec); s[1]-s[0] != T+want {
			t.Errorf("after %d half-lives: slots %v; want T + %dµs apart", i, s, want)
		}
	}
}

// bookTwo has b book two slots, one after the other, and returns them. The
// slots may lie ahead on a clock the test set: the Waits sleeping on them
// are cancelled once booked.
func bookTwo(t *testing.T, b *budget.Budget, rec *recorder) [2]int64 {
	t.Helper()
	n := rec.len()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	for i := range 2 {
		go func() {
			defer func() { done <- struct{}{} }()
			_ = b.Wait(ctx, budget.Foreground)
		}()
		redistest.WaitFor(t, "a booking", func() bool { return rec.len() > n+i })
	}
	cancel()
	<-done
	<-done
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return [2]int64{rec.b[n].Slot, rec.b[n+1].Slot}
}

// TestRespaceForgetsOldSchedule: after an overshoot respaces the fleet's
// schedule, a server's Waits that slept on the old one book again on the
// new one; the server's memory of the old schedule (kept for a Redis that
// loses its state) does not push the new one back out past it.
func TestRespaceForgetsOldSchedule(t *testing.T) {
	s := redistest.Start(t, nil)
	limit := budget.Limit{Rate: 10} // T = 100ms
	a := newBudget(t, s.Client(t, nil), "respace-memory", limit, nil)
	b := newBudget(t, s.Client(t, nil), "respace-memory", limit, nil)
	rec := &recorder{}
	rec.watch(a)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 10
	done := make(chan error, n)
	for range n {
		go func() { done <- a.Wait(ctx, budget.Foreground) }()
	}
	redistest.WaitFor(t, "the first bookings", func() bool { return rec.len() == n })
	old := rec.inOrder()[n-1].Slot // the old schedule's last slot
	respaced := redisNow(t, s.Client(t, nil))
	if err := b.Observe(ctx, http.Header{"Retry-After": {"1"}}, http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	if got := b.Stats().Overshoots; got != 1 {
		t.Fatalf("Overshoots = %d; want 1", got)
	}
	for range n {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	// The sleepers booked again: n slots from the respace, at T + slack
	// apart, end before the old schedule's last slot plus an interval; on
	// the old schedule pushed back out, they would end n intervals later.
	last := rec.inOrder()[rec.len()-1].Slot
	const T, most = 100000, 100000 / 6
	if bound := respaced + n*(T+most) + T; last > bound {
		t.Errorf("the last slot after the respace lies %v after it (the old schedule's ended %v after); want at most %v",
			time.Duration(last-respaced)*time.Microsecond, time.Duration(old-respaced)*time.Microsecond,
			time.Duration(bound-respaced)*time.Microsecond)
	}
}

// TestOvershootRespaces: a Wait sleeping on a slot booked before an
// overshoot books again, at the new spacing.
func TestOvershootRespaces(t *testing.T) {
	s := redistest.Start(t, nil)
	b := newBudget(t, s.Client(t, nil), "respace", budget.Limit{Rate: 1, Per: 10 * time.Second}, nil)
	sl := startSleeper(t, b)
	if err := b.Observe(context.Background(), http.Header{"Retry-After": {"1"}}, http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	// The sleeper moves its slot itself, as the script stretched the
	// schedule, without booking again: after an overshoot, a fleet's
	// sleepers cost no burst of round trips (which, on a busy host, made
	// the next overshoot).
	redistest.WaitFor(t, "the sleeper moving its slot", func() bool { return b.Stats().Stretched == 1 })
	if st := b.Stats(); st.Rebooked != 0 || sl.rec.len() != 2 {
		t.Errorf("Rebooked %d, bookings %d; want 0 and 2 (no booking again)", st.Rebooked, sl.rec.len())
	}
	sl.cancel()
	<-sl.done
}

// TestSharedHub: a thousand Budgets and a Cache on one client share one
// pub/sub connection and a bounded number of goroutines, every Budget still
// hears pauses by push, and closing them all leaves nothing running.
func TestSharedHub(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	other := s.Client(t, nil)
	ctx := redistest.Context(t, 30*time.Second)
	before := runtime.NumGoroutine()
	const n = 1000
	bs := make([]*budget.Budget, n)
	for i := range bs {
		bs[i] = budget.New(rdb, "shared-"+strconv.Itoa(i), budget.Limit{Rate: 1, Per: 10 * time.Second}, nil)
	}
	c := fill.New(rdb, nil)
	if _, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) { return 1, nil }); err != nil {
		t.Fatal(err)
	}
	pubsubs := func() int {
		list := s.Do(t, "CLIENT", "LIST", "TYPE", "pubsub").(string)
		return strings.Count(list, "\n")
	}
	redistest.WaitFor(t, "a pub/sub connection", func() bool { return pubsubs() >= 1 })
	if got := pubsubs(); got != 1 {
		t.Errorf("%d pub/sub connections for %d Budgets and a Cache; want 1", got, n)
	}
	if g := runtime.NumGoroutine() - before; g > 20 {
		t.Errorf("%d goroutines more for %d Budgets and a Cache; want at most 20", g, n)
	}

	// A pause from another server reaches a Budget sleeping on a slot.
	last := bs[n-1]
	sl := startSleeper(t, last)
	ob := newBudget(t, other, "shared-"+strconv.Itoa(n-1), budget.Limit{Rate: 1, Per: 10 * time.Second}, nil)
	if err := ob.PauseUntil(ctx, time.Now().Add(20*time.Second)); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "the sleeper hearing the pause", func() bool { return last.Stats().Rebooked == 1 })
	sl.cancel()
	<-sl.done
	_ = ob.Close() // on another client: a hub of its own

	for _, b := range bs {
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "no pub/sub connection", func() bool { return pubsubs() == 0 })
}

// TestOvershootOldNews: a 429 for a call booked before the latest respace
// tells nothing of the new spacing (calls already on their way when the
// schedule was stretched are refused together): it grows no slack and
// respaces nothing. Told through the call's reservation.
func TestOvershootOldNews(t *testing.T) {
	m, rdb := redistest.Mini(t)
	clock := time.Now()
	m.SetTime(clock)
	b := newBudget(t, rdb, "old-news", budget.Limit{Rate: 5}, nil) // T = 200ms
	ctx := context.Background()
	const T = 200000
	h := http.Header{"Retry-After": {"1"}}
	r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(T * time.Microsecond)
	m.SetTime(clock)
	if err := b.Observe(ctx, h, http.StatusTooManyRequests); err != nil { // another call's 429
		t.Fatal(err)
	}
	slack := field(t, rdb, b, "slack")
	clock = clock.Add(T * time.Microsecond)
	m.SetTime(clock)
	if err := r.Observe(ctx, h, http.StatusTooManyRequests); err != nil { // the old call's
		t.Fatal(err)
	}
	if st := b.Stats(); st.Overshoots != 1 || st.PausesRateLimited != 0 {
		t.Errorf("Stats: Overshoots %d, PausesRateLimited %d; want 1, 0", st.Overshoots, st.PausesRateLimited)
	}
	if got := field(t, rdb, b, "slack"); got != slack {
		t.Errorf("slack = %dµs after old news; want %dµs, unchanged", got, slack)
	}
	// The same 429 through Budget.Observe, with no reservation to tell its
	// slot, is an overshoot of the new schedule.
	if err := b.Observe(ctx, h, http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	if st := b.Stats(); st.Overshoots != 2 {
		t.Errorf("Overshoots = %d; want 2", st.Overshoots)
	}
	_ = r.Done(ctx)
}

// TestStretchFactorBounded: a stretch factor pause.lua never sends (the new
// spacing over the old lies within [1, 2]), published on the budget's
// channel by anyone who can, moves no slot: the sleeping Wait books again
// instead, and its call never goes before a slot the script gave it.
func TestStretchFactorBounded(t *testing.T) {
	s := redistest.Start(t, nil)
	b := newBudget(t, s.Client(t, nil), "stretch-bounded", budget.Limit{Rate: 1, Per: 10 * time.Second}, nil)
	sl := startSleeper(t, b)
	for i, k := range []string{"99999999999999999", "500000"} {
		now := redisNow(t, s.Client(t, nil)) // after the latest booking
		msg := strconv.FormatInt(now, 10) + " " + strconv.FormatInt(now, 10) + " " + k
		s.Do(t, "PUBLISH", budget.Key(b), msg)
		redistest.WaitFor(t, "the sleeper booking again", func() bool { return b.Stats().Rebooked == uint64(i+1) })
	}
	if st := b.Stats(); st.Stretched != 0 {
		t.Errorf("Stretched = %d after factors out of bounds; want 0", st.Stretched)
	}
	sl.cancel()
	<-sl.done
}
