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
// rounds up to costs one interval and widens the spacing, not a fleet-wide
// pause of a second; the same 429 reported twice counts once; only a run of
// them within one Per, the spacing already at its widest, pauses for
// Retry-After.
func TestOvershoot(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb, "overshoot", budget.Limit{Rate: 5}, nil) // T = 200ms
	ctx := context.Background()
	const T = 200000
	h := http.Header{"Retry-After": {"1"}}
	observe := func() {
		t.Helper()
		if err := b.Observe(ctx, h, http.StatusTooManyRequests); err != nil {
			t.Fatal(err)
		}
	}
	// The next 429 is another one: T/2 after the last.
	apart := func() {
		t.Helper()
		last := field(t, rdb, b, "o1")
		redistest.WaitFor(t, "half an interval", func() bool { return redisNow(t, rdb)-last >= T/2 })
	}

	now := redisNow(t, rdb)
	observe()
	if d := field(t, rdb, b, "pause") - now; d > 2*T {
		t.Errorf("paused for %dµs after one 429; want one interval, %dµs", d, T)
	}
	if got, want := field(t, rdb, b, "slack"), int64(T/12/2); got != want {
		t.Errorf("slack = %dµs; want %dµs", got, want)
	}
	observe() // the same 429, through PauseFor
	if st := b.Stats(); st.Overshoots != 1 || st.PausesRateLimited != 0 {
		t.Errorf("Stats: Overshoots %d, PausesRateLimited %d; want 1, 0", st.Overshoots, st.PausesRateLimited)
	}
	// A booking after it is paced at T + slack.
	var books []budget.Booking
	budget.OnBook(b, func(k budget.Booking) { books = append(books, k) })
	for range 2 {
		if err := b.Wait(ctx, budget.Foreground); err != nil {
			t.Fatal(err)
		}
	}
	if d := books[1].Slot - books[0].Slot; d != T+T/12/2 {
		t.Errorf("slots %dµs apart; want T + slack, %dµs", d, T+T/12/2)
	}

	// A storm: 3 overshoots within a Per.
	apart()
	observe()
	if got := field(t, rdb, b, "slack"); got != T/12 {
		t.Errorf("slack = %dµs; want the most, %dµs", got, T/12)
	}
	if st := b.Stats(); st.Overshoots != 2 || st.PausesRateLimited != 0 {
		t.Errorf("Stats: Overshoots %d, PausesRateLimited %d; want 2, 0", st.Overshoots, st.PausesRateLimited)
	}
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

// TestOvershootRespaces: a Wait sleeping on a slot booked before an
// overshoot books again, at the new spacing.
func TestOvershootRespaces(t *testing.T) {
	s := redistest.Start(t, nil)
	b := newBudget(t, s.Client(t, nil), "respace", budget.Limit{Rate: 1, Per: 10 * time.Second}, nil)
	sl := startSleeper(t, b)
	if err := b.Observe(context.Background(), http.Header{"Retry-After": {"1"}}, http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "the sleeper booking again", func() bool { return b.Stats().Rebooked == 1 })
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
