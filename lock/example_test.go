package lock_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/lock"
)

// exampleRedis starts an embedded Redis so the examples run anywhere. Use
// your own client in real code: redis.NewClient(&redis.Options{Addr: "localhost:6379"}).
func exampleRedis() (*redis.Client, func()) {
	m, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	return rdb, func() { _ = rdb.Close(); m.Close() }
}

func ExampleLocker_Obtain() {
	rdb, stop := exampleRedis()
	defer stop()
	ctx := context.Background()

	locker := lock.New(rdb, nil) // prefix "__locksmith:", lease 120s
	defer locker.Close()

	lk, err := locker.Obtain(ctx, "cache:37344436") // waits while another server holds it
	if err != nil {
		fmt.Println("obtain:", err)
		return
	}
	// Only this goroutine, on any server, runs here until Release.
	fmt.Println("holding", lk.Key())
	if err := lk.Release(ctx); err != nil {
		fmt.Println("release:", err)
	}
	// Output: holding cache:37344436
}

func ExampleLocker_Do() {
	rdb, stop := exampleRedis()
	defer stop()
	locker := lock.New(rdb, &lock.Options{TTL: 30 * time.Second})
	defer locker.Close()

	err := locker.Do(context.Background(), "nightly-report", func(ctx context.Context) error {
		// The lease is renewed every 10s while this runs; ctx is cancelled
		// if it is lost. The lock is released when this returns or panics.
		fmt.Println("building the report")
		return nil
	})
	fmt.Println("err:", err)
	// Output:
	// building the report
	// err: <nil>
}

func ExampleLocker_TryObtain() {
	rdb, stop := exampleRedis()
	defer stop()
	ctx := context.Background()
	locker := lock.New(rdb, nil)
	defer locker.Close()

	first, _ := locker.TryObtain(ctx, "job")
	_, err := locker.TryObtain(ctx, "job")
	fmt.Println("second try:", errors.Is(err, lock.ErrNotObtained))
	_ = first.Release(ctx)

	again, err := locker.TryObtain(ctx, "job")
	fmt.Println("after release:", err == nil, again.Token() > first.Token())
	_ = again.Release(ctx)
	// Output:
	// second try: true
	// after release: true true
}
