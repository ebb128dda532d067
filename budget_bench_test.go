package locksmith_test

// Benchmarks of package budget. Run them with
//
//	go test -run '^$' -bench Budget -benchtime 1x .
//
// (BenchmarkBudgetWait wants more iterations: -benchtime 5000x.) Beside the
// metrics of bench_test.go:
//
//	max-per-window  the most calls that returned within any window of Per
//	                (a call that wakes late may crowd into the next window)
//	max-booked-per-window  the most slots the budget booked within any window
//	                of Per, on the Redis clock: at most Rate+Burst (checked)
//	share           calls let through over the budget's capacity for the run
//	fg-p50-ms, fg-p99-ms  what foreground calls waited while background
//	                calls saturated the budget
//	bg-ahead-max-ms the furthest ahead a background call was booked (its
//	                sleep): the horizon in force, measured
//	bg-share        background calls over all calls while foreground calls arrived
//	wake-p50-ms, wake-p99-ms  from Observe(429) on one server to a sleeping
//	                Wait on another booking again after the pause
//	lost            share of the capacity unused when callers give up

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
)

// budgetName returns a budget name of its own for each run.
func budgetName(b *testing.B) string {
	return b.Name() + ":" + strconv.FormatInt(time.Now().UnixNano(), 36)
}

// BenchmarkBudgetWait: an uncontended Wait (the budget always has room)
// against a raw GET, with a ctx that cannot end and one with a deadline
// (which the go-redis client does not enforce, so each call is watched).
func BenchmarkBudgetWait(b *testing.B) {
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
	}{
		{"ctx=Background", func() (context.Context, context.CancelFunc) { return context.Background(), func() {} }},
		{"ctx=WithTimeout", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), time.Hour)
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			newClient := benchRedis(b)
			rdb := newClient()
			bud := budget.New(rdb, budgetName(b), budget.Limit{Rate: 1000000, Burst: 1000000}, nil)
			defer bud.Close()
			ctx, cancel := tc.ctx()
			defer cancel()
			if err := bud.Wait(ctx, budget.Foreground); err != nil { // loads the script
				b.Fatal(err)
			}
			_ = rdb.ConfigResetStat(ctx).Err()
			h := &rtts{}
			rdb.AddHook(h)
			b.ReportAllocs()
			interleave(b, func(int) {
				_ = rdb.Get(ctx, "raw").Err()
			}, func(int) {
				if err := bud.Wait(ctx, budget.Foreground); err != nil {
					b.Fatal(err)
				}
			})
			b.ReportMetric(float64(h.n.Load()-int64(b.N))/float64(b.N), "rtts/op")
			reportScriptTime(b, rdb)
		})
	}
}

// BenchmarkBudgetReserve: an uncontended Reserve (the budget always has
// room) and its Done, against a raw GET: with the Limit alone, and with a
// limit of Also and two meters booked at once, and with a concurrency slot.
// Done without Spent costs no round trip, but one to free a concurrency
// slot; one Reserve is one round trip whatever it books.
func BenchmarkBudgetReserve(b *testing.B) {
	wide := budget.Limit{Rate: 1000000, Burst: 1000000}
	for _, tc := range []struct {
		name string
		opt  *budget.Options
		cost budget.Cost
	}{
		{"limits=1", nil, budget.Cost{}},
		{"limits=2,meters=2", &budget.Options{
			Also:   []budget.Limit{wide},
			Meters: map[string][]budget.Limit{"tokens": {wide}, "points": {wide}},
		}, budget.Cost{Meters: map[string]int64{"tokens": 10, "points": 1}}},
		// A concurrency slot: one round trip to take it with the rate
		// slot, one for Done to free it.
		{"limits=1,concurrency=100", &budget.Options{Concurrency: 100}, budget.Cost{}},
		// A pool of keys: the script picks the key whose slot comes first
		// by the pool's index, in the same round trip, whatever its size.
		{"limits=1,keys=1", &budget.Options{Keys: benchKeys(1)}, budget.Cost{}},
		{"limits=1,keys=20", &budget.Options{Keys: benchKeys(20)}, budget.Cost{}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			newClient := benchRedis(b)
			rdb := newClient()
			bud := budget.New(rdb, budgetName(b), wide, tc.opt)
			defer bud.Close()
			ctx := context.Background()
			if _, err := bud.Reserve(ctx, budget.Foreground, tc.cost); err != nil { // loads the script
				b.Fatal(err)
			}
			h := &rtts{}
			rdb.AddHook(h)
			b.ReportAllocs()
			_ = rdb.ConfigResetStat(ctx).Err()
			interleave(b, func(int) {
				_ = rdb.Get(ctx, "raw").Err()
			}, func(int) {
				r, err := bud.Reserve(ctx, budget.Foreground, tc.cost)
				if err != nil {
					b.Fatal(err)
				}
				if err := r.Done(ctx); err != nil {
					b.Fatal(err)
				}
			})
			b.ReportMetric(float64(h.n.Load()-int64(b.N)-1)/float64(b.N), "rtts/op")
			reportScriptTime(b, rdb)
		})
	}
}

