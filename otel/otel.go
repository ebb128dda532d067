// Package otel turns the events of locksmith's fill and budget packages
// into OpenTelemetry metrics and spans. Make one [Handler] per process and
// hand it to every cache and budget:
//
//	obs := otel.New(nil) // the global MeterProvider and TracerProvider
//	cache := fill.New(rdb, &fill.Options{Events: obs})
//
// Metrics carry the event's source ("fill" or "budget"), its name (the
// cache's prefix or the budget's name), and where it applies whether the
// work ran in the background and the type of its error. They never carry a
// key: keys have unbounded cardinality.
//
// Loads, waits for another server's load, budget waits and batch loads
// become spans, children of the span in the context of the call (for a
// load, the span of the first caller of the flight). The events arrive when
// the work is over, so each span is started back-dated by the event's
// duration and ended at once. Spans the loader starts itself are therefore
// children of the caller's span, siblings of the load span rather than its
// children. Fail-opens, lost leases and pauses are added as events to the
// span in the context; hits and misses make no span unless
// [Options.LookupSpans] asks.
package otel

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	gotel "go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/locksmith-go/locksmith/observe"
)

// ScopeName is the instrumentation scope of the meter and the tracer.
const ScopeName = "github.com/locksmith-go/locksmith/otel"

// The attribute keys, beside semconv's error.type.
const (
	// SourceKey is what reported the event: "fill" or "budget".
	SourceKey = attribute.Key("locksmith.source")
	// NameKey is the cache's prefix or the budget's name.
	NameKey = attribute.Key("locksmith.name")
	// ResultKey is the result of a lookup: "hit", "local_hit",
	// "stale_hit" or "miss".
	ResultKey = attribute.Key("locksmith.lookup.result")
	// BackgroundKey marks work no caller waited for: a refresh, or a
	// budget wait at Background priority.
	BackgroundKey = attribute.Key("locksmith.background")
	// AbsentKey marks a load that found the value absent: its error
	// wrapped fill.ErrNotFound, and the absence was cached.
	AbsentKey = attribute.Key("locksmith.absent")
	// BatchSizeKey is the number of keys of a batch load (spans only).
	BatchSizeKey = attribute.Key("locksmith.batch.size")
	// PauseKey is how long the upstream asked to pause, in seconds (span
	// events only).
	PauseKey = attribute.Key("locksmith.pause.duration")
)

// Options configure an [Handler].
type Options struct {
	// MeterProvider makes the instruments.
	// default: the global MeterProvider (otel.GetMeterProvider)
	MeterProvider metric.MeterProvider

	// TracerProvider makes the spans.
	// default: the global TracerProvider (otel.GetTracerProvider)
	TracerProvider trace.TracerProvider

	// LookupSpans, when true, also makes an instant span, named
	// "locksmith.lookup", for every hit, local hit, stale hit and miss. A
	// busy cache makes a great many: sample them.
	// default: false
	LookupSpans bool
}

// Handler is an [observe.Handler] that records events as OpenTelemetry
// metrics and spans. It is safe for concurrent use, and holds no
// goroutine: there is nothing to close.
type Handler struct {
	tracer      trace.Tracer
	lookupSpans bool

	lookups       metric.Int64Counter
	failOpens     metric.Int64Counter
	leaseLosses   metric.Int64Counter
	invalidations metric.Int64Counter
	pauses        metric.Int64Counter
	outages       metric.Int64Counter
	activeOutages metric.Int64UpDownCounter
	outageTime    metric.Float64Histogram
	loadTime      metric.Float64Histogram
	remoteWait    metric.Float64Histogram
	budgetWait    metric.Float64Histogram
	batchSize     metric.Int64Histogram
	batchTime     metric.Float64Histogram

	last  atomic.Pointer[series] // the series used last: most processes have one cache
	names sync.Map               // nameKey → *series
}

var _ observe.Handler = (*Handler)(nil)

// durationBounds are the histogram buckets of durations, in seconds: from a
// millisecond to the 120 s default of a fill lock's lease.
var durationBounds = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}

// outageBounds are the buckets of outage durations, in seconds.
var outageBounds = []float64{0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600}

// batchBounds are the buckets of batch sizes, in keys.
var batchBounds = []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000}

