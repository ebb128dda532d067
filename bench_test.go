package locksmith_test

// The benchmark suite. Run it with
//
//	go test -run '^$' -bench . -benchtime 2000x .
//
// It uses a real redis-server on a free loopback port when one is installed,
// and an embedded miniredis otherwise (it says which). Speeds are reported
// beside a baseline measured in the same run, interleaved with the measured
// operation, so that a noisy machine moves both alike:
//
//	x-base      the operation's time over the baseline's (a raw go-redis GET,
//	            plus the same msgpack decode, codec.MsgPack, for the cache hit)
//	rtts/op     round trips to Redis per operation
//	loads/op    loader calls per stampede (one per key is the goal)
//	p50-ms, p99-ms  latency of a hand-off to another server
//
// The benchmarks of freshness, batches, the local tier, the observer hook
// and outages (bench_*_test.go) need a real redis-server, and are skipped
// without one; each says what its figures mean.

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/codec"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/lock"
)

// benchSpan returns d, or a quarter of it with -short: a smoke run of the
// benchmarks (-short -benchtime 1x) checks their assertions quickly; the
// figures to publish come from full runs.
func benchSpan(d time.Duration) time.Duration {
	if testing.Short() {
		return d / 4
	}
	return d
}

// benchRedis returns a function making clients of one Redis for the
// benchmark: a real redis-server when installed, else miniredis, unless
// LOCKSMITH_REQUIRE_REDIS=1, which makes a missing redis-server a failure.
func benchRedis(b *testing.B) func() *redis.Client {
	if redistest.Available() || os.Getenv("LOCKSMITH_REQUIRE_REDIS") == "1" {
		s := redistest.Start(b, nil)
		return func() *redis.Client { return s.Client(b, nil) }
	}
	b.Log("redis-server not installed: measuring against the embedded miniredis; figures are not representative")
	m, _ := redistest.Mini(b)
	return func() *redis.Client { return redistest.Client(b, m.Addr()) }
}

// rtts counts the commands a client sends, one round trip each.
type rtts struct{ n atomic.Int64 }

func (h *rtts) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *rtts) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.n.Add(1); return next(ctx, cmd) }
}
func (h *rtts) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.n.Add(1); return next(ctx, cmds) }
}

// interleave times op against base in alternating blocks, reports op's time
// as ns/op, the baseline's as base-ns/op, and their ratio as x-base.
func interleave(b *testing.B, base, op func(i int)) {
	const block = 50
	var baseT, opT time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i += block {
		n := min(block, b.N-i)
		t := time.Now()
		for j := i; j < i+n; j++ {
			base(j)
		}
		baseT += time.Since(t)
		t = time.Now()
		for j := i; j < i+n; j++ {
			op(j)
		}
		opT += time.Since(t)
	}
	b.StopTimer()
	b.ReportMetric(float64(opT.Nanoseconds())/float64(b.N), "ns/op")
	b.ReportMetric(float64(baseT.Nanoseconds())/float64(b.N), "base-ns/op")
	b.ReportMetric(float64(opT)/float64(baseT), "x-base")
}

// alternate times b.N calls of base and of op, one of each in turn, so
// that machine noise moves both alike, and returns each call's time.
func alternate(b *testing.B, base, op func(i int)) (baseS, opS []time.Duration) {
	baseS, opS = make([]time.Duration, 0, b.N), make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		base(i)
		t1 := time.Now()
		op(i)
		opS = append(opS, time.Since(t1))
		baseS = append(baseS, t1.Sub(t0))
	}
	b.StopTimer()
	return baseS, opS
}

// reportAdded reports op's mean time as ns/op, the baseline's as
// base-ns/op, their ratio as x-base, the median and p99 of each in ms
// (p50-ms, p99-ms; base-p50-ms, base-p99-ms), and what op adds to the
// baseline at each (added-p50-ms, added-p99-ms), which it returns.
func reportAdded(b *testing.B, baseS, opS []time.Duration) (p50, p99 float64) {
	var baseT, opT time.Duration
	for i := range opS {
		baseT, opT = baseT+baseS[i], opT+opS[i]
	}
	b.ReportMetric(float64(opT.Nanoseconds())/float64(len(opS)), "ns/op")
	b.ReportMetric(float64(baseT.Nanoseconds())/float64(len(baseS)), "base-ns/op")
	b.ReportMetric(float64(opT)/float64(baseT), "x-base")
	o50, o99 := reportLatency(b, "", opS)
	b50, b99 := reportLatency(b, "base-", baseS)
	b.ReportMetric(o50-b50, "added-p50-ms")
	b.ReportMetric(o99-b99, "added-p99-ms")
	return o50 - b50, o99 - b99
}

// benchTimeline is a ~1 KB cached value.
type benchTimeline struct {
	UserID  int       `json:"user_id"`
	Fetched time.Time `json:"fetched"`
	Tweets  []string  `json:"tweets"`
}

