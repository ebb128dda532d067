package budget_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		runChild(spec)
	}
	goleak.VerifyTestMain(m)
}

func newBudget(t *testing.T, rdb redis.UniversalClient, name string, l budget.Limit, opt *budget.Options) *budget.Budget {
	t.Helper()
	b := budget.New(rdb, name, l, opt)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// sleeper is a foreground Wait on a Budget that sleeps on its slot, booked
// behind one that went at once.
type sleeper struct {
	rec    *recorder          // the Budget's bookings, from the first
	done   chan error         // the sleeping Wait's result
	cancel context.CancelFunc // ends the sleeping Wait's ctx
}

// startSleeper starts a sleeper on b (whose limit must not allow two calls
// at once) and returns once it sleeps.
func startSleeper(t *testing.T, b *budget.Budget) *sleeper {
	t.Helper()
	sl := &sleeper{rec: &recorder{}, done: make(chan error, 1)}
	sl.rec.watch(b)
	if err := b.Wait(context.Background(), budget.Foreground); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	sl.cancel = cancel
	go func() { sl.done <- b.Wait(ctx, budget.Foreground) }()
	redistest.WaitFor(t, "a sleeper", func() bool { return sl.rec.len() == 2 })
	return sl
}

// recorder keeps the bookings of one or more Budgets.
type recorder struct {
	mu sync.Mutex
	b  []budget.Booking
}

func (r *recorder) watch(b *budget.Budget) {
	budget.OnBook(b, func(k budget.Booking) {
		r.mu.Lock()
		r.b = append(r.b, k)
		r.mu.Unlock()
	})
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.b)
}

// inOrder returns the bookings in booking order (by the tat each set).
func (r *recorder) inOrder() []budget.Booking {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := slices.Clone(r.b)
	slices.SortFunc(b, func(x, y budget.Booking) int { return int(x.TAT - y.TAT) })
	return b
}

// maxInWindow returns the most instants of ts within any half-open window
// of length w.
func maxInWindow(ts []int64, w int64) int {
	ts = slices.Clone(ts)
	slices.Sort(ts)
	most := 0
	for i, j := 0, 0; j < len(ts); j++ {
		for ts[j]-ts[i] >= w {
			i++
		}
		most = max(most, j-i+1)
	}
	return most
}

// field reads a field of a budget's hash; -1 when missing.
func field(t *testing.T, rdb redis.UniversalClient, b *budget.Budget, name string) int64 {
	t.Helper()
	s, err := rdb.HGet(context.Background(), budget.Key(b), name).Result()
	if errors.Is(err, redis.Nil) {
		return -1
	}
	if err != nil {
		t.Fatalf("HGET %s: %v", name, err)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("HGET %s: %q: %v", name, s, err)
	}
	return n
}

// redisNow returns the Redis clock in µs.
func redisNow(t *testing.T, rdb redis.UniversalClient) int64 {
	t.Helper()
	tm, err := rdb.Time(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return tm.UnixMicro()
}

// scripts counts the Lua scripts a client runs.
type scripts struct{ n atomic.Int64 }

func (h *scripts) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *scripts) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if n := cmd.Name(); n == "evalsha" || n == "eval" {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (h *scripts) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// loop has each of n goroutines call Wait(p) on b until ctx ends, and calls
// done(returned) after each Wait that returned nil.
func loop(t *testing.T, wg *sync.WaitGroup, ctx context.Context, b *budget.Budget, p budget.Priority, n int, done func(time.Time)) {
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				err := b.Wait(ctx, p)
				switch {
				case err == nil:
					if done != nil {
						done(time.Now())
					}
				case ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded):
				default:
					t.Errorf("Wait(%v): %v", p, err)
					return
				}
			}
		}()
	}
}

// TestLimitHeld runs 4 servers × 10 goroutines, foreground and background,
// against one budget. Slots are booked in order, never more than
// Rate+Burst-1 in any window of Per; no call returns before its slot; and
// the calls, counted when their Wait returned, number at most Rate+Burst-1
// in any window of Per plus those that returned late: a call returns at most
// late after its slot, so the returns within a window of Per are slots within
// a window of Per+late, at most late/T more.
func TestLimitHeld(t *testing.T) {
	s := redistest.Start(t, nil)
	l := budget.Limit{Rate: 50, Per: 500 * time.Millisecond, Burst: 5}
	f := startFleet(t, s, "limit", l, nil, 4, 10, func(i int) budget.Priority { return budget.Priority(i % 2) })
	f.waitCalls(t, "calls", 0, 3*l.Rate)
	f.stop()
	f.mu.Lock()
	books := slices.Clone(f.books)
	f.mu.Unlock()
	slices.SortFunc(books, func(x, y book) int { return int(x.tat - y.tat) })
	for i := 1; i < len(books); i++ {
		if books[i].slot < books[i-1].slot {
			t.Errorf("booking %d has slot %d before the previous one's, %d", i, books[i].slot, books[i-1].slot)
		}
	}
	limit := l.Rate + l.Burst - 1
	if got := maxInWindow(f.slots(), l.Per.Microseconds()); got > limit {
		t.Errorf("%d slots in a window of %v; want at most %d", got, l.Per, limit)
	}
	most, late := f.check(t, 0, time.Now().UnixMicro())
	bound := limit + intervals(l, late)
	t.Logf("%d calls; at most %d in a window of %v (Rate+Burst-1 = %d); the latest returned %v after its slot: bound %d",
		len(f.calls), most, l.Per, limit, late, bound)
	if most > bound {
		t.Errorf("%d calls in a window of %v; want at most %d", most, l.Per, bound)
	}
}

