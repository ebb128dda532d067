package budget

import (
	"net/http"
	"strconv"
	"testing"
	"time"
)

func TestParseFeedback(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	per := 15 * time.Minute
	epoch := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).Unix(), 10) }
	h := func(kv ...string) http.Header {
		h := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	none := feedback{}
	for _, tc := range []struct {
		name   string
		status int
		h      http.Header
		want   feedback
	}{
		{"200 no headers", 200, h(), none},
		{"429 no headers: one Per", 429, h(), feedback{pause: per, cause: rateLimited, unstated: true, perDefault: true}},
		{"429 remaining 0, no reset: one Per", 429, h("X-Rate-Limit-Remaining", "0"), feedback{pause: per, cause: rateLimited, perDefault: true}},
		{"429 Retry-After seconds", 429, h("Retry-After", "7"), feedback{pause: 7 * time.Second, cause: rateLimited}},
		{"429 Retry-After spaces", 429, h("Retry-After", " 7 "), feedback{pause: 7 * time.Second, cause: rateLimited}},
		{"429 Retry-After 0", 429, h("Retry-After", "0"), none},
		{"429 Retry-After HTTP date", 429, h("Retry-After", now.Add(90*time.Second).Format(http.TimeFormat)),
			feedback{pause: 90 * time.Second, cause: rateLimited}},
		{"429 Retry-After date against Date header", 429, h(
			"Retry-After", now.Add(90*time.Second).Format(http.TimeFormat),
			"Date", now.Add(-10*time.Second).Format(http.TimeFormat)),
			feedback{pause: 100 * time.Second, cause: rateLimited}},
		{"429 Retry-After date in the past", 429, h("Retry-After", now.Add(-time.Minute).Format(http.TimeFormat)), none},
		{"429 Retry-After malformed, X reset", 429, h("Retry-After", "soon", "X-Rate-Limit-Reset", epoch(5*time.Minute)),
			feedback{pause: 5 * time.Minute, cause: rateLimited}},
		{"429 Retry-After negative", 429, h("Retry-After", "-3"), feedback{pause: per, cause: rateLimited, unstated: true, perDefault: true}},
		{"429 Retry-After a year", 429, h("Retry-After", "31536000"), feedback{pause: per, cause: rateLimited, unstated: true, perDefault: true}},
		{"429 X headers", 429, h("X-Rate-Limit-Limit", "900", "X-Rate-Limit-Remaining", "0",
			"X-Rate-Limit-Reset", epoch(4*time.Minute)), feedback{pause: 4 * time.Minute, cause: rateLimited}},
		{"429 reset just passed", 429, h("X-Rate-Limit-Remaining", "0", "X-Rate-Limit-Reset", epoch(-time.Second)),
			feedback{pause: time.Second, cause: rateLimited}},
		{"200 X remaining 0", 200, h("X-Rate-Limit-Limit", "900", "X-Rate-Limit-Remaining", "0",
			"X-Rate-Limit-Reset", epoch(3*time.Minute)), feedback{pause: 3 * time.Minute, cause: exhausted}},
		{"200 X remaining 0 against Date", 200, h("X-Rate-Limit-Remaining", "0",
			"X-Rate-Limit-Reset", epoch(3*time.Minute), "Date", now.Add(time.Minute).Format(http.TimeFormat)),
			feedback{pause: 2 * time.Minute, cause: exhausted}},
		{"200 X remaining 0, no reset", 200, h("X-Rate-Limit-Remaining", "0"), feedback{pause: per, cause: exhausted}},
		{"200 X remaining 0, reset passed", 200, h("X-Rate-Limit-Remaining", "0", "X-Rate-Limit-Reset", epoch(-time.Minute)), none},
		{"200 X remaining 12", 200, h("X-Rate-Limit-Limit", "900", "X-Rate-Limit-Remaining", "12",
			"X-Rate-Limit-Reset", epoch(2*time.Minute)), feedback{pull: true, remaining: 12, reset: 2 * time.Minute}},
		{"200 GitHub remaining 0", 200, h("X-Ratelimit-Limit", "5000", "X-Ratelimit-Remaining", "0",
			"X-Ratelimit-Used", "5000", "X-Ratelimit-Reset", epoch(20*time.Minute)),
			feedback{pause: 20 * time.Minute, cause: exhausted}},
		{"403 GitHub remaining 0", 403, h("X-Ratelimit-Limit", "5000", "X-Ratelimit-Remaining", "0",
			"X-Ratelimit-Reset", epoch(20*time.Minute)), feedback{pause: 20 * time.Minute, cause: rateLimited}},
		{"403 GitHub secondary limit", 403, h("Retry-After", "60", "X-Ratelimit-Remaining", "4000",
			"X-Ratelimit-Reset", epoch(20*time.Minute)), feedback{pause: time.Minute, cause: rateLimited}},
		{"403 not a rate limit", 403, h("X-Ratelimit-Remaining", "4000", "X-Ratelimit-Reset", epoch(20*time.Minute)),
			feedback{pull: true, remaining: 4000, reset: 20 * time.Minute}},
		{"403 no headers", 403, h(), none},
		{"200 GitHub used of limit", 200, h("X-Ratelimit-Limit", "5000", "X-Ratelimit-Used", "4990",
			"X-Ratelimit-Reset", epoch(time.Minute)), feedback{pull: true, remaining: 10, reset: time.Minute}},
		{"200 GitHub used above limit", 200, h("X-Ratelimit-Limit", "5000", "X-Ratelimit-Used", "5001",
			"X-Ratelimit-Reset", epoch(time.Minute)), none},
		{"200 remaining malformed", 200, h("X-Rate-Limit-Remaining", "lots", "X-Rate-Limit-Reset", epoch(time.Minute)), none},
		{"200 remaining negative", 200, h("X-Rate-Limit-Remaining", "-1", "X-Rate-Limit-Reset", epoch(time.Minute)), none},
		{"200 reset malformed", 200, h("X-Rate-Limit-Remaining", "3", "X-Rate-Limit-Reset", "tomorrow"), none},
		{"200 reset in milliseconds", 200, h("X-Rate-Limit-Remaining", "3",
			"X-Rate-Limit-Reset", strconv.FormatInt(now.Add(time.Minute).UnixMilli(), 10)), none},
		{"200 remaining without reset", 200, h("X-Rate-Limit-Remaining", "3"), none},
		{"200 Retry-After ignored", 200, h("Retry-After", "30"), none},
		{"503 Retry-After ignored", 503, h("Retry-After", "30"), none},
		{"200 Date malformed", 200, h("X-Rate-Limit-Remaining", "0", "X-Rate-Limit-Reset", epoch(time.Minute), "Date", "yesterday"),
			feedback{pause: time.Minute, cause: exhausted}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := parseFeedback(tc.h, tc.status, now, per); got != tc.want {
				t.Errorf("got %+v; want %+v", got, tc.want)
			}
		})
	}
}

