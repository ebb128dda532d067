package httpfill_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/httpfill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// pauseWatch records upstream calls that arrive while the budget's pause,
// read from Redis on the Redis clock, is still in force.
type pauseWatch struct {
	rdb redis.UniversalClient
	key string

	mu         sync.Mutex // guards violations
	violations []string
}

func (w *pauseWatch) check(what string) {
	ctx := context.Background()
	now, err := w.rdb.Time(ctx).Result()
	if err != nil {
		panic(err)
	}
	s, err := w.rdb.HGet(ctx, w.key, "pause").Result()
	if err == redis.Nil {
		return
	}
	if err != nil {
		panic(err)
	}
	pause, _ := strconv.ParseInt(s, 10, 64)
	if left := pause - now.UnixMicro(); left > 0 {
		w.mu.Lock()
		w.violations = append(w.violations, fmt.Sprintf("%s %v before the pause's end", what, time.Duration(left)*time.Microsecond))
		w.mu.Unlock()
	}
}

// TestTransportBudgetGoverns: a Transport's loads obey its Options.Budget
// whatever the Cache holds (no budget, or another one): after a 429 on one
// server, no load of another server reaches the upstream before the pause
// ends, and the load that met the 429 is retried.
func TestTransportBudgetGoverns(t *testing.T) {
	redistest.Require(t)
	for _, cacheBudget := range []string{"none", "another"} {
		t.Run(cacheBudget, func(t *testing.T) {
			srv := redistest.Start(t, nil)
			rdbA, rdbB := srv.Client(t, nil), srv.Client(t, nil)
			w := &pauseWatch{rdb: srv.Client(t, nil), key: "__locksmith:{api}:budget"}
			var n atomic.Int32
			u := newUpstream(t, false, func(rw http.ResponseWriter, r *http.Request) {
				w.check(r.URL.Path)
				if n.Add(1) == 1 {
					rw.Header().Set("Retry-After", "1")
					rw.WriteHeader(http.StatusTooManyRequests)
					return
				}
				_, _ = io.WriteString(rw, "hello")
			})
			limit := budget.Limit{Rate: 100, Per: 100 * time.Millisecond, Burst: 10}
			bA := budget.New(rdbA, "api", limit, nil)
			bB := budget.New(rdbB, "api", limit, nil)
			t.Cleanup(func() { _ = bA.Close(); _ = bB.Close() })
			var optA, optB *fill.Options
			if cacheBudget == "another" {
				other := budget.New(rdbA, "other", limit, nil)
				t.Cleanup(func() { _ = other.Close() })
				optA, optB = &fill.Options{Budget: other}, &fill.Options{Budget: other}
			}
			ca := newClient(u, newCache(t, rdbA, optA), &httpfill.Options{Budget: bA})
			cb := newClient(u, newCache(t, rdbB, optB), &httpfill.Options{Budget: bB})

			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			ra := goDo(ctx, ca, 1, http.MethodGet, u.url("/a"))
			// A 429 asking for a second may be taken for an overshoot (a pause of
			// one interval) or pause for the second: either is a pause.
			redistest.WaitFor(t, "the 429 observed", func() bool {
				s := bA.Stats()
				return s.PausesRateLimited+s.Overshoots == 1
			})
			if r := do(ctx, cb, http.MethodGet, u.url("/b")); r.err != nil || r.body != "hello" {
				t.Errorf("server b: %q, %v; want hello", r.body, r.err)
			}
			if r := <-ra; r.err != nil || r.body != "hello" {
				t.Errorf("server a: %q, %v; want hello, the load retried after the pause", r.body, r.err)
			}
			w.mu.Lock()
			defer w.mu.Unlock()
			for _, v := range w.violations {
				t.Errorf("upstream call to %s", v)
			}
			if got := n.Load(); got != 3 {
				t.Errorf("upstream calls = %d; want 3", got)
			}
		})
	}
}
