package budget_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/observe"
)

// adaptive returns an Adaptive budget on a miniredis whose clock the test
// sets, with its events and log: a ceiling of 100 calls/s, T = 10ms.
type adaptiveEnv struct {
	m      *miniredis.Miniredis
	rdb    *redis.Client
	b      *budget.Budget
	clock  time.Time
	mu     sync.Mutex
	events []observe.Event
	log    bytes.Buffer // guarded by mu
}

func newAdaptive(t *testing.T, name string) *adaptiveEnv {
	t.Helper()
	e := &adaptiveEnv{}
	e.m, e.rdb = redistest.Mini(t)
	e.clock = time.Now()
	e.m.SetTime(e.clock)
	logger := slog.New(slog.NewTextHandler(lockedWriter{e}, nil))
	e.b = newBudget(t, e.rdb, name, budget.Limit{Rate: 100}, &budget.Options{
		Adaptive: true, Logger: logger,
		Events: observe.Func(func(_ context.Context, ev observe.Event) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.events = append(e.events, ev)
		}),
	})
	return e
}

// lockedWriter writes to the env's log under its mutex.
type lockedWriter struct{ e *adaptiveEnv }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.e.mu.Lock()
	defer w.e.mu.Unlock()
	return w.e.log.Write(p)
}

// advance moves the Redis clock by d.
func (e *adaptiveEnv) advance(d time.Duration) {
	e.clock = e.clock.Add(d)
	e.m.SetTime(e.clock)
}

// cuts returns the RateCut events seen.
func (e *adaptiveEnv) cuts() []observe.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var cuts []observe.Event
	for _, ev := range e.events {
		if ev.Kind == observe.RateCut {
			cuts = append(cuts, ev)
		}
	}
	return cuts
}

// observe reports a response of status with header h (nil for none).
func (e *adaptiveEnv) observe(t *testing.T, ctx context.Context, h http.Header, status int) {
	t.Helper()
	if err := e.b.Observe(ctx, h, status); err != nil {
		t.Fatal(err)
	}
}

// near reports whether got is within 0.1% of want.
func near(got, want float64) bool { return math.Abs(got-want) <= want/1000 }

// TestAdaptiveCut: a 429 that states no wait cuts the learned rate to 75%
// (not a pause), with an event and a log line saying why; the 429s of the
// same episode change nothing; one a while later cuts again, and the calls
// are paced at the learned rate.
func TestAdaptiveCut(t *testing.T) {
	e := newAdaptive(t, "cut")
	ctx := context.Background()
	if got := e.b.Stats().Rate; got != 100 {
		t.Fatalf("Stats().Rate = %v before any 429; want the ceiling, 100", got)
	}
	e.observe(t, ctx, nil, http.StatusTooManyRequests)
	st := e.b.Stats()
	if !near(st.Rate, 75) || st.RateCuts != 1 || st.PausesRateLimited != 0 || st.Overshoots != 0 {
		t.Errorf("after a 429: Rate %v, RateCuts %d, PausesRateLimited %d, Overshoots %d; want 75, 1, 0, 0",
			st.Rate, st.RateCuts, st.PausesRateLimited, st.Overshoots)
	}
	if p := field(t, e.rdb, e.b, "pause"); p > 0 {
		t.Errorf("pause = %d after a 429 that states no wait; want none", p)
	}
	if c := e.cuts(); len(c) != 1 || !near(c[0].Rate, 75) || c[0].Source != "budget" || c[0].Name != "cut" {
		t.Errorf("RateCut events %+v; want one, Rate 75", c)
	}
	e.mu.Lock()
	line := e.log.String()
	e.mu.Unlock()
	for _, want := range []string{"cutting the fleet's learned rate", `from="100 per 1s"`, `to="75 per 1s"`, "no Retry-After"} {
		if !strings.Contains(line, want) {
			t.Errorf("log %q; want it to say %q", line, want)
		}
	}

	// The same episode: a 429 of unknown slot soon after, one with
	// Retry-After 0 (asks for no wait) as well.
	e.advance(100 * time.Millisecond)
	e.observe(t, ctx, http.Header{"Retry-After": {"0"}}, http.StatusTooManyRequests)
	if st := e.b.Stats(); st.RateCuts != 1 {
		t.Errorf("RateCuts = %d after a 429 of the same episode; want 1", st.RateCuts)
	}
	// A later one cuts again, to 56.25.
	e.advance(300 * time.Millisecond)
	e.observe(t, ctx, http.Header{"Retry-After": {"0"}}, http.StatusTooManyRequests)
	if st := e.b.Stats(); st.RateCuts != 2 || !near(st.Rate, 56.25) {
		t.Errorf("after a later 429: RateCuts %d, Rate %v; want 2, 56.25", st.RateCuts, st.Rate)
	}
	rec := &recorder{}
	rec.watch(e.b)
	lt := field(t, e.rdb, e.b, "lt")
	if s := bookTwo(t, e.b, rec); s[1]-s[0] != lt {
		t.Errorf("slots %v; want the learned interval, %dµs, apart", s, lt)
	}
}

