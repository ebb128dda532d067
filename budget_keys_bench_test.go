package locksmith_test

// Benchmarks of key pools (budget.Options.Keys). Run them with
//
//	go test -run '^$' -bench BudgetKeys -benchtime 1x .
//
// Their metrics:
//
//	served-%        requests served (the upstream answered 200 within the
//	                request's deadline) over the requests made
//	429-%           upstream calls refused with 429 over the calls made
//	exhausted       keys whose window ran out of calls before its end
//	left-at-exhaust the most any other key had left (a share of its window)
//	                when a key ran out: 0 when none did
//	left-min, left-max  the share of its window's calls each key had left
//	                at the window's end: the least and the most of them
//	pause-share     calls served per second while one key of three was
//	                paused, over the three keys' capacity
//	before-share    the same before the pause
//	paused-calls    calls that reached the paused key during its pause
//	x-base, x-plain a Reserve over 20 keys against a GET, and against a
//	                Reserve of a budget without keys, interleaved on one server
//	                (with concurrency=100, both budgets cap calls in flight)
//	remove-ms       from the upstream's first 401 for a key to every server
//	                having dropped it
//	401s            calls answered 401: those on their way when it came

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/budget"
)

// windowAPI limits each key to n calls per window of length w, the windows
// of every key starting at start, as GitHub counts 5,000 calls an hour per
// token. Each answer states x-ratelimit-remaining and -reset.
type windowAPI struct {
	n     int
	w     time.Duration
	start time.Time

	mu        sync.Mutex // guards the fields below
	used      map[string]int
	first     map[string]int // the counts of the first window, once it ended
	window    int64          // the window the counts are of
	calls     int
	refused   int
	exhausted int
	leftMax   float64 // the most another key had left when one ran out
}

func newWindowAPI(n int, w time.Duration) *windowAPI {
	return &windowAPI{n: n, w: w, start: time.Now(), used: map[string]int{}}
}

// call is one call with key: its status and header.
func (a *windowAPI) call(key string) (int, http.Header) {
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if win := int64(now.Sub(a.start) / a.w); win != a.window {
		if a.first == nil {
			a.first = a.used
		}
		a.window, a.used = win, map[string]int{}
	}
	reset := a.start.Add(time.Duration(a.window+1) * a.w)
	h := http.Header{}
	h.Set("X-Ratelimit-Limit", strconv.Itoa(a.n))
	h.Set("X-Ratelimit-Reset", strconv.FormatInt((reset.UnixNano()+999999999)/1e9, 10))
	a.calls++
	if a.used[key] >= a.n {
		a.refused++
		h.Set("X-Ratelimit-Remaining", "0")
		h.Set("Retry-After", strconv.Itoa(int(time.Until(reset).Seconds())+1))
		return http.StatusTooManyRequests, h
	}
	a.used[key]++
	h.Set("X-Ratelimit-Remaining", strconv.Itoa(a.n-a.used[key]))
	if a.used[key] == a.n {
		a.exhausted++
		for k, u := range a.used {
			if k != key {
				a.leftMax = max(a.leftMax, float64(a.n-u)/float64(a.n))
			}
		}
	}
	return http.StatusOK, h
}

// BenchmarkBudgetKeys: the goals of a pool of keys.
//
// demand=80%: 20 keys of 5,000 calls an hour each, the hour scaled down to
// a minute (to 2s, and the calls with it, with -short), an upstream counting each
// key's calls in fixed windows; 4 servers take requests at 80% of the
// pool's capacity, arriving at random, each for a user drawn with Zipf
// skew (s 1.1 over 10,000 users) and a deadline of 2s, for one window.
// With assign=pool each server's budget holds the 20 keys and every call
// goes on the key Reserve picks; with assign=sticky, the baseline, a user's
// calls always go on the same key (user mod 20), each key a budget of its
// own, as a fleet without a pool spreads them.
//
// pause=1of3: 3 keys of 100 calls per second, 4 servers × 16 goroutines
// calling as fast as the budget lets them; for 3s (0.75s with -short)
// after a warm-up the upstream answers 429, Retry-After 3, to every call on
// the first key; then it answers 401 to every call on the second.
//
// reserve: an uncontended Reserve (and Done) over 20 keys, a Reserve of a
// budget without keys and a GET, interleaved on one server (run it with
// -benchtime 5000x).
func BenchmarkBudgetKeys(b *testing.B) {
	b.Run("demand=80%,assign=pool", func(b *testing.B) { benchKeysDemand(b, true) })
	b.Run("demand=80%,assign=sticky", func(b *testing.B) { benchKeysDemand(b, false) })
	b.Run("pause=1of3", benchKeysPause)
	b.Run("reserve", func(b *testing.B) { benchKeysReserve(b, 0) })
	b.Run("reserve,concurrency=100", func(b *testing.B) { benchKeysReserve(b, 100) })
}

