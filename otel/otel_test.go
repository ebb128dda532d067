package otel_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	gotel "go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/observe"
	lsotel "github.com/locksmith-go/locksmith/otel"
)

const prefix = "t:"

// env is an events handler on in-memory SDK providers.
type env struct {
	obs    *lsotel.Handler
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	tracer trace.Tracer // for the callers' spans
}

func newEnv(t *testing.T, opt *lsotel.Options) *env {
	t.Helper()
	e := &env{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(e.reader))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(e.spans))
	t.Cleanup(func() {
		_ = mp.Shutdown(context.Background())
		_ = tp.Shutdown(context.Background())
	})
	var o lsotel.Options
	if opt != nil {
		o = *opt
	}
	o.MeterProvider, o.TracerProvider = mp, tp
	e.obs = lsotel.New(&o)
	e.tracer = tp.Tracer("test")
	return e
}

// cache returns a Cache on a new miniredis, observed by e.obs (or by obs,
// if given).
func (e *env) cache(t *testing.T, s *miniredis.Miniredis, obs observe.Handler) *fill.Cache {
	t.Helper()
	if s == nil {
		s = miniredis.RunT(t)
	}
	if obs == nil {
		obs = e.obs
	}
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	c := fill.New(rdb, &fill.Options{Prefix: prefix, Events: obs})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// point is one data point of a metric: its attributes, and its value (a
// sum's) or its count and sum (a histogram's).
type point struct {
	attrs attribute.Set
	value float64
	count uint64
}

// collect returns the data points of every metric, by name.
func (e *env) collect(t *testing.T) map[string][]point {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := e.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string][]point{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != lsotel.ScopeName {
			t.Errorf("scope %q; want %q", sm.Scope.Name, lsotel.ScopeName)
		}
		for _, m := range sm.Metrics {
			var ps []point
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					ps = append(ps, point{attrs: p.Attributes, value: float64(p.Value)})
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					ps = append(ps, point{attrs: p.Attributes, value: p.Sum, count: p.Count})
				}
			case metricdata.Histogram[int64]:
				for _, p := range d.DataPoints {
					ps = append(ps, point{attrs: p.Attributes, value: float64(p.Sum), count: p.Count})
				}
			default:
				t.Fatalf("%s: unexpected data %T", m.Name, m.Data)
			}
			out[m.Name] = ps
		}
	}
	return out
}

// only returns the single data point of name, and fails unless its
// attributes are exactly want.
func only(t *testing.T, ms map[string][]point, name string, want ...attribute.KeyValue) point {
	t.Helper()
	ps := ms[name]
	if len(ps) != 1 {
		t.Fatalf("%s: got %d data points %v; want 1", name, len(ps), ps)
	}
	if w := attribute.NewSet(want...); !ps[0].attrs.Equals(&w) {
		t.Errorf("%s: got attributes %v; want %v", name, ps[0].attrs.Encoded(attribute.DefaultEncoder()),
			w.Encoded(attribute.DefaultEncoder()))
	}
	return ps[0]
}

// exact fails unless one of name's data points has exactly the attributes
// want.
func exact(t *testing.T, ms map[string][]point, name string, want ...attribute.KeyValue) {
	t.Helper()
	w := attribute.NewSet(want...)
	for _, p := range ms[name] {
		if p.attrs.Equals(&w) {
			return
		}
	}
	t.Errorf("%s: no data point with attributes %v", name, w.Encoded(attribute.DefaultEncoder()))
}

// with returns the sum of the values of name's data points whose
// attributes include want.
func with(ms map[string][]point, name string, want ...attribute.KeyValue) float64 {
	var v float64
	for _, p := range ms[name] {
		ok := true
		for _, kv := range want {
			if got, has := p.attrs.Value(kv.Key); !has || got != kv.Value {
				ok = false
			}
		}
		if ok {
			v += p.value
		}
	}
	return v
}

