package locksmith_test

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// The freshness workload: one hot key, read by freshServers servers
// (clients, each with its own Cache) for many TTLs, its loader taking
// freshLoad. Each server gets a request every freshEvery, handled on a
// goroutine of its own as an HTTP server would, whatever the requests
// before it are doing: a reader blocked at an expiry delays the requests
// that arrive meanwhile, and their latency shows it.
const (
	freshServers    = 8
	freshTTL        = 200 * time.Millisecond
	freshLoad       = 100 * time.Millisecond
	freshEvery      = 2 * time.Millisecond
	freshWarmUp     = 2 * freshTTL
	freshMinWindows = 15
)

// BenchmarkFresh: a hot key read by 8 servers for max(b.N, 15) TTLs of
// 200 ms, with a 100 ms loader; with StaleWhileRevalidate, without it (a
// key past its TTL is a miss: readers wait for the load), and with
// EarlyRefresh (no stale window). Each request also reads a plain key that
// never expires, at the same moment: the baseline.
//
//	loads/TTL     loads per TTL of wall time
//	expiries      times the value's fresh life ran out with no newer value
//	              stored (lives of overlapping loads merged)
//	loads/expiry  loads from the first counted expiry to the last, per
//	              expiry: 1.00 when exactly one load, fleet-wide, follows
//	              each expiry (not reported with fewer than 2 expiries)
//	lead-ms       how long before the value it replaces expired a load
//	              started, on average (negative: after it expired)
//	p50-ms, p99-ms              a hot read's latency
//	plain-p50-ms, plain-p99-ms  the plain key's
//	x-plain-p50, x-plain-p99    their ratios
//	rtts/read     commands sent to Redis per read, hot and plain together
//	ns/op         a hot read's mean latency
func BenchmarkFresh(b *testing.B) {
	for _, tc := range []struct {
		name string
		opt  fill.Options
	}{
		{"StaleWhileRevalidate", fill.Options{StaleWhileRevalidate: time.Second}},
		{"NoStaleWhileRevalidate", fill.Options{}},
		{"EarlyRefresh", fill.Options{EarlyRefresh: true}},
	} {
		b.Run(tc.name, func(b *testing.B) { freshness(b, tc.opt) })
	}
}

// span is when one loader call started and returned.
type span struct{ start, end time.Time }

// loadLog is a loader that takes freshLoad, logs its calls and returns
// their number.
type loadLog struct {
	mu    sync.Mutex // guards loads
	loads []span
}

func (l *loadLog) load(context.Context) (int, error) {
	start := time.Now()
	time.Sleep(freshLoad)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.loads = append(l.loads, span{start, time.Now()})
	return len(l.loads), nil
}

func (l *loadLog) spans() []span {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.loads)
}

