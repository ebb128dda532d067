package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/locksmith-go/locksmith/internal/redistest"
)

// small is a run small enough for tests, with a budget nothing exhausts:
// whatever duplicates naive makes are served. 64 requests in flight over 40
// users, with 5 ms per API call, always miss together on the hot users.
var small = []string{"-servers", "4", "-requests", "300", "-keys", "40", "-latency", "5ms",
	"-concurrency", "64", "-rate", "1000000", "-burst", "1000000", "-json"}

type modeResult struct {
	Requests     int `json:"requests"`
	DistinctKeys int `json:"distinct_keys"`
	APICalls     int `json:"api_calls"`
	RateLimited  int `json:"rate_limited"`
	Errors       int `json:"errors"`
}

// runDemo runs the demo with args and returns its stdout and the results
// decoded from its last line.
func runDemo(t *testing.T, args ...string) (stdout string, naive, fill modeResult) {
	t.Helper()
	var out, errOut bytes.Buffer
	if err := run(t.Context(), args, &out, &errOut); err != nil {
		t.Fatalf("run: %v\nstderr: %s", err, errOut.String())
	}
	if errOut.Len() > 0 {
		t.Errorf("stderr = %q; want nothing: it is not a terminal", errOut.String())
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	var res map[string]modeResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		t.Fatalf("last line of stdout is not the JSON result: %v\nstdout:\n%s", err, out.String())
	}
	if len(res) != 2 {
		t.Fatalf("JSON result has modes %v; want naive and fill", reflect.ValueOf(res).MapKeys())
	}
	return out.String(), res["naive"], res["fill"]
}

// checkFill checks the point of the demo: fill makes one API call per
// distinct key, and naive makes more.
func checkFill(t *testing.T, requests int, naive, fill modeResult) {
	t.Helper()
	if naive.Requests != requests || fill.Requests != requests {
		t.Errorf("requests: naive %d, fill %d; want %d each", naive.Requests, fill.Requests, requests)
	}
	if naive.DistinctKeys != fill.DistinctKeys || fill.DistinctKeys < 1 {
		t.Errorf("distinct keys: naive %d, fill %d; want the same, above 0", naive.DistinctKeys, fill.DistinctKeys)
	}
	if fill.APICalls != fill.DistinctKeys {
		t.Errorf("fill API calls = %d; want %d, one per distinct key", fill.APICalls, fill.DistinctKeys)
	}
	if fill.RateLimited != 0 || fill.Errors != 0 {
		t.Errorf("fill: %d rate limited, %d errors; want 0 and 0", fill.RateLimited, fill.Errors)
	}
	if naive.APICalls <= fill.APICalls {
		t.Errorf("naive API calls = %d; want more than fill's %d", naive.APICalls, fill.APICalls)
	}
}

func TestRunEmbedded(t *testing.T) {
	defer goleak.VerifyNone(t)
	stdout, naive, fill := runDemo(t, small...)
	checkFill(t, 300, naive, fill)
	if naive.RateLimited != 0 || naive.Errors != 0 {
		t.Errorf("naive: %d rate limited, %d errors; want 0 and 0 with this budget", naive.RateLimited, naive.Errors)
	}
	for _, mode := range []string{"naive", "fill"} {
		if !strings.Contains(stdout, "\n"+mode+" ") {
			t.Errorf("stdout has no table row for %s:\n%s", mode, stdout)
		}
	}
}

// TestRunDefaults checks what the demo shows with its defaults: naive runs
// out of budget, fill does not.
func TestRunDefaults(t *testing.T) {
	if testing.Short() {
		t.Skip("a full-size run")
	}
	_, naive, fill := runDemo(t, "-json")
	checkFill(t, 2000, naive, fill)
	if naive.RateLimited == 0 {
		t.Errorf("naive got no 429; want some")
	}
}

// TestNoProgressInAFile runs the demo with stderr a file, as in "2>log": the
// file gets no progress line.
func TestNoProgressInAFile(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if isTerminal(f) {
		t.Fatalf("isTerminal(%s) = true; want false", f.Name())
	}
	var out bytes.Buffer
	if err := run(t.Context(), append(small, "-modes", "fill"), &out, f); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(f.Name()); err != nil || len(b) > 0 {
		t.Errorf("stderr file = %q, %v; want it empty: no progress line in a file", b, err)
	}
}

func TestIsTerminal(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for name, w := range map[string]io.Writer{"a buffer": &bytes.Buffer{}, "a pipe": w} {
		if isTerminal(w) {
			t.Errorf("isTerminal(%s) = true; want false", name)
		}
	}
}