// assertNoKey fails if any attribute of a metric, a span or a span event
// holds one of keys.
func (e *env) assertNoKey(t *testing.T, ms map[string][]point, keys ...string) {
	t.Helper()
	check := func(where string, kvs []attribute.KeyValue) {
		for _, kv := range kvs {
			for _, k := range keys {
				if strings.Contains(kv.Value.String(), k) {
					t.Errorf("%s: attribute %s=%q holds the key %q", where, kv.Key, kv.Value.String(), k)
				}
			}
		}
	}
	for name, ps := range ms {
		for _, p := range ps {
			check(name, p.attrs.ToSlice())
		}
	}
	for _, s := range e.spans.Ended() {
		check(s.Name(), s.Attributes())
		for _, ev := range s.Events() {
			check(s.Name()+" event "+ev.Name, ev.Attributes)
		}
	}
}

// ended returns the ended spans named name.
func (e *env) ended(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range e.spans.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// one returns the single ended span named name, and checks that it is a
// child of parent.
func (e *env) one(t *testing.T, name string, parent trace.Span) sdktrace.ReadOnlySpan {
	t.Helper()
	ss := e.ended(name)
	if len(ss) != 1 {
		t.Fatalf("got %d spans named %s; want 1", len(ss), name)
	}
	s := ss[0]
	if parent != nil {
		pc := parent.SpanContext()
		if got := s.Parent().SpanID(); got != pc.SpanID() {
			t.Errorf("%s: parent span %v; want %v", name, got, pc.SpanID())
		}
		if got := s.SpanContext().TraceID(); got != pc.TraceID() {
			t.Errorf("%s: trace %v; want %v", name, got, pc.TraceID())
		}
	}
	if s.SpanKind() != trace.SpanKindInternal {
		t.Errorf("%s: kind %v; want internal", name, s.SpanKind())
	}
	if s.EndTime().Before(s.StartTime()) {
		t.Errorf("%s: ends at %v, before its start %v", name, s.EndTime(), s.StartTime())
	}
	return s
}

// attr returns the value of the attribute k of s, or "" without one.
func attr(s sdktrace.ReadOnlySpan, k attribute.Key) string {
	for _, kv := range s.Attributes() {
		if kv.Key == k {
			return kv.Value.String()
		}
	}
	return ""
}

var (
	fillSource = lsotel.SourceKey.String("fill")
	fillName   = lsotel.NameKey.String(prefix)
	errorType  = attribute.Key("error.type")
)

// callerContext returns a ctx that can end, as a request's does, with a
// span of the caller's in it.
func (e *env) callerContext(t *testing.T) (context.Context, trace.Span) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	ctx, span := e.tracer.Start(ctx, "request")
	t.Cleanup(func() { span.End() })
	return ctx, span
}

// TestMissLoadHit: a Get that misses and loads, then one that hits. The
// load span is a child of the caller's span, though the flight ran on its
// own goroutine; no hit makes a span; no key is an attribute.
func TestMissLoadHit(t *testing.T) {
	e := newEnv(t, nil)
	c := e.cache(t, nil, nil)
	ctx, req := e.callerContext(t)
	const key = "user:37344436"
	const took = 5 * time.Millisecond
	load := func(context.Context) (string, error) {
		time.Sleep(took)
		return "value", nil
	}
	for range 3 {
		if v, err := fill.Get(ctx, c, key, load); err != nil || v != "value" {
			t.Fatalf("Get: got %q, %v; want value, nil", v, err)
		}
	}

	ms := e.collect(t)
	result := lsotel.ResultKey
	if got := with(ms, "locksmith.lookups", result.String("miss")); got != 1 {
		t.Errorf("misses: got %v; want 1", got)
	}
	if got := with(ms, "locksmith.lookups", result.String("hit")); got != 2 {
		t.Errorf("hits: got %v; want 2", got)
	}
	exact(t, ms, "locksmith.lookups", fillSource, fillName, result.String("hit"))
	exact(t, ms, "locksmith.lookups", fillSource, fillName, result.String("miss"))
	p := only(t, ms, "locksmith.load.duration", fillSource, fillName,
		lsotel.BackgroundKey.Bool(false), lsotel.AbsentKey.Bool(false))
	if p.count != 1 || p.value < took.Seconds() {
		t.Errorf("load.duration: got count %d, sum %vs; want 1, at least %vs", p.count, p.value, took.Seconds())
	}

	s := e.one(t, "locksmith.load", req)
	if d := s.EndTime().Sub(s.StartTime()); d < took {
		t.Errorf("load span lasts %v; want at least the load's %v", d, took)
	}
	if got := s.Status().Code; got != codes.Unset {
		t.Errorf("load span status %v; want unset", got)
	}
	for k, want := range map[attribute.Key]string{
		lsotel.SourceKey: "fill", lsotel.NameKey: prefix, lsotel.BackgroundKey: "false", lsotel.AbsentKey: "false",
		errorType: "",
	} {
		if got := attr(s, k); got != want {
			t.Errorf("load span %s = %q; want %q", k, got, want)
		}
	}
	if n := len(e.spans.Ended()); n != 1 {
		t.Errorf("got %d spans; want only the load's", n)
	}
	e.assertNoKey(t, ms, key)
}

