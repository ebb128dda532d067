package faults_test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// wake is one probe of push wake-ups: when it started, and how long its
// follower took to return after the leader's load did.
type wake struct {
	start time.Time
	took  time.Duration
	err   error
}

// TestSentinelFailover: a stampede of Gets across a Sentinel failover
// (SENTINEL FAILOVER, the old master demoted) gets every caller a value
// within its ctx (no Get fails), loads each key at most twice, and wakes
// waiters by push again within a second of the switch: the Hub's
// heartbeats notice that its pub/sub connection stayed on the old master
// and open one on the new.
func TestSentinelFailover(t *testing.T) {
	// Redis's default: a demoted master resyncs after 5s, and until then
	// receives no message published on the new one.
	sn := redistest.StartSentinel(t, &redistest.SentinelOptions{Args: []string{"--repl-diskless-sync-delay", "5"}})
	const n = 6
	var fleet []*fill.Cache
	for range n {
		rdb := sn.FailoverClient(t, &redis.FailoverOptions{})
		// PollInterval a minute: only a push wakes a follower in time.
		fleet = append(fleet, newCache(t, rdb, &fill.Options{PollInterval: time.Minute}))
	}
	ctx := ctxT(t, 90*time.Second)

	// The moment the sentinels switched master, seen from outside.
	before := sn.Master().Addr()
	var switched atomic.Int64
	watch, stopWatch := context.WithCancel(ctx)
	var bg sync.WaitGroup
	bg.Go(func() {
		admin := redis.NewSentinelClient(&redis.Options{Addr: sn.SentinelAddrs()[0]})
		defer admin.Close()
		for watch.Err() == nil {
			a, err := admin.GetMasterAddrByName(watch, sn.MasterName()).Result()
			if err == nil && len(a) == 2 && a[0]+":"+a[1] != before && switched.Load() == 0 {
				switched.Store(time.Now().UnixNano())
			}
			time.Sleep(10 * time.Millisecond)
		}
	})

	// The stampede: every server reads keys that change every 100ms.
	var loads sync.Map // key -> *atomic.Int32
	var gets, failed atomic.Int64
	var firstErr atomic.Value
	stamp, stopStamp := context.WithCancel(ctx)
	epoch := time.Now()
	for i := range n * 4 {
		c := fleet[i%n]
		bg.Go(func() {
			for stamp.Err() == nil {
				key := fmt.Sprint("k", time.Since(epoch)/(100*time.Millisecond))
				gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				v, err := fill.Get(gctx, c, key, func(context.Context) (string, error) {
					cnt, _ := loads.LoadOrStore(key, new(atomic.Int32))
					cnt.(*atomic.Int32).Add(1)
					time.Sleep(20 * time.Millisecond)
					return key, nil
				})
				cancel()
				gets.Add(1)
				switch {
				case err != nil:
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				case v != key:
					t.Errorf("got %q for %q", v, key)
				}
			}
		})
	}

	// Wake-up probes: a leader on one server, a follower on another.
	var wakes []wake
	var wmu sync.Mutex
	probe, stopProbe := context.WithCancel(ctx)
	bg.Go(func() {
		for i := 0; probe.Err() == nil; i++ {
			w := probeWake(ctx, sn.Servers(), fleet[i%n], fleet[(i+1)%n], fmt.Sprint("probe", i))
			wmu.Lock()
			wakes = append(wakes, w)
			wmu.Unlock()
		}
	})

	time.Sleep(time.Second)
	oldAddr, newAddr := sn.Failover(t)
	if oldAddr == newAddr {
		t.Fatal("no failover")
	}
	time.Sleep(3 * time.Second)
	stopProbe()
	stopStamp()
	stopWatch()
	bg.Wait()

	sw := time.Unix(0, switched.Load())
	if switched.Load() == 0 {
		t.Fatal("the switch was not seen")
	}
	maxLoads, keys := int32(0), 0
	loads.Range(func(_, v any) bool {
		keys++
		maxLoads = max(maxLoads, v.(*atomic.Int32).Load())
		return true
	})
	t.Logf("%d Gets on %d keys, %d failed (first: %v); at most %d loads per key", gets.Load(), keys, failed.Load(), firstErr.Load(), maxLoads)
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d Gets failed across the failover (first: %v); want 0", n, gets.Load(), firstErr.Load())
	}
	if maxLoads > 2 {
		t.Errorf("a key was loaded %d times across the failover; want at most 2", maxLoads)
	}
	var after []time.Duration
	for _, w := range wakes {
		if w.start.Before(sw.Add(time.Second)) {
			continue
		}
		if w.err != nil {
			t.Errorf("a follower started %v after the switch failed: %v", w.start.Sub(sw), w.err)
			continue
		}
		after = append(after, w.took)
	}
	if len(after) == 0 {
		t.Fatal("no wake-up probe ran a second after the switch")
	}
	sort.Slice(after, func(i, j int) bool { return after[i] < after[j] })
	t.Logf("push wake-ups from 1s after the switch: %d, median %v, max %v", len(after), after[len(after)/2], after[len(after)-1])
	if worst := after[len(after)-1]; worst > time.Second {
		t.Errorf("a follower took %v to wake after the switch; want a push (the poll is a minute)", worst)
	}
}

// probeWake has leader load key while follower waits for it, and reports
// how long the follower took to return after the load finished.
func probeWake(ctx context.Context, servers []*redistest.Server, leader, follower *fill.Cache, key string) wake {
	w := wake{start: time.Now()}
	release := make(chan struct{})
	var done atomic.Int64
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	lead := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		_, err := fill.Get(lctx, leader, key, func(context.Context) (int, error) {
			close(started)
			<-release
			done.Store(time.Now().UnixNano())
			return 1, nil
		})
		lead <- err
	}()
	select {
	case <-started: // the leader holds the lock
	case err := <-lead:
		return wake{start: w.start, err: fmt.Errorf("leader: %w", err)}
	}
	misses := follower.Stats().Misses
	got := make(chan error, 1)
	go func() {
		_, err := fill.Get(lctx, follower, key, func(context.Context) (int, error) { return 2, nil })
		got <- err
	}()
	// Release once the follower has subscribed, wherever its pub/sub
	// connection is, and had time to look again: then only a push brings
	// it back before its minute-long poll.
	for follower.Stats().Misses == misses && lctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	channel := "__locksmith:{" + key + "}"
	for subscribed := false; !subscribed && lctx.Err() == nil; {
		for _, s := range servers {
			c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
			n, err := c.PubSubNumSub(lctx, channel).Result()
			c.Close()
			subscribed = subscribed || (err == nil && n[channel] > 0)
		}
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	w.err = <-got
	w.took = time.Duration(time.Now().UnixNano() - done.Load())
	if err := <-lead; err != nil && w.err == nil {
		w.err = fmt.Errorf("leader: %w", err)
	}
	return w
}
