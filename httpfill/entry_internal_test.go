package httpfill

import (
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestEntryResponse(t *testing.T) {
	at := time.Date(2026, time.March, 1, 12, 0, 0, 0, time.UTC)
	e := &entry{Status: "200 OK", Code: 200, Header: http.Header{"Age": {"10"}, "X": {"1"}}, Body: []byte("hello"), Length: 5, At: at.UnixMilli()}
	tests := []struct {
		name   string
		method string
		after  time.Duration
		age    string
		body   string
		length int64
	}{
		{"fresh", http.MethodGet, 999 * time.Millisecond, "10", "hello", 5},
		{"cached 90s", http.MethodGet, 90 * time.Second, "100", "hello", 5},
		{"HEAD", http.MethodHead, 0, "10", "", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, "http://api.test/", nil)
			r := e.response(req, at.Add(tt.after))
			b, _ := io.ReadAll(r.Body)
			if got := r.Header.Get("Age"); got != tt.age || string(b) != tt.body || r.ContentLength != tt.length || r.Request != req {
				t.Errorf("Age %q, body %q, ContentLength %d; want %q, %q, %d, and the request", got, b, r.ContentLength, tt.age, tt.body, tt.length)
			}
			r.Header.Set("X", "2")
			if e.Header.Get("X") != "1" || e.Header.Get("Age") != "10" {
				t.Errorf("the entry's header changed with a response's: %v", e.Header)
			}
		})
	}
}

// TestEntryResponseHostileAge: the Age a response is served with counts
// the upstream's Age as RFC 9111 reads it (unreadable: 0; too large:
// 2^31 seconds), never wrapping past the largest integer into a negative.
func TestEntryResponseHostileAge(t *testing.T) {
	at := time.Date(2026, time.March, 1, 12, 0, 0, 0, time.UTC)
	for _, tt := range []struct{ upstream, want string }{
		{"9223372036854775807", "2147483738"},
		{"99999999999999999999999", "2147483738"},
		{"2147483647", "2147483737"},
		{"-5", "90"},
		{"ten", "90"},
		{" 7 ", "97"},
	} {
		e := &entry{Status: "200 OK", Code: 200, Header: http.Header{"Age": {tt.upstream}}, Body: []byte("x"), Length: 1, At: at.UnixMilli()}
		req, _ := http.NewRequest(http.MethodGet, "http://api.test/", nil)
		if got := e.response(req, at.Add(90*time.Second)).Header.Get("Age"); got != tt.want {
			t.Errorf("upstream Age %q, cached 90s: Age %q; want %q", tt.upstream, got, tt.want)
		}
	}
}

// TestCanonicalHostile: a header map of many odd spellings is read in
// time linear in its size, give or take a sort.
func TestCanonicalHostile(t *testing.T) {
	h := make(http.Header)
	for i := range 20000 {
		h["x-key-"+strconv.Itoa(i)] = []string{"v"}
		h["X-KEY-"+strconv.Itoa(i)] = []string{"w"}
	}
	req := &http.Request{Method: http.MethodGet, URL: &url.URL{Scheme: "http", Host: "api.test", Path: "/a"}, Header: h}
	done := make(chan string, 1)
	go func() { done <- DefaultKey(req) }()
	select {
	case k := <-done:
		if !strings.HasPrefix(k, "GET http://api.test/a ") {
			t.Errorf("DefaultKey = %q", k)
		}
	case <-time.After(time.Minute):
		t.Fatal("DefaultKey of 40000 odd header names took over a minute")
	}
	if got := canonical(h)["X-Key-7"]; !slices.Equal(got, []string{"w", "v"}) {
		t.Errorf("canonical: X-Key-7 = %q; want [w v], the spellings in sorted order", got)
	}
}

// TestLifetimeHostileDates: an Expires or Date far out (year 1, year 9999:
// what a zero or a maximal time formats to) neither saturates the
// response's lifetime nor wraps it once its Age is taken: one in the past
// is not stored, one far ahead is stored (for MaxTTL, by the caller).
func TestLifetimeHostileDates(t *testing.T) {
	now := time.Date(2026, time.March, 1, 12, 0, 0, 0, time.UTC)
	req, _ := http.NewRequest(http.MethodGet, "http://api.test/", nil)
	for _, tt := range []struct {
		name               string
		expires, date, age string
		store              bool
	}{
		{"Expires year 1, Age 1", "Mon, 01 Jan 0001 00:00:00 GMT", now.Format(http.TimeFormat), "1", false},
		{"Date year 9999", now.Format(http.TimeFormat), "Fri, 31 Dec 9999 23:59:59 GMT", "1", false},
		{"Expires year 9999", "Fri, 31 Dec 9999 23:59:59 GMT", now.Format(http.TimeFormat), "1", true},
		{"Expires year 9999, Age huge", "Fri, 31 Dec 9999 23:59:59 GMT", now.Format(http.TimeFormat), "99999999999999999999", false},
	} {
		resp := &http.Response{StatusCode: 200, Header: http.Header{"Expires": {tt.expires}, "Date": {tt.date}, "Age": {tt.age}}}
		if ttl, store := lifetime(req, resp, now); store != tt.store || ttl < 0 {
			t.Errorf("%s: lifetime %v, store %v; want store %v", tt.name, ttl, store, tt.store)
		}
	}
}