// upstreamError names its own error.type, as semconv's ErrorType reads it.
type upstreamError struct{ status int }

func (e *upstreamError) Error() string     { return fmt.Sprintf("upstream answered %d", e.status) }
func (e *upstreamError) ErrorType() string { return fmt.Sprint(e.status) }

// TestLoadError: a failing loader is a load with error.type, and a span
// with the error recorded and an error status.
func TestLoadError(t *testing.T) {
	e := newEnv(t, nil)
	c := e.cache(t, nil, nil)
	ctx, req := e.callerContext(t)
	const key = "user:42"
	boom := &upstreamError{status: 503}
	_, err := fill.Get(ctx, c, key, func(context.Context) (int, error) { return 0, boom })
	if !errors.Is(err, boom) {
		t.Fatalf("Get: got %v; want %v", err, boom)
	}

	ms := e.collect(t)
	only(t, ms, "locksmith.load.duration", fillSource, fillName,
		lsotel.BackgroundKey.Bool(false), lsotel.AbsentKey.Bool(false), errorType.String("503"))
	s := e.one(t, "locksmith.load", req)
	if got := s.Status(); got.Code != codes.Error || got.Description != boom.Error() {
		t.Errorf("load span status %+v; want error %q", got, boom.Error())
	}
	if got := attr(s, errorType); got != "503" {
		t.Errorf("load span error.type = %q; want 503", got)
	}
	var recorded bool
	for _, ev := range s.Events() {
		recorded = recorded || ev.Name == "exception"
	}
	if !recorded {
		t.Error("load span has no exception event")
	}
	e.assertNoKey(t, ms, key)
}

// TestLoadAbsent: a loader that says "not found" has an absence cached:
// a load with locksmith.absent, not an error.
func TestLoadAbsent(t *testing.T) {
	e := newEnv(t, nil)
	c := e.cache(t, nil, nil)
	ctx, req := e.callerContext(t)
	_, err := fill.Get(ctx, c, "gone", func(context.Context) (int, error) { return 0, fill.ErrNotFound })
	if !errors.Is(err, fill.ErrNotFound) {
		t.Fatalf("Get: got %v; want ErrNotFound", err)
	}
	ms := e.collect(t)
	only(t, ms, "locksmith.load.duration", fillSource, fillName,
		lsotel.BackgroundKey.Bool(false), lsotel.AbsentKey.Bool(true))
	s := e.one(t, "locksmith.load", req)
	if got := s.Status().Code; got != codes.Unset {
		t.Errorf("load span status %v; want unset", got)
	}
	if got := attr(s, lsotel.AbsentKey); got != "true" {
		t.Errorf("load span locksmith.absent = %q; want true", got)
	}
}