func TestProgress(t *testing.T) {
	var buf bytes.Buffer
	var done atomic.Int64
	done.Store(7)
	stop := progress(&buf, "fill", 300, &done, time.Hour)
	stop()
	if got, want := buf.String(), "\rfill   7/300 requests\r"+strings.Repeat(" ", 21)+"\r"; got != want {
		t.Errorf("progress wrote %q; want %q", got, want)
	}
}

func TestRunRealRedis(t *testing.T) {
	srv := redistest.Start(t, nil)
	rdb := srv.Client(t, nil)
	ctx := t.Context()
	const prefix = "demo-test:"
	seed := map[string]string{"other": "keep", "demo-test": "keep", prefix + "stale": "delete"}
	for k, v := range seed {
		if err := rdb.Set(ctx, k, v, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}

	_, naive, fill := runDemo(t, append(small, "-redis", srv.Addr(), "-prefix", prefix)...)
	checkFill(t, 300, naive, fill)

	left, err := rdb.Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Errorf("keys left under %q: %q; want none", prefix, left)
	}
	for _, k := range []string{"other", "demo-test"} {
		if v, err := rdb.Get(ctx, k).Result(); v != "keep" {
			t.Errorf("GET %s = %q, %v; want the demo to leave it alone", k, v, err)
		}
	}
}

func TestRunUnreachableRedis(t *testing.T) {
	// A listener that hangs up on every connection: no Redis answers there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	defer func() { ln.Close(); <-done }()

	addr := ln.Addr().String()
	var out, errOut bytes.Buffer
	err = run(t.Context(), []string{"-redis", addr}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "redis at "+addr) {
		t.Errorf("run = %v; want an error naming redis at %s", err, addr)
	}
}

func TestFlagErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-servers", "0"}, "-servers must be at least 1 (got 0)"},
		{[]string{"-requests", "-1"}, "-requests must be at least 1"},
		{[]string{"-concurrency", "0"}, "-concurrency must be at least 1"},
		{[]string{"-keys", "0"}, "-keys must be at least 1"},
		{[]string{"-zipf", "1"}, "-zipf must be a finite number above 1 (got 1)"},
		{[]string{"-rate", "0"}, "-rate must be a finite number above 0"},
		{[]string{"-burst", "0"}, "-burst must be at least 1"},
		{[]string{"-latency", "-1s"}, "-latency must not be negative"},
		{[]string{"-ttl", "10ms"}, "-ttl must be at least 1s"},
		{[]string{"-timeout", "0s"}, "-timeout must be above 0"},
		{[]string{"-prefix", ""}, "-prefix must not be empty"},
		{[]string{"-prefix", "a{b}"}, "-prefix must not contain '{' or '}'"},
		{[]string{"-redis", "::1"}, "an IPv6 host in brackets"},
		{[]string{"-redis", "host:http"}, `port "http" is not a number`},
		{[]string{"-modes", "nope"}, `no mode "nope"; the modes are naive,fill`},
		{[]string{"-modes", ""}, `no mode ""`},
		{[]string{"-modes", "fill,naive,fill"}, `mode "fill" given twice`},
		{[]string{"extra"}, `unexpected arguments: ["extra"]`},
		{[]string{"-nope"}, "flag provided but not defined: -nope"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(t.Context(), tt.args, &out, &errOut)
			var ue *usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run = %v; want a usage error containing %q", err, tt.want)
			}
			if out.Len() > 0 {
				t.Errorf("stdout = %q; want nothing", out.String())
			}
		})
	}
}

func TestFlagErrorsAllReported(t *testing.T) {
	_, err := parseFlags([]string{"-servers", "0", "-keys", "0", "x"}, &bytes.Buffer{})
	for _, want := range []string{"-servers", "-keys", "unexpected arguments"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseFlags = %v; want it to mention %s", err, want)
		}
	}
}

func TestModesFlag(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{nil, "naive,fill"},
		{[]string{"-modes", "fill"}, "fill"},
		{[]string{"-modes", " fill , naive"}, "fill,naive"},
	}
	for _, tt := range tests {
		cfg, err := parseFlags(tt.args, &bytes.Buffer{})
		if got := cfg.modes.String(); err != nil || got != tt.want {
			t.Errorf("parseFlags(%q) gives modes %q, %v; want %q", tt.args, got, err, tt.want)
		}
	}
}