// New returns a Handler whose instruments and tracer come from opt's
// providers. A nil opt gives the defaults. An instrument the MeterProvider
// refuses is reported to the global error handler (otel.Handle) and
// records nothing; the Handler works without it.
func New(opt *Options) *Handler {
	var o Options
	if opt != nil {
		o = *opt
	}
	if o.MeterProvider == nil {
		o.MeterProvider = gotel.GetMeterProvider()
	}
	if o.TracerProvider == nil {
		o.TracerProvider = gotel.GetTracerProvider()
	}
	m := o.MeterProvider.Meter(ScopeName, metric.WithSchemaURL(semconv.SchemaURL))
	ob := &Handler{
		tracer:      o.TracerProvider.Tracer(ScopeName, trace.WithSchemaURL(semconv.SchemaURL)),
		lookupSpans: o.LookupSpans,
	}
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, err := m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	seconds := func(name, desc string, bounds []float64) metric.Float64Histogram {
		h, err := m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(bounds...))
		errs = append(errs, err)
		return h
	}
	ob.lookups = counter("locksmith.lookups", "{lookup}",
		"Lookups of a key, by result: hit (Redis), local_hit (in-process tier), stale_hit (served past its TTL) or miss.")
	ob.failOpens = counter("locksmith.fail_opens", "{call}",
		"Loader or budget calls made without Redis, which could not be reached.")
	ob.leaseLosses = counter("locksmith.lease_losses", "{lease}",
		"Fill locks whose lease was lost while their loader ran.")
	ob.invalidations = counter("locksmith.invalidations", "{value}",
		"Values the in-process tier dropped because another server replaced or deleted them.")
	ob.pauses = counter("locksmith.pauses", "{pause}",
		"Pauses the upstream asked for: a 429, a remaining count of 0, or PauseUntil.")
	ob.outages = counter("locksmith.outages", "{outage}",
		"Outages of Redis: times a call found it unreachable after it had answered.")
	var err error
	ob.activeOutages, err = m.Int64UpDownCounter("locksmith.active_outages", metric.WithUnit("{outage}"),
		metric.WithDescription("Outages of Redis in progress."))
	errs = append(errs, err)
	ob.outageTime = seconds("locksmith.outage.duration", "How long Redis was unreachable, recorded when it answers again.", outageBounds)
	ob.loadTime = seconds("locksmith.load.duration", "Duration of loader calls.", durationBounds)
	ob.remoteWait = seconds("locksmith.remote_wait.duration", "How long a flight waited for another server's load.", durationBounds)
	ob.budgetWait = seconds("locksmith.budget_wait.duration", "How long a call waited for its slot in a rate budget.", durationBounds)
	ob.batchTime = seconds("locksmith.batch.duration", "Duration of batch loader calls.", durationBounds)
	ob.batchSize, err = m.Int64Histogram("locksmith.batch.size", metric.WithUnit("{key}"),
		metric.WithDescription("Keys per batch loader call."), metric.WithExplicitBucketBoundaries(batchBounds...))
	errs = append(errs, err)
	for _, err := range errs {
		if err != nil {
			gotel.Handle(err)
		}
	}
	return ob
}

// Handle records e. It implements [observe.Handler].
func (o *Handler) Handle(ctx context.Context, e observe.Event) {
	s := o.series(e.Source, e.Name)
	err, absent := e.Err, false
	if e.Kind == observe.Load && isAbsent(err) {
		err, absent = nil, true
	}
	var et attribute.KeyValue // error.type, or none
	if err != nil {
		et = semconv.ErrorTypeKey.String(errorType(err))
	}
	switch e.Kind {
	case observe.Hit, observe.LocalHit, observe.StaleHit, observe.Miss:
		r := lookupIndex(e.Kind)
		o.lookups.Add(ctx, 1, s.lookup[r].add...)
		if o.lookupSpans {
			_, span := o.tracer.Start(ctx, "locksmith.lookup", trace.WithSpanKind(trace.SpanKindInternal),
				trace.WithAttributes(s.lookupAttrs[r]...))
			span.End()
		}
	case observe.Load:
		o.loadTime.Record(ctx, e.Duration.Seconds(), s.load[b2i(e.Background)][b2i(absent)].with(et).rec...)
		o.span(ctx, "locksmith.load", e.Duration, err, s.attrs(et, BackgroundKey.Bool(e.Background), AbsentKey.Bool(absent)))
	case observe.WaitRemote:
		o.remoteWait.Record(ctx, e.Duration.Seconds(), s.plain.with(et).rec...)
		o.span(ctx, "locksmith.remote_wait", e.Duration, err, s.attrs(et))
	case observe.BudgetWait:
		o.budgetWait.Record(ctx, e.Duration.Seconds(), s.budget[b2i(e.Background)].with(et).rec...)
		o.span(ctx, "locksmith.budget_wait", e.Duration, err, s.attrs(et, BackgroundKey.Bool(e.Background)))
	case observe.Batch:
		m := s.plain.with(et)
		o.batchSize.Record(ctx, int64(e.N), m.rec...)
		o.batchTime.Record(ctx, e.Duration.Seconds(), m.rec...)
		o.span(ctx, "locksmith.batch", e.Duration, err, s.attrs(et, BatchSizeKey.Int(e.N)))
	case observe.Pause:
		o.pauses.Add(ctx, 1, s.plain.add...)
		spanEvent(ctx, "locksmith.pause", s, et, PauseKey.Float64(e.Duration.Seconds()))
	case observe.FailOpen:
		o.failOpens.Add(ctx, 1, s.plain.with(et).add...)
		spanEvent(ctx, "locksmith.fail_open", s, et)
	case observe.LeaseLost:
		o.leaseLosses.Add(ctx, 1, s.plain.add...)
		spanEvent(ctx, "locksmith.lease_lost", s, et)
	case observe.Invalidation:
		o.invalidations.Add(ctx, 1, s.plain.add...)
	case observe.OutageStart:
		o.outages.Add(ctx, 1, s.plain.with(et).add...)
		o.activeOutages.Add(ctx, 1, s.plain.add...)
	case observe.OutageEnd:
		o.activeOutages.Add(ctx, -1, s.plain.add...)
		o.outageTime.Record(ctx, e.Duration.Seconds(), s.plain.rec...)
	}
}

