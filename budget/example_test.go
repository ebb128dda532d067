package budget_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
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

func Example() {
	rdb, stop := exampleRedis()
	defer stop()
	ctx := context.Background()

	// The X API's user timeline: 900 calls per 15 minutes, for the fleet.
	b := budget.New(rdb, "api.x.com/timeline", budget.Limit{Rate: 900, Per: 15 * time.Minute, Burst: 5}, nil)
	defer b.Close()

	for i := range 3 {
		if err := b.Wait(ctx, budget.Foreground); err != nil {
			fmt.Println("wait:", err)
			return
		}
		// Call the upstream here; then let its headers correct the budget
		// (here: 10 minutes into the window, 600 calls left).
		h := http.Header{}
		h.Set("X-Rate-Limit-Limit", "900")
		h.Set("X-Rate-Limit-Remaining", strconv.Itoa(600-i))
		h.Set("X-Rate-Limit-Reset", strconv.FormatInt(time.Now().Add(5*time.Minute).Unix(), 10))
		if err := b.Observe(ctx, h, http.StatusOK); err != nil {
			fmt.Println("observe:", err)
		}
	}
	fmt.Println("calls:", b.Stats().Waits)

	// A 429 pauses every server of the fleet for Retry-After. A call whose
	// slot lies past its deadline is refused at once.
	_ = b.Observe(ctx, http.Header{"Retry-After": {"60"}}, http.StatusTooManyRequests)
	wctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	err := b.Wait(wctx, budget.Foreground)
	fmt.Println("during the pause:", errors.Is(err, context.DeadlineExceeded))
	// Output:
	// calls: 3
	// during the pause: true
}

func ExampleBudget_PauseFor() {
	rdb, stop := exampleRedis()
	defer stop()
	ctx := context.Background()
	b := budget.New(rdb, "api.example.com", budget.Limit{Rate: 100, Per: time.Second}, nil)
	defer b.Close()

	calls := 0
	load := func(ctx context.Context) (string, error) {
		calls++
		if calls == 1 {
			// The upstream answered 429 with Retry-After: a loader says so.
			return "", fmt.Errorf("GET /users/42: %w", &budget.RateLimitedError{RetryAfter: 50 * time.Millisecond})
		}
		return "user 42", nil
	}

	start := time.Now()
	for {
		if err := b.Wait(ctx, budget.Foreground); err != nil {
			fmt.Println("wait:", err)
			return
		}
		v, err := load(ctx)
		if paused, _ := b.PauseFor(ctx, err); paused {
			continue // every server of the fleet waits out the pause
		}
		fmt.Println(v, err, "after", calls, "calls")
		break
	}
	fmt.Println("waited out the pause:", time.Since(start) >= 50*time.Millisecond)
	// Output:
	// user 42 <nil> after 2 calls
	// waited out the pause: true
}

func ExampleBudget_Reserve() {
	rdb, stop := exampleRedis()
	defer stop()
	ctx := context.Background()

	// An LLM API: 500 requests and 200,000 tokens per minute, and at most 20
	// requests per second. The tokens' burst is a full minute's, as the
	// upstream's bucket allows.
	b := budget.New(rdb, "api.openai.com/chat", budget.Limit{Rate: 500, Per: time.Minute, Burst: 10}, &budget.Options{
		Also:   []budget.Limit{{Rate: 20, Per: time.Second}},
		Meters: map[string][]budget.Limit{"tokens": {{Rate: 200000, Per: time.Minute, Burst: 200000}}},
	})
	defer b.Close()

	// Book the call and its estimated tokens at once, in one round trip.
	r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{Meters: map[string]int64{"tokens": 1500}})
	if err != nil {
		fmt.Println("reserve:", err)
		return
	}
	// Call the upstream here; its response says what the call spent
	// (usage.total_tokens) and what is left.
	h := http.Header{}
	h.Set("X-Ratelimit-Remaining-Tokens", "150000")
	h.Set("X-Ratelimit-Reset-Tokens", "15s")
	if err := r.Observe(ctx, h, http.StatusOK); err != nil {
		fmt.Println("observe:", err)
	}
	r.Spent(budget.Cost{Meters: map[string]int64{"tokens": 900}})
	// Done gives the 600 tokens not spent back to the fleet at once.
	if err := r.Done(ctx); err != nil {
		fmt.Println("done:", err)
	}
	fmt.Println("calls:", b.Stats().Waits)
	// Output:
	// calls: 1
}

func ExampleReservation_Cancel() {
	rdb, stop := exampleRedis()
	defer stop()
	ctx := context.Background()
	b := budget.New(rdb, "api.example.com/search", budget.Limit{Rate: 10, Per: time.Second}, &budget.Options{
		Meters: map[string][]budget.Limit{"points": {{Rate: 1000, Per: time.Minute, Burst: 100}}},
	})
	defer b.Close()

	r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{Meters: map[string]int64{"points": 100}})
	if err != nil {
		fmt.Println("reserve:", err)
		return
	}
	// The request turned out not to be needed: give back its slot and its
	// points. A second Cancel (or Done) does nothing.
	fmt.Println(r.Cancel(ctx), r.Cancel(ctx))

	// The 100 points are there again: the next search goes at once.
	wctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = b.Reserve(wctx, budget.Foreground, budget.Cost{Meters: map[string]int64{"points": 100}})
	fmt.Println("next:", err)
	// Output:
	// <nil> <nil>
	// next: <nil>
}