func TestInterval(t *testing.T) {
	for _, tc := range []struct {
		l    Limit
		want time.Duration
	}{
		{Limit{Rate: 200, Per: time.Second}, 5 * time.Millisecond},
		{Limit{Rate: 3, Per: time.Second}, 333334 * time.Microsecond},
		{Limit{Rate: 900, Per: 15 * time.Minute}, time.Second},
		{Limit{Rate: 1000000, Per: time.Second}, time.Microsecond},
		{Limit{Rate: 7, Per: 10 * time.Microsecond}, 2 * time.Microsecond},
	} {
		if got := interval(tc.l); got != tc.want {
			t.Errorf("interval(%+v) = %v; want %v", tc.l, got, tc.want)
		}
	}
}

// TestResetWithinTheSecond: a Date header counts whole seconds; a reset a
// fraction of a second away is read against this server's clock when the
// two clocks agree to the second.
func TestResetWithinTheSecond(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 600_000_000, time.UTC)
	h := http.Header{}
	h.Set("Date", now.Format(http.TimeFormat)) // 12:00:00
	h.Set("X-Rate-Limit-Remaining", "0")
	h.Set("X-Rate-Limit-Reset", strconv.FormatInt(now.Truncate(time.Second).Add(time.Second).Unix(), 10))
	got := parseFeedback(h, 200, now, time.Second)
	if want := 400 * time.Millisecond; got.pause != want {
		t.Errorf("pause %v; want %v, to the reset by this server's clock", got.pause, want)
	}
	// Clocks a minute apart: the upstream's Date places the reset.
	h.Set("Date", now.Add(-time.Minute).Format(http.TimeFormat))
	h.Set("X-Rate-Limit-Reset", strconv.FormatInt(now.Add(-time.Minute).Truncate(time.Second).Add(time.Second).Unix(), 10))
	if got := parseFeedback(h, 200, now, time.Second); got.pause != time.Second {
		t.Errorf("clocks apart: pause %v; want 1s, from the Date header", got.pause)
	}
}