// span records work that ended now after d as a span, child of the span in
// ctx, with err recorded on it.
func (o *Handler) span(ctx context.Context, name string, d time.Duration, err error, attrs []attribute.KeyValue) {
	end := time.Now()
	_, span := o.tracer.Start(ctx, name, trace.WithTimestamp(end.Add(-d)),
		trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(attrs...))
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End(trace.WithTimestamp(end))
}

// spanEvent adds an event to the span in ctx, if it records.
func spanEvent(ctx context.Context, name string, s *series, et attribute.KeyValue, extra ...attribute.KeyValue) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.AddEvent(name, trace.WithAttributes(s.attrs(et, extra...)...))
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// The lookup results, in the order of series.lookup.
var lookupResults = [...]string{"hit", "local_hit", "stale_hit", "miss"}

func lookupIndex(k observe.Kind) int {
	switch k {
	case observe.LocalHit:
		return 1
	case observe.StaleHit:
		return 2
	case observe.Miss:
		return 3
	}
	return 0
}

type nameKey struct{ source, name string }

// series holds the measurement options of one source and name, built once:
// a measurement with a ready attribute set costs no allocation.
type series struct {
	nameKey
	base        []attribute.KeyValue // source and name
	plain       measure
	lookup      [len(lookupResults)]measure
	lookupAttrs [len(lookupResults)][]attribute.KeyValue
	load        [2][2]measure // [background][absent]
	budget      [2]measure    // [background]
}

// series returns the series of source and name, making it on first use.
func (o *Handler) series(source, name string) *series {
	if s := o.last.Load(); s != nil && s.source == source && s.name == name {
		return s
	}
	k := nameKey{source, name}
	v, ok := o.names.Load(k)
	if !ok {
		v, _ = o.names.LoadOrStore(k, newSeries(k))
	}
	s := v.(*series)
	o.last.Store(s)
	return s
}

func newSeries(k nameKey) *series {
	s := &series{nameKey: k, base: []attribute.KeyValue{SourceKey.String(k.source), NameKey.String(k.name)}}
	s.plain = s.measure()
	for i, r := range lookupResults {
		s.lookup[i] = s.measure(ResultKey.String(r))
		s.lookupAttrs[i] = s.attrs(attribute.KeyValue{}, ResultKey.String(r))
	}
	for bg := range 2 {
		for absent := range 2 {
			s.load[bg][absent] = s.measure(BackgroundKey.Bool(bg == 1), AbsentKey.Bool(absent == 1))
		}
		s.budget[bg] = s.measure(BackgroundKey.Bool(bg == 1))
	}
	return s
}

// attrs returns the series' attributes with extra and et (error.type,
// unless it is the zero KeyValue), in a new slice.
func (s *series) attrs(et attribute.KeyValue, extra ...attribute.KeyValue) []attribute.KeyValue {
	a := make([]attribute.KeyValue, 0, len(s.base)+len(extra)+1)
	a = append(append(a, s.base...), extra...)
	if et.Key != "" {
		a = append(a, et)
	}
	return a
}

// measure returns the options of a measurement with the series'
// attributes and extra.
func (s *series) measure(extra ...attribute.KeyValue) measure {
	m := metric.WithAttributeSet(attribute.NewSet(s.attrs(attribute.KeyValue{}, extra...)...))
	return measure{add: []metric.AddOption{m}, rec: []metric.RecordOption{m}}
}

// measure is one attribute set as the options of an Add and of a Record,
// ready to pass without an allocation.
type measure struct {
	add []metric.AddOption
	rec []metric.RecordOption
}

// with returns m with et (error.type) added, or m when et is the zero
// KeyValue. Errors are rare: their options are built on the spot.
func (m measure) with(et attribute.KeyValue) measure {
	if et.Key == "" {
		return m
	}
	e := metric.WithAttributes(et)
	return measure{
		add: append(m.add[:len(m.add):len(m.add)], e),
		rec: append(m.rec[:len(m.rec):len(m.rec)], e),
	}
}
