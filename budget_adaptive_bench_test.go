package locksmith_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/upstreamtest"
)

// BenchmarkBudgetAdaptive: 16 servers × 4 goroutines call an upstream whose
// limit L is not stated (a token bucket, 20 calls deep, that answers a bare
// 429 over it), with demand well above it, while L steps every minute:
// L, 1.5L, 0.5L, 1.5L, 0.5L. Time is scaled down 10 times: L is 1000
// calls/s for 100 in real life, a call takes 10ms for 100ms, a minute lasts
// 6s; the figures below are given in real seconds (÷10 for the run's). One
// fleet shares one budget with Options.Adaptive (ceiling 3L). In the same
// run, two more fleets of the same servers, each server with an AIMD
// limiter of its own (its share of the ceiling to start, ×0.7 on a 429 once
// per episode of its own, and per call accepted while its calls wait +1/640
// of its share: as much of L used as the adaptive fleet, or +1/160: faster),
// call an upstream of their own that steps alike. For each fleet (fleet-,
// aimd-, aimdfast-):
//
//	used-%           calls served over what L allowed, the whole run
//	used-late-%      the least, over the start and the step-ups, of the calls
//	                 served over L from 30s after it to the next step
//	reach85-s        the most, over the start and the step-ups, of the time
//	                 until a 5s window first served 85% of L
//	refused-%        calls refused (429) over all calls, the whole run
//	refused-late-%   the most, over the step-downs, of the calls refused from
//	                 10s after it to the next step
//	settle-s         the most, over the step-downs, of the time until the
//	                 calls refused within a 5s window fall under 1%
//	429s             calls refused in the run
//
// and x-fewer-429s (x-fewer-429s-fast), the 429s of the AIMD fleet (the
// faster one) over the adaptive fleet's. A fourth upstream, stepping alike,
// serves 100 clients with exponential back-off (backoff-): each calls again
// at once after a call served, and after a 429 sleeps a random time up to
// a call's latency × 2^n, at most 10s, n the 429s in a row: the setting of
// the published comparison of adaptive client-side limiting (arXiv
// 2510.04516: up to 97.3% fewer 429s than exponential back-off, with up to
// 100 clients sharing one quota). fewer-429s-than-backoff-% is 100 × (1 −
// the adaptive fleet's share of calls refused over the back-off
// clients'). With -v it logs the learned rate
// every 5s beside L, and what the fleet and the AIMD fleet served and had
// refused. With -short, a smoke run: three steps of 15s (1.5s scaled).
func BenchmarkBudgetAdaptive(b *testing.B) {
	const (
		servers, goroutines = 16, 4
		scale               = 10
		L                   = 100 * scale // calls/s, scaled
		latency             = 100 * time.Millisecond / scale
	)
	minute := time.Minute / scale
	steps := []float64{1, 1.5, 0.5, 1.5, 0.5}
	if testing.Short() {
		minute, steps = minute/4, steps[:3]
	}
	for i := 0; i < b.N; i++ {
		newClient := benchRedis(b)
		name := budgetName(b)
		buds := make([]*budget.Budget, servers)
		for s := range buds {
			buds[s] = budget.New(newClient(), name, budget.Limit{Rate: 3 * L}, &budget.Options{Adaptive: true})
		}
		shared, alone, fast, backoff := newStepAPI(L, 20), newStepAPI(L, 20), newStepAPI(L, 20), newStepAPI(L, 20)
		aimds, fasts := make([]*aimdLimiter, servers), make([]*aimdLimiter, servers)
		for s := range aimds {
			aimds[s], fasts[s] = newAIMD(3*L/servers, 640), newAIMD(3*L/servers, 160)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(len(steps))*minute)
		start := time.Now()
		shared.Start, alone.Start, fast.Start, backoff.Start = start, start, start, start
		var wg sync.WaitGroup
		for s := range servers {
			for range goroutines {
				wg.Go(func() { adaptiveCaller(ctx, b, buds[s], shared, latency) })
				wg.Go(func() { aimds[s].caller(ctx, alone, latency) })
				wg.Go(func() { fasts[s].caller(ctx, fast, latency) })
			}
		}
		for c := range backoffClients {
			wg.Go(func() { backoffCaller(ctx, backoff, latency, minute/6, uint64(c)) })
		}
		for k := 1; k < len(steps); k++ {
			t := time.AfterFunc(time.Until(start.Add(time.Duration(k)*minute)), func() {
				for _, u := range []*stepAPI{shared, alone, fast, backoff} {
					u.SetRate(L * steps[k])
				}
			})
			defer t.Stop()
		}
		// The trace of the learned rate, as Redis holds it.
		rdb, key := newClient(), "__locksmith:{"+name+"}:budget"
		var trace []float64
		tick := time.NewTicker(minute / 12)
		for ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-tick.C:
				rate := 3.0 * L
				if lt, err := rdb.HGet(context.Background(), key, "lt").Int64(); err == nil && lt > 0 {
					rate = min(rate, 1e6/float64(lt))
				}
				trace = append(trace, rate)
			}
		}
		tick.Stop()
		wg.Wait()
		cancel()
		var cuts uint64
		for _, bud := range buds {
			cuts += bud.Stats().RateCuts
			_ = bud.Close()
		}
		f := shared.report(b, "fleet-", steps, minute, scale)
		a := alone.report(b, "aimd-", steps, minute, scale)
		af := fast.report(b, "aimdfast-", steps, minute, scale)
		bo := backoff.report(b, "backoff-", steps, minute, scale)
		// The published comparison counts 429s against exponential
		// back-off's for the same clients: here, as shares of the calls.
		fr, br := shared.refusedShare(), backoff.refusedShare()
		b.ReportMetric(100*(1-fr/max(br, 1e-9)), "fewer-429s-than-backoff-%")
		_ = bo
		b.ReportMetric(float64(a)/float64(max(f, 1)), "x-fewer-429s")
		b.ReportMetric(float64(af)/float64(max(f, 1)), "x-fewer-429s-fast")
		b.ReportMetric(float64(cuts), "fleet-cuts")
		var t strings.Builder
		fmt.Fprintf(&t, "\n  t(s)     L  learned  fleet  429s  aimd  429s  (calls/s over the 5s before t; real time)")
		for j, r := range trace {
			at := time.Duration(j+1) * minute / 12
			from := at - minute/12
			fs, fr := shared.Count(from, at)
			as, ar := alone.Count(from, at)
			w := (minute / 12).Seconds()
			fmt.Fprintf(&t, "\n  %4.0f %5.0f  %7.0f  %5.0f  %4d  %4.0f  %4d", at.Seconds()*scale, L/scale*steps[min(int(from/minute), len(steps)-1)],
				r/scale, float64(fs)/w/scale, fr, float64(as)/w/scale, ar)
		}
		b.Log(t.String())
	}
}