func newTimeline(id int) benchTimeline {
	tl := benchTimeline{UserID: id, Fetched: time.Unix(1700000000, 0).UTC()}
	for i := 0; i < 10; i++ {
		tl.Tweets = append(tl.Tweets, fmt.Sprintf("tweet %d of user %d: %s", i, id, "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod"))
	}
	return tl
}

// BenchmarkHit: a cache hit through fill.Get against a raw GET of the same
// value's bytes plus the same msgpack decode, with a ctx that cannot end and
// with one that can (as an HTTP request's), and with Options.ReadFirst.
func BenchmarkHit(b *testing.B) {
	background := func() (context.Context, context.CancelFunc) { return context.Background(), func() {} }
	withCancel := func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) }
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		opt  *fill.Options
	}{
		{"ctx=Background", background, nil},
		{"ctx=WithCancel", withCancel, nil},
		{"ReadFirst", withCancel, &fill.Options{ReadFirst: true}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			newClient := benchRedis(b)
			rdb := newClient()
			c := fill.New(rdb, tc.opt)
			defer c.Close()
			ctx, cancel := tc.ctx()
			defer cancel()
			want := newTimeline(1)
			load := func(context.Context) (benchTimeline, error) { return want, nil }
			if _, err := fill.Get(ctx, c, "hit", load); err != nil {
				b.Fatal(err)
			}
			raw, err := codec.MsgPack.Marshal(want)
			if err != nil {
				b.Fatal(err)
			}
			if err := rdb.Set(ctx, "raw", raw, 0).Err(); err != nil {
				b.Fatal(err)
			}
			h := &rtts{}
			rdb.AddHook(h)
			interleave(b, func(int) {
				bs, err := rdb.Get(ctx, "raw").Bytes()
				if err != nil {
					b.Fatal(err)
				}
				var v benchTimeline
				if err := codec.MsgPack.Unmarshal(bs, &v); err != nil {
					b.Fatal(err)
				}
			}, func(int) {
				if _, err := fill.Get(ctx, c, "hit", load); err != nil {
					b.Fatal(err)
				}
			})
			b.ReportMetric(float64(h.n.Load()-int64(b.N))/float64(b.N), "rtts/op")
			b.ReportMetric(float64(len(raw)), "value-bytes")
		})
	}
}

// BenchmarkMiss: a miss on a fresh key (loader returns at once) against a
// raw GET.
func BenchmarkMiss(b *testing.B) {
	newClient := benchRedis(b)
	rdb := newClient()
	c := fill.New(rdb, nil)
	defer c.Close()
	ctx := context.Background()
	// The loader hands back a value built once: building it is the
	// upstream's work, not the library's.
	v := newTimeline(2)
	load := func(context.Context) (benchTimeline, error) { return v, nil }
	if _, err := fill.Get(ctx, c, "warm-up", load); err != nil {
		b.Fatal(err)
	}
	h := &rtts{}
	rdb.AddHook(h)
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	interleave(b, func(int) {
		_ = rdb.Get(ctx, "raw").Err()
	}, func(i int) {
		if _, err := fill.Get(ctx, c, "miss:"+run+":"+strconv.Itoa(i), load); err != nil {
			b.Fatal(err)
		}
	})
	b.ReportMetric(float64(h.n.Load()-int64(b.N))/float64(b.N), "rtts/op")
}

// BenchmarkStampede: S servers × G goroutines request the same K cold keys
// at once; each loader call takes 5 ms (an upstream call). loads/op is K when
// every miss of the fleet is merged.
func BenchmarkStampede(b *testing.B) {
	for _, tc := range []struct{ servers, goroutines, keys int }{
		{8, 40, 1},
		{8, 10, 10},
	} {
		b.Run(fmt.Sprintf("S=%d,G=%d,K=%d", tc.servers, tc.goroutines, tc.keys), func(b *testing.B) {
			newClient := benchRedis(b)
			caches := make([]*fill.Cache, tc.servers)
			for i := range caches {
				caches[i] = fill.New(newClient(), nil)
				defer caches[i].Close()
			}
			ctx := context.Background()
			var loads atomic.Int64
			run := strconv.FormatInt(time.Now().UnixNano(), 36)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var wg sync.WaitGroup
				start := make(chan struct{})
				for _, c := range caches {
					for g := 0; g < tc.goroutines; g++ {
						wg.Add(1)
						go func() {
							defer wg.Done()
							<-start
							key := fmt.Sprintf("stampede:%s:%d:%d", run, i, g%tc.keys)
							_, err := fill.Get(ctx, c, key, func(context.Context) (int, error) {
								loads.Add(1)
								time.Sleep(5 * time.Millisecond)
								return g, nil
							})
							if err != nil {
								b.Error(err)
							}
						}()
					}
				}
				close(start)
				wg.Wait()
			}
			b.StopTimer()
			requests := float64(tc.servers * tc.goroutines)
			perOp := float64(loads.Load()) / float64(b.N)
			b.ReportMetric(perOp, "loads/op")
			b.ReportMetric(requests/perOp, "requests/load")
		})
	}
}

