package fill_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestFleetLostQueueEntryQueuedAgain: keys handed off to the fleet's
// gatherer whose queue entries are lost while their locks survive (a
// failover to a replica the hand-off had not reached, the queue evicted or
// deleted) are queued again by their claimer, and go out together, in one
// loader call, each key once, within a few seconds. The claimer kept the
// claims' leases and its waiters waited behind them: nobody loaded the
// keys until the flights' LoadTimeout (10 minutes) ended. Keys whose
// entries are still queued are left to the gatherer, however long they
// wait. Real redis-server: the leases run out in real time.
func TestFleetLostQueueEntryQueuedAgain(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	audits := &auditCalls{}
	rdb.AddHook(audits)
	c := newCache(t, rdb, &fill.Options{LockTTL: time.Second, PollInterval: 50 * time.Millisecond})
	var mu sync.Mutex
	var calls [][]string
	load := func(_ context.Context, keys []string) (map[string]string, error) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, keys)
		m := map[string]string{}
		for _, k := range keys {
			m[k] = "v:" + k
		}
		return m, nil
	}
	bt := fill.NewBatcher(c, load, &fill.BatchOptions{FleetWide: true, Name: "lost", Window: 2 * time.Millisecond})
	ctx := redistest.Context(t, 30*time.Second)
	const (
		leaseKey = "__locksmith:{batch:lost}:gatherer"
		queue    = "__locksmith:{batch:lost}:queue"
	)
	// Another server gathers, and pops nothing: the keys stay queued.
	if err := rdb.Set(ctx, leaseKey, "another", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	keys := []string{"a", "b", "c"}
	got := make(chan error, len(keys))
	for _, key := range keys {
		go func() {
			v, err := bt.Get(ctx, key)
			if err == nil && v != "v:"+key {
				err = &unexpectedValue{v}
			}
			got <- err
		}()
	}
	redistest.WaitFor(t, "the keys queued", func() bool { return rdb.ZCard(ctx, queue).Val() == int64(len(keys)) })
	// Audited while queued (the audits begin with the hand-off): left
	// queued, their locks held, nothing loaded.
	redistest.WaitFor(t, "an audit", func() bool { return audits.n.Load() >= 1 })
	if n := rdb.ZCard(ctx, queue).Val(); n != int64(len(keys)) {
		t.Fatalf("%d keys queued after the audit; want %d", n, len(keys))
	}
	for _, key := range keys {
		if n := rdb.Exists(ctx, lease.LockKey(fill.DefaultPrefix, key)).Val(); n != 1 {
			t.Fatalf("the lock of %s, still queued, was released", key)
		}
	}
	mu.Lock()
	n := len(calls)
	mu.Unlock()
	if n != 0 {
		t.Fatalf("keys still queued were loaded: %d loader calls", n)
	}
	// A failover to a replica that had neither the queue nor the lease.
	if err := rdb.Del(ctx, queue, leaseKey).Err(); err != nil {
		t.Fatal(err)
	}
	for range keys {
		if err := <-got; err != nil {
			t.Fatalf("Get after the queue was lost: %v", err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 1 || len(calls[0]) != len(keys) {
		t.Errorf("loader calls %q; want one, for the %d keys queued again together", calls, len(keys))
	}
}

type unexpectedValue struct{ v string }

func (e *unexpectedValue) Error() string { return "got " + e.v }

// auditCalls counts the gather script's audits (mode 'a') that completed.
type auditCalls struct{ n atomic.Int32 }

func (h *auditCalls) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *auditCalls) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		// EVALSHA sha 3 lease queue loading token lease ttl mode ...
		if a := cmd.Args(); len(a) > 9 && err == nil {
			if k, _ := a[3].(string); strings.HasSuffix(k, ":gatherer") && a[9] == "a" {
				h.n.Add(1)
			}
		}
		return err
	}
}
func (h *auditCalls) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
