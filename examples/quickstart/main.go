// Quickstart is the README's quick start: a timeline cache whose upstream is
// called once per key across every server that runs it.
package main

import (
	"context"
	"fmt"
	"log"

	"github.com/redis/go-redis/v9"

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
	cache := fill.New(rdb, nil) // values cached 1h, fill lock lease 120s
	defer cache.Close()

	ctx := context.Background()
	tl, err := fill.Get(ctx, cache, "timeline:37344436", func(ctx context.Context) (Timeline, error) {
		return fetchTimeline(ctx, 37344436) // runs once per key for the whole fleet
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(tl.UserID, tl.Tweets)
}
