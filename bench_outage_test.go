package locksmith_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// BenchmarkOutage: Redis is killed; a fail-open fill.Get of a fresh key
// with a loader that returns at once, against a call of the loader alone,
// alternately. added-p50-ms and added-p99-ms are what Get adds to the
// loader; first-ms is the Get that found Redis gone (go-redis's own dial
// and retries), before the outage was remembered; dials/s counts the
// client's dial attempts during the timed Gets (the outage probe's).
// go-redis's log of failed dials is silenced meanwhile: it would split
// the result lines.
func BenchmarkOutage(b *testing.B) {
	redis.SetLogger(discardLog{})
	defer redis.SetLogger(stderrLog{log.New(os.Stderr, "redis: ", log.LstdFlags|log.Lshortfile)})
	background := func() (context.Context, context.CancelFunc) { return context.Background(), func() {} }
	withCancel := func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) }
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
	}{
		{"ctx=Background", background},
		{"ctx=WithCancel", withCancel},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s := redistest.Start(b, nil)
			var dials atomic.Int64
			var d net.Dialer
			c := fill.New(s.Client(b, &redis.Options{Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
				dials.Add(1)
				return d.DialContext(ctx, network, addr)
			}}), nil)
			defer c.Close()
			ctx, cancel := tc.ctx()
			defer cancel()
			load := func(context.Context) (int, error) { return 1, nil }
			if _, err := fill.Get(ctx, c, "warm", load); err != nil {
				b.Fatal(err)
			}
			s.Kill(b)
			start := time.Now()
			if v, err := fill.Get(ctx, c, "first", load); err != nil || v != 1 {
				b.Fatalf("first Get with Redis down: %v, %v; want the loader's value", v, err)
			}
			first := time.Since(start)
			if st := c.Stats(); st.Outages != 1 {
				b.Fatalf("Outages = %d after the first Get; want 1", st.Outages)
			}
			before := c.Stats().FailOpens
			dials.Store(0)
			start = time.Now()
			baseS, opS := alternate(b, func(int) {
				if v, err := load(ctx); err != nil || v != 1 {
					b.Fatal(v, err)
				}
			}, func(i int) {
				if v, err := fill.Get(ctx, c, "out:"+strconv.Itoa(i), load); err != nil || v != 1 {
					b.Fatalf("Get with Redis down: %v, %v", v, err)
				}
			})
			b.ReportMetric(float64(dials.Load())/time.Since(start).Seconds(), "dials/s")
			reportAdded(b, baseS, opS)
			b.ReportMetric(float64(first.Nanoseconds())/1e6, "first-ms")
			if n := c.Stats().FailOpens - before; n != uint64(b.N) {
				b.Errorf("%d fail-opens for %d Gets", n, b.N)
			}
		})
	}
}

type discardLog struct{}

func (discardLog) Printf(context.Context, string, ...any) {}

type stderrLog struct{ l *log.Logger }

func (s stderrLog) Printf(_ context.Context, format string, v ...any) {
	_ = s.l.Output(2, fmt.Sprintf(format, v...))
}