// adaptiveCaller calls u through bud until ctx ends, as a server does: a
// reservation, the call at its slot, the response latency later given to
// the reservation's Observe (a bare 200 or 429), Done.
func adaptiveCaller(ctx context.Context, b *testing.B, bud *budget.Budget, u *stepAPI, latency time.Duration) {
	for ctx.Err() == nil {
		r, err := bud.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err != nil {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				b.Error(err)
			}
			return
		}
		status := http.StatusOK
		if !u.Call() {
			status = http.StatusTooManyRequests
		}
		time.Sleep(latency)
		if err := r.Observe(ctx, nil, status); err != nil && ctx.Err() == nil {
			b.Error(err)
		}
		_ = r.Done(ctx)
	}
}

// aimdLimiter is one server learning the upstream's limit alone: GCRA on
// its own clock at rate calls/s, ×0.7 on a 429 for a call sent after its
// latest cut, +inc per call accepted that waited for its slot, up to the
// starting rate.
type aimdLimiter struct {
	ceil, inc float64

	mu    sync.Mutex // guards the fields below
	rate  float64
	next  time.Time // the next free slot
	cutAt time.Time
}

// newAIMD returns an AIMD limiter starting at ceil calls/s, whose rate
// grows by ceil/div per call accepted.
func newAIMD(ceil, div float64) *aimdLimiter {
	return &aimdLimiter{ceil: ceil, inc: ceil / div, rate: ceil}
}