// benchKeys returns n credentials for a pool (Options.Keys).
func benchKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "bench-token-" + strconv.Itoa(i)
	}
	return keys
}

// reportScriptTime reports the time Redis spent running a script, per
// call (redis-us/op), and running a GET (redis-get-us/op), from its command
// statistics.
func reportScriptTime(b *testing.B, rdb *redis.Client) {
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		return
	}
	for _, line := range strings.Split(info, "\r\n") {
		name, stats, ok := strings.Cut(line, ":")
		if !ok || (name != "cmdstat_evalsha" && name != "cmdstat_get") {
			continue
		}
		for _, kv := range strings.Split(stats, ",") {
			if us, ok := strings.CutPrefix(kv, "usec_per_call="); ok {
				if x, err := strconv.ParseFloat(us, 64); err == nil {
					unit := "redis-us/op"
					if name == "cmdstat_get" {
						unit = "redis-get-us/op"
					}
					b.ReportMetric(x, unit)
				}
			}
		}
	}
}

// maxPerWindow returns the most instants of ts within any half-open window of
// length w.
func maxPerWindow(ts []time.Time, w time.Duration) int {
	ts = slices.Clone(ts)
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	most := 0
	for i, j := 0, 0; j < len(ts); j++ {
		for ts[j].Sub(ts[i]) >= w {
			i++
		}
		most = max(most, j-i+1)
	}
	return most
}

// calls records when Waits returned.
type calls struct {
	mu sync.Mutex
	at []time.Time
}

func (c *calls) add(t time.Time) {
	c.mu.Lock()
	c.at = append(c.at, t)
	c.mu.Unlock()
}

// hammer has goroutines goroutines call Wait(p) on bud in a loop until ctx
// ends, recording every call let through in c.
func hammer(b *testing.B, wg *sync.WaitGroup, ctx context.Context, bud *budget.Budget, p budget.Priority, goroutines int, c *calls) {
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				err := bud.Wait(ctx, p)
				if err == nil {
					if c != nil {
						c.add(time.Now())
					}
				} else if ctx.Err() == nil {
					b.Error(err)
					return
				}
			}
		}()
	}
}

