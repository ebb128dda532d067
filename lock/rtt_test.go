package lock_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/lock"
)

// roundTrips counts the commands and pipelines a client sends.
type roundTrips struct{ n atomic.Int64 }

func (h *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.n.Add(1); return next(ctx, cmd) }
}
func (h *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.n.Add(1); return next(ctx, cmds) }
}

// TestOneRoundTripEach: once the scripts are loaded in Redis, an
// uncontended Obtain and a Release cost one round trip each.
func TestOneRoundTripEach(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	rt := &roundTrips{}
	rdb.AddHook(rt)
	l := lock.New(rdb, nil)
	t.Cleanup(func() { _ = l.Close() })
	ctx := redistest.Context(t, 20*time.Second)
	// The first use loads the scripts (a NOSCRIPT reply, then EVAL).
	warm, err := l.Obtain(ctx, "warm")
	if err != nil {
		t.Fatal(err)
	}
	if err := warm.Release(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		before := rt.n.Load()
		k, err := l.Obtain(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		if n := rt.n.Load() - before; n != 1 {
			t.Errorf("Obtain %d: %d round trips; want 1", i, n)
		}
		before = rt.n.Load()
		if err := k.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if n := rt.n.Load() - before; n != 1 {
			t.Errorf("Release %d: %d round trips; want 1", i, n)
		}
	}
}