// TestBurstThenRate: after a quiet spell, Burst slots at once, then one per T.
func TestBurstThenRate(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb, "burst", budget.Limit{Rate: 1, Per: time.Second, Burst: 4}, nil)
	var rec recorder
	rec.watch(b)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = b.Wait(ctx, budget.Foreground)
		}()
	}
	redistest.WaitFor(t, "8 bookings", func() bool { return rec.len() == 8 })
	cancel()
	wg.Wait()
	k := rec.inOrder()
	const T = int64(time.Second / time.Microsecond)
	for i := range k {
		switch {
		case i < 4 && k[i].Slot-k[0].Slot >= T/2:
			t.Errorf("slot %d at +%dµs; want with the first (burst of 4)", i, k[i].Slot-k[0].Slot)
		case i >= 4 && k[i].Slot != k[0].Slot+int64(i-3)*T:
			t.Errorf("slot %d at +%dµs; want +%dµs", i, k[i].Slot-k[0].Slot, int64(i-3)*T)
		}
	}
}

// TestBookingOrder: bookings from three servers get slots in booking order,
// one per T.
func TestBookingOrder(t *testing.T) {
	m, _ := redistest.Mini(t)
	var rec recorder
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 3 {
		b := newBudget(t, redistest.Client(t, m.Addr()), "order", budget.Limit{Rate: 1}, nil)
		rec.watch(b)
		for range 5 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = b.Wait(ctx, budget.Foreground)
			}()
		}
	}
	redistest.WaitFor(t, "15 bookings", func() bool { return rec.len() == 15 })
	cancel()
	wg.Wait()
	k := rec.inOrder()
	for i := 1; i < len(k); i++ {
		if d := k[i].Slot - k[i-1].Slot; d != int64(time.Second/time.Microsecond) {
			t.Errorf("booking %d: slot %dµs after the previous one; want 1s", i, d)
		}
	}
}

// TestDeadlineRefused: a slot past the deadline is refused at once, and
// nothing is booked.
func TestDeadlineRefused(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb, "deadline", budget.Limit{Rate: 1, Per: 10 * time.Second}, nil)
	if err := b.Wait(context.Background(), budget.Foreground); err != nil {
		t.Fatal(err)
	}
	tat := field(t, rdb, b, "tat")
	for _, p := range []budget.Priority{budget.Foreground, budget.Background} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := b.Wait(ctx, p)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Wait(%v) = %v; want an error wrapping context.DeadlineExceeded", p, err)
		}
		if ctx.Err() != nil {
			t.Errorf("Wait(%v) returned after its ctx ended; want at once", p)
		}
		cancel()
		if got := field(t, rdb, b, "tat"); got != tat {
			t.Errorf("after the refusal tat = %d; want %d (unchanged)", got, tat)
		}
	}
	if got := field(t, rdb, b, "bq"); got != -1 {
		t.Errorf("bq = %d; want none: a refused background call takes no place in line", got)
	}
	if st := b.Stats(); st.Refused != 2 || st.Waits != 1 {
		t.Errorf("Stats: Refused %d, Waits %d; want 2, 1", st.Refused, st.Waits)
	}
}

// TestGiveBack: a caller that gives up gives back its slot when no booking
// came after it.
func TestGiveBack(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := budget.New(rdb, "giveback", budget.Limit{Rate: 1, Per: 10 * time.Second}, nil)
	defer b.Close()
	var rec recorder
	rec.watch(b)
	if err := b.Wait(context.Background(), budget.Foreground); err != nil {
		t.Fatal(err)
	}
	type sleeper struct {
		cancel context.CancelFunc
		err    chan error
	}
	book := func() sleeper {
		ctx, cancel := context.WithCancel(context.Background())
		s := sleeper{cancel, make(chan error, 1)}
		n := rec.len()
		go func() { s.err <- b.Wait(ctx, budget.Foreground) }()
		redistest.WaitFor(t, "a booking", func() bool { return rec.len() == n+1 })
		return s
	}
	giveUp := func(s sleeper) {
		s.cancel()
		if err := <-s.err; !errors.Is(err, context.Canceled) {
			t.Errorf("Wait = %v; want context.Canceled", err)
		}
	}
	x, y := book(), book()
	k := rec.inOrder()
	giveUp(y) // the last booking: given back
	redistest.WaitFor(t, "a slot given back", func() bool { return b.Stats().GivenBack == 1 })
	if got := field(t, rdb, b, "tat"); got != k[1].TAT {
		t.Errorf("tat = %d; want %d, as after the booking before", got, k[1].TAT)
	}
	giveUp(x) // the last again
	redistest.WaitFor(t, "two slots given back", func() bool { return b.Stats().GivenBack == 2 })
	if got := field(t, rdb, b, "tat"); got != k[0].TAT {
		t.Errorf("tat = %d; want %d, as after the first booking", got, k[0].TAT)
	}
	x, y = book(), book()
	giveUp(x) // booked before y: kept
	tat := rec.inOrder()[len(rec.inOrder())-1].TAT
	_ = b.Close() // waits for the give-back
	<-y.err
	if st := b.Stats(); st.GivenBack != 2 || st.Abandoned != 3 {
		t.Errorf("Stats: GivenBack %d, Abandoned %d; want 2, 3", st.GivenBack, st.Abandoned)
	}
	if got := field(t, rdb, b, "tat"); got != tat {
		t.Errorf("tat = %d; want %d: a slot with a booking after it stays booked", got, tat)
	}
}

// TestBackgroundShare: while a foreground booking lies in the future,
// background slots are at least T/BackgroundShare apart; with foreground
// calls queued past the horizon, background calls get none.
func TestBackgroundShare(t *testing.T) {
	for _, tc := range []struct {
		name       string
		foreground int // goroutines calling Wait(Foreground) in a loop
	}{
		{"one foreground caller", 1},
		{"foreground saturating", 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := redistest.Start(t, nil)
			l := budget.Limit{Rate: 50}
			var rec recorder
			fg := newBudget(t, s.Client(t, nil), "share", l, nil)
			rec.watch(fg)
			tb := budget.BackgroundInterval(fg).Microseconds()
			ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
			defer cancel()
			var wg sync.WaitGroup
			for range 2 {
				bg := newBudget(t, s.Client(t, nil), "share", l, nil)
				rec.watch(bg)
				loop(t, &wg, ctx, bg, budget.Background, 10, nil)
			}
			loop(t, &wg, ctx, fg, budget.Foreground, tc.foreground, nil)
			wg.Wait()
			var nfg, nbg, gated int
			last := int64(-1) // the latest background slot
			for _, k := range rec.inOrder() {
				if k.Priority == budget.Foreground {
					nfg++
					continue
				}
				nbg++
				if k.Gated {
					gated++
					if last >= 0 && k.Slot-last < tb {
						t.Errorf("background slot %dµs after the previous one while foreground waited; want at least %dµs",
							k.Slot-last, tb)
					}
				}
				last = k.Slot
			}
			t.Logf("%d foreground, %d background slots (%d through the share gate)", nfg, nbg, gated)
			switch {
			case tc.foreground == 1 && gated == 0:
				t.Errorf("no background slot through the share gate; want some")
			case tc.foreground > 1 && float64(nbg) > 0.3*float64(nfg+nbg):
				t.Errorf("%d of %d slots went to background calls; want at most 30%%", nbg, nfg+nbg)
			}
		})
	}
}