func freshness(b *testing.B, opt fill.Options) {
	s := redistest.Start(b, nil)
	opt.TTL, opt.Jitter = freshTTL, -1 // one key: jitter would only blur the windows
	h := &rtts{}
	caches := make([]*fill.Cache, freshServers)
	for i := range caches {
		rdb := s.Client(b, nil)
		rdb.AddHook(h)
		caches[i] = fill.New(rdb, &opt)
		defer caches[i].Close()
	}
	// Every request's ctx can end, as an HTTP request's can.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var log loadLog
	plain := func(context.Context) (int, error) { return -1, nil }
	for _, c := range caches {
		if _, err := fill.Get(ctx, c, "hot", log.load); err != nil {
			b.Fatal(err)
		}
		if _, err := fill.Get(ctx, c, "plain", plain, fill.WithTTL(time.Hour)); err != nil {
			b.Fatal(err)
		}
	}

	windows := max(b.N, freshMinWindows)
	if testing.Short() {
		windows = max(b.N, 5)
	}
	var (
		mu           sync.Mutex // guards hotS and plainS
		hotS, plainS []time.Duration
		reads        atomic.Int64
		wg           sync.WaitGroup
		stop         = make(chan struct{})
		t0           = time.Now().Add(freshWarmUp) // measured from here
		t1           = t0.Add(time.Duration(windows) * freshTTL)
	)
	h.n.Store(0)
	record := func(to *[]time.Duration, at time.Time) {
		d := time.Since(at)
		if at.Before(t0) {
			return
		}
		mu.Lock()
		*to = append(*to, d)
		mu.Unlock()
	}
	b.ResetTimer()
	for _, c := range caches {
		wg.Go(func() {
			var reqs sync.WaitGroup
			defer reqs.Wait()
			tick := time.NewTicker(freshEvery)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				at := time.Now()
				reads.Add(2)
				reqs.Go(func() {
					v, err := fill.Get(ctx, c, "hot", log.load)
					record(&hotS, at)
					if err != nil || v < 1 {
						b.Errorf("hot read: %v, %v", v, err)
					}
				})
				reqs.Go(func() {
					v, err := fill.Get(ctx, c, "plain", plain, fill.WithTTL(time.Hour))
					record(&plainS, at)
					if err != nil || v != -1 {
						b.Errorf("plain read: %v, %v", v, err)
					}
				})
			}
		})
	}
	time.Sleep(time.Until(t0))
	rtts0, reads0 := h.n.Load(), reads.Load()
	time.Sleep(time.Until(t1))
	rtts, nreads := h.n.Load()-rtts0, reads.Load()-reads0
	close(stop)
	wg.Wait()
	b.StopTimer()

	loads := log.spans()
	inRun := 0
	for _, l := range loads {
		if !l.start.Before(t0) && l.start.Before(t1) {
			inRun++
		}
	}
	b.ReportMetric(float64(inRun)/float64(windows), "loads/TTL")
	// How long before the value it replaces expired each load started
	// (negative: after).
	var lead time.Duration
	n := 0
	for i := 1; i < len(loads); i++ {
		if !loads[i].start.Before(t0) && loads[i].start.Before(t1) {
			lead += loads[i-1].end.Add(freshTTL).Sub(loads[i].start)
			n++
		}
	}
	if n > 0 {
		b.ReportMetric(float64(lead.Nanoseconds())/float64(n)/1e6, "lead-ms")
	}
	exp := expiries(loads, freshTTL, t0, t1)
	b.ReportMetric(float64(len(exp)), "expiries")
	if len(exp) >= 2 {
		n = 0
		for _, l := range loads {
			if !l.start.Before(exp[0]) && l.start.Before(exp[len(exp)-1]) {
				n++
			}
		}
		b.ReportMetric(float64(n)/float64(len(exp)-1), "loads/expiry")
	}
	var sum time.Duration
	for _, d := range hotS {
		sum += d
	}
	if len(hotS) > 0 {
		b.ReportMetric(float64(sum.Nanoseconds())/float64(len(hotS)), "ns/op")
	}
	p50, p99 := reportLatency(b, "", hotS)
	b50, b99 := reportLatency(b, "plain-", plainS)
	b.ReportMetric(p50/b50, "x-plain-p50")
	b.ReportMetric(p99/b99, "x-plain-p99")
	b.ReportMetric(float64(rtts)/float64(nreads), "rtts/read")
}

// expiries returns the moments in [from, to] at which a value's fresh life
// (ttl from its load's end, when it was stored) ran out with no newer value
// stored: the ends of the merged lives of loads.
func expiries(loads []span, ttl time.Duration, from, to time.Time) []time.Time {
	slices.SortFunc(loads, func(a, b span) int { return a.end.Compare(b.end) })
	var out []time.Time
	for i := 0; i < len(loads); {
		end := loads[i].end.Add(ttl)
		i++
		for i < len(loads) && !loads[i].end.After(end) {
			end = loads[i].end.Add(ttl)
			i++
		}
		if !end.Before(from) && !end.After(to) {
			out = append(out, end)
		}
	}
	return out
}
