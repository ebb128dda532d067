package locksmith_test

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/budget"
)

// BenchmarkBudgetConcurrency: servers × goroutines reserve calls of an
// upstream that answers in lo to hi (uniform), under a cap of C calls in
// flight across the fleet (Options.Concurrency), for 8s. Demand far
// exceeds C. Metrics:
//
//	max-in-flight  the most calls the upstream saw at once: at most C (checked)
//	in-use         the share of the C slots the upstream kept busy, from the
//	               third second on (the time-weighted calls in flight over C)
//	rtts/call      round trips per call let through from the third second
//	               to the end (Reserve, the booking again of a caller woken,
//	               Done, renewals): not the first bookings of every caller
//	               nor their leaving the line at the end
//	calls          calls let through
func BenchmarkBudgetConcurrency(b *testing.B) {
	for _, tc := range []struct {
		name                string
		c, servers, workers int
		lo, hi              time.Duration
	}{
		// The scale, at the upstream times.
		{"C=100,servers=32x200,upstream=50-500ms", 100, 32, 200, 50 * time.Millisecond, 500 * time.Millisecond},
		// A faster upstream: more hand-offs per second.
		{"C=20,servers=8x20,upstream=5-50ms", 20, 8, 20, 5 * time.Millisecond, 50 * time.Millisecond},
	} {
		b.Run(tc.name, func(b *testing.B) {
			newClient := benchRedis(b)
			name := budgetName(b)
			opt := &budget.Options{Concurrency: tc.c, SlotLease: 3 * time.Second}
			lim := budget.Limit{Rate: 1000000, Burst: 1000000}
			h := &rtts{}
			var buds []*budget.Budget
			for range tc.servers {
				rdb := newClient()
				rdb.AddHook(h)
				bud := budget.New(rdb, name, lim, opt)
				defer bud.Close()
				buds = append(buds, bud)
			}
			run, warm := benchSpan(8*time.Second), benchSpan(2*time.Second)
			ctx, cancel := context.WithTimeout(context.Background(), run)
			defer cancel()
			start := time.Now()
			from, until := start.Add(warm), start.Add(run)
			var now, most, calls, busy atomic.Int64
			var wg sync.WaitGroup
			// Round trips and calls after the warm-up and at the end.
			var marks [2][2]int64
			for i, at := range []time.Time{from, until} {
				wg.Add(1)
				time.AfterFunc(time.Until(at), func() {
					defer wg.Done()
					marks[i] = [2]int64{h.n.Load(), calls.Load()}
				})
			}
			b.ResetTimer()
			for _, bud := range buds {
				for range tc.workers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for ctx.Err() == nil {
							r, err := bud.Reserve(ctx, budget.Foreground, budget.Cost{})
							if err != nil {
								if ctx.Err() == nil {
									b.Error(err)
								}
								return
							}
							n := now.Add(1)
							for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
							}
							t0 := time.Now()
							time.Sleep(tc.lo + rand.N(tc.hi-tc.lo))
							t1 := time.Now()
							now.Add(-1)
							calls.Add(1)
							if t0.Before(from) {
								t0 = from
							}
							if t1.After(until) {
								t1 = until
							}
							if t1.After(t0) {
								busy.Add(int64(t1.Sub(t0)))
							}
							_ = r.Done(context.Background())
						}
					}()
				}
			}
			wg.Wait()
			b.StopTimer()
			if m := most.Load(); m > int64(tc.c) {
				b.Errorf("the upstream saw %d calls at once, cap %d", m, tc.c)
			}
			b.ReportMetric(float64(most.Load()), "max-in-flight")
			b.ReportMetric(float64(busy.Load())/float64(int64(tc.c)*int64(until.Sub(from))), "in-use")
			b.ReportMetric(float64(marks[1][0]-marks[0][0])/float64(marks[1][1]-marks[0][1]), "rtts/call")
			b.ReportMetric(float64(calls.Load()), "calls")
		})
	}
}

// BenchmarkBudgetConcurrencyHandOff: one slot (Concurrency 1), two servers
// taking turns: each Done wakes the other server's caller waiting in line.
// hand-off-p50-ms/-p99-ms: from the start of Done on one server to the
// Reserve of the other returning (Done's round trip, the wake-up over
// pub/sub, the booking again). keys=20: a pool of 20 keys capped at 1 each,
// 19 of them held all along: the one left free goes from server to server.
func BenchmarkBudgetConcurrencyHandOff(b *testing.B) {
	b.Run("keys=0", func(b *testing.B) { benchHandOff(b, nil) })
	b.Run("keys=20", func(b *testing.B) { benchHandOff(b, benchKeys(20)) })
}

func benchHandOff(b *testing.B, keys []string) {
	newClient := benchRedis(b)
	name := budgetName(b)
	opt := &budget.Options{Concurrency: 1, Keys: keys}
	lim := budget.Limit{Rate: 1000000, Burst: 1000000}
	probe := newClient()
	queue := "__locksmith:{" + name + "}:budget:queue"
	x := budget.New(newClient(), name, lim, opt)
	defer x.Close()
	y := budget.New(newClient(), name, lim, opt)
	defer y.Close()
	ctx := context.Background()
	for range max(0, len(keys)-1) {
		r, err := x.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err != nil {
			b.Fatal(err)
		}
		defer r.Done(ctx)
	}
	held, err := x.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		b.Fatal(err)
	}
	var hand []time.Duration
	b.ResetTimer()
	for i := range b.N {
		next := y
		if i%2 == 1 {
			next = x
		}
		got := make(chan *budget.Reservation)
		go func() {
			r, err := next.Reserve(ctx, budget.Foreground, budget.Cost{})
			if err != nil {
				b.Error(err)
			}
			got <- r
		}()
		// Until it is in line: its first booking found the slot held.
		for probe.ZCard(ctx, queue).Val() == 0 {
			time.Sleep(100 * time.Microsecond)
		}
		t := time.Now()
		if err := held.Done(ctx); err != nil {
			b.Fatal(err)
		}
		held = <-got
		hand = append(hand, time.Since(t))
	}
	b.StopTimer()
	_ = held.Done(ctx)
	slices.Sort(hand)
	b.ReportMetric(float64(hand[len(hand)/2])/1e6, "hand-off-p50-ms")
	b.ReportMetric(float64(hand[len(hand)*99/100])/1e6, "hand-off-p99-ms")
}
