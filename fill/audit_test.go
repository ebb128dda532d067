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

// TestFleetLostQueueEntryTakenBack: a key handed off to the fleet's
// gatherer whose queue entry is lost while its lock survives (a failover to
// a replica the hand-off had not reached, the queue evicted or deleted) is
// taken back by its claimer and loaded, once, within a few seconds. The
// claimer kept the claim's lease and its waiters waited behind it: nobody
// loaded the key until the flight's LoadTimeout (10 minutes) ended. A key
// whose entry is still queued is left to the gatherer, however long it
// waits there. Real redis-server: the leases run out in real time.
func TestFleetLostQueueEntryTakenBack(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	audits := &auditCalls{}
	rdb.AddHook(audits)
	c := newCache(t, rdb, &fill.Options{LockTTL: time.Second, PollInterval: 50 * time.Millisecond})
	var mu sync.Mutex
	calls := map[string]int{}
	load := func(_ context.Context, keys []string) (map[string]string, error) {
		mu.Lock()
		defer mu.Unlock()
		m := map[string]string{}
		for _, k := range keys {
			calls[k]++
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
	// Another server gathers, and pops nothing: the key stays queued.
	if err := rdb.Set(ctx, leaseKey, "another", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		v, err := bt.Get(ctx, "k")
		if err == nil && v != "v:k" {
			err = &unexpectedValue{v}
		}
		got <- err
	}()
	redistest.WaitFor(t, "the key queued", func() bool { return rdb.ZCard(ctx, queue).Val() == 1 })
	// Audited while queued (the audits begin with the hand-off): left
	// queued, its lock held, nothing loaded.
	redistest.WaitFor(t, "an audit", func() bool { return audits.n.Load() >= 1 })
	if n := rdb.ZCard(ctx, queue).Val(); n != 1 {
		t.Fatalf("%d keys queued after the audits; want the key still there", n)
	}
	if n := rdb.Exists(ctx, lease.LockKey(fill.DefaultPrefix, "k")).Val(); n != 1 {
		t.Fatal("the lock of a key still queued was released")
	}
	mu.Lock()
	n := calls["k"]
	mu.Unlock()
	if n != 0 {
		t.Fatalf("a key still queued was loaded %d times", n)
	}
	// The queue is lost; the other gatherer lives on.
	if err := rdb.Del(ctx, queue).Err(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("Get after the queue was lost: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if n := calls["k"]; n != 1 {
		t.Errorf("the key was loaded %d times; want once", n)
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