// BenchmarkBudgetAccuracy: 8 servers × 50 goroutines call Wait in a loop for
// 4s against a budget of 200/s with a burst of 10. Demand far exceeds the
// limit: every call is let through as soon as the budget allows.
func BenchmarkBudgetAccuracy(b *testing.B) {
	const servers, goroutines = 8, 50
	l := budget.Limit{Rate: 200, Per: time.Second, Burst: 10}
	run := benchSpan(4 * time.Second)
	for i := 0; i < b.N; i++ {
		newClient := benchRedis(b)
		name := budgetName(b)
		var c, booked calls
		var wg sync.WaitGroup
		ctx, cancel := context.WithCancel(context.Background())
		buds := make([]*budget.Budget, servers)
		for s := range buds {
			rdb := newClient()
			rdb.AddHook(&bookings{on: func(slot time.Time, _ time.Duration, _ bool) { booked.add(slot) }})
			buds[s] = budget.New(rdb, name, l, nil)
		}
		for _, bud := range buds {
			hammer(b, &wg, ctx, bud, budget.Foreground, goroutines, &c)
		}
		time.Sleep(run)
		end := time.Now()
		cancel()
		wg.Wait()
		for _, bud := range buds {
			_ = bud.Close()
		}
		// The capacity from the first call on: connecting 400 goroutines
		// to Redis is not the budget's doing.
		first := slices.MinFunc(c.at, func(a, b time.Time) int { return a.Compare(b) })
		capacity := float64(l.Rate)*end.Sub(first).Seconds()/l.Per.Seconds() + float64(l.Burst)
		n := 0
		for _, t := range c.at {
			if t.Before(end) {
				n++
			}
		}
		b.ReportMetric(float64(maxPerWindow(c.at, l.Per)), "max-per-window")
		mostBooked := maxPerWindow(booked.at, l.Per)
		if mostBooked > l.Rate+l.Burst {
			b.Errorf("%d slots booked within one Per; want at most Rate+Burst = %d", mostBooked, l.Rate+l.Burst)
		}
		b.ReportMetric(float64(mostBooked), "max-booked-per-window")
		b.ReportMetric(float64(n)/capacity, "share")
	}
}

// percentile returns the p-quantile of d in ms.
func percentile(d []time.Duration, p float64) float64 {
	d = slices.Clone(d)
	slices.Sort(d)
	return float64(d[int(p*float64(len(d)-1))].Nanoseconds()) / 1e6
}

// BenchmarkBudgetForeground: 2 servers × 20 goroutines of background calls
// saturate a budget of 200/s; on a third server, foreground calls arrive
// every 5-15ms (half the rate) for 4s. It reports what the foreground calls
// waited, beside the horizon, and the background share of the calls.
func BenchmarkBudgetForeground(b *testing.B) {
	l := budget.Limit{Rate: 200, Per: time.Second}
	run := benchSpan(4 * time.Second)
	for i := 0; i < b.N; i++ {
		newClient := benchRedis(b)
		name := budgetName(b)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var bg, fg calls
		var buds []*budget.Budget
		h := &rtts{}
		var ahead atomic.Int64 // the longest background sleep booked
		for range 2 {
			rdb := newClient()
			rdb.AddHook(h)
			rdb.AddHook(&bookings{on: func(_ time.Time, wait time.Duration, bg bool) {
				for m := ahead.Load(); bg && int64(wait) > m && !ahead.CompareAndSwap(m, int64(wait)); m = ahead.Load() {
				}
			}})
			bud := budget.New(rdb, name, l, nil)
			buds = append(buds, bud)
			hammer(b, &wg, ctx, bud, budget.Background, 20, &bg)
		}
		front := budget.New(newClient(), name, l, nil)
		buds = append(buds, front)
		time.Sleep(500 * time.Millisecond) // background alone first
		var waits []time.Duration
		var mu sync.Mutex
		var fwg sync.WaitGroup
		start := time.Now()
		for time.Since(start) < run {
			fwg.Add(1)
			go func() {
				defer fwg.Done()
				t := time.Now()
				if err := front.Wait(ctx, budget.Foreground); err != nil {
					b.Error(err)
					return
				}
				fg.add(time.Now())
				mu.Lock()
				waits = append(waits, time.Since(t))
				mu.Unlock()
			}()
			time.Sleep(5*time.Millisecond + rand.N(10*time.Millisecond))
		}
		fwg.Wait()
		end := time.Now()
		cancel()
		wg.Wait()
		for _, bud := range buds {
			_ = bud.Close()
		}
		bgRTTs := float64(h.n.Load()) / float64(len(bg.at))
		var nbg int
		for _, t := range bg.at {
			if !t.Before(start) && t.Before(end) {
				nbg++
			}
		}
		total := float64(nbg + len(fg.at))
		capacity := float64(l.Rate) * end.Sub(start).Seconds() / l.Per.Seconds()
		b.ReportMetric(percentile(waits, 0.5), "fg-p50-ms")
		b.ReportMetric(percentile(waits, 0.99), "fg-p99-ms")
		b.ReportMetric(percentile(waits, 1), "fg-max-ms")
		b.ReportMetric(float64(ahead.Load())/1e6, "bg-ahead-max-ms")
		b.ReportMetric(float64(nbg)/total, "bg-share")
		b.ReportMetric(total/capacity, "share")
		b.ReportMetric(float64(len(fg.at)), "fg-calls")
		b.ReportMetric(bgRTTs, "bg-rtts/call")
	}
}