// TestAdaptiveHeadersWin: a 429 that states its wait pauses the fleet for
// it, and cuts nothing; so does a RateLimitedError with a RetryAfter, while
// one without cuts.
func TestAdaptiveHeadersWin(t *testing.T) {
	e := newAdaptive(t, "headers")
	ctx := context.Background()
	now := redisNow(t, e.rdb)
	e.observe(t, ctx, http.Header{"Retry-After": {"30"}}, http.StatusTooManyRequests)
	if d := field(t, e.rdb, e.b, "pause") - now; d < 29e6 {
		t.Errorf("paused for %dµs after Retry-After: 30; want 30s", d)
	}
	reset := strconv.FormatInt(e.clock.Add(20*time.Second).Unix(), 10)
	e.observe(t, ctx, http.Header{"X-Rate-Limit-Remaining": {"0"}, "X-Rate-Limit-Reset": {reset}}, http.StatusTooManyRequests)
	paused, err := e.b.PauseFor(ctx, &budget.RateLimitedError{RetryAfter: time.Minute})
	if !paused || err != nil {
		t.Fatalf("PauseFor = %v, %v", paused, err)
	}
	if st := e.b.Stats(); st.RateCuts != 0 || st.Rate != 100 || st.PausesRateLimited != 3 {
		t.Errorf("Stats: RateCuts %d, Rate %v, PausesRateLimited %d; want 0, 100, 3", st.RateCuts, st.Rate, st.PausesRateLimited)
	}
	for _, err := range []error{&budget.RateLimitedError{}, budget.ErrRateLimited} {
		e.advance(time.Second)
		if paused, err := e.b.PauseFor(ctx, errors.Join(errors.New("load"), err)); !paused || err != nil {
			t.Fatalf("PauseFor = %v, %v", paused, err)
		}
	}
	if st := e.b.Stats(); st.RateCuts != 2 || !near(st.Rate, 56.25) || st.PausesRateLimited != 3 {
		t.Errorf("Stats: RateCuts %d, Rate %v, PausesRateLimited %d; want 2, 56.25, 3", st.RateCuts, st.Rate, st.PausesRateLimited)
	}
	// An Observed error was cut for by Observe: nothing more.
	e.advance(time.Second)
	if paused, _ := e.b.PauseFor(ctx, &budget.RateLimitedError{Observed: true}); !paused || e.b.Stats().RateCuts != 2 {
		t.Errorf("PauseFor(Observed) = %v, RateCuts %d; want true, 2", paused, e.b.Stats().RateCuts)
	}
}