// handoff measures b.N hand-offs to another server: before(i) prepares one
// (a holder and a waiter), fire(i) ends the hold and returns when the waiter
// on the other server has returned. It reports the median and p99 in ms.
func handoff(b *testing.B, fire func(i int) time.Duration) {
	samples := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		samples = append(samples, fire(i))
	}
	b.StopTimer()
	reportLatency(b, "", samples)
}

// reportLatency reports the median and the 99th percentile of samples, in
// ms, as name+"p50-ms" and name+"p99-ms", and returns them. It sorts
// samples.
func reportLatency(b *testing.B, name string, samples []time.Duration) (p50, p99 float64) {
	if len(samples) == 0 {
		b.Errorf("%slatency: no samples", name)
		return 0, 0
	}
	slices.Sort(samples)
	pct := func(p float64) float64 {
		return float64(samples[int(p*float64(len(samples)-1))].Nanoseconds()) / 1e6
	}
	p50, p99 = pct(0.5), pct(0.99)
	b.ReportMetric(p50, name+"p50-ms")
	b.ReportMetric(p99, name+"p99-ms")
	return p50, p99
}

// waitSubscribed waits until exactly n clients listen on channel.
func waitSubscribed(b *testing.B, rdb *redis.Client, channel string, n int64) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := rdb.PubSubNumSub(context.Background(), channel).Result()
		if err == nil && m[channel] == n {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("not %d subscribers on %s", n, channel)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// BenchmarkFollowerWake: a follower on another server waits for a fill; the
// time from the loader returning to the follower returning.
func BenchmarkFollowerWake(b *testing.B) {
	newClient := benchRedis(b)
	admin := newClient()
	leader, follower := fill.New(newClient(), nil), fill.New(newClient(), nil)
	defer leader.Close()
	defer follower.Close()
	ctx := context.Background()
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	handoff(b, func(i int) time.Duration {
		key := "wake:" + run + ":" + strconv.Itoa(i)
		started, open := make(chan struct{}), make(chan struct{})
		var loaded time.Time
		go func() {
			_, _ = fill.Get(ctx, leader, key, func(context.Context) (int, error) {
				close(started)
				<-open
				loaded = time.Now()
				return i, nil
			})
		}()
		<-started
		done := make(chan time.Time, 1)
		go func() {
			if _, err := fill.Get(ctx, follower, key, func(context.Context) (int, error) { return -1, nil }); err != nil {
				b.Error(err)
			}
			done <- time.Now()
		}()
		waitSubscribed(b, admin, "__locksmith:{"+key+"}", 1)
		close(open)
		return (<-done).Sub(loaded)
	})
	if st := follower.Stats(); st.Loads != 0 {
		b.Errorf("follower loaded %d times; want 0", st.Loads)
	}
}

// BenchmarkLock: an uncontended Obtain+Release against a raw GET.
func BenchmarkLock(b *testing.B) {
	newClient := benchRedis(b)
	rdb := newClient()
	l := lock.New(rdb, nil)
	defer l.Close()
	ctx := context.Background()
	hold := func(int) {
		lk, err := l.Obtain(ctx, "bench")
		if err != nil {
			b.Fatal(err)
		}
		if err := lk.Release(ctx); err != nil {
			b.Fatal(err)
		}
	}
	hold(0) // loads the scripts: the first use costs a NOSCRIPT reply and an EVAL each
	h := &rtts{}
	rdb.AddHook(h)
	interleave(b, func(int) {
		_ = rdb.Get(ctx, "raw").Err()
	}, hold)
	rt := float64(h.n.Load()-int64(b.N)) / float64(b.N)
	if rt != 2 {
		b.Errorf("%.2f round trips per Obtain+Release; want 2", rt)
	}
	b.ReportMetric(rt, "rtts/op")
}

// BenchmarkHandoff: a waiter blocked in Obtain on another server; the time
// from the holder's Release to the waiter's Obtain returning.
func BenchmarkHandoff(b *testing.B) {
	newClient := benchRedis(b)
	admin := newClient()
	holder, waiter := lock.New(newClient(), nil), lock.New(newClient(), nil)
	defer holder.Close()
	defer waiter.Close()
	ctx := context.Background()
	handoff(b, func(i int) time.Duration {
		// The previous waiter has left, so the next one is surely blocked
		// once a subscriber shows.
		waitSubscribed(b, admin, "__locksmith:{handoff}", 0)
		held, err := holder.Obtain(ctx, "handoff")
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan time.Time, 1)
		go func() {
			lk, err := waiter.Obtain(ctx, "handoff")
			done <- time.Now()
			if err != nil {
				b.Error(err)
				return
			}
			_ = lk.Release(ctx)
		}()
		waitSubscribed(b, admin, "__locksmith:{handoff}", 1)
		t := time.Now()
		if err := held.Release(ctx); err != nil {
			b.Fatal(err)
		}
		return (<-done).Sub(t)
	})
}