// TestWaitRemote: a server that finds another one loading waits for it: a
// miss, a remote wait and its span, child of the waiting caller's span.
func TestWaitRemote(t *testing.T) {
	e := newEnv(t, nil)
	s := miniredis.RunT(t)
	a := e.cache(t, s, nil)
	missed := make(chan struct{}, 1)
	b := e.cache(t, s, observe.Func(func(ctx context.Context, ev observe.Event) {
		e.obs.Handle(ctx, ev)
		if ev.Kind == observe.Miss {
			missed <- struct{}{}
		}
	}))
	ctx, _ := e.callerContext(t)
	const key = "timeline:1"
	release := make(chan struct{})
	loading := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		_, err := fill.Get(ctx, a, key, func(context.Context) (int, error) {
			close(loading)
			<-release
			return 1, nil
		})
		if err != nil {
			t.Errorf("Get on a: %v", err)
		}
	})
	<-loading
	bctx, waiter := e.tracer.Start(ctx, "waiter")
	got := make(chan error, 1)
	go func() {
		_, err := fill.Get(bctx, b, key, func(context.Context) (int, error) { return 2, nil })
		got <- err
	}()
	<-missed
	close(release)
	if err := <-got; err != nil {
		t.Fatalf("Get on b: %v", err)
	}
	wg.Wait()
	waiter.End()

	ms := e.collect(t)
	if p := only(t, ms, "locksmith.remote_wait.duration", fillSource, fillName); p.count != 1 {
		t.Errorf("remote_wait.duration count %d; want 1", p.count)
	}
	if got := with(ms, "locksmith.lookups", lsotel.ResultKey.String("miss")); got != 2 {
		t.Errorf("misses: got %v; want 2 (a's and b's)", got)
	}
	if p := ms["locksmith.load.duration"]; len(p) != 1 || p[0].count != 1 {
		t.Errorf("load.duration: got %v; want one load", p)
	}
	e.one(t, "locksmith.remote_wait", waiter)
	e.assertNoKey(t, ms, key)
}

// TestGetMany: a batch load records its size and duration, and makes a
// span with the size.
func TestGetMany(t *testing.T) {
	e := newEnv(t, nil)
	c := e.cache(t, nil, nil)
	ctx, req := e.callerContext(t)
	keys := []string{"k1", "k2", "k3"}
	m, err := fill.GetMany(ctx, c, keys, func(_ context.Context, keys []string) (map[string]int, error) {
		out := map[string]int{}
		for i, k := range keys {
			out[k] = i
		}
		return out, nil
	})
	if err != nil || len(m) != 3 {
		t.Fatalf("GetMany: got %v, %v; want 3 values", m, err)
	}
	ms := e.collect(t)
	if p := only(t, ms, "locksmith.batch.size", fillSource, fillName); p.count != 1 || p.value != 3 {
		t.Errorf("batch.size: got count %d, sum %v; want 1, 3", p.count, p.value)
	}
	if p := only(t, ms, "locksmith.batch.duration", fillSource, fillName); p.count != 1 {
		t.Errorf("batch.duration: got count %d; want 1", p.count)
	}
	if got := with(ms, "locksmith.lookups", lsotel.ResultKey.String("miss")); got != 3 {
		t.Errorf("misses: got %v; want 3", got)
	}
	// The batch loader's call is a load too.
	if p := ms["locksmith.load.duration"]; len(p) != 1 || p[0].count != 1 {
		t.Errorf("load.duration: got %v; want one load", p)
	}
	e.one(t, "locksmith.load", req)
	s := e.one(t, "locksmith.batch", req)
	if got := attr(s, lsotel.BatchSizeKey); got != "3" {
		t.Errorf("batch span size %q; want 3", got)
	}
	e.assertNoKey(t, ms, keys...)
}

// TestLookupSpans: with the option, hits and misses make instant spans.
func TestLookupSpans(t *testing.T) {
	e := newEnv(t, &lsotel.Options{LookupSpans: true})
	c := e.cache(t, nil, nil)
	ctx, req := e.callerContext(t)
	for range 2 {
		if _, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) { return 1, nil }); err != nil {
			t.Fatal(err)
		}
	}
	ss := e.ended("locksmith.lookup")
	if len(ss) != 2 {
		t.Fatalf("got %d lookup spans; want 2", len(ss))
	}
	var results []string
	for _, s := range ss {
		if s.Parent().SpanID() != req.SpanContext().SpanID() {
			t.Errorf("lookup span parent %v; want the caller's", s.Parent().SpanID())
		}
		results = append(results, attr(s, lsotel.ResultKey))
	}
	if got := strings.Join(results, ","); got != "miss,hit" {
		t.Errorf("lookup spans: got %s; want miss,hit", got)
	}
}

