package locksmith_test

// End-to-end tests: a fleet of "servers" (each its own go-redis client and
// fill.Cache, as separate processes would have) against one real redis-server.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type timeline struct {
	UserID int      `json:"user_id"`
	Tweets []string `json:"tweets"`
}

// fleet starts n servers on s, each with its own client and Cache.
func fleet(t testing.TB, s *redistest.Server, n int, opt *fill.Options) []*fill.Cache {
	caches := make([]*fill.Cache, n)
	for i := range caches {
		c := fill.New(s.Client(t, nil), opt)
		t.Cleanup(func() { _ = c.Close() })
		caches[i] = c
	}
	return caches
}

func sum(caches []*fill.Cache, f func(fill.Stats) uint64) uint64 {
	var n uint64
	for _, c := range caches {
		n += f(c.Stats())
	}
	return n
}

// TestStampedeOneKey: 8 servers × 40 callers miss one key at once: exactly
// one load, and every caller gets its value.
func TestStampedeOneKey(t *testing.T) {
	s := redistest.Start(t, nil)
	caches := fleet(t, s, 8, nil)
	ctx := redistest.Context(t, 30*time.Second)
	var loads atomic.Int32
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range caches {
		for g := 0; g < 40; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				v, err := fill.Get(ctx, c, "user:42", func(context.Context) (timeline, error) {
					loads.Add(1)
					time.Sleep(20 * time.Millisecond) // an upstream call
					return timeline{UserID: 42, Tweets: []string{"hello"}}, nil
				})
				if err != nil || v.UserID != 42 {
					t.Errorf("got %+v, %v", v, err)
				}
			}()
		}
	}
	close(start)
	wg.Wait()
	if n := loads.Load(); n != 1 {
		t.Fatalf("loads: got %d; want 1", n)
	}
	t.Logf("remote merges %d, local merges %d", sum(caches, func(s fill.Stats) uint64 { return s.RemoteMerges }),
		sum(caches, func(s fill.Stats) uint64 { return s.LocalMerges }))
}

// TestStampedeManyKeys: 8 servers × 16 goroutines request random keys out of
// 60: one load per distinct key.
func TestStampedeManyKeys(t *testing.T) {
	s := redistest.Start(t, nil)
	caches := fleet(t, s, 8, nil)
	ctx := redistest.Context(t, 30*time.Second)
	var mu sync.Mutex
	loads := map[string]int{}
	requested := map[string]bool{}
	var wg sync.WaitGroup
	for i, c := range caches {
		for g := 0; g < 16; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(i), uint64(g)))
				for r := 0; r < 20; r++ {
					key := fmt.Sprintf("user:%d", rng.IntN(60))
					mu.Lock()
					requested[key] = true
					mu.Unlock()
					v, err := fill.Get(ctx, c, key, func(context.Context) (string, error) {
						mu.Lock()
						loads[key]++
						mu.Unlock()
						time.Sleep(time.Duration(rng.IntN(5)) * time.Millisecond)
						return "v:" + key, nil
					})
					if err != nil || v != "v:"+key {
						t.Errorf("%s: got %q, %v", key, v, err)
					}
				}
			}()
		}
	}
	wg.Wait()
	for key, n := range loads {
		if n != 1 {
			t.Errorf("%s: loaded %d times; want 1", key, n)
		}
	}
	if len(loads) != len(requested) {
		t.Errorf("loaded %d keys; want %d", len(loads), len(requested))
	}
}