// bookings passes on the slots a client's budget Waits book, read from the
// wait script's replies: the slot (Redis clock), the sleep the caller was
// told, and whether the call was a background one.
type bookings struct {
	on func(slot time.Time, wait time.Duration, bg bool)
}

func (h *bookings) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *bookings) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		c, ok := cmd.(*redis.Cmd)
		if err != nil || !ok || (cmd.Name() != "evalsha" && cmd.Name() != "eval") {
			return err
		}
		// The wait script: KEYS[1], then T, tau, the priority, ...; a
		// booking replies {0, wait µs, slot µs, tat, gated[, limit]}.
		a, _ := c.Val().([]any)
		args := cmd.Args()
		if (len(a) != 5 && len(a) != 6) || len(args) < 7 || a[0] != int64(0) {
			return err
		}
		wait, _ := a[1].(int64)
		slot, _ := a[2].(int64)
		h.on(time.UnixMicro(slot), time.Duration(wait)*time.Microsecond, fmt.Sprint(args[6]) == "1")
		return err
	}
}
func (h *bookings) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// scriptTimes records when the scripts a client runs return.
type scriptTimes struct {
	mu sync.Mutex
	at []time.Time
}

func (h *scriptTimes) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *scriptTimes) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		// One EVALSHA per script run, even when NOSCRIPT has it sent again
		// as an EVAL.
		if cmd.Name() == "evalsha" {
			h.mu.Lock()
			h.at = append(h.at, time.Now())
			h.mu.Unlock()
		}
		return err
	}
}
func (h *scriptTimes) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *scriptTimes) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.at)
}

