package httpfill_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/httpfill"
)

// Two servers of a fleet fetch the same timeline three times through their
// HTTP clients, on one budget for the API: the API is called once. Had it
// answered 429, the fleet would have paused and the same flight retried.
func Example() {
	// An embedded Redis, so the example runs anywhere; in real code, your
	// own: redis.NewClient(&redis.Options{Addr: "localhost:6379"}).
	m, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer m.Close()
	// A stand-in for the rate-limited API.
	var calls atomic.Int32
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		fmt.Fprint(w, `{"user_id":37344436,"tweets":["hello"]}`)
	}))
	defer api.Close()

	var servers []*http.Client // one HTTP client per server of the fleet
	for range 2 {
		rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
		defer rdb.Close()
		// One budget name is one budget for the whole fleet: every upstream
		// request waits for its slot, and every response's headers feed it.
		api := budget.New(rdb, "api.x.com", budget.Limit{Rate: 50, Per: time.Second}, nil)
		defer api.Close()
		cache := fill.New(rdb, nil)
		defer cache.Close()
		transport := httpfill.New(cache, &httpfill.Options{TTL: 10 * time.Minute, Budget: api})
		servers = append(servers, &http.Client{Transport: transport})
	}
	for _, client := range []*http.Client{servers[0], servers[1], servers[0]} {
		resp, err := client.Get(api.URL + "/users/37344436/timeline")
		if err != nil {
			fmt.Println("error:", err)
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			fmt.Println("error:", err)
			return
		}
		fmt.Println(resp.Status, string(body))
	}
	fmt.Println("API calls:", calls.Load())
	// Output:
	// 200 OK {"user_id":37344436,"tweets":["hello"]}
	// 200 OK {"user_id":37344436,"tweets":["hello"]}
	// 200 OK {"user_id":37344436,"tweets":["hello"]}
	// API calls: 1
}