// TestAdaptiveOldNews: a 429 for a call booked before the latest cut is old
// news, however late it comes; one for a call booked after it cuts.
func TestAdaptiveOldNews(t *testing.T) {
	e := newAdaptive(t, "oldnews")
	ctx := context.Background()
	before := reserve(t, e.b, budget.Cost{}, time.Second)
	e.advance(time.Millisecond)
	e.observe(t, ctx, nil, http.StatusTooManyRequests) // another server's 429, say
	e.advance(time.Second)
	if err := before.Observe(ctx, nil, http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	if got := e.b.Stats().RateCuts; got != 1 {
		t.Errorf("RateCuts = %d after a 429 for a call booked before the cut; want 1", got)
	}
	_ = before.Done(ctx)
	after := reserve(t, e.b, budget.Cost{}, 5*time.Second)
	if err := after.Observe(ctx, nil, http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	if got := e.b.Stats().RateCuts; got != 2 {
		t.Errorf("RateCuts = %d after a 429 for a call booked after the cut; want 2", got)
	}
	_ = after.Done(ctx)
}

// learned reads the learned fields: lt, lw (µs) and lu.
func learned(t *testing.T, e *adaptiveEnv) (lt, lw int64, lu float64) {
	t.Helper()
	h := hash(t, e.rdb, e.b)
	lt, _ = strconv.ParseInt(h["lt"], 10, 64)
	lw, _ = strconv.ParseInt(h["lw"], 10, 64)
	lu, _ = strconv.ParseFloat(h["lu"], 64)
	return lt, lw, lu
}

// TestAdaptiveGrow: the calls the upstream accepts go to Redis 16 at a
// time, and raise the learned rate on the cubic, only while demand meets
// the learned rate (the fleet's tat is not in the past).
func TestAdaptiveGrow(t *testing.T) {
	e := newAdaptive(t, "grow")
	ctx := context.Background()
	e.observe(t, ctx, nil, http.StatusTooManyRequests)
	lt0, lw, _ := learned(t, e)
	if lt0 != 13334 || lw != 10000 {
		t.Fatalf("after a cut: lt %d, lw %d; want 13334, 10000", lt0, lw)
	}
	// Demand meets the rate: slots booked ahead.
	rec := &recorder{}
	rec.watch(e.b)
	bookTwo(t, e.b, rec)
	for range 15 {
		e.observe(t, ctx, nil, http.StatusOK)
	}
	if _, _, lu := learned(t, e); lu != 0 {
		t.Fatalf("lu = %v after 15 calls accepted; want 0 (not reported yet)", lu)
	}
	e.observe(t, ctx, nil, http.StatusNoContent)
	redistest.WaitFor(t, "the report", func() bool { _, _, lu := learned(t, e); return lu == 16 })
	// ρ(16) = 1 + 0.3·(16/U − 1)³ of the rate at the cut.
	rho := 1 + (1-budget.LearnKeep)*math.Pow(16.0/budget.LearnCalls-1, 3)
	want := int64(math.Ceil(10000 / rho))
	if lt, _, _ := learned(t, e); lt != want {
		t.Errorf("lt = %d after 16 calls accepted; want %d", lt, want)
	}
	redistest.WaitFor(t, "the rate heard", func() bool { return near(e.b.Stats().Rate, 1e6/float64(want)) })

	// Demand below the rate: the fleet's tat lies in the past, and the
	// calls accepted raise nothing (the clock moves by less than a
	// learned interval of credit).
	e.advance(time.Second)
	_, _, lu := learned(t, e)
	for range 16 {
		e.observe(t, ctx, nil, http.StatusOK)
	}
	redistest.WaitFor(t, "the report", func() bool { _, _, got := learned(t, e); return got != lu })
	if _, _, got := learned(t, e); got-lu > 2 {
		t.Errorf("lu = %v after 16 calls accepted with demand below the rate; want about %v", got, lu)
	}
}

// TestAdaptiveCubic: the learned rate climbs back to the rate that drew the
// 429 after U calls, stays near it, then climbs faster, up to the ceiling.
func TestAdaptiveCubic(t *testing.T) {
	e := newAdaptive(t, "cubic")
	ctx := context.Background()
	e.observe(t, ctx, nil, http.StatusTooManyRequests) // from 100 to 75
	e.advance(time.Second)
	e.observe(t, ctx, nil, http.StatusTooManyRequests) // 75 to 56.25: lw is 75's
	_, lw, _ := learned(t, e)
	rec := &recorder{}
	rec.watch(e.b)
	const U = budget.LearnCalls
	rates := map[int]float64{} // by calls accepted
	for u := 16; u <= 5*U/2; u += 16 {
		bookTwo(t, e.b, rec) // demand meets the rate
		for range 16 {
			e.observe(t, ctx, nil, http.StatusOK)
		}
		// At the ceiling, nothing more is learned.
		redistest.WaitFor(t, "the report", func() bool { lt, _, lu := learned(t, e); return lu >= float64(u) || lt == 10000 })
		lt, _, _ := learned(t, e)
		rates[u] = 1e6 / float64(lt)
	}
	w := 1e6 / float64(lw)
	if r := rates[U]; !near(r, w) {
		t.Errorf("rate %v after U calls; want the rate cut, %v", r, w)
	}
	if d1, d2 := rates[U/2]-rates[U/2-16], rates[U]-rates[U-16]; d2 >= d1 {
		t.Errorf("rises %v then %v near the rate cut; want slower near it", d1, d2)
	}
	if d1, d2 := rates[U+U/4]-rates[U+U/4-16], rates[U+U/2]-rates[U+U/2-16]; d2 <= d1 {
		t.Errorf("rises %v then %v past it; want faster", d1, d2)
	}
	if r := rates[5*U/2]; r != 100 {
		t.Errorf("rate %v after 2.5U calls; want the ceiling, 100", r)
	}
}

// TestAdaptiveSurvivesQuiet: the learned rate outlives the budget's other
// fields (which expire a second after their last instant): servers that
// restart after a quiet spell find it; with time alone, it drifts back up
// toward the ceiling.
func TestAdaptiveSurvivesQuiet(t *testing.T) {
	e := newAdaptive(t, "quiet")
	ctx := context.Background()
	e.observe(t, ctx, nil, http.StatusTooManyRequests)
	e.m.FastForward(time.Minute)
	e.advance(time.Minute)
	later := newBudget(t, e.rdb, "quiet", budget.Limit{Rate: 100}, &budget.Options{Adaptive: true})
	rec := &recorder{}
	rec.watch(later)
	if s := bookTwo(t, later, rec); s[1]-s[0] != 13334 {
		t.Errorf("a server started a minute later paces %dµs apart; want the learned 13334", s[1]-s[0])
	}
	// Three minutes without a refusal: the credit for time (a call per
	// 100 learned intervals) raises the rate at the next report.
	e.advance(3 * time.Minute)
	e.m.FastForward(3 * time.Minute)
	for range 16 {
		e.observe(t, ctx, nil, http.StatusOK)
	}
	redistest.WaitFor(t, "the report", func() bool { lt, _, _ := learned(t, e); return lt != 13334 })
	// Four minutes since the cut: u = 4min / (100 · 13334µs) = 180, and
	// ρ = 1 + 0.3·(168/U − 1)³.
	want := int64(math.Ceil(10000 / (1 + (1-budget.LearnKeep)*math.Pow(4*60e6/(100*13334.0)/budget.LearnCalls-1, 3))))
	if lt, _, lu := learned(t, e); lt != want || lu < 179 || lu > 181 {
		t.Errorf("four minutes after the cut: lt %d, lu %v; want %d, 180", lt, lu, want)
	}
	// Once the credit alone would have brought the rate back to the
	// ceiling, nothing is worth keeping: the key expires.
	e.m.FastForward(10 * time.Minute)
	if n := e.rdb.Exists(ctx, budget.Key(e.b)).Val(); n != 0 {
		t.Errorf("the budget's key outlived the learned rate's worth; want it gone")
	}
}

// TestAdaptiveCorrupt: learned fields that are not numbers, or out of
// range, count as the ceiling's: nothing fails, nothing blocks.
func TestAdaptiveCorrupt(t *testing.T) {
	for _, bad := range []string{"junk", "-5", "1e300", "5"} {
		t.Run(bad, func(t *testing.T) {
			e := newAdaptive(t, "corrupt")
			ctx := context.Background()
			if err := e.rdb.HSet(ctx, budget.Key(e.b), "lt", bad, "lw", bad, "la", bad, "lu", bad, "lg", bad, "le", bad).Err(); err != nil {
				t.Fatal(err)
			}
			rec := &recorder{}
			rec.watch(e.b)
			if s := bookTwo(t, e.b, rec); s[1]-s[0] != 10000 {
				t.Errorf("slots %dµs apart; want the ceiling's 10000", s[1]-s[0])
			}
			e.observe(t, ctx, nil, http.StatusTooManyRequests)
			if lt, _, _ := learned(t, e); lt != 13334 {
				t.Errorf("lt = %d after a cut; want 13334", lt)
			}
		})
	}
}

// TestAdaptiveOff: without Adaptive, a 429 that states no wait pauses for a
// Per, as before, and Stats().Rate is Limit.Rate.
func TestAdaptiveOff(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb, "off", budget.Limit{Rate: 100, Per: time.Minute}, nil)
	ctx := context.Background()
	now := redisNow(t, rdb)
	if err := b.Observe(ctx, nil, http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	if d := field(t, rdb, b, "pause") - now; d < 59e6 {
		t.Errorf("paused for %dµs; want a Per", d)
	}
	if st := b.Stats(); st.Rate != 100 || st.RateCuts != 0 {
		t.Errorf("Stats: Rate %v, RateCuts %d; want 100, 0", st.Rate, st.RateCuts)
	}
}

// TestAdaptiveRedisDown: a 429 while Redis is unreachable slows this
// server's local limiter, and returns no error.
func TestAdaptiveRedisDown(t *testing.T) {
	b := newBudget(t, unreachable(t), "down", budget.Limit{Rate: 100}, &budget.Options{Adaptive: true})
	ctx := context.Background()
	if err := b.Observe(ctx, nil, http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	if st := b.Stats(); !near(st.Rate, 75) || st.RateCuts != 1 {
		t.Errorf("Stats: Rate %v, RateCuts %d; want 75, 1", st.Rate, st.RateCuts)
	}
	var rec recorder
	rec.watch(b)
	for range 2 {
		if err := b.Wait(ctx, budget.Foreground); err != nil {
			t.Fatal(err)
		}
	}
	k := rec.inOrder()
	if len(k) != 2 || !k[0].Local || k[1].Slot-k[0].Slot < 13334 {
		t.Errorf("local slots %+v; want two, 13334µs apart", k)
	}
}

// TestAdaptiveAcceptedOnce: a reservation's call counts once as accepted,
// however many 2xx are observed for it (httpfill's Observe, then fill's);
// one booked without a wait (demand below the rate) does not count.
func TestAdaptiveAcceptedOnce(t *testing.T) {
	e := newAdaptive(t, "once")
	ctx := context.Background()
	e.observe(t, ctx, nil, http.StatusTooManyRequests)
	observeTwice := func(n int) {
		for range n {
			r := reserve(t, e.b, budget.Cost{}, 5*time.Second)
			for range 2 {
				if err := r.Observe(ctx, nil, http.StatusOK); err != nil {
					t.Fatal(err)
				}
			}
			_ = r.Done(ctx)
		}
	}
	// The first goes at once; each of the next 8 waits for its slot (the
	// Redis clock stands still).
	observeTwice(9)
	if _, _, lu := learned(t, e); lu != 0 {
		t.Fatalf("lu = %v after 8 calls accepted, each observed twice; want 0 (not reported yet)", lu)
	}
	observeTwice(8)
	redistest.WaitFor(t, "the report", func() bool { _, _, lu := learned(t, e); return lu == 16 })
}

// TestAdaptiveReportsWhileBusy: the calls accepted while a report is on
// its way (their accept finds it busy) are reported once it returns, a
// whole batch of them, rather than wait for the next accepted call, which
// may never come: the learned rate rose by one batch only.
func TestAdaptiveReportsWhileBusy(t *testing.T) {
	e := newAdaptive(t, "busy")
	hold := redistest.NewHoldScript("grow")
	e.rdb.AddHook(hold)
	ctx := context.Background()
	e.observe(t, ctx, nil, http.StatusTooManyRequests) // a rate to raise
	rec := &recorder{}
	rec.watch(e.b)
	bookTwo(t, e.b, rec) // demand meets the rate
	for range 16 {
		e.observe(t, ctx, nil, http.StatusOK)
	}
	<-hold.Held // the first report, on its way
	for range 16 {
		e.observe(t, ctx, nil, http.StatusOK)
	}
	close(hold.Release)
	redistest.WaitFor(t, "both batches reported", func() bool { _, _, lu := learned(t, e); return lu >= 32 })
}
