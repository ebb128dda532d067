package httpfill_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/httpfill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// roundTripFunc is an http.RoundTripper.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// reservations records the reservation each upstream request ran under,
// by method and path.
type reservations struct {
	mu   sync.Mutex
	seen map[string]*budget.Reservation
}

func (rs *reservations) base(next http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		rs.mu.Lock()
		rs.seen[r.Method+" "+r.URL.Path] = budget.FromContext(r.Context())
		rs.mu.Unlock()
		return next.RoundTrip(r)
	})
}

func (rs *reservations) of(what string) *budget.Reservation {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.seen[what]
}

// TestTransportCost: a request's Options.Cost is its estimate, booked in
// the budget before it goes, load or pass-through; Base runs under the
// reservation; the upstream's "tokens remaining" headers, observed through
// it, cap the meter.
func TestTransportCost(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	// 10000 tokens a minute, burst 10000: 6ms a token.
	b := budget.New(rdb, "api", budget.Limit{Rate: 1000, Burst: 100}, &budget.Options{
		Meters: map[string][]budget.Limit{"tokens": {{Rate: 10000, Per: time.Minute, Burst: 10000}}},
	})
	t.Cleanup(func() { _ = b.Close() })
	// OpenAI's headers: the GET leaves 500 tokens until the reset, 6
	// minutes away; the POST, 150 tokens, 350.
	u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		left := "500"
		if r.Method == http.MethodPost {
			left = "350"
		}
		w.Header().Set("x-ratelimit-limit-tokens", "10000")
		w.Header().Set("x-ratelimit-remaining-tokens", left)
		w.Header().Set("x-ratelimit-reset-tokens", "6m0s")
		_, _ = io.WriteString(w, "hello")
	})
	rs := &reservations{seen: map[string]*budget.Reservation{}}
	var costed []string
	var mu sync.Mutex
	tr := httpfill.New(newCache(t, rdb, nil), &httpfill.Options{
		Budget: b,
		Base:   rs.base(u.srv.Client().Transport),
		Cost: func(r *http.Request) budget.Cost {
			mu.Lock()
			costed = append(costed, r.Method)
			mu.Unlock()
			n, _ := strconv.ParseInt(r.Header.Get("X-Tokens"), 10, 64)
			return budget.Cost{Meters: map[string]int64{"tokens": n}}
		},
	})
	c := &http.Client{Transport: tr}
	ctx := redistest.Context(t, 20*time.Second)

	if r := do(ctx, c, http.MethodGet, u.url("/a"), "X-Tokens", "300"); r.err != nil || r.body != "hello" {
		t.Fatalf("GET: %q, %v", r.body, r.err)
	}
	if rs.of("GET /a") == nil {
		t.Error("the load's request carried no reservation")
	}
	// The estimate is booked; the 500 tokens remaining cap the meter.
	if n := callsBooked(t, s, "__locksmith:{api}:budget", 6*time.Millisecond, "m:tokens:0"); n < 250 || n > 302 {
		t.Errorf("tokens booked = %d after a GET estimated at 300; want 300", n)
	}
	if st := b.Stats(); st.PullDowns != 1 || st.Waits != 1 {
		t.Errorf("budget: %d pull-downs, %d waits after the GET; want 1 each: its response observed", st.PullDowns, st.Waits)
	}

	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, u.url("/b"), nil)
	req.Header.Set("X-Tokens", "150")
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("the POST of 150 tokens of 500 remaining took %v; want it at once", d)
	}
	if rs.of("POST /b") == nil {
		t.Error("the pass-through request carried no reservation")
	}
	if resp.Request != req {
		t.Error("the response's Request is not the caller's")
	}
	// 350 tokens left until the reset: 400 more must wait for it, 6
	// minutes away; 300 go at once.
	refuse, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if r, err := b.Reserve(refuse, budget.Foreground, budget.Cost{Meters: map[string]int64{"tokens": 400}}); !errors.Is(err, context.DeadlineExceeded) {
		_ = r.Cancel(ctx)
		t.Errorf("Reserve of 400 tokens with 350 remaining = %v; want DeadlineExceeded", err)
	}
	r, err := b.Reserve(refuse, budget.Foreground, budget.Cost{Meters: map[string]int64{"tokens": 300}})
	if err != nil {
		t.Errorf("Reserve of 300 tokens with 350 remaining: %v", err)
	} else {
		_ = r.Done(ctx)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(costed) != "[GET POST]" {
		t.Errorf("Cost called for %v; want [GET POST]", costed)
	}
}

// TestTransportSpent: a Base that learns what a call spent reports it to
// the reservation its request carries, loads and pass-throughs alike: the
// meter holds what was spent, not the estimate.
func TestTransportSpent(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	b := budget.New(rdb, "api", budget.Limit{Rate: 1000, Burst: 100}, &budget.Options{
		Meters: map[string][]budget.Limit{"tokens": {{Rate: 10000, Per: time.Minute, Burst: 10000}}},
	})
	t.Cleanup(func() { _ = b.Close() })
	u := newUpstream(t, false, hello)
	next := u.srv.Client().Transport
	tr := httpfill.New(newCache(t, rdb, &fill.Options{Budget: b}), &httpfill.Options{
		Base: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			resp, err := next.RoundTrip(r)
			if err == nil {
				budget.FromContext(r.Context()).Spent(budget.Cost{Meters: map[string]int64{"tokens": 100}})
			}
			return resp, err
		}),
		Cost: func(*http.Request) budget.Cost { return budget.Cost{Meters: map[string]int64{"tokens": 400}} },
	})
	c := &http.Client{Transport: tr}
	mustDo(t, c, http.MethodGet, u.url("/a"))
	mustDo(t, c, http.MethodPost, u.url("/b"))
	if n := callsBooked(t, s, "__locksmith:{api}:budget", 6*time.Millisecond, "m:tokens:0"); n < 150 || n > 202 {
		t.Errorf("tokens booked = %d after two requests estimated at 400 spent 100 each; want 200", n)
	}
}

// callsBooked returns how many emission intervals of per the field f of
// the budget hash key lies ahead of the Redis clock, rounded down.
func callsBooked(t *testing.T, s *redistest.Server, key string, per time.Duration, f string) int64 {
	t.Helper()
	v, _ := s.Do(t, "HGET", key, f).(string)
	tat, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatalf("HGET %s %s = %q: %v", key, f, v, err)
	}
	reply, _ := s.Do(t, "TIME").([]any)
	if len(reply) != 2 {
		t.Fatalf("TIME = %v", reply)
	}
	sec, _ := strconv.ParseInt(fmt.Sprint(reply[0]), 10, 64)
	us, _ := strconv.ParseInt(fmt.Sprint(reply[1]), 10, 64)
	return (tat - (sec*1e6 + us)) / per.Microseconds()
}