// TestFollowerWokenByFill: a follower on another server returns as soon as
// the fill happens. Its poll interval is a minute, so only the notification
// can wake it before the test's deadline.
func TestFollowerWokenByFill(t *testing.T) {
	s := redistest.Start(t, nil)
	opt := &fill.Options{PollInterval: time.Minute}
	caches := fleet(t, s, 2, opt)
	ctx := redistest.Context(t, 30*time.Second)
	for i := 0; i < 5; i++ {
		key := fmt.Sprintf("k%d", i)
		started, open := make(chan struct{}), make(chan struct{})
		go func() {
			_, _ = fill.Get(ctx, caches[0], key, func(context.Context) (int, error) {
				close(started)
				<-open
				return i, nil
			})
		}()
		<-started
		got := make(chan error, 1)
		go func() {
			v, err := fill.Get(ctx, caches[1], key, func(context.Context) (int, error) { return -1, nil })
			if err == nil && v != i {
				err = fmt.Errorf("got %d; want %d", v, i)
			}
			got <- err
		}()
		rdb := s.Client(t, nil)
		redistest.WaitFor(t, "follower subscribed", func() bool {
			n, _ := rdb.PubSubNumSub(ctx, "__locksmith:{"+key+"}").Result()
			return n["__locksmith:{"+key+"}"] == 1
		})
		close(open)
		select {
		case err := <-got:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("follower not woken by the fill")
		}
	}
	if st := caches[1].Stats(); st.Loads != 0 || st.RemoteMerges != 5 {
		t.Errorf("follower stats: got %+v; want 0 loads, 5 remote merges", st)
	}
}

// TestFailuresAcrossServers: a loader error or panic on one server reaches
// the waiters on the others at once; nothing is cached; one load.
func TestFailuresAcrossServers(t *testing.T) {
	s := redistest.Start(t, nil)
	caches := fleet(t, s, 4, &fill.Options{PollInterval: time.Minute})
	rdb := s.Client(t, nil)
	ctx := redistest.Context(t, 30*time.Second)
	for _, mode := range []string{"error", "panic"} {
		t.Run(mode, func(t *testing.T) {
			key := "fail-" + mode
			var loads atomic.Int32
			started, open := make(chan struct{}), make(chan struct{})
			leader := make(chan any, 1)
			go func() {
				defer func() { leader <- recover() }()
				_, err := fill.Get(ctx, caches[0], key, func(context.Context) (int, error) {
					loads.Add(1)
					close(started)
					<-open
					if mode == "panic" {
						panic("upstream exploded")
					}
					return 0, errors.New("upstream exploded")
				})
				leader <- err
			}()
			<-started
			errs := make(chan error, 3)
			for _, c := range caches[1:] {
				go func() {
					_, err := fill.Get(ctx, c, key, func(context.Context) (int, error) { loads.Add(1); return 1, nil })
					errs <- err
				}()
			}
			redistest.WaitFor(t, "followers subscribed", func() bool {
				n, _ := rdb.PubSubNumSub(ctx, "__locksmith:{"+key+"}").Result()
				return n["__locksmith:{"+key+"}"] == 3
			})
			close(open)
			for i := 0; i < 3; i++ {
				if err := <-errs; !errors.Is(err, fill.ErrLoadFailed) || !strings.Contains(err.Error(), "upstream exploded") {
					t.Errorf("follower: got %v; want ErrLoadFailed with the message", err)
				}
			}
			switch r := <-leader; mode {
			case "panic":
				if pe, ok := r.(*fill.PanicError); !ok || pe.Value != "upstream exploded" {
					t.Errorf("leader: recovered %v; want *fill.PanicError", r)
				}
			default:
				if err, _ := r.(error); err == nil || err.Error() != "upstream exploded" {
					t.Errorf("leader: got %v; want the loader's error", r)
				}
			}
			if n := loads.Load(); n != 1 {
				t.Errorf("loads: got %d; want 1", n)
			}
			if n, _ := rdb.Exists(ctx, "__locksmith:{"+key+"}:value", "__locksmith:{"+key+"}").Result(); n != 0 {
				t.Errorf("%d keys left behind; want none", n)
			}
		})
	}
}