// benchKeysReserve measures an uncontended Reserve and Done over 20 keys;
// with conc above 0, both budgets cap calls in flight at conc (per key for
// the pool).
func benchKeysReserve(b *testing.B, conc int) {
	wide := budget.Limit{Rate: 1000000, Burst: 1000000}
	rdb := benchRedis(b)()
	ctx := context.Background()
	name := budgetName(b)
	plain := budget.New(rdb, name+":plain", wide, &budget.Options{Concurrency: conc})
	defer plain.Close()
	pool := budget.New(rdb, name+":pool", wide, &budget.Options{Keys: benchKeys(20), Concurrency: conc})
	defer pool.Close()
	reserve := func(bud *budget.Budget) {
		r, err := bud.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Done(ctx); err != nil {
			b.Fatal(err)
		}
	}
	reserve(plain) // loads the scripts
	reserve(pool)
	h := &rtts{}
	rdb.AddHook(h)
	b.ReportAllocs()
	const block = 50
	var get, one, keyed time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i += block {
		n := min(block, b.N-i)
		t := time.Now()
		for range n {
			_ = rdb.Get(ctx, "raw").Err()
		}
		get += time.Since(t)
		t = time.Now()
		for range n {
			reserve(plain)
		}
		one += time.Since(t)
		t = time.Now()
		for range n {
			reserve(pool)
		}
		keyed += time.Since(t)
	}
	b.StopTimer()
	b.ReportMetric(float64(keyed.Nanoseconds())/float64(b.N), "ns/op")
	b.ReportMetric(float64(get.Nanoseconds())/float64(b.N), "base-ns/op")
	b.ReportMetric(float64(keyed)/float64(get), "x-base")
	b.ReportMetric(float64(keyed)/float64(one), "x-plain")
	b.ReportMetric(float64(one)/float64(get), "plain-x-base")
	b.ReportMetric(float64(h.n.Load()-int64(3*b.N))/float64(b.N), "rtts/op")
}

func benchKeysDemand(b *testing.B, pool bool) {
	const keys, servers, workers, users = 20, 4, 64, 10000
	w := time.Minute
	if testing.Short() {
		w = 2 * time.Second // the same demand per second, fewer calls a window
	}
	n := int(5000 * w / time.Minute)
	creds := benchKeys(keys)
	l := budget.Limit{Rate: n, Per: w}
	for i := 0; i < b.N; i++ {
		newClient := benchRedis(b)
		name := budgetName(b)
		// pick returns, for a server and a user, the budget to reserve
		// on and the key to call with ("" for the reservation's).
		var picks []func(user uint64) (*budget.Budget, string)
		var buds []*budget.Budget
		for range servers {
			rdb := newClient()
			if pool {
				bud := budget.New(rdb, name, l, &budget.Options{Keys: creds, FleetSize: servers})
				buds = append(buds, bud)
				picks = append(picks, func(uint64) (*budget.Budget, string) { return bud, "" })
				continue
			}
			own := make([]*budget.Budget, keys)
			for k := range own {
				own[k] = budget.New(rdb, name+":"+creds[k], l, &budget.Options{FleetSize: servers})
			}
			buds = append(buds, own...)
			picks = append(picks, func(user uint64) (*budget.Budget, string) { return own[user%keys], creds[user%keys] })
		}
		api := newWindowAPI(n, w)
		type request struct {
			user uint64
			at   time.Time // its arrival: its deadline is 2s later
		}
		reqs := make(chan request, 1<<16)
		var made, served atomic.Int64
		var wg sync.WaitGroup
		for s := range servers {
			for range workers {
				wg.Go(func() {
					for req := range reqs {
						ctx, cancel := context.WithDeadline(context.Background(), req.at.Add(2*time.Second))
						bud, key := picks[s](req.user)
						r, err := bud.Reserve(ctx, budget.Foreground, budget.Cost{})
						switch {
						case errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
							cancel()
							continue
						case err != nil:
							b.Error(err)
							cancel()
							continue
						}
						if key == "" {
							key = r.Key()
						}
						status, h := api.call(key)
						_ = r.Observe(ctx, h, status)
						_ = r.Done(ctx)
						if status == http.StatusOK && ctx.Err() == nil {
							served.Add(1)
						}
						cancel()
					}
				})
			}
		}
		// Arrivals at random (Poisson) at 80% of the pool's capacity, for
		// one window.
		rate := 0.8 * keys * float64(n) / w.Seconds()
		rng := rand.New(rand.NewPCG(1, 2))
		zipf := rand.NewZipf(rng, 1.1, 1, users-1)
		start := api.start
		next := start
		for next.Before(start.Add(w)) {
			next = next.Add(time.Duration(rng.ExpFloat64() / rate * float64(time.Second)))
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			made.Add(1)
			reqs <- request{user: zipf.Uint64(), at: next}
		}
		close(reqs)
		wg.Wait()
		for _, bud := range buds {
			_ = bud.Close()
		}
		api.mu.Lock()
		used := api.first
		if used == nil {
			used = api.used
		}
		leftMin, leftMax := 1.0, 0.0
		for _, c := range creds {
			left := float64(n-used[c]) / float64(n)
			leftMin, leftMax = min(leftMin, left), max(leftMax, left)
		}
		b.ReportMetric(100*float64(served.Load())/float64(made.Load()), "served-%")
		b.ReportMetric(100*float64(api.refused)/float64(max(api.calls, 1)), "429-%")
		b.ReportMetric(float64(api.exhausted), "exhausted")
		b.ReportMetric(api.leftMax, "left-at-exhaust")
		b.ReportMetric(leftMin, "left-min")
		b.ReportMetric(leftMax, "left-max")
		api.mu.Unlock()
	}
}

