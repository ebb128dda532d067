package budget_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestRetryAfter: the one reading of a 429's wait, hostile values included.
func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, time.March, 1, 12, 0, 0, 0, time.UTC)
	date := func(d time.Duration) string { return now.Add(d).Format(http.TimeFormat) }
	epoch := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).Unix(), 10) }
	for _, tc := range []struct {
		name string
		h    http.Header
		want time.Duration
	}{
		{"none", http.Header{}, 0},
		{"seconds", http.Header{"Retry-After": {"7"}}, 7 * time.Second},
		{"spaces", http.Header{"Retry-After": {" 7 "}}, 7 * time.Second},
		{"zero", http.Header{"Retry-After": {"0"}}, 0},
		{"negative", http.Header{"Retry-After": {"-1"}}, 0},
		{"fraction", http.Header{"Retry-After": {"1.5"}}, 0},
		{"NaN", http.Header{"Retry-After": {"NaN"}}, 0},
		{"a day", http.Header{"Retry-After": {"86399"}}, 86399 * time.Second},
		{"over a day", http.Header{"Retry-After": {"86401"}}, 0},
		{"99999999999", http.Header{"Retry-After": {"99999999999"}}, 0},
		{"past int64", http.Header{"Retry-After": {"99999999999999999999999"}}, 0},
		{"date", http.Header{"Retry-After": {date(90 * time.Second)}}, 90 * time.Second},
		{"date past", http.Header{"Retry-After": {date(-time.Minute)}}, 0},
		{"date 50 years out", http.Header{"Retry-After": {date(50 * 365 * 24 * time.Hour)}}, 0},
		{"date far past", http.Header{"Retry-After": {"Mon, 01 Jan 1900 00:00:00 GMT"}}, 0},
		{"twice, longest counts", http.Header{"Retry-After": {"3", "9"}}, 9 * time.Second},
		{"twice, one huge", http.Header{"Retry-After": {"99999999999", "30"}}, 30 * time.Second},
		{"twice, one unreadable", http.Header{"Retry-After": {"soon", "30"}}, 30 * time.Second},
		{"joined", http.Header{"Retry-After": {"3, 9"}}, 0},
		{"reset", http.Header{"X-Rate-Limit-Remaining": {"0"}, "X-Rate-Limit-Reset": {epoch(5 * time.Minute)}}, 5 * time.Minute},
		{"reset years out", http.Header{"X-Ratelimit-Remaining": {"0"}, "X-Ratelimit-Reset": {epoch(50 * 365 * 24 * time.Hour)}}, 0},
		{"malformed Retry-After, reset", http.Header{"Retry-After": {"99999999999"}, "X-Rate-Limit-Reset": {epoch(time.Minute)}}, time.Minute},
	} {
		if got := budget.RetryAfter(tc.h, now); got != tc.want {
			t.Errorf("%s: RetryAfter(%v) = %v; want %v", tc.name, tc.h, got, tc.want)
		}
	}
}

// TestPauseForObserved: a 429 reported to Observe and returned as an
// Observed RateLimitedError pauses the budget once.
func TestPauseForObserved(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb, "observed", budget.Limit{Rate: 10, Per: time.Minute}, nil)
	ctx := context.Background()
	h := http.Header{"Retry-After": {"30"}}
	now := redisNow(t, rdb)
	if err := b.Observe(ctx, h, http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	pause := field(t, rdb, b, "pause")
	err := fmt.Errorf("GET /a: %w", &budget.RateLimitedError{RetryAfter: budget.RetryAfter(h, time.Now()), Observed: true})
	if paused, err := b.PauseFor(ctx, err); !paused || err != nil {
		t.Errorf("PauseFor(an Observed 429) = %v, %v; want true, nil", paused, err)
	}
	if got := field(t, rdb, b, "pause"); got != pause {
		t.Errorf("the pause moved by %v; want it where Observe put it", time.Duration(got-pause)*time.Microsecond)
	}
	if d := time.Duration(pause-now) * time.Microsecond; d < 30*time.Second || d > 31*time.Second {
		t.Errorf("paused for %v; want 30s", d)
	}
	if n := b.Stats().PausesRateLimited; n != 1 {
		t.Errorf("PausesRateLimited = %d; want 1", n)
	}
	if !errors.Is(err, budget.ErrRateLimited) {
		t.Errorf("%v: not ErrRateLimited", err)
	}
}

