package fill

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/codec"
	"github.com/locksmith-go/locksmith/internal/envelope"
	"github.com/locksmith-go/locksmith/internal/flight"
	"github.com/locksmith-go/locksmith/internal/redisx"
	"github.com/locksmith-go/locksmith/observe"
)

// What one key's call shares with a batch's, whichever of Get, GetMany or
// Batcher.Get made it: the checks it starts with, its flight, the typed
// operations, a value found, and a value loaded made into an entry.

// flightKey tells flights apart by key and by the type loaded: two calls for
// one key with different types each decode their own value.
type flightKey struct {
	key string
	typ reflect.Type
}

// outcome is how a flight or a load ended.
type outcome struct {
	val      any
	err      error
	panicked *PanicError
}

func (o outcome) landed() flight.Outcome {
	if o.panicked != nil {
		return flight.Outcome{Panic: o.panicked}
	}
	return flight.Outcome{Val: o.val, Err: o.err}
}

// ops are the typed operations of one Get call or batch, erased to any so
// the flight machinery is not generic. load loads one key.
type ops struct {
	typ    reflect.Type
	load   func(ctx context.Context, key string) (any, error)
	decode func([]byte) (any, error)
}

// typedOps returns the ops of type T, decoding with cdc, loading with load.
func typedOps[T any](cdc codec.Codec, load func(ctx context.Context, key string) (any, error)) ops {
	return ops{
		typ:  reflect.TypeFor[T](),
		load: load,
		decode: func(b []byte) (any, error) {
			var v T
			err := cdc.Unmarshal(b, &v)
			return v, err
		},
	}
}

// job is what one key's flight works on: the key's Redis keys (ks.name is
// the key), the options of the call that started it, and its typed ops.
type job struct {
	ks keyset
	cl callOptions
	o  ops
}

// load runs the job's loader for its key.
func (j *job) load(ctx context.Context) (any, error) { return j.o.load(ctx, j.ks.name) }

// loader is j's loader call, not made once the Cache is closing: a key
// claimed as Close began is released (see leader.settle) for another
// server to load, not loaded with an ended ctx.
func (c *Cache) loader(j *job) func(context.Context) (any, error) {
	return func(ctx context.Context) (any, error) {
		if c.base.Err() != nil {
			return nil, errNotStarted
		}
		return j.load(ctx)
	}
}

// begin makes the checks every call of Get, GetMany and Batcher.Get starts
// with, in this order: a loader (noLoader: there is none; what names the
// call), a ctx not ended, a Cache that can work.
func begin(ctx context.Context, c *Cache, noLoader bool, what string) error {
	if noLoader {
		return fmt.Errorf("fill: %s with a nil loader", what)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return c.check()
}

// call is one key's call of Get or Batcher.Get once begin passed: the
// in-process tier, else the key's flight, which lead starts when this call
// leads it, waited for with the caller's ctx.
func call[T any](ctx context.Context, c *Cache, key string, lead func(f *flight.Call)) (T, error) {
	var zero T
	if c.local != nil {
		if t, err, ok := fromLocal[T](ctx, c, key); ok {
			return t, err
		}
	}
	f, leader, err := c.join(key, reflect.TypeFor[T]())
	if err != nil {
		return zero, ErrClosed
	}
	if leader {
		lead(f)
	}
	return await[T](ctx, c, key, f)
}

// join joins key's flight for type typ, as its leader if it is new;
// joining one already running is a local merge.
func (c *Cache) join(key string, typ reflect.Type) (*flight.Call, bool, error) {
	f, leader, err := c.flights.Join(flightKey{key: key, typ: typ})
	if err == nil && !leader {
		c.stats.localMerges.Add(1)
	}
	return f, leader, err
}

// await waits with ctx for key's flight f.
func await[T any](ctx context.Context, c *Cache, key string, f *flight.Call) (T, error) {
	v, err := f.Wait(ctx)
	if err != nil {
		var zero T
		return zero, c.gaveUp(ctx, key, err)
	}
	t, _ := v.(T)
	return t, nil
}

// gaveUp returns the error of a caller whose wait for key's flight ended
// with err: when the caller's ctx ended while the fleet's budget is paused,
// err wrapped together with [budget.ErrRateLimited], so that the caller can
// tell a rate-limit stall from a slow upstream.
func (c *Cache) gaveUp(ctx context.Context, key string, err error) error {
	if b := c.budget(ctx); b != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) && b.Paused() {
		return fmt.Errorf("fill: %s: %w while the upstream rate-limits: %w", redisx.Quote(key), err, budget.ErrRateLimited)
	}
	return err
}

// hit counts and reports a fresh value (or absence) read from Redis, and
// keeps it in the in-process tier.
func (c *Cache) hit(ctx context.Context, key string, l *look) {
	c.stats.hits.Add(1)
	c.event(ctx, observe.Event{Kind: observe.Hit, Key: key})
	c.keepLocal(key, l)
}

// served returns the outcome of a flight whose first look l found a value
// to serve at once: fresh, or stale within its window (its refresh started
// when l claimed it). ok is false when l found none.
func (c *Cache) served(ctx context.Context, j *job, l *look) (out flight.Outcome, ok bool) {
	switch {
	case l.err == nil && l.r.state == found:
		c.hit(ctx, j.ks.name, l)
		return flight.Outcome{Val: l.val, Err: l.valErr}, true
	case c.servable(l):
		c.serveStale(ctx, j, l)
		return flight.Outcome{Val: l.val}, true
	}
	return flight.Outcome{}, false
}

// entryOf encodes the value v loaded for key (claimed, its load took took)
// into an entry, and returns the value the callers get: v as the codec
// returns it. An error says v does not survive the codec.
func (c *Cache) entryOf(key string, o ops, claimed *look, v any, took time.Duration) (entry []byte, val any, err error) {
	payload, val, err := c.encode(key, o, v)
	if err != nil {
		return nil, nil, err
	}
	entry = envelope.Encode(nil, envelope.Entry{CreatedAt: c.createdAt(claimed), LoadDuration: sinceClaim(claimed, took),
		StaleWindow: c.opt.window(), Type: typeTag(o.typ), Replaced: claimed.replaced, Payload: payload}, c.opt.CompressAbove)
	return entry, val, nil
}

// sinceClaim is an entry's LoadDuration: the time from its claim to its
// value, the load (took) and its waits for the budget's slot and after its
// 429s included. XFetch weighs it as the time a refresh takes, and a
// reader adds it to CreatedAt to place the store (see storedTTL).
func sinceClaim(claimed *look, took time.Duration) time.Duration {
	if claimed.sent.IsZero() {
		return took
	}
	return max(took, time.Since(claimed.sent))
}

// absentEntry is the entry of an absence found by a load.
func (c *Cache) absentEntry(o ops, claimed *look, took time.Duration) []byte {
	return envelope.Encode(nil, envelope.Entry{Absent: true, CreatedAt: c.createdAt(claimed), LoadDuration: sinceClaim(claimed, took),
		Type: typeTag(o.typ)}, 0)
}