// TestBackground: background calls alone use the whole rate; a foreground
// call among them waits no longer than the horizon plus one interval.
func TestBackground(t *testing.T) {
	s := redistest.Start(t, nil)
	l := budget.Limit{Rate: 100}
	T := int64(10 * time.Millisecond / time.Microsecond)
	var bgRec, fgRec recorder
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	var bgs []*budget.Budget
	for range 2 {
		bg := newBudget(t, s.Client(t, nil), "background", l, nil)
		bgRec.watch(bg)
		bgs = append(bgs, bg)
		loop(t, &wg, ctx, bg, budget.Background, 10, nil)
	}
	fg := newBudget(t, s.Client(t, nil), "background", l, nil)
	fgRec.watch(fg)
	redistest.WaitFor(t, "100 background slots", func() bool { return bgRec.len() >= 100 })
	for range 20 {
		if err := fg.Wait(ctx, budget.Foreground); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	wg.Wait()

	// Alone, background slots follow one another every T, not every
	// T/share: take the first 100, before any foreground call.
	k := bgRec.inOrder()[:100]
	var gaps []int64
	for i := 1; i < len(k); i++ {
		gaps = append(gaps, k[i].Slot-k[i-1].Slot)
	}
	slices.Sort(gaps)
	if med := gaps[len(gaps)/2]; med != T {
		t.Errorf("median gap between background slots %dµs; want T = %dµs", med, T)
	}
	horizon := budget.Horizon(fg)
	for i, k := range fgRec.inOrder() {
		if k.Wait > horizon+10*time.Millisecond {
			t.Errorf("foreground call %d: slot %v away; want at most the horizon %v + T", i, k.Wait, horizon)
		}
	}
	var comeBacks uint64
	for _, b := range bgs {
		comeBacks += b.Stats().ComeBacks
	}
	if comeBacks == 0 {
		t.Errorf("no background call was told to come back; want some (saturated)")
	}
}

// TestPause: a pause set by one server is seen by the next booking of
// another, and wakes its sleepers, which book again after it.
func TestPause(t *testing.T) {
	s := redistest.Start(t, nil)
	l := budget.Limit{Rate: 1, Per: 5 * time.Second}
	a := newBudget(t, s.Client(t, nil), "pause", l, nil)
	rdbB := s.Client(t, nil)
	b := newBudget(t, rdbB, "pause", l, nil)
	sl := startSleeper(t, b)
	rec, done, cancel := sl.rec, sl.done, sl.cancel

	if err := a.PauseUntil(context.Background(), time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	pause := field(t, rdbB, b, "pause")
	redistest.WaitFor(t, "the sleeper to book again", func() bool { return b.Stats().Rebooked == 1 })
	redistest.WaitFor(t, "its new booking", func() bool { return rec.len() == 3 })
	if k := rec.inOrder()[2]; k.Slot < pause {
		t.Errorf("booked again at %d; want after the pause, %d", k.Slot, pause)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Wait = %v; want context.Canceled", err)
	}

	c := newBudget(t, s.Client(t, nil), "pause", l, nil)
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	if err := c.Wait(wctx, budget.Background); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait on a third server during the pause = %v; want DeadlineExceeded at once", err)
	}
	if st := a.Stats(); st.PausesRequested != 1 {
		t.Errorf("PausesRequested = %d; want 1", st.PausesRequested)
	}
}

// TestPauseAfterReconnect: a pause whose announcement a server missed (its
// pub/sub connection was down) is read when the connection is back.
func TestPauseAfterReconnect(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	b := newBudget(t, s.Client(t, nil), "reconnect", budget.Limit{Rate: 1, Per: 5 * time.Second}, nil)
	sl := startSleeper(t, b)
	rec, done, cancel := sl.rec, sl.done, sl.cancel
	ctx := context.Background()
	redistest.WaitFor(t, "the subscription", func() bool {
		n, err := rdb.PubSubNumSub(ctx, budget.Key(b)).Result()
		return err == nil && n[budget.Key(b)] == 1
	})
	// A pause nobody announced, then the pub/sub connection dropped.
	pause := redisNow(t, rdb) + time.Minute.Microseconds()
	if err := rdb.HSet(ctx, budget.Key(b), "pause", pause).Err(); err != nil {
		t.Fatal(err)
	}
	s.Do(t, "CLIENT", "KILL", "TYPE", "pubsub")
	redistest.WaitFor(t, "the sleeper to book again", func() bool { return b.Stats().Rebooked == 1 })
	redistest.WaitFor(t, "its new booking", func() bool { return rec.len() == 3 })
	if k := rec.inOrder()[2]; k.Slot != pause {
		t.Errorf("booked again at %d; want at the pause's end, %d", k.Slot, pause)
	}
	cancel()
	<-done
}

// TestPauseWithoutChannels: a server whose pub/sub Redis refuses (an ACL
// user without channel permissions) hears of no pause, so its sleepers read
// the pause before they go, and book again after it.
func TestPauseWithoutChannels(t *testing.T) {
	s := redistest.Start(t, nil)
	s.ACLUser(t, "nochan", "secret", "~*", "+@all", "resetchannels")
	l := budget.Limit{Rate: 1, Per: 500 * time.Millisecond}
	a := newBudget(t, s.Client(t, nil), "nochan", l, nil)
	rdbB := s.Client(t, &redis.Options{Username: "nochan", Password: "secret"})
	b := newBudget(t, rdbB, "nochan", l, nil)
	sl := startSleeper(t, b)
	rec, done, cancel := sl.rec, sl.done, sl.cancel
	if err := a.PauseUntil(context.Background(), time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	pause := field(t, s.Client(t, nil), b, "pause")
	redistest.WaitFor(t, "the sleeper to book again", func() bool { return rec.len() == 3 })
	if k := rec.inOrder()[2]; k.Slot < pause {
		t.Errorf("booked again at %d; want after the pause, %d", k.Slot, pause)
	}
	select {
	case err := <-done:
		t.Fatalf("Wait returned %v during the pause", err)
	default:
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Wait = %v; want context.Canceled", err)
	}
	if st := b.Stats(); st.Rebooked != 1 {
		t.Errorf("Rebooked = %d; want 1", st.Rebooked)
	}
}

// TestPauseSameServer: a pause set on this server wakes its own sleepers at
// once, whatever pub/sub does.
func TestPauseSameServer(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb, "self", budget.Limit{Rate: 1, Per: 5 * time.Second}, nil)
	sl := startSleeper(t, b)
	rec, done, cancel := sl.rec, sl.done, sl.cancel
	h := http.Header{"Retry-After": {"60"}}
	if err := b.Observe(context.Background(), h, http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "the sleeper to book again", func() bool { return rec.len() == 3 })
	if k, pause := rec.inOrder()[2], field(t, rdb, b, "pause"); k.Slot != pause {
		t.Errorf("booked again at %d; want at the pause's end, %d", k.Slot, pause)
	}
	cancel()
	<-done
	if st := b.Stats(); st.PausesRateLimited != 1 || st.Rebooked != 1 {
		t.Errorf("Stats: PausesRateLimited %d, Rebooked %d; want 1, 1", st.PausesRateLimited, st.Rebooked)
	}
}

// TestObserve: what Observe stores for a response.
func TestObserve(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb, "observe", budget.Limit{Rate: 100}, nil)
	ctx := context.Background()

	// Nothing to say: nothing written.
	for _, h := range []http.Header{{}, {"X-Rate-Limit-Remaining": {"x"}}, {"Retry-After": {"later"}}} {
		if err := b.Observe(ctx, h, http.StatusOK); err != nil {
			t.Fatal(err)
		}
	}
	if n := rdb.Exists(ctx, budget.Key(b)).Val(); n != 0 {
		t.Errorf("after responses without accounting the budget's key exists; want none")
	}

	// 429: paused for Retry-After.
	now := redisNow(t, rdb)
	if err := b.Observe(ctx, http.Header{"Retry-After": {"30"}}, http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	if d := time.Duration(field(t, rdb, b, "pause")-now) * time.Microsecond; d < 30*time.Second || d > 31*time.Second {
		t.Errorf("paused for %v; want 30s", d)
	}
	// A shorter pause does not shorten it.
	pause := field(t, rdb, b, "pause")
	if err := b.Observe(ctx, http.Header{"Retry-After": {"1"}}, http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	if got := field(t, rdb, b, "pause"); got != pause {
		t.Errorf("pause moved to %d after a shorter one; want %d", got, pause)
	}
	if st := b.Stats(); st.PausesRateLimited != 2 {
		t.Errorf("PausesRateLimited = %d; want 2", st.PausesRateLimited)
	}
}

// TestRemainingCap: "N remaining until the reset" is a cap, not a delay:
// N more calls go at the budget's own pace, and only the (N+1)th waits for
// the reset.
func TestRemainingCap(t *testing.T) {
	_, rdb := redistest.Mini(t)
	l := budget.Limit{Rate: 20, Burst: 5}
	b := newBudget(t, rdb, "cap", l, nil)
	var rec recorder
	rec.watch(b)
	ctx := context.Background()
	reset := time.Now().Add(60 * time.Second).Unix()
	h := http.Header{"X-Rate-Limit-Remaining": {"17"}, "X-Rate-Limit-Reset": {strconv.FormatInt(reset, 10)}}
	if err := b.Observe(ctx, h, http.StatusOK); err != nil {
		t.Fatal(err)
	}
	// 17 calls: as if nothing was said, 5 at once and one per T after.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for range 17 {
		wg.Go(func() {
			if err := b.Wait(wctx, budget.Foreground); err != nil {
				t.Errorf("Wait = %v; want nil: 17 calls remain", err)
			}
		})
	}
	wg.Wait()
	const T = 50000 // µs
	k := rec.inOrder()
	for i := 5; i < len(k); i++ {
		if want := k[4].Slot + int64(i-4)*T; k[i].Slot > want {
			t.Errorf("call %d at first%+dµs; want at most first%+dµs, the budget's own pace", i, k[i].Slot-k[0].Slot, want-k[0].Slot)
		}
	}
	// The 18th waits for the reset: refused at once with a shorter deadline.
	if err := b.Wait(wctx, budget.Foreground); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("18th Wait = %v; want DeadlineExceeded (its slot is the reset, a minute away)", err)
	}
	// Booked, it goes at the reset.
	lctx, lcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer lcancel()
	done := make(chan error, 1)
	go func() { done <- b.Wait(lctx, budget.Foreground) }()
	redistest.WaitFor(t, "the 18th booking", func() bool { return rec.len() == 18 })
	lcancel()
	<-done
	if got := rec.inOrder()[17].Slot; got < reset*1e6 || got > reset*1e6+T {
		t.Errorf("18th slot at reset%+dµs; want the reset", got-reset*1e6)
	}
	if st := b.Stats(); st.PullDowns != 1 {
		t.Errorf("PullDowns = %d; want 1", st.PullDowns)
	}
}