// TestSyntheticEvents feeds the kinds a Cache on miniredis cannot easily
// produce, from both sources.
func TestSyntheticEvents(t *testing.T) {
	e := newEnv(t, nil)
	ctx, req := e.callerContext(t)
	bud := func(k observe.Kind) observe.Event {
		return observe.Event{Kind: k, Source: "budget", Name: "twitter", Key: "secret-key"}
	}
	fil := func(k observe.Kind) observe.Event {
		return observe.Event{Kind: k, Source: "fill", Name: prefix, Key: "secret-key"}
	}
	budSource := []attribute.KeyValue{lsotel.SourceKey.String("budget"), lsotel.NameKey.String("twitter")}
	refused := errors.New("connection refused")
	events := []observe.Event{
		fil(observe.LocalHit), fil(observe.LocalHit), fil(observe.StaleHit), fil(observe.Invalidation),
		fil(observe.LeaseLost),
	}
	ev := bud(observe.BudgetWait)
	ev.Duration, ev.Background = 250*time.Millisecond, true
	events = append(events, ev)
	ev = fil(observe.BudgetWait)
	ev.Duration, ev.Err = time.Second, context.DeadlineExceeded
	events = append(events, ev)
	ev = bud(observe.Pause)
	ev.Duration = 15 * time.Minute
	events = append(events, ev)
	ev = fil(observe.FailOpen)
	ev.Err = &net.OpError{Op: "dial", Net: "tcp", Err: refused}
	events = append(events, ev)
	ev = fil(observe.OutageStart)
	ev.Err = &net.OpError{Op: "dial", Net: "tcp", Err: refused}
	events = append(events, ev, bud(observe.OutageStart))
	ev = fil(observe.OutageEnd)
	ev.Duration = 3 * time.Second
	events = append(events, ev)
	for _, ev := range events {
		e.obs.Handle(ctx, ev)
	}

	ms := e.collect(t)
	lookups := func(r string) float64 { return with(ms, "locksmith.lookups", lsotel.ResultKey.String(r)) }
	for _, c := range []struct {
		what      string
		got, want float64
	}{
		{"local hits", lookups("local_hit"), 2},
		{"stale hits", lookups("stale_hit"), 1},
		{"invalidations", with(ms, "locksmith.invalidations", fillSource), 1},
		{"lease losses", with(ms, "locksmith.lease_losses", fillSource), 1},
		{"pauses (budget)", with(ms, "locksmith.pauses", budSource...), 1},
		{"fail-opens", with(ms, "locksmith.fail_opens", fillSource, errorType.String("network")), 1},
		{"outages (fill)", with(ms, "locksmith.outages", fillSource, errorType.String("network")), 1},
		{"outages (budget)", with(ms, "locksmith.outages", budSource...), 1},
		{"active outages (fill)", with(ms, "locksmith.active_outages", fillSource), 0},
		{"active outages (budget)", with(ms, "locksmith.active_outages", budSource...), 1},
		{"outage seconds", with(ms, "locksmith.outage.duration", fillSource), 3},
		{"budget wait seconds (budget, background)", with(ms, "locksmith.budget_wait.duration",
			append(budSource, lsotel.BackgroundKey.Bool(true))...), 0.25},
		{"budget wait seconds (fill, timed out)", with(ms, "locksmith.budget_wait.duration",
			fillSource, lsotel.BackgroundKey.Bool(false), errorType.String("timeout")), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %v; want %v", c.what, c.got, c.want)
		}
	}

	waits := e.ended("locksmith.budget_wait")
	if len(waits) != 2 {
		t.Fatalf("got %d budget_wait spans; want 2", len(waits))
	}
	for _, s := range waits {
		if s.Parent().SpanID() != req.SpanContext().SpanID() {
			t.Errorf("budget_wait span parent %v; want the caller's", s.Parent().SpanID())
		}
		d := s.EndTime().Sub(s.StartTime())
		switch attr(s, lsotel.SourceKey) {
		case "budget":
			if d != 250*time.Millisecond {
				t.Errorf("budget's budget_wait span lasts %v; want 250ms", d)
			}
		case "fill":
			if d != time.Second || s.Status().Code != codes.Error || attr(s, errorType) != "timeout" {
				t.Errorf("fill's budget_wait span: %v, %v, error.type %q; want 1s, error, timeout",
					d, s.Status().Code, attr(s, errorType))
			}
		}
	}

	// Pauses, fail-opens and lost leases are events of the caller's span.
	req.End()
	s := e.one(t, "request", nil)
	var names []string
	for _, ev := range s.Events() {
		names = append(names, ev.Name)
	}
	if got, want := strings.Join(names, ","), "locksmith.lease_lost,locksmith.pause,locksmith.fail_open"; got != want {
		t.Errorf("events of the caller's span: got %s; want %s", got, want)
	}
	e.assertNoKey(t, ms, "secret-key")
}

