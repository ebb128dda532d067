package locksmith_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/fine"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// The batch workload: batchServers servers (clients, each with its own
// Cache) each ask for all of the same batchKeys cold keys, in an order of
// their own, from many goroutines; the batch loader, an upstream call that
// takes batchLoad whatever the number of ids, counts the ids it is given.
const (
	batchServers = 8
	batchKeys    = 1000
	batchLoad    = 10 * time.Millisecond
	// batchGetters goroutines per server call Batcher.Get, one key at a
	// time; GetMany is called by batchKeys/batchChunk goroutines per
	// server with batchChunk keys each.
	batchGetters = 64
	batchChunk   = 50
)

// BenchmarkBatch: b.N rounds of the batch workload, each on fresh keys,
// through a Batcher per server (BatchOptions defaults: MaxSize 100, Window
// 2 ms) and through GetMany; and, alone, a Batcher.Get of a warm key
// against a fill.Get of it.
//
//	calls/round   upstream (loader) calls per round
//	ids/call      keys per loader call
//	loads/key     ids loaded per key, fleet-wide (1.00: each key once)
//	dup-keys      keys loaded more than once, over all rounds
//	rtts/key      round trips (a pipeline counts one) per key asked for
//	p50-ms, p99-ms              a call's latency (a Get or a GetMany), the
//	                            loader's batchLoad included
func BenchmarkBatch(b *testing.B) {
	b.Run("Batcher", func(b *testing.B) {
		batchRounds(b, func(c *fill.Cache, up *upstream) func(ctx context.Context, keys []string, lat func(time.Duration)) {
			bt := fill.NewBatcher(c, up.load, nil)
			return func(ctx context.Context, keys []string, lat func(time.Duration)) {
				var next atomic.Int64
				var wg sync.WaitGroup
				for range batchGetters {
					wg.Go(func() {
						for i := int(next.Add(1)) - 1; i < len(keys); i = int(next.Add(1)) - 1 {
							start := time.Now()
							v, err := bt.Get(ctx, keys[i])
							lat(time.Since(start))
							if err != nil || v != "v:"+keys[i] {
								b.Errorf("Batcher.Get(%s): %q, %v", keys[i], v, err)
							}
						}
					})
				}
				wg.Wait()
			}
		})
	})
	b.Run("GetMany", func(b *testing.B) {
		batchRounds(b, func(c *fill.Cache, up *upstream) func(ctx context.Context, keys []string, lat func(time.Duration)) {
			return func(ctx context.Context, keys []string, lat func(time.Duration)) {
				var wg sync.WaitGroup
				for i := 0; i < len(keys); i += batchChunk {
					chunk := keys[i:min(i+batchChunk, len(keys))]
					wg.Go(func() {
						start := time.Now()
						m, err := fill.GetMany(ctx, c, chunk, up.load)
						lat(time.Since(start))
						if err != nil || len(m) != len(chunk) {
							b.Errorf("GetMany of %d keys: %d values, %v", len(chunk), len(m), err)
						}
						for _, k := range chunk {
							if m[k] != "v:"+k {
								b.Errorf("GetMany: %s = %q", k, m[k])
							}
						}
					})
				}
				wg.Wait()
			}
		})
	})
	b.Run("BatcherHit", func(b *testing.B) {
		s := redistest.Start(b, nil)
		c := fill.New(s.Client(b, nil), nil)
		defer c.Close()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var up upstream
		bt := fill.NewBatcher(c, up.load, nil)
		one := func(context.Context) (string, error) { return "v:warm", nil }
		if _, err := fill.Get(ctx, c, "warm", one); err != nil {
			b.Fatal(err)
		}
		baseS, opS := alternate(b, func(int) {
			if _, err := fill.Get(ctx, c, "warm", one); err != nil {
				b.Fatal(err)
			}
		}, func(int) {
			if v, err := bt.Get(ctx, "warm"); err != nil || v != "v:warm" {
				b.Fatalf("Batcher.Get: %q, %v", v, err)
			}
		})
		reportAdded(b, baseS, opS)
		if up.calls.Load() != 0 {
			b.Errorf("%d loader calls for a warm key", up.calls.Load())
		}
	})
}

// upstream is a batch loader that takes batchLoad per call and counts its
// calls, each key's loads and how long each call really took (a sleep of
// batchLoad takes longer on a busy machine).
type upstream struct {
	calls atomic.Int64
	mu    sync.Mutex // guards ids and took
	ids   map[string]int
	took  []time.Duration
}

