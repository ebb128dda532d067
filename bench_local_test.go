package locksmith_test

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/codec"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// BenchmarkLocal: the in-process tier (Options.Local, defaults).
//
// Hit: a local hit of a ~1 KB value against a raw go-redis GET of its
// bytes, interleaved; allocs/hit is measured apart (testing.AllocsPerRun),
// as the GET's allocations would blur it; rtts/op counts what the
// Cache's client sent meanwhile (the tier's heartbeats).
//
// Invalidation/Delete, Invalidation/Store: server B holds a copy; server A
// (no tier of its own) deletes the key, or stores a new value (its loader
// returning starts the clock; the value was removed from Redis behind B's
// back, so that A loads). B's Get runs in a tight loop meanwhile; p50-ms
// and p99-ms are the time until the first of B's Gets that no longer
// returns the old copy started; write-p50-ms and write-p99-ms, A's own
// call (for Store: from its loader returning to its Get returning), in the
// same samples. stuck counts the samples where B still served its old copy
// 2 s after the write, twice its MaxStaleness (recorded as 2 s).
func BenchmarkLocal(b *testing.B) {
	b.Run("Hit", func(b *testing.B) {
		s := redistest.Start(b, nil)
		rdb := s.Client(b, nil)
		h := &rtts{}
		rdb.AddHook(h)
		c := fill.New(rdb, &fill.Options{Local: &fill.LocalOptions{}})
		defer c.Close()
		raw := s.Client(b, nil)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		want := newTimeline(1)
		load := func(context.Context) (benchTimeline, error) { return want, nil }
		bs, err := codec.MsgPack.Marshal(want)
		if err != nil {
			b.Fatal(err)
		}
		if err := raw.Set(ctx, "raw", bs, 0).Err(); err != nil {
			b.Fatal(err)
		}
		waitLocal(b, c, "hit", load)
		hit := func() {
			if _, err := fill.Get(ctx, c, "hit", load); err != nil {
				b.Fatal(err)
			}
		}
		before := c.Stats().LocalHits
		h.n.Store(0)
		interleave(b, func(int) {
			if err := raw.Get(ctx, "raw").Err(); err != nil {
				b.Fatal(err)
			}
		}, func(int) { hit() })
		if n := c.Stats().LocalHits - before; n != uint64(b.N) {
			b.Errorf("%d of %d hits were local", n, b.N)
		}
		b.ReportMetric(float64(h.n.Load())/float64(b.N), "rtts/op")
		b.ReportMetric(testing.AllocsPerRun(1000, hit), "allocs/hit")
	})
	b.Run("Invalidation/Delete", func(b *testing.B) {
		invalidation(b, func(ctx context.Context, a *fill.Cache, _ func(int) (int, error)) (time.Time, time.Duration) {
			t0 := time.Now()
			if err := a.Delete(ctx, "k"); err != nil {
				b.Fatal(err)
			}
			return t0, time.Since(t0)
		})
	})
	b.Run("Invalidation/Store", func(b *testing.B) {
		invalidation(b, func(ctx context.Context, a *fill.Cache, next func(int) (int, error)) (time.Time, time.Duration) {
			var t0 time.Time
			v, err := fill.Get(ctx, a, "k", func(context.Context) (int, error) {
				v, err := next(0)
				t0 = time.Now()
				return v, err
			})
			if err != nil || t0.IsZero() {
				b.Fatalf("A's store: %v, %v (loaded: %v)", v, err, !t0.IsZero())
			}
			return t0, time.Since(t0)
		})
	})
}

// waitLocal reads key on c until a read is served from c's tier.
func waitLocal[T any](b *testing.B, c *fill.Cache, key string, load func(context.Context) (T, error)) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := c.Stats().LocalHits
		if _, err := fill.Get(context.Background(), c, key, load); err != nil {
			b.Fatal(err)
		}
		if c.Stats().LocalHits > before {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s is not served from the local tier", key)
		}
		time.Sleep(time.Millisecond)
	}
}

// invalidationBound is how long B may serve its old copy before a sample
// is counted as stuck (and recorded as this long): twice MaxStaleness.
const invalidationBound = 2 * time.Second

// invalidation measures b.N invalidations of B's copy of "k" by write, run
// on server A, which returns when the clock starts and how long A's own
// call took from then.
func invalidation(b *testing.B, write func(ctx context.Context, a *fill.Cache, next func(int) (int, error)) (time.Time, time.Duration)) {
	s := redistest.Start(b, nil)
	admin := s.Client(b, nil)
	a := fill.New(s.Client(b, nil), nil)
	defer a.Close()
	bc := fill.New(s.Client(b, nil), &fill.Options{Local: &fill.LocalOptions{}})
	defer bc.Close()
	ctx := context.Background()
	var version atomic.Int64
	next := func(int) (int, error) { return int(version.Add(1)), nil }
	loadB := func(context.Context) (int, error) { return next(0) }
	lats := make([]time.Duration, 0, b.N)
	writes := make([]time.Duration, 0, b.N)
	var t0 atomic.Value // the write's start, for the poller's bound
	stuck := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		waitLocal(b, bc, "k", loadB)
		old, err := fill.Get(ctx, bc, "k", loadB)
		if err != nil {
			b.Fatal(err)
		}
		// For a store, A must find no value: removed behind B's back, with
		// no invalidation.
		if err := admin.Del(ctx, "__locksmith:{k}:value").Err(); err != nil {
			b.Fatal(err)
		}
		spinning, changed := make(chan struct{}), make(chan time.Time, 1)
		t0.Store(time.Now().Add(time.Hour)) // until write says when it started
		go func() {
			var once sync.Once
			ready := func() { once.Do(func() { close(spinning) }) }
			defer ready()
			for first := true; ; first = false {
				at := time.Now()
				v, err := fill.Get(ctx, bc, "k", loadB)
				if err != nil {
					b.Error(err)
				}
				if err != nil || v != old {
					changed <- at
					return
				}
				if first {
					ready()
				} else if at.Sub(t0.Load().(time.Time)) > invalidationBound {
					changed <- time.Time{}
					return
				}
				runtime.Gosched()
			}
		}()
		<-spinning
		b.StartTimer()
		start, took := write(ctx, a, next)
		t0.Store(start)
		at := <-changed
		if at.IsZero() {
			stuck++
			at = start.Add(invalidationBound)
		}
		lats = append(lats, at.Sub(start))
		writes = append(writes, took)
	}
	b.StopTimer()
	if stuck > 0 {
		b.Logf("%d of %d times B served its old copy longer than %v after the write (MaxStaleness %v)",
			stuck, b.N, invalidationBound, time.Second)
	}
	b.ReportMetric(float64(stuck), "stuck")
	reportLatency(b, "", lats)
	reportLatency(b, "write-", writes)
}