// TestErrorType: the error.type of the errors a loader or Redis may give.
func TestErrorType(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{&upstreamError{status: 429}, "429"},
		{fmt.Errorf("upstream: %w", &upstreamError{status: 500}), "500"},
		{fmt.Errorf("fill: waiting: %w", context.DeadlineExceeded), "timeout"},
		{context.Canceled, "canceled"},
		{fill.ErrClosed, "closed"},
		{&budget.RateLimitedError{RetryAfter: time.Second}, "rate_limited"},
		{fmt.Errorf("wrapped: %w", &net.OpError{Op: "read", Net: "tcp", Err: errors.New("reset")}), "network"},
		{errors.New("boom"), "*errors.errorString"},
		{fmt.Errorf("load: %w", strconvError{}), "github.com/locksmith-go/locksmith/otel_test.strconvError"},
	} {
		t.Run(c.want, func(t *testing.T) {
			e := newEnv(t, nil)
			e.obs.Handle(context.Background(), observe.Event{Kind: observe.Load, Source: "fill", Name: prefix, Err: c.err})
			ms := e.collect(t)
			only(t, ms, "locksmith.load.duration", fillSource, fillName, lsotel.BackgroundKey.Bool(false),
				lsotel.AbsentKey.Bool(false), errorType.String(c.want))
		})
	}
}

// strconvError is an error type of a value receiver, named by its type.
type strconvError struct{}

func (strconvError) Error() string { return "bad number" }

// TestGlobalProviders: New(nil) uses the global providers, even those set
// after it.
func TestGlobalProviders(t *testing.T) {
	obs := lsotel.New(nil)
	reader, spans := sdkmetric.NewManualReader(), tracetest.NewSpanRecorder()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	gotel.SetMeterProvider(mp)
	gotel.SetTracerProvider(tp)
	t.Cleanup(func() {
		gotel.SetMeterProvider(metricnoop.NewMeterProvider())
		gotel.SetTracerProvider(tracenoop.NewTracerProvider())
		_ = mp.Shutdown(context.Background())
		_ = tp.Shutdown(context.Background())
	})
	obs.Handle(context.Background(), observe.Event{Kind: observe.Load, Source: "fill", Name: prefix, Duration: time.Millisecond})
	e := &env{obs: obs, reader: reader, spans: spans}
	ms := e.collect(t)
	if p := only(t, ms, "locksmith.load.duration", fillSource, fillName, lsotel.BackgroundKey.Bool(false),
		lsotel.AbsentKey.Bool(false)); p.count != 1 {
		t.Errorf("load.duration count %d; want 1", p.count)
	}
	e.one(t, "locksmith.load", nil)
}

// TestConcurrentNames: events from many goroutines and several caches land
// on their own series.
func TestConcurrentNames(t *testing.T) {
	e := newEnv(t, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 100 {
				name := fmt.Sprint("cache", (g+i)%3)
				e.obs.Handle(context.Background(), observe.Event{Kind: observe.Hit, Source: "fill", Name: name})
			}
		})
	}
	wg.Wait()
	ms := e.collect(t)
	if n := len(ms["locksmith.lookups"]); n != 3 {
		t.Errorf("got %d series; want 3", n)
	}
	if got := with(ms, "locksmith.lookups"); got != 800 {
		t.Errorf("got %v hits; want 800", got)
	}
}