// TestRemainingCapCounts: calls booked for a slot still ahead spend the
// remaining count too; a later response of the same window never raises
// the cap, one of a new window replaces it; a slot given back is given back
// to the cap; plenty remaining costs no round trip.
func TestRemainingCapCounts(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb, "cap-counts", budget.Limit{Rate: 1, Per: time.Second}, nil)
	var rec recorder
	rec.watch(b)
	ctx := context.Background()
	if err := b.Wait(ctx, budget.Foreground); err != nil {
		t.Fatal(err)
	}
	// Two calls booked ahead, at +1s and +2s.
	done := make(chan error, 2)
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	go func() { done <- b.Wait(sctx, budget.Foreground) }()
	redistest.WaitFor(t, "a sleeper", func() bool { return rec.len() == 2 })
	lctx, lcancel := context.WithCancel(ctx)
	defer lcancel()
	go func() { done <- b.Wait(lctx, budget.Foreground) }()
	redistest.WaitFor(t, "a second sleeper", func() bool { return rec.len() == 3 })

	observe := func(remaining int, reset time.Duration) {
		t.Helper()
		h := http.Header{
			"X-Rate-Limit-Remaining": {strconv.Itoa(remaining)},
			"X-Rate-Limit-Reset":     {strconv.FormatInt(time.Now().Add(reset).Unix(), 10)},
		}
		if err := b.Observe(ctx, h, http.StatusOK); err != nil {
			t.Fatal(err)
		}
	}
	observe(4, time.Minute)
	if got := field(t, rdb, b, "cap"); got != 2 {
		t.Errorf("cap = %d after remaining 4 with 2 calls booked ahead; want 2", got)
	}
	capat := field(t, rdb, b, "capat")
	observe(10, time.Minute) // an older response of the same window
	if got := field(t, rdb, b, "cap"); got != 2 {
		t.Errorf("cap = %d after a later remaining 10 of the same window; want 2", got)
	}
	lcancel() // the latest booking: its slot goes back to the budget and the cap
	redistest.WaitFor(t, "the slot given back", func() bool { return b.Stats().GivenBack == 1 })
	if got := field(t, rdb, b, "cap"); got != 3 {
		t.Errorf("cap = %d after a slot was given back; want 3", got)
	}
	observe(7, 2*time.Minute) // a new window: one call still booked ahead
	if got, at := field(t, rdb, b, "cap"), field(t, rdb, b, "capat"); got != 6 || at-capat < 59e6 {
		t.Errorf("cap = %d until capat%+dµs after remaining 7 of the next window; want 6 until a minute later", got, at-capat)
	}
	h := &scripts{}
	rdb.AddHook(h)
	observe(1000, time.Minute)
	if n := h.n.Load(); n != 0 {
		t.Errorf("remaining 1000 ran %d scripts; want none", n)
	}
	scancel()
	for range 2 {
		<-done
	}
}