func TestNegativeCachingAcrossServers(t *testing.T) {
	s := redistest.Start(t, nil)
	caches := fleet(t, s, 3, nil)
	ctx := redistest.Context(t, 30*time.Second)
	var loads atomic.Int32
	for _, c := range caches {
		_, err := fill.Get(ctx, c, "deleted-user", func(context.Context) (timeline, error) {
			loads.Add(1)
			return timeline{}, fmt.Errorf("twitter: 404: %w", fill.ErrNotFound)
		})
		if !errors.Is(err, fill.ErrNotFound) {
			t.Fatalf("got %v; want ErrNotFound", err)
		}
	}
	if n := loads.Load(); n != 1 {
		t.Fatalf("loads: got %d; want 1", n)
	}
}

func TestCorruptEntryRealRedis(t *testing.T) {
	s := redistest.Start(t, nil)
	caches := fleet(t, s, 1, nil)
	rdb := s.Client(t, nil)
	ctx := redistest.Context(t, 30*time.Second)
	if err := rdb.Set(ctx, "__locksmith:{k}:value", "\xe5\x01garbage", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	v, err := fill.Get(ctx, caches[0], "k", func(context.Context) (string, error) { return "fresh", nil })
	if err != nil || v != "fresh" {
		t.Fatalf("got %q, %v; want the loaded value", v, err)
	}
	if st := caches[0].Stats(); st.Corrupt != 1 {
		t.Errorf("Corrupt: got %d; want 1", st.Corrupt)
	}
}

// TestRedisDownAndBack: with Redis killed, Get fails open (the loader runs);
// after a restart, fills work again.
func TestRedisDownAndBack(t *testing.T) {
	s := redistest.Start(t, nil)
	c := fill.New(s.Client(t, &redis.Options{MaxRetries: -1, DialerRetries: 1}), nil)
	t.Cleanup(func() { _ = c.Close() })
	ctx := redistest.Context(t, 30*time.Second)
	s.Kill(t)
	v, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) { return 1, nil })
	if err != nil || v != 1 {
		t.Fatalf("Redis down: got %v, %v; want the loader's value (fail open)", v, err)
	}
	if c.Stats().RedisErrors == 0 {
		t.Error("RedisErrors not counted")
	}
	s.Restart(t)
	// Until a probe finds Redis back, Gets still fail open at once.
	redistest.WaitFor(t, "fill after restart", func() bool {
		before := c.Stats().FailOpens
		v, err := fill.Get(ctx, c, "k2", func(context.Context) (int, error) { return 2, nil })
		return err == nil && v == 2 && c.Stats().FailOpens == before
	})
	var loads int
	v, err = fill.Get(ctx, c, "k2", func(context.Context) (int, error) { loads++; return 3, nil })
	if err != nil || v != 2 || loads != 0 {
		t.Fatalf("after restart: got %v, %v, %d loads; want the stored 2", v, err, loads)
	}
}

// TestDeleteDuringLoadAcrossServers: server B deletes the key while server A
// loads it; A's older value is not stored, and the next fill loads afresh.
func TestDeleteDuringLoadAcrossServers(t *testing.T) {
	s := redistest.Start(t, nil)
	caches := fleet(t, s, 2, nil)
	ctx := redistest.Context(t, 30*time.Second)
	started, open := make(chan struct{}), make(chan struct{})
	done := make(chan int, 1)
	go func() {
		v, _ := fill.Get(ctx, caches[0], "k", func(context.Context) (int, error) {
			close(started)
			<-open
			return 1, nil
		})
		done <- v
	}()
	<-started
	if err := caches[1].Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	close(open)
	if v := <-done; v != 1 {
		t.Fatalf("loader's caller got %d; want 1", v)
	}
	v, err := fill.Get(ctx, caches[1], "k", func(context.Context) (int, error) { return 2, nil })
	if err != nil || v != 2 {
		t.Fatalf("after delete: got %v, %v; want a fresh load (2)", v, err)
	}
	if st := caches[0].Stats(); st.StaleStores != 1 {
		t.Errorf("StaleStores: got %d; want 1", st.StaleStores)
	}
}
