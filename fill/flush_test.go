package fill_test

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestFleetWideFlushAll: a FLUSHALL while a fleet batch loads and keys wait
// in the queue behind it takes the locks, the queue, the loading list and
// the gatherer's lease at once. It costs at most one more load of a key,
// never a wait: every Get ends with its value within a few PollIntervals
// (not at the flights' LoadTimeout), the batch that was loading settles
// nothing once it returns (its claims are gone), and nothing of the
// gatherer's is left in Redis after.
func TestFleetWideFlushAll(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	opt := &fill.Options{PollInterval: 100 * time.Millisecond}
	bo := fill.BatchOptions{Name: "flush", Window: 5 * time.Millisecond}
	bts, loaders, caches := fleetBatchers(t, []redis.UniversalClient{s.Client(t, nil), s.Client(t, nil)}, opt, bo, 0)
	gate := make(chan struct{})
	defer func() {
		select {
		case <-gate:
		default:
			close(gate)
		}
	}()
	for _, bl := range loaders {
		bl.gate = gate
	}
	ctx := redistest.Context(t, 30*time.Second)
	keys := keyList(20)
	// Ten keys go in a batch that loads; ten more, missed then, are queued
	// behind it (or popped as a batch of their own, the first one being
	// slow).
	first := make(chan struct{})
	go func() {
		defer close(first)
		getAll(t, ctx, bts, keys[:10])
	}()
	redistest.WaitFor(t, "the first batch's loader call", func() bool {
		a, _ := loaders[0].loaded()
		b, _ := loaders[1].loaded()
		return a+b == 1
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		getAll(t, ctx, bts, keys[10:])
		<-first
	}()
	redistest.WaitFor(t, "every key queued or loading", func() bool {
		_, a := loaders[0].loaded()
		_, b := loaders[1].loaded()
		return int(rdb.ZCard(ctx, "__locksmith:{batch:flush}:queue").Val())+len(a)+len(b) == len(keys)
	})
	before := make([]int, len(loaders))
	for i, bl := range loaders {
		before[i], _ = bl.loaded()
	}
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	// Loads from now on return at once; those under way still wait.
	for _, bl := range loaders {
		bl.mu.Lock()
		bl.gate = nil
		bl.mu.Unlock()
	}
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("the Gets did not end after the FLUSHALL")
	}
	close(gate)
	_, loaded := fleetLoads(loaders)
	count := map[string]int{}
	for _, k := range loaded {
		count[k]++
	}
	for _, k := range keys {
		if n := count[k]; n < 1 || n > 2 {
			t.Errorf("%s loaded %d times; want once, or twice (once before the flush)", k, n)
		}
	}
	// The batches that were loading return now: their claims are gone,
	// their settles refused.
	redistest.WaitFor(t, "the gatherer to quit", func() bool {
		return rdb.Exists(ctx, "__locksmith:{batch:flush}:gatherer", "__locksmith:{batch:flush}:queue",
			"__locksmith:{batch:flush}:loading").Val() == 0
	})
	var stale uint64
	redistest.WaitFor(t, "the late settles refused", func() bool {
		stale = 0
		for _, c := range caches {
			stale += c.Stats().StaleStores
		}
		return stale > 0
	})
	t.Logf("%d loader calls before the flush; %d values refused after it", before[0]+before[1], stale)
}