// TestPauseFor: the retry path of a loader that hit the rate limit.
func TestPauseFor(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb, "pausefor", budget.Limit{Rate: 10, Per: time.Minute}, nil)
	ctx := context.Background()
	for _, tc := range []struct {
		err    error
		paused bool
		want   time.Duration
	}{
		{nil, false, 0},
		{errors.New("boom"), false, 0},
		{&budget.RateLimitedError{RetryAfter: 5 * time.Second}, true, 5 * time.Second},
		{&budget.RateLimitedError{}, true, time.Minute}, // unknown: one Per
		{budget.ErrRateLimited, true, time.Minute},
	} {
		_ = rdb.Del(ctx, budget.Key(b)).Err()
		now := redisNow(t, rdb)
		wrapped := tc.err
		if wrapped != nil {
			wrapped = errors.Join(errors.New("loading"), tc.err)
		}
		paused, err := b.PauseFor(ctx, wrapped)
		if err != nil || paused != tc.paused {
			t.Errorf("PauseFor(%v) = %v, %v; want %v, nil", tc.err, paused, err, tc.paused)
		}
		got := time.Duration(field(t, rdb, b, "pause")-now) * time.Microsecond
		if !tc.paused {
			if got := field(t, rdb, b, "pause"); got != -1 {
				t.Errorf("PauseFor(%v) paused; want not", tc.err)
			}
			continue
		}
		if got < tc.want || got > tc.want+time.Second {
			t.Errorf("PauseFor(%v) paused for %v; want %v", tc.err, got, tc.want)
		}
	}
	e := &budget.RateLimitedError{RetryAfter: 1500 * time.Millisecond}
	if !errors.Is(e, budget.ErrRateLimited) || e.Error() != "budget: rate limited: retry after 1.5s" {
		t.Errorf("RateLimitedError: Is %v, %q", errors.Is(e, budget.ErrRateLimited), e.Error())
	}
	if err := b.PauseUntil(ctx, time.Now().Add(-time.Second)); err != nil {
		t.Errorf("PauseUntil(the past) = %v; want nil", err)
	}
}

// TestRetryPath: the retry path as package fill runs it: Wait, load, and on
// a RateLimitedError PauseUntil(now + RetryAfter), then Wait again, which
// returns after the pause.
func TestRetryPath(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb, "retry", budget.Limit{Rate: 100}, nil)
	var rec recorder
	rec.watch(b)
	ctx := redistest.Context(t, 20*time.Second)
	loads := 0
	load := func() error {
		loads++
		if loads == 1 {
			return fmt.Errorf("GET /x: %w", &budget.RateLimitedError{RetryAfter: 300 * time.Millisecond})
		}
		return nil
	}
	var pause int64
	for {
		if err := b.Wait(ctx, budget.Foreground); err != nil {
			t.Fatal(err)
		}
		err := load()
		var rle *budget.RateLimitedError
		if errors.As(err, &rle) {
			if err := b.PauseUntil(ctx, time.Now().Add(rle.RetryAfter)); err != nil {
				t.Fatal(err)
			}
			pause = field(t, rdb, b, "pause")
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		break
	}
	if k := rec.inOrder(); len(k) != 2 || k[1].Slot != pause {
		t.Errorf("bookings %+v; want the second at the pause's end, %d", k, pause)
	}
}

