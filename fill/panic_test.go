package fill_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/codec"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/observe"
)

// panicEvents records the Load events whose error is a loader panic.
type panicEvents struct {
	mu     sync.Mutex
	panics []observe.Event
}

func (p *panicEvents) Handle(_ context.Context, e observe.Event) {
	var pe *fill.PanicError
	if e.Kind == observe.Load && errors.As(e.Err, &pe) {
		p.mu.Lock()
		p.panics = append(p.panics, e)
		p.mu.Unlock()
	}
}

func (p *panicEvents) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.panics)
}

// TestBackgroundRefreshPanic: a loader that panics in a background refresh
// (StaleWhileRevalidate, EarlyRefresh) does not take the process down: it
// is a failed refresh, counted, logged with its stack, seen by the
// events handler, backed off, and its lock released.
func TestBackgroundRefreshPanic(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  fill.Options
	}{
		{"stale while revalidate", fill.Options{StaleWhileRevalidate: time.Hour, StaleIfError: time.Hour}},
		{"early refresh", fill.Options{EarlyRefresh: true, StaleIfError: time.Hour}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, rdb := redistest.Mini(t)
			var obs panicEvents
			var logs redistest.Buffer
			opt := tc.opt
			opt.TTL, opt.Jitter, opt.Events = 10*time.Second, -1, &obs
			opt.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			c := newCache(t, rdb, &opt)
			ctx := redistest.Context(t, 20*time.Second)
			var panicking atomic.Bool
			load := func(context.Context) (int, error) {
				if panicking.Load() {
					panic("refresh boom")
				}
				time.Sleep(20 * time.Millisecond) // a load duration for XFetch
				return 1, nil
			}
			if _, err := fill.Get(ctx, c, "k", load); err != nil {
				t.Fatal(err)
			}
			panicking.Store(true)
			if opt.EarlyRefresh {
				m.FastForward(10*time.Second - time.Millisecond) // fresh for 1ms more
			} else {
				m.FastForward(11 * time.Second)
			}
			redistest.WaitFor(t, "a refresh to panic", func() bool {
				if v, err := fill.Get(ctx, c, "k", load); err != nil || v != 1 {
					t.Fatalf("got %v, %v; want the old value", v, err)
				}
				return obs.count() > 0
			})
			redistest.WaitFor(t, "the panic logged", func() bool { return strings.Contains(logs.String(), "refresh boom") })
			if n := c.Stats().RefreshErrors; n != 1 {
				t.Errorf("RefreshErrors = %d; want 1", n)
			}
			if m.Exists("__locksmith:{k}") {
				t.Error("the refresh's lock is still held")
			}
			if !m.Exists("__locksmith:{k}:backoff") {
				t.Error("no back-off after the failed refresh")
			}
			if e := obs.panics[0]; !e.Background {
				t.Error("the panic's Load event is not marked Background")
			}
			if s := logs.String(); !strings.Contains(s, "panic_test.go") {
				t.Errorf("log %q: want the panic and its stack", s)
			}
		})
	}
}

// panicCodec panics in Marshal, or in Unmarshal, when asked to.
type panicCodec struct{ marshal, unmarshal atomic.Bool }

func (p *panicCodec) Marshal(v any) ([]byte, error) {
	if p.marshal.Load() {
		panic("marshal boom")
	}
	return codec.MsgPack.Marshal(v)
}

func (p *panicCodec) Unmarshal(b []byte, v any) error {
	if p.unmarshal.Load() {
		panic("unmarshal boom")
	}
	return codec.MsgPack.Unmarshal(b, v)
}

// TestCodecPanic: a codec that panics, on a goroutine of the library, is
// an error for the callers (Marshal: the value does not survive the codec;
// Unmarshal: the entry cannot be read), never a crash.
func TestCodecPanic(t *testing.T) {
	_, rdb := redistest.Mini(t)
	cdc := &panicCodec{}
	c := newCache(t, rdb, &fill.Options{Codec: cdc})
	ctx := redistest.Context(t, 20*time.Second)
	cdc.marshal.Store(true)
	load := func(context.Context) (int, error) { return 1, nil }
	if _, err := fill.Get(ctx, c, "k", load); err == nil || !strings.Contains(err.Error(), "marshal boom") {
		t.Fatalf("Get: %v; want an error naming the codec's panic", err)
	}
	many := func(_ context.Context, keys []string) (map[string]int, error) { return map[string]int{keys[0]: 1}, nil }
	if _, err := fill.GetMany(ctx, c, []string{"m"}, many); err == nil || !strings.Contains(err.Error(), "marshal boom") {
		t.Fatalf("GetMany: %v; want an error naming the codec's panic", err)
	}
	cdc.marshal.Store(false)
	if _, err := fill.Get(ctx, c, "k", load); err != nil {
		t.Fatal(err)
	}
	cdc.unmarshal.Store(true)
	before := c.Stats().Corrupt
	_, err := fill.Get(ctx, c, "k", load)
	if err == nil || c.Stats().Corrupt == before {
		t.Fatalf("Get: %v, Corrupt %d; want an error and the entry counted unreadable", err, c.Stats().Corrupt)
	}
}

// TestObserverPanic: an events handler that panics on a goroutine of the library
// (a flight's, a refresh's) does not take the process down; the panic is
// logged with its stack.
func TestObserverPanic(t *testing.T) {
	_, rdb := redistest.Mini(t)
	var logs redistest.Buffer
	obs := observe.Func(func(_ context.Context, e observe.Event) {
		if e.Kind == observe.Load {
			panic("observer boom")
		}
	})
	c := newCache(t, rdb, &fill.Options{Events: obs, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	ctx := redistest.Context(t, 20*time.Second)
	v, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) { return 1, nil })
	if err != nil || v != 1 {
		t.Fatalf("got %v, %v", v, err)
	}
	if s := logs.String(); !strings.Contains(s, "observer boom") || !strings.Contains(s, "panic_test.go") {
		t.Errorf("log %q: want the panic and its stack", s)
	}
}