func (u *upstream) load(_ context.Context, keys []string) (map[string]string, error) {
	u.calls.Add(1)
	start := time.Now()
	// Ended on the fine timer, as a network reply ends a call: a Go timer
	// ends it up to a millisecond late, by how its deadline falls against
	// the other timers of the process.
	time.Sleep(batchLoad - fine.Window)
	fine.Sleep(start.Add(batchLoad))
	m := make(map[string]string, len(keys))
	u.mu.Lock()
	defer u.mu.Unlock()
	u.took = append(u.took, time.Since(start))
	if u.ids == nil {
		u.ids = map[string]int{}
	}
	for _, k := range keys {
		u.ids[k]++
		m[k] = "v:" + k
	}
	return m, nil
}

// batchRounds runs b.N rounds of the batch workload; client returns, for
// one server's Cache, what asks that server for a round's keys, reporting
// each call's latency.
func batchRounds(b *testing.B, client func(c *fill.Cache, up *upstream) func(ctx context.Context, keys []string, lat func(time.Duration))) {
	s := redistest.Start(b, nil)
	h := &rtts{}
	var up upstream
	servers := make([]func(context.Context, []string, func(time.Duration)), batchServers)
	for i := range servers {
		rdb := s.Client(b, &redis.Options{PoolSize: batchGetters})
		rdb.AddHook(h)
		c := fill.New(rdb, nil)
		defer c.Close()
		servers[i] = client(c, &up)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A warm-up round on keys of its own: connections, scripts, pub/sub.
	batchRound(ctx, servers, "warm-up", func(time.Duration) {})
	h.n.Store(0)
	up.calls.Store(0)
	up.ids = nil

	var mu sync.Mutex // guards lats
	var lats []time.Duration
	lat := func(d time.Duration) {
		mu.Lock()
		lats = append(lats, d)
		mu.Unlock()
	}
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	cpu0 := redisCPU(b, s)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		batchRound(ctx, servers, fmt.Sprintf("%s:%d", run, i), lat)
	}
	b.StopTimer()
	b.ReportMetric(float64((redisCPU(b, s)-cpu0).Milliseconds())/float64(b.N), "redis-cpu-ms/round")

	keys := float64(batchKeys * b.N)
	loaded, dups := 0, 0
	for _, n := range up.ids {
		loaded += n
		if n > 1 {
			dups++
		}
	}
	if len(up.ids) != batchKeys*b.N {
		b.Errorf("%d keys loaded; want %d", len(up.ids), batchKeys*b.N)
	}
	calls := float64(up.calls.Load())
	b.ReportMetric(calls/float64(b.N), "calls/round")
	b.ReportMetric(float64(loaded)/calls, "ids/call")
	b.ReportMetric(float64(loaded)/keys, "loads/key")
	b.ReportMetric(float64(dups), "dup-keys")
	b.ReportMetric(float64(h.n.Load())/(keys*batchServers), "rtts/key")
	reportLatency(b, "", lats)
}

