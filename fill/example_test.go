package fill_test

import (
	"context"
	"errors"
	"fmt"
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
