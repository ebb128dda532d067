package fill_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
)

// exampleRedis starts an embedded Redis so the examples run anywhere. Use
// your own client in real code: redis.NewClient(&redis.Options{Addr: "localhost:6379"}).
func exampleRedis() (string, func()) {
	m, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	return m.Addr(), m.Close
}

type Timeline struct {
	UserID int      `json:"user_id"`
	Tweets []string `json:"tweets"`
}

func ExampleGet() {
	addr, stop := exampleRedis()
	defer stop()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()

	cache := fill.New(rdb, &fill.Options{TTL: 10 * time.Minute})
	defer cache.Close()

	fetchTimeline := func(ctx context.Context) (Timeline, error) {
		fmt.Println("calling the upstream API")
		return Timeline{UserID: 37344436, Tweets: []string{"hello"}}, nil
	}
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		tl, err := fill.Get(ctx, cache, "timeline:37344436", fetchTimeline)
		if err != nil {
			fmt.Println("error:", err)
			return
		}
		fmt.Println(tl.UserID, tl.Tweets)
	}
	// Output:
	// calling the upstream API
	// 37344436 [hello]
	// 37344436 [hello]
	// 37344436 [hello]
}

// Two servers, each with its own client and Cache, miss the same key at once:
// the upstream is called once.
func ExampleGet_fleet() {
	addr, stop := exampleRedis()
	defer stop()
	var servers []*fill.Cache
	for i := 0; i < 2; i++ {
		rdb := redis.NewClient(&redis.Options{Addr: addr})
		defer rdb.Close()
		c := fill.New(rdb, nil)
		defer c.Close()
		servers = append(servers, c)
	}
	calls := 0
	slow := func(ctx context.Context) (string, error) {
		calls++
		time.Sleep(50 * time.Millisecond)
		return "profile of user 7", nil
	}
	ctx := context.Background()
	results := make(chan string, 2)
	for _, c := range servers {
		go func() {
			v, _ := fill.Get(ctx, c, "user:7", slow)
			results <- v
		}()
	}
	fmt.Println(<-results)
	fmt.Println(<-results)
	fmt.Println("upstream calls:", calls)
	// Output:
	// profile of user 7
	// profile of user 7
	// upstream calls: 1
}

// A loader reports a missing item by wrapping fill.ErrNotFound: the absence is
// cached, and later calls do not reach the upstream.
func ExampleErrNotFound() {
	addr, stop := exampleRedis()
	defer stop()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	cache := fill.New(rdb, &fill.Options{NegativeTTL: time.Minute})
	defer cache.Close()

	lookup := func(ctx context.Context) (Timeline, error) {
		fmt.Println("calling the upstream API")
		return Timeline{}, fmt.Errorf("user suspended: %w", fill.ErrNotFound)
	}
	for i := 0; i < 2; i++ {
		_, err := fill.Get(context.Background(), cache, "timeline:1", lookup)
		fmt.Println(errors.Is(err, fill.ErrNotFound))
	}
	// Output:
	// calling the upstream API
	// true
	// true
}

func ExampleNew() {
	addr, stop := exampleRedis()
	defer stop()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx, key := context.Background(), "timeline:1"
	loader := func(ctx context.Context) (Timeline, error) { return Timeline{UserID: 1}, nil }

	cache := fill.New(rdb, &fill.Options{
		TTL:     time.Hour,         // how long a value stays cached (default 1h)
		LockTTL: 120 * time.Second, // fill lock lease, renewed every LockTTL/3 while the loader runs (default 120s)
	})
	v, err := fill.Get(ctx, cache, key, loader, fill.WithTTL(10*time.Minute))

	defer cache.Close()
	fmt.Println(v.UserID, err)
	// Output: 1 <nil>
}

// On a Redis Cluster, pass a cluster client: keys of one name share a hash
// tag, and notifications use sharded pub/sub.
func ExampleNew_cluster() {
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"10.0.0.1:6379", "10.0.0.2:6379"}})
	cache := fill.New(rdb, nil)
	defer cache.Close()
}

// Past its TTL a value is served at once while one server, fleet-wide,
// refreshes it in the background; a failing upstream is called with a
// fleet-wide back-off while the old value keeps being served.
func ExampleOptions_freshness() {
	addr, stop := exampleRedis()
	defer stop()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()

	cache := fill.New(rdb, &fill.Options{
		TTL:                  time.Minute,      // fresh for a minute
		StaleWhileRevalidate: 10 * time.Minute, // then served at once while one server refreshes
		StaleIfError:         time.Hour,        // and while refreshes fail
		EarlyRefresh:         true,             // hot keys refreshed before they expire
		Local:                &fill.LocalOptions{Size: 10000, MaxStaleness: time.Second},
	})
	defer cache.Close()

	tl, err := fill.Get(context.Background(), cache, "timeline:1", func(ctx context.Context) (Timeline, error) {
		return Timeline{UserID: 1, Tweets: []string{"fresh"}}, nil
	})
	fmt.Println(tl.Tweets, err)
	// Output:
	// [fresh] <nil>
}

// GetMany loads the keys missing from the cache with one loader call, and
// each key still once across the fleet.
func ExampleGetMany() {
	addr, stop := exampleRedis()
	defer stop()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	cache := fill.New(rdb, nil)
	defer cache.Close()

	// The upstream's users lookup takes up to 100 ids per request.
	lookupUsers := func(ctx context.Context, ids []string) (map[string]string, error) {
		fmt.Println("one upstream call for", len(ids), "ids")
		users := make(map[string]string, len(ids))
		for _, id := range ids {
			if id != "404" { // unknown ids are left out: cached as absent
				users[id] = "user " + id
			}
		}
		return users, nil
	}
	ctx := context.Background()
	users, err := fill.GetMany(ctx, cache, []string{"1", "2", "3", "404"}, lookupUsers)
	fmt.Println(len(users), users["2"], err)
	users, err = fill.GetMany(ctx, cache, []string{"2", "3"}, lookupUsers) // all cached
	fmt.Println(len(users), err)
	// Output:
	// one upstream call for 4 ids
	// 3 user 2 <nil>
	// 2 <nil>
}

// A Batcher gathers single-key Gets that arrive together into one batch.
func ExampleBatcher() {
	addr, stop := exampleRedis()
	defer stop()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	cache := fill.New(rdb, nil)
	defer cache.Close()

	var calls atomic.Int32
	users := fill.NewBatcher(cache, func(ctx context.Context, ids []string) (map[string]string, error) {
		calls.Add(1)
		m := make(map[string]string, len(ids))
		for _, id := range ids {
			m[id] = "user " + id
		}
		return m, nil
	}, &fill.BatchOptions{MaxSize: 3, Window: time.Second}) // out at 3 keys, or after a second

	var wg sync.WaitGroup
	for _, id := range []string{"1", "2", "3"} {
		wg.Go(func() {
			if _, err := users.Get(context.Background(), id); err != nil {
				fmt.Println(err)
			}
		})
	}
	wg.Wait()
	fmt.Println("upstream calls:", calls.Load())
	// Output:
	// upstream calls: 1
}
