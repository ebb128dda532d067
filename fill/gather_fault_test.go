package fill_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// gatherMode returns the mode of a gather script call (see gather.lua),
// or "" for another command.
func gatherMode(cmd redis.Cmder) string {
	a := cmd.Args()
	if len(a) < 10 || (cmd.Name() != "evalsha" && cmd.Name() != "eval") {
		return ""
	}
	if k, _ := a[3].(string); fmt.Sprint(a[2]) != "3" || !strings.HasSuffix(k, ":gatherer") {
		return ""
	}
	m, _ := a[9].(string)
	return m
}

// failPop fails the next pop of its client's gatherer once armed, without
// sending it, and counts the pops that succeed after that.
type failPop struct {
	armed, failed atomic.Bool
	after         atomic.Int32
}

func (h *failPop) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *failPop) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *failPop) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if gatherMode(cmd) != "g" {
			return next(ctx, cmd)
		}
		if h.armed.CompareAndSwap(true, false) {
			h.failed.Store(true)
			err := errors.New("i/o timeout (injected)")
			cmd.SetErr(err)
			return err
		}
		err := next(ctx, cmd)
		if err == nil && h.failed.Load() {
			h.after.Add(1)
		}
		return err
	}
}

// joinGatherer makes gatherer the fleet's gatherer (a Get of its own, with
// mine, takes the lease) and has other Get key, until the gatherer's loader,
// loads, is called for it. It returns the outcome of other's Get, once
// there: an error unless the value is key's.
func joinGatherer(t *testing.T, ctx, mine context.Context, rdb *redis.Client, gatherer *fill.Batcher[string],
	loads *batchLoader, other *fill.Batcher[string], key string) <-chan error {
	t.Helper()
	go func() { _, _ = gatherer.Get(mine, "g:"+key) }()
	redistest.WaitFor(t, "the gatherer's lease", func() bool {
		return rdb.Exists(ctx, "__locksmith:{batch:users}:gatherer").Val() == 1
	})
	got := make(chan error, 1)
	go func() {
		v, err := other.Get(ctx, key)
		if err == nil && v != "v:"+key {
			err = errors.New("got " + v)
		}
		got <- err
	}()
	redistest.WaitFor(t, "the gatherer's loader called for "+key, func() bool {
		_, keys := loads.loaded()
		return slices.Contains(keys, key)
	})
	return got
}

// TestFleetWideFailedPopMidBatch: a pop that fails while the gatherer's
// batch loads (a timeout, a failover) does not end its loop, which would
// leave its lease to run out and another server to take the batch over
// and load its keys again: the next pop renews the lease, and each key is
// loaded once.
func TestFleetWideFailedPopMidBatch(t *testing.T) {
	s := redistest.Start(t, nil)
	hook := &failPop{}
	grdb := s.Client(t, nil)
	grdb.AddHook(hook)
	bo := fill.BatchOptions{Name: "users", Window: 10 * time.Millisecond}
	gatherer, gLoads, _ := fleetBatchers(t, []redis.UniversalClient{grdb}, nil, bo, 0)
	gLoads[0].gate = make(chan struct{})
	other, oLoads, _ := fleetBatchers(t, []redis.UniversalClient{s.Client(t, nil)}, nil, bo, 0)
	ctx := redistest.Context(t, 30*time.Second)
	// The gatherer's own caller leaves: only the other server waits.
	left, leave := context.WithCancel(ctx)
	got := joinGatherer(t, ctx, left, s.Client(t, nil), gatherer[0], gLoads[0], other[0], "k1")
	leave()
	hook.armed.Store(true)
	redistest.WaitFor(t, "the armed pop", func() bool { return hook.failed.Load() })
	redistest.WaitFor(t, "a pop that succeeds after the failed one", func() bool { return hook.after.Load() > 0 })
	close(gLoads[0].gate)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if n, keys := oLoads[0].loaded(); n != 0 {
		t.Errorf("the other server loaded %q again; want the gatherer's batch loaded once", keys)
	}
}

// TestFleetWideHandOffTakesLapsedLease: a server whose hand-off finds the
// gatherer's lease free (its gatherer cut off, the lease run out) takes
// over the loading list the gatherer left, as a pop that takes the lease
// does: a key the dead gatherer had popped is loaded, not left waiting
// for LoadTimeout.
func TestFleetWideHandOffTakesLapsedLease(t *testing.T) {
	s := redistest.Start(t, nil)
	p := redistest.NewProxy(t, s.Addr())
	bo := fill.BatchOptions{Name: "users", Window: 10 * time.Millisecond}
	dead, deadLoads, _ := fleetBatchers(t, []redis.UniversalClient{cutOffClient(p)}, nil, bo, 0)
	deadLoads[0].gate = make(chan struct{})
	defer close(deadLoads[0].gate)
	live, liveLoads, _ := fleetBatchers(t, []redis.UniversalClient{s.Client(t, nil), s.Client(t, nil)}, nil, bo, 0)
	ctx := redistest.Context(t, 30*time.Second)
	rdb := s.Client(t, nil)
	gone, giveUp := context.WithCancel(ctx)
	defer giveUp()
	got := joinGatherer(t, ctx, gone, rdb, dead[0], deadLoads[0], live[0], "b1")
	// The gatherer is cut off; its lease runs out now, and the next
	// server to miss a key hands it off at once.
	giveUp()
	p.Refuse(true)
	p.DropAll()
	if err := rdb.Del(ctx, "__locksmith:{batch:users}:gatherer").Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := live[1].Get(ctx, "c0"); err != nil || v != "v:c0" {
		t.Fatalf("c0: %q, %v", v, err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("b1, popped by the gatherer cut off, was not loaded within 10s")
	}
	_, loaded := fleetLoads(liveLoads)
	if !slices.Contains(loaded, "b1") {
		t.Errorf("the live servers loaded %q; want b1 among them", loaded)
	}
}

// TestFleetWideLoaderGoexit: a gatherer whose loader calls runtime.Goexit
// fails its keys and takes them off the fleet's loading list: the
// gatherer quits once idle, rather than pop every Window for as long as
// the list lives.
func TestFleetWideLoaderGoexit(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := newCache(t, rdb, nil)
	bt := fill.NewBatcher(c, func(context.Context, []string) (map[string]string, error) {
		runtime.Goexit()
		return nil, nil
	}, &fill.BatchOptions{FleetWide: true, Name: "gx", Window: time.Millisecond})
	ctx := redistest.Context(t, 10*time.Second)
	if _, err := bt.Get(ctx, "k"); err == nil {
		t.Fatal("Get succeeded; want the loader's Goexit as an error")
	}
	redistest.WaitFor(t, "the gatherer to quit, its loading list empty", func() bool {
		n, err := rdb.Exists(context.Background(), "__locksmith:{batch:gx}:gatherer", "__locksmith:{batch:gx}:loading").Result()
		return err == nil && n == 0
	})
}