// bucketAPI limits each key to rate calls per second with a burst of 5
// (a margin of 40ms for calls that arrive late, then together), and
// answers 429 (Retry-After 3) to every call on the key paused while it is.
type bucketAPI struct {
	rate float64

	mu      sync.Mutex // guards the fields below
	tokens  map[string]float64
	last    map[string]time.Time
	paused  string
	revoked string
	first   time.Time   // the first 401
	ok      []time.Time // the calls answered 200
	during  int         // calls on the paused key while it was
	refused int
	denied  int // 401s
}

func (a *bucketAPI) call(key string) (int, http.Header) {
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	h := http.Header{}
	if key == a.revoked {
		if a.denied++; a.denied == 1 {
			a.first = now
		}
		return http.StatusUnauthorized, h
	}
	if key == a.paused {
		a.during++
		a.refused++
		h.Set("Retry-After", "3")
		return http.StatusTooManyRequests, h
	}
	t, seen := a.tokens[key]
	if !seen {
		t = 5
	}
	t = min(5, t+now.Sub(a.last[key]).Seconds()*a.rate)
	a.last[key] = now
	if t < 1 {
		a.tokens[key] = t
		a.refused++
		h.Set("Retry-After", "1")
		return http.StatusTooManyRequests, h
	}
	a.tokens[key] = t - 1
	a.ok = append(a.ok, now)
	return http.StatusOK, h
}

func (a *bucketAPI) okBetween(from, to time.Time) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, at := range a.ok {
		if !at.Before(from) && at.Before(to) {
			n++
		}
	}
	return n
}

func benchKeysPause(b *testing.B) {
	const keys, servers, goroutines, rate = 3, 4, 16, 100
	warm, pause := benchSpan(2*time.Second), benchSpan(3*time.Second)
	creds := benchKeys(keys)
	for i := 0; i < b.N; i++ {
		newClient := benchRedis(b)
		name := budgetName(b)
		api := &bucketAPI{rate: rate, tokens: map[string]float64{}, last: map[string]time.Time{}}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var buds []*budget.Budget
		for range servers {
			bud := budget.New(newClient(), name, budget.Limit{Rate: rate}, &budget.Options{Keys: creds, FleetSize: servers})
			buds = append(buds, bud)
			for range goroutines {
				wg.Go(func() {
					for ctx.Err() == nil {
						r, err := bud.Reserve(ctx, budget.Foreground, budget.Cost{})
						if err != nil {
							if ctx.Err() == nil {
								b.Error(err)
							}
							return
						}
						status, h := api.call(r.Key())
						_ = r.Observe(ctx, h, status)
						_ = r.Done(ctx)
					}
				})
			}
		}
		start := time.Now()
		time.Sleep(warm)
		api.mu.Lock()
		api.paused, api.during = creds[0], 0
		api.mu.Unlock()
		paused := time.Now()
		time.Sleep(pause)
		api.mu.Lock()
		api.paused, api.revoked = "", creds[1]
		during := api.during
		api.mu.Unlock()
		end := time.Now()
		var dropped time.Time
		for dropped.IsZero() {
			time.Sleep(100 * time.Microsecond)
			all := true
			for _, bud := range buds {
				all = all && bud.Stats().Keys == keys-1
			}
			if all {
				dropped = time.Now()
			}
		}
		cancel()
		wg.Wait()
		for _, bud := range buds {
			_ = bud.Close()
		}
		// From the middle of the warm-up (past the first bookings on fresh
		// keys) to the pause, and over the pause.
		from := start.Add(warm / 2)
		capacity := func(d time.Duration) float64 { return keys * rate * d.Seconds() }
		b.ReportMetric(float64(api.okBetween(from, paused))/capacity(paused.Sub(from)), "before-share")
		b.ReportMetric(float64(api.okBetween(paused, end))/capacity(end.Sub(paused)), "pause-share")
		b.ReportMetric(float64(during), "paused-calls")
		b.ReportMetric(float64(api.refused), "429s")
		b.ReportMetric(float64(dropped.Sub(api.first).Microseconds())/1000, "remove-ms")
		b.ReportMetric(float64(api.denied), "401s")
	}
}