// TestRequestsHeadroomCaps: "N requests remaining until the reset" as
// OpenAI, Anthropic and the IETF draft state it caps the calls, as X's and
// GitHub's counts do: none left for 30s, a Wait that cannot wait so long
// is refused.
func TestRequestsHeadroomCaps(t *testing.T) {
	for name, h := range map[string]http.Header{
		"OpenAI": {"X-Ratelimit-Remaining-Requests": {"0"}, "X-Ratelimit-Reset-Requests": {"30s"},
			"X-Ratelimit-Limit-Requests": {"500"}},
		"Anthropic": {"Anthropic-Ratelimit-Requests-Remaining": {"0"},
			"Anthropic-Ratelimit-Requests-Reset": {time.Now().Add(30 * time.Second).UTC().Format(time.RFC3339)}},
		"IETF": {"Ratelimit-Remaining": {"0"}, "Ratelimit-Reset": {"30"}},
	} {
		t.Run(name, func(t *testing.T) {
			_, rdb := redistest.Mini(t)
			b := budget.New(rdb, "headroom", budget.Limit{Rate: 100, Burst: 10}, nil)
			defer b.Close()
			ctx := context.Background()
			if err := b.Observe(ctx, h, http.StatusOK); err != nil {
				t.Fatal(err)
			}
			if n := b.Stats().PullDowns; n != 1 {
				t.Errorf("PullDowns %d after a response with no requests left; want 1", n)
			}
			wctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if err := b.Wait(wctx, budget.Foreground); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Wait within 1s of 0 requests left for 30s: %v; want refused", err)
			}
		})
	}
}

// headroom429s are 429s whose only stated wait is a reset of the calls'
// window in OpenAI's, Anthropic's or the IETF's headers, 20 s away.
func headroom429s() map[string]http.Header {
	return map[string]http.Header{
		"OpenAI": {"X-Ratelimit-Limit-Requests": {"100"}, "X-Ratelimit-Remaining-Requests": {"0"},
			"X-Ratelimit-Reset-Requests": {"20s"}},
		// RFC 3339 in whole seconds: the reset, 20 s from now, rounded
		// up, not down (which would take up to a second off).
		"Anthropic": {"Anthropic-Ratelimit-Requests-Remaining": {"0"},
			"Anthropic-Ratelimit-Requests-Reset": {time.Now().Add(20 * time.Second).Truncate(time.Second).Add(time.Second).UTC().Format(time.RFC3339)}},
		"IETF":        {"Ratelimit-Remaining": {"0"}, "Ratelimit-Reset": {"20"}},
		"IETF policy": {"Ratelimit": {`"default";r=0;t=20`}},
	}
}

// TestHeadroom429Pauses: a 429 whose wait is stated only by OpenAI's,
// Anthropic's or the IETF's reset of the calls' window pauses the fleet
// until that reset, as a 429 with an X or GitHub reset does; with Adaptive
// it cuts no rate. It used to be read as a 429 stating no wait: a pause of
// one Per, taken at Per = 1 s for an overshoot (201 ms), or with Adaptive a
// cut of the rate and no pause, while the upstream refused calls for 20 s.
func TestHeadroom429Pauses(t *testing.T) {
	for name := range headroom429s() {
		t.Run(name, func(t *testing.T) {
			_, rdb := redistest.Mini(t)
			b := newBudget(t, rdb, "headroom429", budget.Limit{Rate: 5}, nil)
			// Headers made now: a reset stated as a time counts from then.
			h := headroom429s()[name]
			now := redisNow(t, rdb)
			if err := b.Observe(context.Background(), h, http.StatusTooManyRequests); err != nil {
				t.Fatal(err)
			}
			if p := field(t, rdb, b, "pause") - now; p < 19e6 {
				t.Errorf("paused %d µs; want the stated 20 s", p)
			}
			if n := b.Stats().Overshoots; n != 0 {
				t.Errorf("%d overshoots; want none (the wait was stated)", n)
			}
		})
		t.Run(name+"/Adaptive", func(t *testing.T) {
			e := newAdaptive(t, "headroom429")
			h := headroom429s()[name]
			now := redisNow(t, e.rdb)
			e.observe(t, context.Background(), h, http.StatusTooManyRequests)
			if n := e.b.Stats().RateCuts; n != 0 {
				t.Errorf("%d rate cuts; want none (the wait was stated)", n)
			}
			if p := field(t, e.rdb, e.b, "pause") - now; p < 19e6 {
				t.Errorf("paused %d µs; want the stated 20 s", p)
			}
		})
	}
}