// caller calls u through a until ctx ends.
func (a *aimdLimiter) caller(ctx context.Context, u *stepAPI, latency time.Duration) {
	for ctx.Err() == nil {
		a.mu.Lock()
		now := time.Now()
		slot := now
		if a.next.After(slot) {
			slot = a.next
		}
		a.next = slot.Add(time.Duration(float64(time.Second) / a.rate))
		a.mu.Unlock()
		waited := slot.After(now)
		if !sleepUntil(ctx, slot) {
			return
		}
		ok := u.Call()
		time.Sleep(latency)
		a.mu.Lock()
		switch {
		case !ok && slot.After(a.cutAt):
			a.rate *= 0.7
			a.cutAt = time.Now()
		case ok && waited:
			a.rate = min(a.ceil, a.rate+a.inc)
		}
		a.mu.Unlock()
	}
}

// backoffClients is how many clients share the quota with exponential
// back-off, as in the published comparison's largest setting.
const backoffClients = 100

// backoffCaller calls u until ctx ends, as a client with exponential
// back-off and full jitter does: at once after a call served; after the
// n-th 429 in a row, after a random time up to base × 2^n, at most most.
func backoffCaller(ctx context.Context, u *stepAPI, base, most time.Duration, seed uint64) {
	rnd := rand.New(rand.NewPCG(seed, 7))
	n := 0
	for ctx.Err() == nil {
		ok := u.Call()
		time.Sleep(base) // the call's latency
		if ok {
			n = 0
			continue
		}
		wait := min(most, base<<min(n, 20))
		n++
		if !sleepUntil(ctx, time.Now().Add(time.Duration(rnd.Int64N(int64(wait)+1)))) {
			return
		}
	}
}

// refusedShare is the share of u's calls refused, the whole run.
func (u *stepAPI) refusedShare() float64 {
	served, refused := u.Count(0, 1<<62)
	return float64(refused) / float64(max(served+refused, 1))
}

// sleepUntil sleeps until t, and reports whether ctx was still going then.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// stepAPI is an upstream whose limit is not stated and changes, L at
// first (base).
type stepAPI struct {
	*upstreamtest.Hidden
	base float64
}

func newStepAPI(rate, burst float64) *stepAPI {
	return &stepAPI{Hidden: upstreamtest.NewHidden(rate, burst), base: rate}
}

// report reports u's metrics under prefix, for the steps of L, each a
// minute long, at the time scale; it returns the calls refused.
func (u *stepAPI) report(b *testing.B, prefix string, steps []float64, minute time.Duration, scale float64) int {
	window := minute / 12 // 5s, real time
	var allowed float64
	usedLate, reach, refusedLate, settle := 100.0, 0.0, 0.0, 0.0
	for k, s := range steps {
		from := time.Duration(k) * minute
		to := from + minute
		limit := u.base * s
		allowed += limit * minute.Seconds()
		if k == 0 || s > steps[k-1] {
			served, _ := u.Count(from+minute/2, to)
			usedLate = min(usedLate, 100*float64(served)/(limit*(minute/2).Seconds()))
			at := minute
			for w := from; w+window <= to; w += window / 5 {
				if served, _ := u.Count(w, w+window); float64(served) >= 0.85*limit*window.Seconds() {
					at = w + window - from
					break
				}
			}
			reach = max(reach, at.Seconds()*scale)
		}
		if k > 0 && s < steps[k-1] {
			served, refused := u.Count(from+minute/6, to)
			refusedLate = max(refusedLate, 100*float64(refused)/float64(max(served+refused, 1)))
			at := minute
			for w := from; w+window <= to; w += window / 5 {
				if served, refused := u.Count(w, w+window); refused*100 < served+refused {
					at = w + window - from
					break
				}
			}
			settle = max(settle, at.Seconds()*scale)
		}
	}
	served, refused := u.Count(0, time.Duration(len(steps))*minute)
	b.ReportMetric(100*float64(served)/allowed, prefix+"used-%")
	b.ReportMetric(usedLate, prefix+"used-late-%")
	b.ReportMetric(reach, prefix+"reach85-s")
	b.ReportMetric(100*float64(refused)/float64(max(served+refused, 1)), prefix+"refused-%")
	b.ReportMetric(refusedLate, prefix+"refused-late-%")
	b.ReportMetric(settle, prefix+"settle-s")
	b.ReportMetric(float64(refused), prefix+"429s")
	return refused
}
