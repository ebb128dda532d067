package faults_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/lock"
)

// clusterNames returns n names whose lock keys spread over the masters of
// c: name i lies on master i mod 3 (node j owns the j-th third of the
// slots).
func clusterNames(t testing.TB, ctx context.Context, cc *redis.ClusterClient, prefix string, n, masters int) []string {
	t.Helper()
	const slots = 16384
	var names []string
	for k := 0; len(names) < n && k < 10000; k++ {
		name := fmt.Sprintf("%s%d", prefix, k)
		slot, err := cc.ClusterKeySlot(ctx, lockKey(name)).Result()
		if err != nil {
			t.Fatalf("CLUSTER KEYSLOT: %v", err)
		}
		if int(slot)*masters/slots == len(names)%masters {
			names = append(names, name)
		}
	}
	if len(names) < n {
		t.Fatalf("found only %d names spread over the masters", len(names))
	}
	return names
}

// TestClusterLockStorm: on a 3-master Redis Cluster, 4 clients x 4
// goroutines take locks on 6 names spread over all masters, 10 holds each.
// At most one holder per name at any time, and tokens strictly increase per
// name.
func TestClusterLockStorm(t *testing.T) {
	const clients, goroutines, holds = 4, 4, 10
	ctx := ctxT(t, testTimeout)
	c := redistest.StartCluster(t, 3)
	names := clusterNames(t, ctx, c.Client(t, nil), "storm", 6, 3)

	type state struct {
		mu      sync.Mutex
		holders int
		tokens  []int64
	}
	per := map[string]*state{}
	for _, n := range names {
		per[n] = &state{}
	}
	var overlaps, done atomic.Int32
	var errs sync.Map
	var wg sync.WaitGroup
	began := time.Now()
	for ci := range clients {
		// Waiters poll only every 10s: the storm finishes quickly only if
		// they are woken by the sharded pub/sub notifications.
		l := newLocker(t, c.Client(t, nil), &lock.Options{TTL: 10 * time.Second, PollInterval: 10 * time.Second})
		for g := range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range holds {
					name := names[(ci*goroutines+g+i)%len(names)]
					octx, cancel := context.WithTimeout(ctx, hangTimeout)
					lk, err := l.Obtain(octx, name)
					cancel()
					if err != nil {
						errs.Store(fmt.Sprintf("client %d goroutine %d: Obtain %s", ci, g, name), err)
						return
					}
					st := per[name]
					st.mu.Lock()
					st.holders++
					if st.holders > 1 {
						overlaps.Add(1)
					}
					st.tokens = append(st.tokens, lk.Token())
					st.mu.Unlock()
					time.Sleep(2 * time.Millisecond)
					st.mu.Lock()
					st.holders--
					st.mu.Unlock()
					if err := lk.Release(ctx); err != nil {
						errs.Store(fmt.Sprintf("client %d goroutine %d: Release %s", ci, g, name), err)
						return
					}
					done.Add(1)
				}
			}()
		}
	}
	wg.Wait()
	errs.Range(func(k, v any) bool {
		t.Errorf("%s: %v", k, v)
		return true
	})
	if n := overlaps.Load(); n != 0 {
		t.Errorf("%d times two holders held one name", n)
	}
	for _, n := range names {
		toks := per[n].tokens
		for i := 1; i < len(toks); i++ {
			if toks[i] <= toks[i-1] {
				t.Errorf("%s: token %d after %d, in the order the holds began", n, toks[i], toks[i-1])
			}
		}
	}
	t.Logf("cluster lock storm: %d of %d holds on %d names over 3 masters in %v; overlaps %d",
		done.Load(), clients*goroutines*holds, len(names), time.Since(began).Round(time.Millisecond), overlaps.Load())
}

// TestClusterFillStampede: on a 3-master Redis Cluster, 6 Caches x 10
// goroutines get 10 keys spread over all masters at once: each key is
// loaded exactly once, 10 loads in all, and every caller gets its value.
func TestClusterFillStampede(t *testing.T) {
	const caches, goroutines = 6, 10
	ctx := ctxT(t, testTimeout)
	c := redistest.StartCluster(t, 3)
	keys := clusterNames(t, ctx, c.Client(t, nil), "stampede", 10, 3)
	var cs []*fill.Cache
	for range caches {
		// Waiting servers poll only every 10s: they rely on the value
		// published on the key's sharded channel.
		cs = append(cs, newCache(t, c.Client(t, nil), &fill.Options{LockTTL: 10 * time.Second, PollInterval: 10 * time.Second}))
	}
	loads := map[string]*atomic.Int32{}
	for _, k := range keys {
		loads[k] = &atomic.Int32{}
	}
	start := make(chan struct{})
	var wrong sync.Map
	var wg sync.WaitGroup
	for ci, cache := range cs {
		for g := range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for i := range keys {
					k := keys[(ci+g+i)%len(keys)]
					gctx, cancel := context.WithTimeout(ctx, hangTimeout)
					v, err := fill.Get(gctx, cache, k, func(context.Context) (string, error) {
						loads[k].Add(1)
						time.Sleep(100 * time.Millisecond)
						return "v:" + k, nil
					})
					cancel()
					if err != nil || v != "v:"+k {
						wrong.Store(fmt.Sprintf("cache %d goroutine %d key %s", ci, g, k), fmt.Sprintf("%q, %v", v, err))
					}
				}
			}()
		}
	}
	began := time.Now()
	close(start)
	wg.Wait()
	wrong.Range(func(k, v any) bool {
		t.Errorf("%s: got %s", k, v)
		return true
	})
	total := totalLoads(cs...)
	for _, k := range keys {
		if n := loads[k].Load(); n != 1 {
			t.Errorf("key %s loaded %d times; want 1", k, n)
		}
	}
	if total != uint64(len(keys)) {
		t.Errorf("loads: %d; want %d", total, len(keys))
	}
	var st fill.Stats
	for _, c := range cs {
		s := c.Stats()
		st.Hits += s.Hits
		st.LocalMerges += s.LocalMerges
		st.RemoteMerges += s.RemoteMerges
		st.RedisErrors += s.RedisErrors
	}
	t.Logf("cluster fill stampede: %d Gets in %v, %d loads; hits %d, local merges %d, remote merges %d, Redis errors %d",
		caches*goroutines*len(keys), time.Since(began).Round(time.Millisecond), total, st.Hits, st.LocalMerges, st.RemoteMerges, st.RedisErrors)
}