// unreachable returns a client of an address nobody listens on.
func unreachable(t *testing.T) *redis.Client {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// TestRedisDown: with Redis unreachable, a local limiter at Rate/FleetSize
// decides, and pauses are kept locally.
func TestRedisDown(t *testing.T) {
	b := newBudget(t, unreachable(t), "down", budget.Limit{Rate: 40, Burst: 8}, &budget.Options{FleetSize: 4})
	// Locally: 10/s, burst 2. The first call finds Redis unreachable (it
	// may take a few dials); the others know it.
	for i := range 3 {
		d := 50 * time.Millisecond
		if i == 0 {
			d = 10 * time.Second
		}
		ctx, cancel := context.WithTimeout(context.Background(), d)
		err := b.Wait(ctx, budget.Foreground)
		cancel()
		switch {
		case i < 2 && err != nil:
			t.Errorf("Wait %d = %v; want nil (local burst 2)", i, err)
		case i == 2 && !errors.Is(err, context.DeadlineExceeded):
			t.Errorf("Wait %d = %v; want DeadlineExceeded (next local slot 100ms away)", i, err)
		}
	}
	if err := b.Observe(context.Background(), http.Header{"Retry-After": {"60"}}, http.StatusTooManyRequests); err != nil {
		t.Errorf("Observe = %v; want nil (pause kept locally)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Wait(ctx, budget.Foreground); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait during a local pause = %v; want DeadlineExceeded", err)
	}
	if st := b.Stats(); st.LocalWaits != 3 || st.LocalPauses != 1 || st.Errors != 0 {
		t.Errorf("Stats: LocalWaits %d, LocalPauses %d, Errors %d; want 3, 1, 0", st.LocalWaits, st.LocalPauses, st.Errors)
	}
}

// TestRedisDownSleepers: with the local limiter, background calls wait
// beyond the horizon without a reservation, and callers that give up or see
// a pause begin leave at once.
func TestRedisDownSleepers(t *testing.T) {
	// Locally: 1/s, burst 1.
	b := newBudget(t, unreachable(t), "down-sleepers", budget.Limit{Rate: 4}, &budget.Options{FleetSize: 4})
	ctx := redistest.Context(t, 20*time.Second)
	if err := b.Wait(ctx, budget.Foreground); err != nil {
		t.Fatal(err)
	}
	bctx, bcancel := context.WithCancel(ctx)
	done := make(chan error, 2)
	go func() { done <- b.Wait(bctx, budget.Background) }()
	redistest.WaitFor(t, "the background call to wait its turn", func() bool { return b.Stats().ComeBacks == 1 })
	bcancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("background Wait = %v; want context.Canceled", err)
	}

	fctx, fcancel := context.WithCancel(ctx)
	defer fcancel()
	go func() { done <- b.Wait(fctx, budget.Foreground) }()
	go func() { done <- b.Wait(fctx, budget.Foreground) }()
	redistest.WaitFor(t, "two sleepers", func() bool { return b.Stats().LocalWaits == 4 })
	// A pause wakes them; they wait it out. Then they give up.
	if err := b.PauseUntil(ctx, time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "the sleepers to see the pause", func() bool { return b.Stats().Rebooked >= 1 })
	fcancel()
	for range 2 {
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("foreground Wait = %v; want context.Canceled", err)
		}
	}
	if st := b.Stats(); st.LocalPauses != 1 || st.Errors != 0 {
		t.Errorf("Stats: LocalPauses %d, Errors %d; want 1, 0", st.LocalPauses, st.Errors)
	}
}

// TestRedisKilled: a budget whose Redis dies goes on with the local limiter.
func TestRedisKilled(t *testing.T) {
	s := redistest.Start(t, nil)
	b := newBudget(t, s.Client(t, &redis.Options{MaxRetries: -1}), "killed", budget.Limit{Rate: 100}, nil)
	ctx := redistest.Context(t, 20*time.Second)
	if err := b.Wait(ctx, budget.Foreground); err != nil {
		t.Fatal(err)
	}
	s.Kill(t)
	for range 3 {
		if err := b.Wait(ctx, budget.Foreground); err != nil {
			t.Fatalf("Wait with Redis killed = %v; want nil (local limiter)", err)
		}
	}
	if st := b.Stats(); st.LocalWaits != 3 || st.Waits != 4 {
		t.Errorf("Stats: LocalWaits %d, Waits %d; want 3, 4", st.LocalWaits, st.Waits)
	}
}

// TestWrongType: a key of another type at the budget's name is an error that
// wraps Redis's, not an outage.
func TestWrongType(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb, "wrong", budget.Limit{Rate: 10}, nil)
	if err := rdb.Set(context.Background(), budget.Key(b), "not a hash", 0).Err(); err != nil {
		t.Fatal(err)
	}
	ctx := redistest.Context(t, 10*time.Second)
	for name, call := range map[string]func() error{
		"Wait":       func() error { return b.Wait(ctx, budget.Foreground) },
		"Observe":    func() error { return b.Observe(ctx, http.Header{"Retry-After": {"1"}}, 429) },
		"PauseUntil": func() error { return b.PauseUntil(ctx, time.Now().Add(time.Second)) },
	} {
		err := call()
		var re redis.Error
		if !errors.As(err, &re) || !strings.Contains(err.Error(), "WRONGTYPE") || !strings.HasPrefix(err.Error(), "budget: ") {
			t.Errorf("%s = %v; want a budget error wrapping Redis's WRONGTYPE", name, err)
		}
	}
	if st := b.Stats(); st.LocalWaits != 0 || st.Errors != 3 {
		t.Errorf("Stats: LocalWaits %d, Errors %d; want 0, 3", st.LocalWaits, st.Errors)
	}
}

