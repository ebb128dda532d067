package budget_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/internal/upstreamtest"
	"github.com/locksmith-go/locksmith/observe"
)

// callThrough makes one call to u through b as a server does: a
// reservation, the call at its slot, the response after latency given to
// the reservation's Observe (a bare 200 or 429), Done. It returns
// Reserve's error.
func callThrough(ctx context.Context, b *budget.Budget, u *upstreamtest.Hidden, latency time.Duration) error {
	res, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		return err
	}
	status := http.StatusOK
	if !u.Call() {
		status = http.StatusTooManyRequests
	}
	time.Sleep(latency)
	err = res.Observe(ctx, nil, status)
	return errors.Join(err, res.Done(ctx))
}

// drive has workers goroutines on each budget call u through it until ctx
// ends; the returned func waits for them.
func drive(t testing.TB, ctx context.Context, budgets []*budget.Budget, u *upstreamtest.Hidden, workers int, latency time.Duration) func() {
	var wg sync.WaitGroup
	for _, b := range budgets {
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					if err := callThrough(ctx, b, u, latency); err != nil && ctx.Err() == nil {
						t.Errorf("a call: %v", err)
						return
					}
				}
			}()
		}
	}
	return wg.Wait
}

// TestAdaptiveFleet: four servers, each with a Redis client of its own,
// call an upstream whose hidden limit is 600 calls/s, then 300, under a
// ceiling of 2000. The fleet learns the limit (it uses most of it, and the
// upstream refuses few calls once it has), learns the step down quickly,
// and cuts once per episode, not once per 429: from the ceiling, four cuts
// while the upstream refuses tens of calls.
func TestAdaptiveFleet(t *testing.T) {
	s := redistest.Start(t, nil)
	const servers, workers, latency = 4, 6, 5 * time.Millisecond
	u := upstreamtest.NewHidden(600, 10)
	var mu sync.Mutex
	var cutAt []time.Duration // when each cut came, since the start
	opt := &budget.Options{Adaptive: true, Events: observe.Func(func(_ context.Context, e observe.Event) {
		if e.Kind == observe.RateCut {
			mu.Lock()
			cutAt = append(cutAt, time.Since(u.Start))
			mu.Unlock()
		}
	})}
	var budgets []*budget.Budget
	for range servers {
		budgets = append(budgets, newBudget(t, s.Client(t, nil), "fleet", budget.Limit{Rate: 2000}, opt))
	}
	ctx, cancel := context.WithCancel(context.Background())
	wait := drive(t, ctx, budgets, u, workers, latency)
	var stepped atomic.Int64
	timer := time.AfterFunc(1200*time.Millisecond, func() { stepped.Store(int64(time.Since(u.Start))); u.SetRate(300) })
	defer timer.Stop()
	time.Sleep(2200 * time.Millisecond)
	cancel()
	wait()
	step := time.Duration(stepped.Load())
	if step == 0 {
		t.Fatal("the limit never stepped down")
	}

	var cuts uint64
	for _, b := range budgets {
		cuts += b.Stats().RateCuts
	}
	if int(cuts) != len(cutAt) {
		t.Errorf("Stats().RateCuts sum to %d; %d RateCut events", cuts, len(cutAt))
	}
	_, refusedAll := u.Count(0, time.Hour)
	// Learned: the second half of the first phase.
	served, refused := u.Count(600*time.Millisecond, step)
	span := (step - 600*time.Millisecond).Seconds()
	if rate := float64(served) / span; rate < 0.6*600 {
		t.Errorf("served %.0f calls/s before the step; want most of the hidden 600", rate)
	}
	if share := float64(refused) / float64(served+refused); share > 0.03 {
		t.Errorf("refused %.1f%% of the calls once learned; want few", 100*share)
	}
	// After the step down: refusals stop within a few hundred ms.
	served, refused = u.Count(step+300*time.Millisecond, time.Hour)
	if share := float64(refused) / float64(served+refused); share > 0.03 {
		t.Errorf("refused %.1f%% of the calls from 300ms after the step down; want few", 100*share)
	}
	if rate := float64(served) / (2200*time.Millisecond - step - 300*time.Millisecond).Seconds(); rate < 0.5*300 {
		t.Errorf("served %.0f calls/s after the step down; want most of the hidden 300", rate)
	}
	// From the ceiling to the hidden 600 takes 5 cuts (2000·0.75⁵ = 475),
	// one per episode, while the upstream refuses every call over it.
	_, refusedStart := u.Count(0, 200*time.Millisecond)
	startCuts := 0
	for _, at := range cutAt {
		if at < 200*time.Millisecond {
			startCuts++
		}
	}
	if startCuts < 3 || startCuts > 6 || refusedStart < 2*startCuts {
		t.Errorf("in the first 200ms, %d cuts for %d calls refused; want 3 to 6, once per episode, not per 429", startCuts, refusedStart)
	}
	for from := time.Duration(0); from < 2200*time.Millisecond; from += 200 * time.Millisecond {
		s, r := u.Count(from, from+200*time.Millisecond)
		t.Logf("%v: %d served, %d refused", from, s, r)
	}
	t.Logf("%d cuts (%d in the first 200ms), %d refused in all", cuts, startCuts, refusedAll)
}