func ExampleFromContext() {
	// A loader run by fill or httpfill finds the reservation its upstream
	// call runs under in its ctx, and reports what the call spent.
	load := func(ctx context.Context) string {
		tokens := int64(812) // the response's usage.total_tokens
		if r := budget.FromContext(ctx); r != nil {
			r.Spent(budget.Cost{Meters: map[string]int64{"tokens": tokens}})
			return "reported"
		}
		return "no reservation"
	}
	fmt.Println(load(context.Background()))
	// Output:
	// no reservation
}

// A cap on the calls in flight, as GitHub's secondary limit (at most 100
// concurrent requests) or an LLM API's: every server reserves each call,
// holding one of the fleet's slots until Done, and runs the call under the
// reservation's context, which ends should the slot be lost.
func ExampleOptions_concurrency() {
	rdb, stop := exampleRedis()
	defer stop()
	ctx := context.Background()

	b := budget.New(rdb, "api.github.com", budget.Limit{Rate: 5000, Per: time.Hour, Burst: 100},
		&budget.Options{Concurrency: 100, SlotLease: 10 * time.Second})
	defer b.Close()

	r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		fmt.Println("reserve:", err)
		return
	}
	fmt.Println("in flight:", b.Stats().InFlight)
	// Call the upstream under r.Context() here.
	_ = r.Context()
	if err := r.Done(ctx); errors.Is(err, budget.ErrSlotLost) {
		fmt.Println("the slot was lost during the call")
	}
	fmt.Println("in flight after Done:", b.Stats().InFlight)
	// Output:
	// in flight: 1
	// in flight after Done: 0
}

// An upstream that does not state its limit: Adaptive makes Limit.Rate a
// ceiling, and the fleet learns the rate the upstream accepts from the
// responses it reports.
func ExampleOptions_adaptive() {
	rdb, stop := exampleRedis()
	defer stop()
	ctx := context.Background()

	// A partner API that answers "429 Too Many Requests" and nothing more,
	// at some rate below 50 calls/s.
	b := budget.New(rdb, "partner-api", budget.Limit{Rate: 50}, &budget.Options{Adaptive: true})
	defer b.Close()

	call := func(ctx context.Context) (int, error) {
		return http.StatusTooManyRequests, nil // the upstream, here refusing
	}
	res, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		fmt.Println("reserve:", err)
		return
	}
	status, err := call(ctx)
	if err == nil {
		// Every response counts: a 2xx raises the learned rate while
		// demand meets it, a bare 429 cuts it, once for the whole fleet.
		_ = res.Observe(ctx, nil, status)
	}
	_ = res.Done(ctx)
	st := b.Stats()
	fmt.Printf("learned rate: %.0f calls/s, cuts: %d, pauses: %d\n", st.Rate, st.RateCuts, st.PausesRateLimited)
	// Output:
	// learned rate: 37 calls/s, cuts: 1, pauses: 0
}

// A pool of credentials, each limited on its own by the upstream: every
// call goes on the key whose slot comes first.
func ExampleOptions_keys() {
	rdb, stop := exampleRedis()
	defer stop()
	ctx := context.Background()

	// The X API limits each user token on its own: 900 calls per 15
	// minutes. A pool of three tokens takes 2,700, each call going on the
	// token with the most room.
	b := budget.New(rdb, "api.x.com/timeline", budget.Limit{Rate: 900, Per: 15 * time.Minute, Burst: 5}, &budget.Options{
		Keys: []string{"token-1", "token-2", "token-3"},
	})
	defer b.Close()

	// call reserves a call, makes it with the reservation's key, and
	// reports the upstream's answer through the reservation: it is that
	// key's.
	call := func(status int, h http.Header) string {
		r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err != nil {
			return err.Error()
		}
		defer func() { _ = r.Done(ctx) }()
		// Call the upstream here with r.Key() as the token.
		if err := r.Observe(ctx, h, status); err != nil {
			return err.Error()
		}
		return r.Key()
	}
	ok := http.Header{}
	tooMany := http.Header{"Retry-After": {"60"}}

	fmt.Println("429 on", call(http.StatusTooManyRequests, tooMany)) // that token pauses for a minute
	fmt.Println("401 on", call(http.StatusUnauthorized, ok))         // that token leaves the pool, fleet-wide
	for range 3 {
		fmt.Println("200 on", call(http.StatusOK, ok)) // the token left
	}
	fmt.Println("live keys:", b.Stats().Keys)
	// Output:
	// 429 on token-3
	// 401 on token-2
	// 200 on token-1
	// 200 on token-1
	// 200 on token-1
	// live keys: 2
}
