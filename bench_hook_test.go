package locksmith_test

import (
	"context"
	"testing"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/observe"
)

// BenchmarkHook: a hit through a Cache with an events handler (a no-op
// observe.Func) against the same hit through a Cache without one,
// interleaved, on one Redis: a Redis hit, and a hit of the local tier.
// hook-allocs/op and base-allocs/op are measured apart (testing.AllocsPerRun).
func BenchmarkHook(b *testing.B) {
	for _, tc := range []struct {
		name  string
		local *fill.LocalOptions
	}{
		{"RedisHit", nil},
		{"LocalHit", &fill.LocalOptions{}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s := redistest.Start(b, nil)
			hooked := fill.New(s.Client(b, nil), &fill.Options{Local: tc.local,
				Events: observe.Func(func(context.Context, observe.Event) {})})
			defer hooked.Close()
			plain := fill.New(s.Client(b, nil), &fill.Options{Local: tc.local})
			defer plain.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			want := newTimeline(1)
			load := func(context.Context) (benchTimeline, error) { return want, nil }
			for _, c := range []*fill.Cache{hooked, plain} {
				if tc.local != nil {
					waitLocal(b, c, "hit", load)
				} else if _, err := fill.Get(ctx, c, "hit", load); err != nil {
					b.Fatal(err)
				}
			}
			hit := func(c *fill.Cache) func() {
				return func() {
					if _, err := fill.Get(ctx, c, "hit", load); err != nil {
						b.Fatal(err)
					}
				}
			}
			base, op := hit(plain), hit(hooked)
			h0, p0 := hooked.Stats(), plain.Stats()
			interleave(b, func(int) { base() }, func(int) { op() })
			h1, p1 := hooked.Stats(), plain.Stats()
			if n := (h1.Hits + h1.LocalHits) - (h0.Hits + h0.LocalHits); n != uint64(b.N) {
				b.Errorf("hooked: %d hits of %d", n, b.N)
			}
			if tc.local != nil && (h1.LocalHits-h0.LocalHits != uint64(b.N) || p1.LocalHits-p0.LocalHits != uint64(b.N)) {
				b.Errorf("local hits: hooked %d, plain %d, of %d", h1.LocalHits-h0.LocalHits, p1.LocalHits-p0.LocalHits, b.N)
			}
			b.ReportMetric(testing.AllocsPerRun(200, op), "hook-allocs/op")
			b.ReportMetric(testing.AllocsPerRun(200, base), "base-allocs/op")
		})
	}
}
