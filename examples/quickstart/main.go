// Quickstart is the README's quick start: a timeline cache whose upstream is
// called once per key across every server that runs it, within the
// upstream's rate limit shared by the fleet.
package main

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
)

type Timeline struct {
	UserID int      `json:"user_id"`
	Tweets []string `json:"tweets"`
}

func fetchTimeline(ctx context.Context, id int) (Timeline, error) {
	return Timeline{UserID: id, Tweets: []string{"hello"}}, nil // the rate-limited API call
}

func main() {
	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
	// The API allows 900 calls per 15 minutes: one budget for the whole fleet.
	api := budget.New(rdb, "api.x.com", budget.Limit{Rate: 900, Per: 15 * time.Minute, Burst: 10}, nil)
	defer api.Close()
	cache := fill.New(rdb, &fill.Options{
		TTL:                  time.Hour,
		StaleWhileRevalidate: 10 * time.Minute,     // past the TTL: served at once while one server refreshes
		Budget:               api,                  // every upstream call waits for its slot: no 429s
		Local:                &fill.LocalOptions{}, // hot values from memory, invalidated by push
	})
	defer cache.Close()

	ctx := context.Background()
	tl, err := fill.Get(ctx, cache, "timeline:37344436", func(ctx context.Context) (Timeline, error) {
		return fetchTimeline(ctx, 37344436) // once per key for the whole fleet
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(tl.UserID, tl.Tweets)
}