// TestBadInput: a budget that cannot work returns its error from every call.
func TestBadInput(t *testing.T) {
	_, rdb := redistest.Mini(t)
	for _, tc := range []struct {
		name  string
		rdb   redis.UniversalClient
		bname string
		l     budget.Limit
		opt   *budget.Options
		want  string
	}{
		{"rate 0", rdb, "x", budget.Limit{}, nil, "rate 0"},
		{"rate negative", rdb, "x", budget.Limit{Rate: -1}, nil, "rate -1"},
		{"per negative", rdb, "x", budget.Limit{Rate: 1, Per: -time.Second}, nil, "period -1s"},
		{"burst negative", rdb, "x", budget.Limit{Rate: 1, Burst: -1}, nil, "burst -1"},
		{"too fast", rdb, "x", budget.Limit{Rate: 2000, Per: time.Millisecond}, nil, "microsecond"},
		{"burst window too long", rdb, "x", budget.Limit{Rate: 1, Per: 24 * time.Hour, Burst: 10000}, nil, "burst window"},
		{"empty name", rdb, "", budget.Limit{Rate: 1}, nil, "empty name"},
		{"prefix with {", rdb, "x", budget.Limit{Rate: 1}, &budget.Options{Prefix: "a{b:"}, "prefix"},
		{"prefix with }", rdb, "x", budget.Limit{Rate: 1}, &budget.Options{Prefix: "a}b:"}, "prefix"},
		{"share above 1", rdb, "x", budget.Limit{Rate: 1}, &budget.Options{BackgroundShare: 1.5}, "background share"},
		{"share negative", rdb, "x", budget.Limit{Rate: 1}, &budget.Options{BackgroundShare: -0.1}, "background share"},
		{"fleet negative", rdb, "x", budget.Limit{Rate: 1}, &budget.Options{FleetSize: -2}, "fleet size"},
		{"nil client", nil, "x", budget.Limit{Rate: 1}, nil, "nil Redis client"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := budget.New(tc.rdb, tc.bname, tc.l, tc.opt)
			ctx := context.Background()
			errs := map[string]error{
				"Wait":       b.Wait(ctx, budget.Foreground),
				"Observe":    b.Observe(ctx, http.Header{"Retry-After": {"1"}}, 429),
				"PauseUntil": b.PauseUntil(ctx, time.Now().Add(time.Second)),
			}
			_, errs["PauseFor"] = b.PauseFor(ctx, budget.ErrRateLimited)
			for name, err := range errs {
				if err == nil || !strings.HasPrefix(err.Error(), "budget") || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s = %v; want an error about %q", name, err, tc.want)
				}
			}
			if err := b.Close(); err != nil {
				t.Errorf("Close = %v; want nil", err)
			}
		})
	}
	if err := (budget.Limit{Rate: 1}).Validate(); err != nil {
		t.Errorf("Limit{Rate: 1}.Validate() = %v; want nil", err)
	}
	b := newBudget(t, rdb, "x", budget.Limit{Rate: 1}, nil)
	if err := b.Wait(context.Background(), budget.Priority(7)); err == nil || !strings.Contains(err.Error(), "priority 7") {
		t.Errorf("Wait(Priority(7)) = %v; want an error", err)
	}
}

// TestCorruptFields: fields that are not plausible instants count as a fresh
// budget: calls go at once, and the fields are rewritten.
func TestCorruptFields(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	ctx := context.Background()
	far := strconv.FormatInt(time.Now().Add(100*365*24*time.Hour).UnixMicro(), 10)
	for i, v := range []string{"garbage", "inf", "-inf", "nan", "1e400", "-5", far, ""} {
		for _, p := range []budget.Priority{budget.Foreground, budget.Background} {
			// A server of its own for each: a server that booked brings
			// the tat it set, and rightly waits behind it; and a budget
			// of its own: a server keeps to a pause it heard of (the
			// Observe below pauses for an hour) after Redis lost it.
			b := newBudget(t, rdb, fmt.Sprintf("corrupt-%d-%d", i, p), budget.Limit{Rate: 1, Per: time.Hour}, nil)
			if err := rdb.HSet(ctx, budget.Key(b), "tat", v, "pause", v, "fg", v, "btat", v, "bq", v,
				"capat", v, "cap", v).Err(); err != nil {
				t.Fatal(err)
			}
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := b.Wait(wctx, p)
			cancel()
			if err != nil {
				t.Errorf("fields %q: Wait(%v) = %v; want nil (a fresh budget)", v, p, err)
			}
			_ = rdb.HSet(ctx, budget.Key(b), "tat", v, "capat", v).Err()
			if err := b.Observe(ctx, http.Header{"X-Rate-Limit-Remaining": {"0"}, "X-Rate-Limit-Reset": {"x"}}, 200); err != nil {
				t.Errorf("fields %q: Observe = %v; want nil", v, err)
			}
			if err := b.Observe(ctx, http.Header{"X-Rate-Limit-Remaining": {"1"}, "X-Rate-Limit-Reset": {strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)}}, 200); err != nil {
				t.Errorf("fields %q: Observe(remaining 1) = %v; want nil", v, err)
			}
			_ = rdb.Del(ctx, budget.Key(b)).Err()
		}
	}
}

// TestClose: Close wakes sleeping Waits, which return ErrClosed.
func TestClose(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := budget.New(rdb, "close", budget.Limit{Rate: 1, Per: time.Minute}, nil)
	var rec recorder
	rec.watch(b)
	if err := b.Wait(context.Background(), budget.Foreground); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 4)
	for _, p := range []budget.Priority{budget.Foreground, budget.Foreground, budget.Background, budget.Background} {
		go func() { errs <- b.Wait(context.Background(), p) }()
	}
	redistest.WaitFor(t, "sleepers", func() bool { return rec.len() == 3 && b.Stats().ComeBacks >= 2 })
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if err := <-errs; !errors.Is(err, budget.ErrClosed) {
			t.Errorf("sleeping Wait = %v; want ErrClosed", err)
		}
	}
	if err := b.Wait(context.Background(), budget.Foreground); !errors.Is(err, budget.ErrClosed) {
		t.Errorf("Wait after Close = %v; want ErrClosed", err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close = %v; want nil", err)
	}
}