// TestIETFBindingPolicy: of several IETF RateLimit policies, the one that
// binds caps the calls, wherever it stands in the list. Only the first was
// read: a per-second policy with room left hid an hour's with none.
func TestIETFBindingPolicy(t *testing.T) {
	for _, field := range []string{`"sec";r=5;t=1, "hour";r=0;t=1800`, `"hour";r=0;t=1800, "sec";r=5;t=1`} {
		t.Run(field, func(t *testing.T) {
			_, rdb := redistest.Mini(t)
			b := newBudget(t, rdb, "ietf-policies", budget.Limit{Rate: 5}, nil)
			h := http.Header{"Ratelimit-Policy": {`"sec";q=5;w=1, "hour";q=1000;w=3600`}, "Ratelimit": {field}}
			ctx := context.Background()
			if err := b.Observe(ctx, h, http.StatusOK); err != nil {
				t.Fatal(err)
			}
			wctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if err := b.Wait(wctx, budget.Foreground); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Wait with no call left for 30 min: %v; want refused", err)
			}
		})
	}
}

// TestBare429OnePer: a 429 that states no wait, or a PauseFor with none,
// pauses for one Per, as documented, also when Per is 1 s: one Per of 1 s
// was taken for the whole second a Retry-After rounds a shorter wait up
// to, and so for an overshoot: a pause of one interval (200 ms at 5/s).
func TestBare429OnePer(t *testing.T) {
	for name, pause := range map[string]func(context.Context, *budget.Budget) error{
		"Observe": func(ctx context.Context, b *budget.Budget) error {
			return b.Observe(ctx, http.Header{}, http.StatusTooManyRequests)
		},
		"PauseFor": func(ctx context.Context, b *budget.Budget) error {
			_, err := b.PauseFor(ctx, &budget.RateLimitedError{})
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, rdb := redistest.Mini(t)
			b := newBudget(t, rdb, "bare429", budget.Limit{Rate: 5}, nil) // Per 1 s
			now := redisNow(t, rdb)
			if err := pause(context.Background(), b); err != nil {
				t.Fatal(err)
			}
			if p := field(t, rdb, b, "pause") - now; p < 900_000 {
				t.Errorf("paused %d µs; want one Per (1 s)", p)
			}
			if n := b.Stats().Overshoots; n != 0 {
				t.Errorf("%d overshoots; want none", n)
			}
		})
	}
}

// TestCapCountsBookedBySpacing: the calls already booked that a cap counts
// against the upstream's remaining calls are counted at the schedule's
// spacing: T plus the slack learned from overshoots, or the learned
// interval under Adaptive. They were counted one per T: with slots 2T
// apart, ten booked counted as twenty, and of fifteen calls left (five
// free) none was allowed before the reset a minute away.
func TestCapCountsBookedBySpacing(t *testing.T) {
	for _, mode := range []string{"slack", "learned interval"} {
		t.Run(mode, func(t *testing.T) {
			m, rdb := redistest.Mini(t)
			clock := time.Now()
			m.SetTime(clock)
			opt := &budget.Options{Adaptive: mode != "slack"}
			b := newBudget(t, rdb, "cap-spacing", budget.Limit{Rate: 5}, opt) // T = 200 ms
			ctx := context.Background()
			now := redisNow(t, rdb)
			const T = 200_000
			// Ten calls booked ahead, 2T apart.
			f := map[string]any{"tat": strconv.FormatInt(now+10*2*T, 10)}
			if mode == "slack" {
				f["slack"], f["o1"] = strconv.Itoa(T), strconv.FormatInt(now, 10)
			} else {
				f["lt"], f["le"] = strconv.Itoa(2*T), strconv.FormatInt(now+3600e6, 10)
			}
			if err := rdb.HSet(ctx, budget.Key(b), f).Err(); err != nil {
				t.Fatal(err)
			}
			h := http.Header{"X-Rate-Limit-Remaining": {"15"},
				"X-Rate-Limit-Reset": {strconv.FormatInt(clock.Add(time.Minute).Unix(), 10)}}
			if err := b.Observe(ctx, h, http.StatusOK); err != nil {
				t.Fatal(err)
			}
			// The booked calls' spacing counts them between 9 and 10.
			if c := field(t, rdb, b, "cap"); c < 5 || c > 6 {
				t.Errorf("cap %d; want the 5 calls the upstream has free (6 at most)", c)
			}
		})
	}
}