// BenchmarkBudgetPauseWake: a Wait on server B sleeps on a slot 1s away;
// server A observes a 429, an overshoot. The time from A's Observe to B's
// Wait having moved its slot by the stretch: the stretch travels in the
// script's PUBLISH to B's pub/sub connection, and B makes no round trip.
func BenchmarkBudgetPauseWake(b *testing.B) {
	newClient := benchRedis(b)
	name := budgetName(b)
	l := budget.Limit{Rate: 1, Per: time.Second}
	rdbA := newClient()
	rdbB := newClient()
	h := &scriptTimes{}
	rdbB.AddHook(h)
	admin := newClient()
	waitScripts := func(n int) {
		deadline := time.Now().Add(10 * time.Second)
		for h.count() < n {
			if time.Now().After(deadline) {
				b.Fatalf("B ran %d scripts; want %d", h.count(), n)
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	ctx := context.Background()
	var samples []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		// A budget of its own each time: nothing one round's stretch left
		// (in Redis, or in B's memory of the schedule) holds up the next.
		n := name + "-" + strconv.Itoa(i)
		a := budget.New(rdbA, n, l, nil)
		bb := budget.New(rdbB, n, l, nil)
		waitSubscribed(b, admin, "__locksmith:{"+n+"}:budget", 2)
		scripts := h.count()
		if err := bb.Wait(ctx, budget.Foreground); err != nil {
			b.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- bb.Wait(wctx, budget.Foreground) }()
		waitScripts(scripts + 2)
		b.StartTimer()
		t := time.Now()
		if err := a.Observe(ctx, http.Header{"Retry-After": {"1"}}, http.StatusTooManyRequests); err != nil {
			b.Fatal(err)
		}
		// The 429 is an overshoot: B's sleeper moves its slot by the
		// stretch announced over pub/sub, without a round trip.
		for deadline := time.Now().Add(10 * time.Second); bb.Stats().Stretched == 0; {
			if time.Now().After(deadline) {
				b.Fatal("B's sleeper did not move its slot")
			}
			time.Sleep(20 * time.Microsecond)
		}
		samples = append(samples, time.Since(t))
		b.StopTimer()
		if st := bb.Stats(); st.Rebooked != 0 {
			b.Errorf("B booked again %d times; want 0", st.Rebooked)
		}
		cancel()
		<-done
		a.Close()
		bb.Close()
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(percentile(samples, 0.5), "wake-p50-ms")
	b.ReportMetric(percentile(samples, 0.99), "wake-p99-ms")
}

// BenchmarkBudgetGiveUp: 4 servers × 50 goroutines call Wait in a loop for
// 4s against a budget of 200/s (a queue about a second deep); a share of the
// calls gives up at a random moment within a second: cancelled while it
// waits, or with a deadline, known when it books. It reports the share of
// the capacity lost: slots booked by callers that gave up, not given back
// (only the latest booking can be) and so left unused. A deadline loses
// nothing: a slot past it is never booked.
func BenchmarkBudgetGiveUp(b *testing.B) {
	l := budget.Limit{Rate: 200, Per: time.Second}
	const servers, goroutines = 4, 50
	run := benchSpan(4 * time.Second)
	for _, tc := range []struct {
		giveUp   float64
		deadline bool
	}{{0, false}, {0.1, false}, {0.5, false}, {0.5, true}} {
		how := "cancel"
		if tc.deadline {
			how = "deadline"
		}
		giveUp := tc.giveUp
		b.Run(fmt.Sprintf("%s=%.1f", how, giveUp), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				newClient := benchRedis(b)
				name := budgetName(b)
				ctx, cancel := context.WithCancel(context.Background())
				var wg sync.WaitGroup
				var through, first atomic.Int64 // calls let through; when the first was, ns
				buds := make([]*budget.Budget, servers)
				for s := range buds {
					buds[s] = budget.New(newClient(), name, l, nil)
					for range goroutines {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for ctx.Err() == nil {
								wctx, wcancel := context.WithCancel(ctx)
								var timer *time.Timer
								switch {
								case rand.Float64() >= giveUp:
								case tc.deadline:
									wcancel()
									wctx, wcancel = context.WithTimeout(ctx, rand.N(time.Second))
								default:
									timer = time.AfterFunc(rand.N(time.Second), wcancel)
								}
								if buds[s].Wait(wctx, budget.Foreground) == nil && ctx.Err() == nil {
									through.Add(1)
									first.CompareAndSwap(0, time.Now().UnixNano())
								}
								if timer != nil {
									timer.Stop()
								}
								wcancel()
							}
						}()
					}
				}
				time.Sleep(run)
				end := time.Now()
				cancel()
				wg.Wait()
				// The capacity from the first call on, as in
				// BenchmarkBudgetAccuracy.
				elapsed := end.Sub(time.Unix(0, first.Load()))
				var st budget.Stats
				for _, bud := range buds {
					_ = bud.Close()
					s := bud.Stats()
					st.Abandoned += s.Abandoned
					st.GivenBack += s.GivenBack
				}
				capacity := float64(l.Rate)*elapsed.Seconds()/l.Per.Seconds() + 1
				b.ReportMetric(float64(through.Load())/capacity, "share")
				b.ReportMetric(1-float64(through.Load())/capacity, "lost")
				b.ReportMetric(float64(st.Abandoned), "abandoned")
				b.ReportMetric(float64(st.GivenBack), "given-back")
			}
		})
	}
}

// llmAPI is an in-process LLM API: token buckets of requests and tokens,
// refilled continuously, each as large as its limit per Per. A call is
// admitted when both buckets hold what it really costs, else refused (a
// 429) and charged nothing.
type llmAPI struct {
	mu       sync.Mutex // guards the fields below
	last     time.Time
	req, tok float64 // what each bucket holds

	reqRate, tokRate float64 // per second
	reqCap, tokCap   float64

	admitted, refused int
	spent             int64 // tokens admitted calls really cost
}

func newLLMAPI(reqs, toks int, per time.Duration) *llmAPI {
	u := &llmAPI{reqCap: float64(reqs), tokCap: float64(toks), last: time.Now()}
	u.req, u.tok = u.reqCap, u.tokCap
	u.reqRate, u.tokRate = float64(reqs)/per.Seconds(), float64(toks)/per.Seconds()
	return u
}