// TestEndedContext: a Wait whose ctx has ended returns ctx.Err() without a
// round trip.
func TestEndedContext(t *testing.T) {
	_, rdb := redistest.Mini(t)
	h := &scripts{}
	rdb.AddHook(h)
	b := newBudget(t, rdb, "ended", budget.Limit{Rate: 10}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Wait(ctx, budget.Foreground); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait = %v; want context.Canceled", err)
	}
	dctx, dcancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer dcancel()
	if err := b.Wait(dctx, budget.Background); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait = %v; want context.DeadlineExceeded", err)
	}
	if n := h.n.Load(); n != 0 {
		t.Errorf("%d scripts run; want 0", n)
	}
	if err := b.Wait(context.Background(), budget.Foreground); err != nil || h.n.Load() == 0 {
		t.Errorf("Wait = %v after %d scripts; want nil after some", err, h.n.Load())
	}
}

// TestCluster: on a Redis Cluster a budget is one key in one slot, and a
// pause reaches sleepers on another server by sharded pub/sub.
func TestCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	l := budget.Limit{Rate: 1, Per: 5 * time.Second}
	a := newBudget(t, c.Client(t, nil), "cluster", l, nil)
	b := newBudget(t, c.Client(t, nil), "cluster", l, nil)
	var rec recorder
	rec.watch(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := b.Wait(ctx, budget.Foreground); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- b.Wait(ctx, budget.Background) }()
	redistest.WaitFor(t, "a background caller told to come back", func() bool { return b.Stats().ComeBacks == 1 })
	go func() { done <- b.Wait(ctx, budget.Foreground) }()
	redistest.WaitFor(t, "a sleeper", func() bool { return rec.len() == 2 })
	if err := a.Observe(ctx, http.Header{"Retry-After": {"60"}}, http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "the sleeper to book again", func() bool { return b.Stats().Rebooked == 1 })
	cancel()
	for range 2 {
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Wait = %v; want context.Canceled", err)
		}
	}
}

// TestKeyExpires: the budget's key lives a second past the last instant it
// holds.
func TestKeyExpires(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb, "expires", budget.Limit{Rate: 10}, nil)
	if err := b.Wait(context.Background(), budget.Foreground); err != nil {
		t.Fatal(err)
	}
	if ttl := rdb.PTTL(context.Background(), budget.Key(b)).Val(); ttl <= time.Second || ttl > 1100*time.Millisecond {
		t.Errorf("PTTL = %v; want 1s + T (100ms)", ttl)
	}
}

// TestLimitConflict: servers that give one budget different limits are
// told so: the conflict is counted on each booking that finds the other's
// limit, and logged once with both.
func TestLimitConflict(t *testing.T) {
	_, rdb := redistest.Mini(t)
	var buf redistest.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	a := newBudget(t, rdb, "conflict", budget.Limit{Rate: 100, Burst: 10}, &budget.Options{Logger: log})
	b := newBudget(t, rdb, "conflict", budget.Limit{Rate: 50, Burst: 10}, &budget.Options{Logger: log})
	same := newBudget(t, rdb, "conflict", budget.Limit{Rate: 50, Burst: 10}, nil)
	ctx := context.Background()
	for _, x := range []*budget.Budget{a, b, same, a, a} {
		if err := x.Wait(ctx, budget.Foreground); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		b    *budget.Budget
		want uint64
	}{{"a", a, 1}, {"b", b, 1}, {"same as b", same, 0}} {
		if n := c.b.Stats().LimitConflicts; n != c.want {
			t.Errorf("%s: LimitConflicts = %d; want %d", c.name, n, c.want)
		}
	}
	out := buf.String()
	if n := strings.Count(out, "disagree"); n != 2 {
		t.Errorf("conflict logged %d times; want once by each of a and b:\n%s", n, out)
	}
	if !strings.Contains(out, "a call every 10ms, burst 10") || !strings.Contains(out, "a call every 20ms, burst 10") {
		t.Errorf("log does not name both limits:\n%s", out)
	}
}

// TestPauseCapped: no pause, whoever asks for it, lasts longer than a day:
// a hostile or broken header, or a RetryAfter read from one, cannot stop
// the fleet for years.
func TestPauseCapped(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb, "capped", budget.Limit{Rate: 10, Per: time.Minute}, nil)
	ctx := context.Background()
	const day = 24 * time.Hour
	years := 50 * 365 * day
	for name, tc := range map[string]struct {
		pause func() error
		want  time.Duration
	}{
		"PauseFor 50 years": {func() error {
			_, err := b.PauseFor(ctx, &budget.RateLimitedError{RetryAfter: years})
			return err
		}, day},
		"PauseUntil 50 years": {func() error { return b.PauseUntil(ctx, time.Now().Add(years)) }, day},
		"PauseUntil the year 9999": {func() error {
			return b.PauseUntil(ctx, time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC))
		}, day},
		"Retry-After 99999999999": {func() error {
			return b.Observe(ctx, http.Header{"Retry-After": {"99999999999"}}, http.StatusTooManyRequests)
		}, time.Minute},
		"Retry-After past int64": {func() error {
			return b.Observe(ctx, http.Header{"Retry-After": {"99999999999999999999999"}}, http.StatusTooManyRequests)
		}, time.Minute},
		"Retry-After a date 50 years out": {func() error {
			return b.Observe(ctx, http.Header{"Retry-After": {time.Now().Add(years).UTC().Format(http.TimeFormat)}}, http.StatusTooManyRequests)
		}, time.Minute},
		"Retry-After twice, one huge": {func() error {
			return b.Observe(ctx, http.Header{"Retry-After": {"99999999999", "30"}}, http.StatusTooManyRequests)
		}, 30 * time.Second},
	} {
		_ = rdb.Del(ctx, budget.Key(b)).Err()
		now := redisNow(t, rdb)
		if err := tc.pause(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := time.Duration(field(t, rdb, b, "pause")-now) * time.Microsecond
		if got < tc.want || got > tc.want+time.Second {
			t.Errorf("%s: paused for %v; want %v", name, got, tc.want)
		}
		if ttl := rdb.PTTL(ctx, budget.Key(b)).Val(); ttl > tc.want+2*time.Second {
			t.Errorf("%s: the budget's key lives %v; want at most %v", name, ttl, tc.want+2*time.Second)
		}
	}
}
