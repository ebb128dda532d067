package otel_test

import (
	"context"
	"errors"
	"testing"
	"time"

	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/locksmith-go/locksmith/observe"
	lsotel "github.com/locksmith-go/locksmith/otel"
)

// BenchmarkObserve measures the cost of one event of each kind on the SDK
// providers (a ManualReader that is never read, a TracerProvider that
// samples every span and exports none), and of a hit on no-op providers.
func BenchmarkObserve(b *testing.B) {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	tp := sdktrace.NewTracerProvider()
	b.Cleanup(func() {
		_ = mp.Shutdown(context.Background())
		_ = tp.Shutdown(context.Background())
	})
	obs := lsotel.New(&lsotel.Options{MeterProvider: mp, TracerProvider: tp})
	noop := lsotel.New(&lsotel.Options{MeterProvider: metricnoop.NewMeterProvider(), TracerProvider: tracenoop.NewTracerProvider()})
	sampled, span := tp.Tracer("bench").Start(context.Background(), "request")
	defer span.End()

	ev := func(k observe.Kind) observe.Event {
		return observe.Event{Kind: k, Source: "fill", Name: "__locksmith:", Key: "timeline:37344436"}
	}
	load := ev(observe.Load)
	load.Duration = 80 * time.Millisecond
	loadErr := load
	loadErr.Err = errors.New("upstream answered 503")
	wait := ev(observe.WaitRemote)
	wait.Duration = 3 * time.Millisecond
	budgetWait := ev(observe.BudgetWait)
	budgetWait.Duration = 10 * time.Millisecond
	batch := ev(observe.Batch)
	batch.N, batch.Duration = 50, 100*time.Millisecond

	for _, c := range []struct {
		name string
		obs  *lsotel.Handler
		ctx  context.Context
		ev   observe.Event
	}{
		{"hit", obs, context.Background(), ev(observe.Hit)},
		{"hit/noop-providers", noop, context.Background(), ev(observe.Hit)},
		{"hit/sampled-span-in-ctx", obs, sampled, ev(observe.Hit)},
		{"local_hit", obs, context.Background(), ev(observe.LocalHit)},
		{"miss", obs, context.Background(), ev(observe.Miss)},
		{"invalidation", obs, context.Background(), ev(observe.Invalidation)},
		{"load", obs, sampled, load},
		{"load/error", obs, sampled, loadErr},
		{"remote_wait", obs, sampled, wait},
		{"budget_wait", obs, sampled, budgetWait},
		{"batch", obs, sampled, batch},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c.obs.Handle(c.ctx, c.ev)
			}
		})
	}
	b.Run("hit/parallel", func(b *testing.B) {
		b.ReportAllocs()
		e := ev(observe.Hit)
		b.RunParallel(func(pb *testing.PB) {
			ctx := context.Background()
			for pb.Next() {
				obs.Handle(ctx, e)
			}
		})
	})
}