// batchRound has every server ask for the round's batchKeys keys, each in
// an order of its own, all servers at once.
func batchRound(ctx context.Context, servers []func(context.Context, []string, func(time.Duration)), round string, lat func(time.Duration)) {
	names := make([]string, batchKeys)
	for i := range names {
		names[i] = "batch:" + round + ":" + strconv.Itoa(i)
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, ask := range servers {
		keys := append([]string(nil), names...)
		rand.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
		wg.Go(func() {
			<-start
			ask(ctx, keys, lat)
		})
	}
	close(start)
	wg.Wait()
}

// redisCPU returns the CPU time the redis-server has used, user and system.
func redisCPU(b *testing.B, s *redistest.Server) time.Duration {
	info, _ := s.Do(b, "INFO", "cpu").(string)
	var total float64
	for _, line := range strings.Split(info, "\r\n") {
		for _, f := range []string{"used_cpu_sys:", "used_cpu_user:"} {
			if v, ok := strings.CutPrefix(line, f); ok {
				x, err := strconv.ParseFloat(v, 64)
				if err != nil {
					b.Fatalf("INFO cpu: %q: %v", line, err)
				}
				total += x
			}
		}
	}
	return time.Duration(total * float64(time.Second))
}

// The fleet batch workload: fleetKeys cold keys per round, each asked for
// by two of the servers, every Get at once (on a goroutine of its own, so
// that no client's concurrency limits a batch).
const (
	fleetKeys   = 500
	fleetWindow = 10 * time.Millisecond
)

// BenchmarkFleetBatch: b.N rounds of the fleet batch workload through a
// Batcher per server, its batches its own (PerServer) or the fleet's
// (FleetWide, one gatherer), on fleets of 8, 32 and 64 servers; and Join:
// rounds of one key per server of 2 and of 8, each a Get joining the
// fleet's batch (with 2, each server has about a core of this machine's
// 2, as it would its own in a fleet; with 8, the servers' wake-ups queue
// for the cores); JoinPerServer, the Join of 2 servers without FleetWide,
// the baseline: each key is loaded by the server that claims it, the other
// waits for it by push as a FleetWide Get does; and JoinProcesses, the Join
// of 2 servers each in a process of its own (see bench_fleetproc_test.go). More server processes
// than cores would measure how the kernel shares them: a server that wakes
// late misses its round's batch.
//
//	calls/round   upstream (loader) calls per round
//	calls/ideal   calls per round ÷ the fewest that can carry its keys
//	              (its keys ÷ MaxSize)
//	loads/key     ids loaded per key, fleet-wide (1.00: each key once)
//	p50-ms, p99-ms   a Get's latency, the loader's batchLoad included
//	p50-extra-ms  p50 less Window and batchLoad: what batching costs a Get
//	              beyond its window and its load
//	p50-over-ms   p50 less Window and the loader call's median duration as
//	              measured (load-ms): what a Get waits beyond its window and
//	              its load; p50-over-rtts is that in round trips of the run's
//	              Redis (rtt-ms: the median of a fill.Get that hits, one
//	              script's round trip, measured before the rounds)
//	rtt-cold-ms   the same round trip after 10 ms idle, as a pop after
//	              its Window and a settle after its load are (the median
//	              of 50 before the rounds and one after each);
//	              p50-over-cold-rtts is p50-over-ms in those
//	publish-cold-ms  a PUBLISH after 10 ms idle until another client's
//	              subscription has it: the least a batch's values take
//	              from the end of its load to a waiting server
func BenchmarkFleetBatch(b *testing.B) {
	for _, servers := range []int{8, 32, 64} {
		for _, fleetWide := range []bool{false, true} {
			name := "PerServer"
			if fleetWide {
				name = "FleetWide"
			}
			b.Run(fmt.Sprintf("servers=%d/%s", servers, name), func(b *testing.B) {
				fleetBatchRounds(b, servers, fleetKeys, &fill.BatchOptions{Window: fleetWindow, FleetWide: fleetWide, Name: "bench"})
			})
		}
	}
	for _, servers := range []int{2, 8} {
		b.Run(fmt.Sprintf("servers=%d/Join", servers), func(b *testing.B) {
			fleetBatchRounds(b, servers, servers, &fill.BatchOptions{Window: fleetWindow, FleetWide: true, Name: "bench"})
		})
	}
	b.Run("servers=2/JoinPerServer", func(b *testing.B) {
		fleetBatchRounds(b, 2, 2, &fill.BatchOptions{Window: fleetWindow, Name: "bench"})
	})
	b.Run("servers=2/JoinProcesses", func(b *testing.B) { fleetProcBatchRounds(b, 2) })
}

// fleetBatchRounds runs b.N rounds of keys cold keys through a fleet of
// servers Batchers with opt, each key asked for by two servers (one with a
// single server).
func fleetBatchRounds(b *testing.B, servers, keys int, opt *fill.BatchOptions) {
	s := redistest.Start(b, nil)
	var up upstream
	batchers := make([]*fill.Batcher[string], servers)
	var c0 *fill.Cache
	for i := range batchers {
		c := fill.New(s.Client(b, nil), nil)
		defer c.Close()
		batchers[i] = fill.NewBatcher(c, up.load, opt)
		c0 = c
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex // guards lats
	var lats []time.Duration
	round := func(name string, lat func(time.Duration)) {
		var wg sync.WaitGroup
		for i, bt := range batchers {
			// Server i asks for the keys k with k%servers in {i, i+1}.
			for k := range keys {
				if m := k % servers; m != i && m != (i+1)%servers {
					continue
				}
				key := name + ":" + strconv.Itoa(k)
				wg.Go(func() {
					start := time.Now()
					v, err := bt.Get(ctx, key)
					lat(time.Since(start))
					if err != nil || v != "v:"+key {
						b.Errorf("Get(%s): %q, %v", key, v, err)
					}
				})
			}
		}
		wg.Wait()
	}
	round("fleet:warm-up", func(time.Duration) {})
	rtt := hitRTT(b, c0, "fleet:warm-up:0", 0)
	// Round trips after idle, 50 before the rounds and one after each:
	// the host's wake-ups vary over a run as much as between runs.
	colds := hitRTTs(b, c0, "fleet:warm-up:0", coldIdle, 50)
	coldPub := publishAfterIdle(b, s, coldIdle)
	up.calls.Store(0)
	up.ids, up.took = nil, nil
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		round(fmt.Sprintf("fleet:%s:%d", run, i), func(d time.Duration) {
			mu.Lock()
			lats = append(lats, d)
			mu.Unlock()
		})
		b.StopTimer()
		colds = append(colds, hitRTTs(b, c0, "fleet:warm-up:0", coldIdle, 1)...)
		b.StartTimer()
	}
	b.StopTimer()
	coldRTT := median(colds)
	loaded := 0
	for _, n := range up.ids {
		loaded += n
	}
	if len(up.ids) != keys*b.N {
		b.Errorf("%d keys loaded; want %d", len(up.ids), keys*b.N)
	}
	calls := float64(up.calls.Load()) / float64(b.N)
	b.ReportMetric(calls, "calls/round")
	b.ReportMetric(calls/float64((keys+99)/100), "calls/ideal")
	b.ReportMetric(float64(loaded)/float64(keys*b.N), "loads/key")
	p50 := reportOver(b, lats, up.took, rtt, coldRTT, coldPub)
	b.ReportMetric(p50-float64(fleetWindow+batchLoad)/float64(time.Millisecond), "p50-extra-ms")
}

// reportOver reports a Get's latency, lats, against the Window and the
// loader calls' median duration, took (see BenchmarkFleetBatch's
// metrics), in ms and in round trips, and returns the p50 in ms.
func reportOver(b *testing.B, lats, took []time.Duration, rtt, coldRTT, coldPub time.Duration) float64 {
	p50, _ := reportLatency(b, "", lats)
	slices.Sort(took)
	load := ms(took[len(took)/2])
	over := p50 - ms(fleetWindow) - load
	b.ReportMetric(load, "load-ms")
	b.ReportMetric(over, "p50-over-ms")
	b.ReportMetric(ms(rtt), "rtt-ms")
	b.ReportMetric(over/ms(rtt), "p50-over-rtts")
	b.ReportMetric(ms(coldRTT), "rtt-cold-ms")
	b.ReportMetric(over/ms(coldRTT), "p50-over-cold-rtts")
	b.ReportMetric(ms(coldPub), "publish-cold-ms")
	return p50
}

// coldIdle is the idle time before a cold round trip, as long as a
// batch's load.
const coldIdle = batchLoad

// publishAfterIdle returns the median time from a PUBLISH sent after idle
// without a call to its message's arrival at another client's
// subscription, over 50: the least a batch's settle after its load takes
// to reach a waiting server.
func publishAfterIdle(b *testing.B, s *redistest.Server, idle time.Duration) time.Duration {
	ctx := context.Background()
	pub, sub := s.Client(b, nil), s.Client(b, nil)
	ps := sub.Subscribe(ctx, "fleet:idle")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		b.Fatal(err)
	}
	msgs := ps.Channel()
	took := make([]time.Duration, 50)
	for i := range took {
		time.Sleep(idle)
		start := time.Now()
		if err := pub.Publish(ctx, "fleet:idle", "m").Err(); err != nil {
			b.Fatal(err)
		}
		select {
		case <-msgs:
		case <-time.After(5 * time.Second):
			b.Fatal("a published message did not arrive within 5s")
		}
		took[i] = time.Since(start)
	}
	slices.Sort(took)
	return took[len(took)/2]
}

// hitRTT returns the median of fill.Gets of key, cached in c: one round
// trip each; 200 back to back, or with idle, 50 each after idle without a
// call (a round trip after a pause wakes an idle process and an idle
// Redis, as a batch's pop and settle do after its Window and its load).
func hitRTT(b *testing.B, c *fill.Cache, key string, idle time.Duration) time.Duration {
	n := 200
	if idle > 0 {
		n = 50
	}
	return median(hitRTTs(b, c, key, idle, n))
}

// hitRTTs returns n round trips of fill.Gets of key, cached in c, each
// after idle without a call.
func hitRTTs(b *testing.B, c *fill.Cache, key string, idle time.Duration, n int) []time.Duration {
	rtts := make([]time.Duration, n)
	for i := range rtts {
		time.Sleep(idle)
		start := time.Now()
		if _, err := fill.Get(context.Background(), c, key, func(context.Context) (string, error) {
			return "", fmt.Errorf("%s is not cached", key)
		}); err != nil {
			b.Fatal(err)
		}
		rtts[i] = time.Since(start)
	}
	return rtts
}

// median returns the median of ds, which it sorts.
func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
