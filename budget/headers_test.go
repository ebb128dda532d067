package budget

import (
	"net/http"
	"reflect"
	"strconv"
	"testing"
	"time"
)

func TestReadHeadroom(t *testing.T) {
	ref := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	epoch := func(d time.Duration) string { return strconv.FormatInt(ref.Add(d).Unix(), 10) }
	tests := []struct {
		name string
		h    map[string]string
		want []headroom
	}{
		{"none", nil, nil},
		{"X API", map[string]string{
			"x-rate-limit-limit": "900", "x-rate-limit-remaining": "17", "x-rate-limit-reset": epoch(time.Minute),
		}, []headroom{{limit: 900, remaining: 17, reset: time.Minute}}},
		{"GitHub", map[string]string{
			"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "4999", "x-ratelimit-used": "1",
			"x-ratelimit-reset": epoch(30 * time.Minute), "x-ratelimit-resource": "core",
		}, []headroom{{limit: 5000, remaining: 4999, reset: 30 * time.Minute}}},
		{"GitHub used of limit", map[string]string{
			"x-ratelimit-limit": "5000", "x-ratelimit-used": "4990", "x-ratelimit-reset": epoch(time.Hour - time.Second),
		}, []headroom{{limit: 5000, remaining: 10, reset: time.Hour - time.Second}}},
		{"OpenAI", map[string]string{
			"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499",
			"x-ratelimit-reset-requests": "120ms",
			"x-ratelimit-limit-tokens":   "200000", "x-ratelimit-remaining-tokens": "150000",
			"x-ratelimit-reset-tokens": "6m0s",
		}, []headroom{
			{limit: 500, remaining: 499, reset: 120 * time.Millisecond},
			{meter: "tokens", limit: 200000, remaining: 150000, reset: 6 * time.Minute},
		}},
		{"Anthropic", map[string]string{
			"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "49",
			"anthropic-ratelimit-requests-reset":          ref.Add(time.Second).Format(time.RFC3339),
			"anthropic-ratelimit-input-tokens-limit":      "40000",
			"anthropic-ratelimit-input-tokens-remaining":  "39000",
			"anthropic-ratelimit-input-tokens-reset":      ref.Add(2 * time.Second).Format(time.RFC3339),
			"anthropic-ratelimit-output-tokens-limit":     "8000",
			"anthropic-ratelimit-output-tokens-remaining": "0",
			"anthropic-ratelimit-output-tokens-reset":     ref.Add(3 * time.Second).Format(time.RFC3339),
		}, []headroom{
			{limit: 50, remaining: 49, reset: time.Second},
			{meter: "input-tokens", limit: 40000, remaining: 39000, reset: 2 * time.Second},
			{meter: "output-tokens", limit: 8000, remaining: 0, reset: 3 * time.Second},
		}},
		{"IETF separate fields", map[string]string{
			"ratelimit-limit": "100", "ratelimit-remaining": "3", "ratelimit-reset": "7",
		}, []headroom{{limit: 100, remaining: 3, reset: 7 * time.Second}}},
		{"IETF dictionary", map[string]string{
			"ratelimit": "limit=100, remaining=3, reset=7",
		}, []headroom{{limit: 100, remaining: 3, reset: 7 * time.Second}}},
		{"IETF named policies", map[string]string{
			"ratelimit-policy": `"burst";q=100;w=60, "daily";q=1000;w=86400, "bytes";q=1000000;w=60;qu="content-bytes"`,
			"ratelimit":        `"burst";r=50;t=30, "daily";r=900;t=3600, "bytes";r=5;t=1`,
		}, []headroom{{remaining: 50, reset: 30 * time.Second}, {remaining: 900, reset: time.Hour}}},
		{"a reset already passed", map[string]string{
			"x-rate-limit-remaining": "0", "x-rate-limit-reset": epoch(-time.Minute),
		}, []headroom{{remaining: 0, reset: 0}}},
		{"a delta where an epoch belongs", map[string]string{
			"x-ratelimit-remaining": "2", "x-ratelimit-reset": "60",
		}, []headroom{{remaining: 2, reset: time.Minute}}},

		// Hostile or malformed values are ignored as if absent.
		{"reset ten years away", map[string]string{
			"x-rate-limit-remaining": "5", "x-rate-limit-reset": epoch(10 * 365 * 24 * time.Hour),
		}, []headroom{{remaining: 5}}},
		{"reset a day away", map[string]string{
			"ratelimit-remaining": "5", "ratelimit-reset": "86400",
		}, []headroom{{remaining: 5}}},
		{"negative remaining", map[string]string{"x-rate-limit-remaining": "-1"}, nil},
		{"huge remaining", map[string]string{"x-rate-limit-remaining": "99999999999999999999999"}, nil},
		{"remaining past 2^53", map[string]string{"x-ratelimit-remaining-tokens": "9007199254740993"}, nil},
		{"not a number", map[string]string{"x-rate-limit-remaining": "lots", "ratelimit-remaining": "1e3"}, nil},
		{"negative duration", map[string]string{
			"x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "-5s",
		}, []headroom{{meter: "tokens", remaining: 10}}},
		{"duration of years", map[string]string{
			"x-ratelimit-remaining-requests": "10", "x-ratelimit-reset-requests": "87600h",
		}, []headroom{{remaining: 10}}},
		{"date not RFC 3339", map[string]string{
			"anthropic-ratelimit-tokens-remaining": "10", "anthropic-ratelimit-tokens-reset": "tomorrow",
		}, []headroom{{meter: "tokens", remaining: 10}}},
		{"unbalanced quotes", map[string]string{"ratelimit": `"a;r=5;t=1`}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tt.h {
				h.Set(k, v)
			}
			got := readHeadroom(h, ref)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("readHeadroom = %+v; want %+v", got, tt.want)
			}
		})
	}
}

// FuzzReadHeadroom feeds arbitrary values to every header readHeadroom
// reads: it never panics, and whatever it returns is within the bounds.
func FuzzReadHeadroom(f *testing.F) {
	f.Add("17", "1767000000", "6m0s", "2026-12-05T12:00:01Z", `"d";r=5;t=3`, `"d";q=10;w=1`)
	f.Add("-1", "99999999999", "-1h", "garbage", `limit=1, remaining=0, reset=1`, `qu="content-bytes"`)
	ref := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, remaining, epoch, dur, date, field, policy string) {
		h := http.Header{}
		for _, k := range []string{"X-Rate-Limit-Remaining", "X-Ratelimit-Remaining", "X-Ratelimit-Remaining-Tokens",
			"Anthropic-Ratelimit-Tokens-Remaining", "Ratelimit-Remaining", "X-Ratelimit-Limit", "X-Ratelimit-Used"} {
			h.Set(k, remaining)
		}
		h.Set("X-Rate-Limit-Reset", epoch)
		h.Set("X-Ratelimit-Reset", epoch)
		h.Set("Ratelimit-Reset", epoch)
		h.Set("X-Ratelimit-Reset-Tokens", dur)
		h.Set("Anthropic-Ratelimit-Tokens-Reset", date)
		h.Set("Ratelimit", field)
		h.Set("Ratelimit-Policy", policy)
		for _, hr := range readHeadroom(h, ref) {
			if hr.remaining < 0 || hr.remaining >= maxCount || hr.limit < 0 || hr.limit >= maxCount {
				t.Fatalf("count out of bounds: %+v", hr)
			}
			if hr.reset < 0 || hr.reset >= maxHeaderWait {
				t.Fatalf("reset out of bounds: %+v", hr)
			}
		}
	})
}