// TestAdaptiveOneCutPerEpisode: calls booked on four servers before a cut
// all draw a 429, reported at once: the fleet cuts its rate once.
func TestAdaptiveOneCutPerEpisode(t *testing.T) {
	s := redistest.Start(t, nil)
	const servers = 4
	var budgets []*budget.Budget
	var rs []*budget.Reservation
	ctx := context.Background()
	for range servers {
		b := newBudget(t, s.Client(t, nil), "episode", budget.Limit{Rate: 1000, Burst: 10}, &budget.Options{Adaptive: true})
		budgets = append(budgets, b)
		rs = append(rs, reserve(t, b, budget.Cost{}, time.Second))
	}
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.Observe(ctx, nil, http.StatusTooManyRequests); err != nil {
				t.Error(err)
			}
			_ = r.Done(ctx)
		}()
	}
	wg.Wait()
	var cuts uint64
	for _, b := range budgets {
		cuts += b.Stats().RateCuts
	}
	if cuts != 1 {
		t.Errorf("%d cuts for four 429s of one episode; want 1", cuts)
	}
	// Every server hears the rate the cut set.
	for _, b := range budgets {
		redistest.WaitFor(t, "the cut heard", func() bool { return near(b.Stats().Rate, 750) })
	}
}

// TestAdaptiveCutStretches: a cut on one server moves the slots another
// server's Waits sleep on to the slower schedule, each by itself, without
// a round trip: the calls already booked slow down too. On a Redis
// Cluster, the cut is announced with SPUBLISH.
func TestAdaptiveCutStretches(t *testing.T) {
	for _, tc := range []struct {
		name   string
		client func(t *testing.T) redis.UniversalClient
	}{
		{"standalone", func(t *testing.T) redis.UniversalClient {
			s := redistest.Start(t, nil)
			return s.Client(t, nil)
		}},
		{"cluster", func(t *testing.T) redis.UniversalClient {
			c := redistest.StartCluster(t, 3)
			return c.Client(t, nil)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rdb := tc.client(t)
			l := budget.Limit{Rate: 20} // T = 50ms
			opt := &budget.Options{Adaptive: true}
			a := newBudget(t, rdb, "stretch", l, opt)
			b := newBudget(t, rdb, "stretch", l, opt)
			rec := &recorder{}
			rec.watch(b)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if err := b.Wait(ctx, budget.Foreground); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 3)
			for i := range 3 {
				go func() { done <- b.Wait(ctx, budget.Foreground) }()
				redistest.WaitFor(t, "a sleeper", func() bool { return rec.len() == 2+i })
			}
			if err := a.Observe(ctx, nil, http.StatusTooManyRequests); err != nil {
				t.Fatal(err)
			}
			redistest.WaitFor(t, "the sleepers' slots moved", func() bool { return b.Stats().Stretched == 3 })
			redistest.WaitFor(t, "the cut heard", func() bool { return near(b.Stats().Rate, 15) })
			for range 3 {
				if err := <-done; err != nil {
					t.Fatal(err)
				}
			}
			if st := b.Stats(); st.Rebooked != 0 || rec.len() != 4 {
				t.Errorf("Stats: Rebooked %d, %d bookings; want 0 and 4: the slots moved without a round trip", st.Rebooked, rec.len())
			}
		})
	}
}

// TestAdaptiveFlushAll: a Redis that lost the budget's hash (FLUSHALL)
// paces at the ceiling again, and the next 429 cuts from the ceiling;
// servers learn so at their next cut or report.
func TestAdaptiveFlushAll(t *testing.T) {
	e := newAdaptive(t, "flush")
	ctx := context.Background()
	e.observe(t, ctx, nil, http.StatusTooManyRequests)
	e.m.FlushAll()
	rec := &recorder{}
	rec.watch(e.b)
	if s := bookTwo(t, e.b, rec); s[1]-s[0] != 10000 {
		t.Errorf("after FLUSHALL, slots %dµs apart; want the ceiling's 10000", s[1]-s[0])
	}
	e.advance(time.Second)
	e.observe(t, ctx, nil, http.StatusTooManyRequests)
	if st := e.b.Stats(); st.RateCuts != 2 || !near(st.Rate, 75) {
		t.Errorf("Stats: RateCuts %d, Rate %v; want 2, 75: cut from the ceiling", st.RateCuts, st.Rate)
	}
}