// call admits or refuses a call that really costs tokens.
func (u *llmAPI) call(tokens int64) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := time.Now()
	d := now.Sub(u.last).Seconds()
	u.last = now
	u.req = min(u.reqCap, u.req+d*u.reqRate)
	u.tok = min(u.tokCap, u.tok+d*u.tokRate)
	if u.req < 1 || u.tok < float64(tokens) {
		u.refused++
		return false
	}
	u.req--
	u.tok -= float64(tokens)
	u.admitted++
	u.spent += tokens
	return true
}

// BenchmarkBudgetUpstream: 16 servers × 4 goroutines call an LLM API of 500
// requests and 200,000 tokens per Per (a minute scaled down to 2s) through
// one budget of the same limits, with Reserve, Spent and Done. A call's
// real token cost is log-normal (σ 0.7; median 300, a mean below the 400 a
// call may spend on average: requests bind; or median 450: tokens bind), its
// estimate off by up to ±50%; the call takes
// 5ms. The budget's bursts are 5% below the upstream's buckets: the margin
// that absorbs estimates below the real cost, whose difference is settled
// only after the call, and the refill the budget counts from its first
// booking while the upstream's full bucket waits for the first call to
// arrive. It reports the share of each limit's
// capacity used over the run (req-used, tok-used; the binding one is
// used), and the share of calls the upstream refused (refused).
func BenchmarkBudgetUpstream(b *testing.B) {
	for _, tc := range []struct {
		name   string
		median float64
	}{{"binding=requests", 300}, {"binding=tokens", 450}} {
		b.Run(tc.name, func(b *testing.B) { benchUpstream(b, tc.median) })
	}
}

func benchUpstream(b *testing.B, median float64) {
	const servers, goroutines = 16, 4
	const reqs, toks = 500, 200000
	per := 2 * time.Second
	run := benchSpan(8 * time.Second)
	opt := &budget.Options{Meters: map[string][]budget.Limit{"tokens": {{Rate: toks, Per: per, Burst: toks * 95 / 100}}}}
	l := budget.Limit{Rate: reqs, Per: per, Burst: reqs * 95 / 100}
	for i := 0; i < b.N; i++ {
		newClient := benchRedis(b)
		name := budgetName(b)
		buds := make([]*budget.Budget, servers)
		for s := range buds {
			buds[s] = budget.New(newClient(), name, l, opt)
		}
		up := newLLMAPI(reqs, toks, per)
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), run)
		var wg sync.WaitGroup
		for s, bud := range buds {
			for g := range goroutines {
				rng := rand.New(rand.NewPCG(uint64(s), uint64(g)))
				wg.Go(func() {
					for ctx.Err() == nil {
						real := min(int64(math.Round(math.Exp(math.Log(median)+0.7*rng.NormFloat64()))), toks/20)
						est := max(1, int64(float64(real)*(0.5+rng.Float64())))
						r, err := bud.Reserve(ctx, budget.Foreground, budget.Cost{Meters: map[string]int64{"tokens": est}})
						if err != nil {
							if !errors.Is(err, context.DeadlineExceeded) {
								b.Error(err) // the run's end refuses slots past it
							}
							return
						}
						spent := int64(0)
						if up.call(real) {
							spent = real
						}
						time.Sleep(5 * time.Millisecond)
						r.Spent(budget.Cost{Meters: map[string]int64{"tokens": spent}})
						if err := r.Done(context.Background()); err != nil {
							b.Error(err)
						}
					}
				})
			}
		}
		wg.Wait()
		d := time.Since(start)
		cancel()
		for _, bud := range buds {
			_ = bud.Close()
		}
		up.mu.Lock()
		reqUsed := float64(up.admitted) / (float64(reqs) + float64(reqs)*d.Seconds()/per.Seconds())
		tokUsed := float64(up.spent) / (float64(toks) + float64(toks)*d.Seconds()/per.Seconds())
		refused := float64(up.refused) / float64(up.admitted+up.refused)
		up.mu.Unlock()
		b.ReportMetric(100*reqUsed, "req-used-%")
		b.ReportMetric(100*tokUsed, "tok-used-%")
		b.ReportMetric(100*max(reqUsed, tokUsed), "used-%")
		b.ReportMetric(100*refused, "refused-%")
	}
}