func TestRedisAddr(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "localhost:6379"},
		{":", "localhost:6379"},
		{":6380", "localhost:6380"},
		{"db1", "db1:6379"},
		{"db1:", "db1:6379"},
		{"db1:7000", "db1:7000"},
		{"10.0.0.5:6400", "10.0.0.5:6400"},
		{"[::1]:6379", "[::1]:6379"},
		{"[::1]:", "[::1]:6379"},
	}
	for _, tt := range tests {
		got, err := redisAddr(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("redisAddr(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestRedisFlagDefaultsWhenGiven(t *testing.T) {
	cfg, err := parseFlags([]string{"-redis", ""}, &bytes.Buffer{})
	if err != nil || cfg.redis.addr != "localhost:6379" {
		t.Errorf("-redis '' gives %q, %v; want localhost:6379", cfg.redis.addr, err)
	}
	cfg, err = parseFlags(nil, &bytes.Buffer{})
	if err != nil || cfg.redis.addr != "" {
		t.Errorf("no -redis gives %q, %v; want the embedded Redis", cfg.redis.addr, err)
	}
}

func TestTokenBucket(t *testing.T) {
	b := newTokenBucket(50, 3)
	now := time.Unix(0, 0)
	for i := range 3 {
		if q := b.take(now); !q.ok || q.remaining != 2-i {
			t.Fatalf("take %d of the burst = %+v; want ok, %d remaining", i+1, q, 2-i)
		}
	}
	q := b.take(now)
	if want := (quota{wait: 20 * time.Millisecond, full: 60 * time.Millisecond}); q != want {
		t.Errorf("take past the burst = %+v; want %+v", q, want)
	}
	if q := b.take(now.Add(20 * time.Millisecond)); !q.ok {
		t.Errorf("take after 20ms at 50/s refused")
	}
	if got := retryAfterSeconds(q.wait); got != 1 {
		t.Errorf("retryAfterSeconds(%s) = %d; want 1", q.wait, got)
	}
}

// TestRateLimitHeaders checks that the API states its limit as the X API
// does on every response, 200, 404 or 429, and refuses with Retry-After.
func TestRateLimitHeaders(t *testing.T) {
	now := time.Unix(1_700_000_000, 500_000_000) // the bucket gains no token: the clock stands still
	api := startAPI(1, 2, 0, func() time.Time { return now })
	defer api.Close()
	tests := []struct {
		path                    string
		status                  int
		remaining, reset, retry string
	}{
		// 1 token missing: full again 1s later, at ...001.5, so ...002.
		{"/users/1/timeline", http.StatusOK, "1", "1700000002", ""},
		{"/users/x/timeline", http.StatusNotFound, "0", "1700000003", ""},
		{"/users/1/timeline", http.StatusTooManyRequests, "0", "1700000003", "1"},
	}
	for i, tt := range tests {
		resp, err := http.Get(api.URL() + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		h := resp.Header
		got := []string{resp.Status, h.Get("X-Rate-Limit-Limit"), h.Get("X-Rate-Limit-Remaining"), h.Get("X-Rate-Limit-Reset"), h.Get("Retry-After")}
		want := []string{fmt.Sprintf("%d %s", tt.status, http.StatusText(tt.status)), "2", tt.remaining, tt.reset, tt.retry}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("call %d, GET %s: status, limit, remaining, reset, Retry-After = %q; want %q", i+1, tt.path, got, want)
		}
	}
	if served, refused := api.calls(); served != 1 || refused != 1 {
		t.Errorf("calls served, refused = %d, %d; want 1, 1", served, refused)
	}
	c := &apiClient{hc: http.DefaultClient, base: api.URL()}
	if _, err := c.timeline(t.Context(), 1); !errors.Is(err, errRateLimited) {
		t.Errorf("apiClient.timeline over the limit = %v; want %v", err, errRateLimited)
	}
}

func TestTimelineDeterministic(t *testing.T) {
	a, b := timelineFor(42), timelineFor(42)
	if !reflect.DeepEqual(a, b) || len(a.Tweets) < 3 || a.UserID != 42 {
		t.Errorf("timelineFor(42) = %+v, then %+v; want the same timeline of 3 or more tweets", a, b)
	}
	if reflect.DeepEqual(a.Tweets, timelineFor(43).Tweets) {
		t.Errorf("users 42 and 43 have the same tweets")
	}
}

func TestGlobEscape(t *testing.T) {
	if got, want := globEscape(`a*b?[c]\`), `a\*b\?\[c\]\\`; got != want {
		t.Errorf("globEscape = %q; want %q", got, want)
	}
}
