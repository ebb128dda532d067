package httpfill_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/httpfill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// upstream is an API on a loopback listener that counts the requests it
// gets. Its handler may hold requests until the test opens its gate.
type upstream struct {
	srv   *httptest.Server
	calls atomic.Int32
	gate  chan struct{} // nil: no gate
	once  sync.Once
}

// newUpstream starts an upstream answering with h; gated holds every
// request until open is called.
func newUpstream(t *testing.T, gated bool, h http.HandlerFunc) *upstream {
	u := &upstream{}
	if gated {
		u.gate = make(chan struct{})
	}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.calls.Add(1)
		if u.gate != nil {
			<-u.gate
		}
		h(w, r)
	}))
	t.Cleanup(func() {
		u.open()
		u.srv.Close()
	})
	return u
}

func (u *upstream) open() {
	if u.gate != nil {
		u.once.Do(func() { close(u.gate) })
	}
}

func (u *upstream) url(path string) string { return u.srv.URL + path }

// hello answers "hello".
func hello(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "hello") }

func newCache(t *testing.T, rdb redis.UniversalClient, opt *fill.Options) *fill.Cache {
	c := fill.New(rdb, opt)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// newClient returns an HTTP client whose transport caches in c, sending to
// u over the upstream's own client transport, which u closes.
func newClient(u *upstream, c *fill.Cache, opt *httpfill.Options) *http.Client {
	var o httpfill.Options
	if opt != nil {
		o = *opt
	}
	o.Base = u.srv.Client().Transport
	return &http.Client{Transport: httpfill.New(c, &o)}
}

// reply is what a request got.
type reply struct {
	resp *http.Response
	body string
	err  error
}

// do sends a request with the headers given as name, value pairs, and
// reads and closes the body.
func do(ctx context.Context, c *http.Client, method, url string, header ...string) reply {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return reply{err: err}
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return reply{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{resp: resp, body: string(b), err: err}
}

func mustDo(t *testing.T, c *http.Client, method, url string, header ...string) reply {
	t.Helper()
	r := do(t.Context(), c, method, url, header...)
	if r.err != nil {
		t.Fatalf("%s %s: %v", method, url, r.err)
	}
	return r
}

func wantCalls(t *testing.T, u *upstream, want int32) {
	t.Helper()
	if got := u.calls.Load(); got != want {
		t.Errorf("upstream calls = %d; want %d", got, want)
	}
}

// goDo sends n requests at once, each on its own goroutine.
func goDo(ctx context.Context, c *http.Client, n int, method, url string, header ...string) <-chan reply {
	out := make(chan reply, n)
	for range n {
		go func() { out <- do(ctx, c, method, url, header...) }()
	}
	return out
}

func TestMergedGets(t *testing.T) {
	u := newUpstream(t, true, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Answer", "42")
		hello(w, r)
	})
	_, rdb := redistest.Mini(t)
	cache := newCache(t, rdb, nil)
	c := newClient(u, cache, nil)

	const n = 10
	replies := make(chan *http.Response, n)
	errs := make(chan error, n)
	reqs := make([]*http.Request, n)
	for i := range reqs {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u.url("/a"), nil)
		if err != nil {
			t.Fatal(err)
		}
		reqs[i] = req
		go func() {
			resp, err := c.Do(req)
			if err != nil {
				errs <- err
				return
			}
			replies <- resp
		}()
	}
	redistest.WaitFor(t, "every request merged on one flight", func() bool {
		return cache.Stats().LocalMerges == n-1
	})
	u.open()
	var resps []*http.Response
	for range n {
		select {
		case resp := <-replies:
			resps = append(resps, resp)
		case err := <-errs:
			t.Fatalf("GET: %v", err)
		}
	}
	wantCalls(t, u, 1)

	// Each response is the caller's own: header, body, request.
	resps[0].Header.Set("X-Answer", "changed")
	first := make([]byte, 2)
	if _, err := io.ReadFull(resps[0].Body, first); err != nil {
		t.Fatal(err)
	}
	if err := resps[0].Body.Close(); err != nil {
		t.Fatal(err)
	}
	seen := make(map[*http.Request]bool)
	for i, resp := range resps[1:] {
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(b) != "hello" {
			t.Errorf("response %d: body %q, %v; want hello", i+1, b, err)
		}
		if got := resp.Header.Get("X-Answer"); got != "42" {
			t.Errorf("response %d: X-Answer %q; want 42, untouched by another caller", i+1, got)
		}
		if resp.StatusCode != http.StatusOK || resp.ContentLength != 5 {
			t.Errorf("response %d: status %d, ContentLength %d; want 200, 5", i+1, resp.StatusCode, resp.ContentLength)
		}
		seen[resp.Request] = true
	}
	seen[resps[0].Request] = true
	for i, req := range reqs {
		if !seen[req] {
			t.Errorf("request %d is no response's Request", i)
		}
	}

	// Now cached.
	if r := mustDo(t, c, http.MethodGet, u.url("/a")); r.body != "hello" {
		t.Errorf("cached GET: body %q; want hello", r.body)
	}
	wantCalls(t, u, 1)
}

func TestFleet(t *testing.T) {
	u := newUpstream(t, true, hello)
	m, rdb := redistest.Mini(t)
	a := newCache(t, rdb, nil)
	b := newCache(t, redistest.Client(t, m.Addr()), nil)
	ca, cb := newClient(u, a, nil), newClient(u, b, nil)

	ra := goDo(t.Context(), ca, 3, http.MethodGet, u.url("/timeline"))
	redistest.WaitFor(t, "server a's load", func() bool { return u.calls.Load() == 1 })
	rb := goDo(t.Context(), cb, 3, http.MethodGet, u.url("/timeline"))
	redistest.WaitFor(t, "server b to find the load held", func() bool { return b.Stats().Misses == 1 })
	u.open()
	for _, ch := range []<-chan reply{ra, ra, ra, rb, rb, rb} {
		if r := <-ch; r.err != nil || r.body != "hello" {
			t.Errorf("GET: %q, %v; want hello", r.body, r.err)
		}
	}
	wantCalls(t, u, 1)
	if s := b.Stats(); s.RemoteMerges != 1 || s.Loads != 0 {
		t.Errorf("server b: %d remote merges, %d loads; want 1, 0", s.RemoteMerges, s.Loads)
	}
}

func TestCredentials(t *testing.T) {
	u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Header.Get("Authorization")+"|"+r.Header.Get("Cookie"))
	})
	_, rdb := redistest.Mini(t)
	c := newClient(u, newCache(t, rdb, nil), nil)
	requests := []struct {
		header []string
		want   string
		calls  int32
	}{
		{[]string{"Authorization", "Bearer alice"}, "Bearer alice|", 1},
		{[]string{"Authorization", "Bearer bob"}, "Bearer bob|", 2},
		{nil, "|", 3},
		{[]string{"Cookie", "session=carol"}, "|session=carol", 4},
		{[]string{"Authorization", "Bearer alice"}, "Bearer alice|", 4},
		{[]string{"Cookie", "session=carol"}, "|session=carol", 4},
		{[]string{"Authorization", "Bearer alice", "Cookie", "session=carol"}, "Bearer alice|session=carol", 5},
	}
	for i, r := range requests {
		got := mustDo(t, c, http.MethodGet, u.url("/me"), r.header...)
		if got.body != r.want || u.calls.Load() != r.calls {
			t.Errorf("request %d (%q): body %q after %d upstream calls; want %q after %d",
				i, r.header, got.body, u.calls.Load(), r.want, r.calls)
		}
	}
}

func TestCustomKey(t *testing.T) {
	u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Header.Get("Authorization"))
	})
	_, rdb := redistest.Mini(t)
	cache := newCache(t, rdb, nil)

	// A Key that ignores credentials: an API whose answers are public.
	shared := newClient(u, cache, &httpfill.Options{Key: func(r *http.Request) string { return "public " + r.Method + " " + r.URL.String() }})
	mustDo(t, shared, http.MethodGet, u.url("/p"), "Authorization", "alice")
	if r := mustDo(t, shared, http.MethodGet, u.url("/p"), "Authorization", "bob"); r.body != "alice" {
		t.Errorf("bob got %q; want alice's answer, shared by the Key", r.body)
	}
	wantCalls(t, u, 1)

	// A Key of "" passes through.
	none := newClient(u, cache, &httpfill.Options{Key: func(*http.Request) string { return "" }})
	mustDo(t, none, http.MethodGet, u.url("/p"))
	mustDo(t, none, http.MethodGet, u.url("/p"))
	wantCalls(t, u, 3)
}

func TestPassThrough(t *testing.T) {
	u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s", r.Method, b)
	})
	_, rdb := redistest.Mini(t)
	c := newClient(u, newCache(t, rdb, nil), nil)
	tests := []struct {
		name   string
		method string
		body   string
		header []string
	}{
		{"POST", http.MethodPost, "x", nil},
		{"PUT", http.MethodPut, "x", nil},
		{"DELETE", http.MethodDelete, "", nil},
		{"GET with a body", http.MethodGet, "x", nil},
		{"Range", http.MethodGet, "", []string{"Range", "bytes=0-1"}},
		{"If-None-Match", http.MethodGet, "", []string{"If-None-Match", `"v1"`}},
		{"If-Modified-Since", http.MethodHead, "", []string{"If-Modified-Since", "Mon, 02 Jan 2006 15:04:05 GMT"}},
		{"no-cache", http.MethodGet, "", []string{"Cache-Control", "no-cache"}},
		{"max-age=0", http.MethodGet, "", []string{"Cache-Control", "max-age=0"}},
		{"Pragma no-cache", http.MethodGet, "", []string{"Pragma", "no-cache"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := u.calls.Load()
			for range 2 {
				var body io.Reader
				if tt.body != "" {
					body = strings.NewReader(tt.body)
				}
				req, err := http.NewRequestWithContext(t.Context(), tt.method, u.url("/pass"), body)
				if err != nil {
					t.Fatal(err)
				}
				for i := 0; i+1 < len(tt.header); i += 2 {
					req.Header.Set(tt.header[i], tt.header[i+1])
				}
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if want := tt.method + " " + tt.body; tt.method != http.MethodHead && string(b) != want {
					t.Errorf("body %q; want %q", b, want)
				}
			}
			if got := u.calls.Load() - before; got != 2 {
				t.Errorf("two requests made %d upstream calls; want 2", got)
			}
		})
	}
}

func TestPostsNotMerged(t *testing.T) {
	u := newUpstream(t, true, hello)
	_, rdb := redistest.Mini(t)
	c := newClient(u, newCache(t, rdb, nil), nil)
	const n = 5
	out := goDo(t.Context(), c, n, http.MethodPost, u.url("/tweet"))
	redistest.WaitFor(t, "every POST upstream at once", func() bool { return u.calls.Load() == n })
	u.open()
	for range n {
		if r := <-out; r.err != nil || r.body != "hello" {
			t.Errorf("POST: %q, %v; want hello", r.body, r.err)
		}
	}
}

// valueTTL returns the TTL of the only cached value in m, or false when
// there is none.
func valueTTL(t *testing.T, m *miniredis.Miniredis) (time.Duration, bool) {
	t.Helper()
	var keys []string
	for _, k := range m.Keys() {
		if strings.HasSuffix(k, ":value") {
			keys = append(keys, k)
		}
	}
	switch len(keys) {
	case 0:
		return 0, false
	case 1:
		return m.TTL(keys[0]), true
	}
	t.Fatalf("cached values %q; want at most one", keys)
	return 0, false
}

func TestLifetime(t *testing.T) {
	date := time.Date(2026, time.March, 1, 12, 0, 0, 0, time.UTC)
	httpDate := func(d time.Duration) string { return date.Add(d).Format(http.TimeFormat) }
	const optTTL = 5 * time.Minute
	tests := []struct {
		name   string
		status int
		header []string // of the response
		req    []string // of the request
		ttl    time.Duration
		cached bool
		noOpt  bool // no Options.TTL: the Cache's
	}{
		{name: "no freshness: Options.TTL", ttl: optTTL, cached: true},
		{name: "no freshness, no Options.TTL: the Cache's", ttl: time.Hour, cached: true, noOpt: true},
		{name: "max-age", header: []string{"Cache-Control", "max-age=60"}, ttl: time.Minute, cached: true},
		{name: "s-maxage beats max-age", header: []string{"Cache-Control", "public, s-maxage=30, max-age=60"}, ttl: 30 * time.Second, cached: true},
		{name: "quoted, upper case", header: []string{"Cache-Control", `Max-Age="90"`}, ttl: 90 * time.Second, cached: true},
		{name: "Age counts", header: []string{"Cache-Control", "max-age=60", "Age", "20"}, ttl: 40 * time.Second, cached: true},
		{name: "Age beyond max-age", header: []string{"Cache-Control", "max-age=60", "Age", "60"}},
		{name: "Expires", header: []string{"Date", httpDate(0), "Expires", httpDate(2 * time.Minute)}, ttl: 2 * time.Minute, cached: true},
		{name: "max-age beats Expires", header: []string{"Cache-Control", "max-age=60", "Date", httpDate(0), "Expires", httpDate(time.Hour)}, ttl: time.Minute, cached: true},
		{name: "Expires past", header: []string{"Date", httpDate(0), "Expires", httpDate(-time.Minute)}},
		{name: "Expires unreadable", header: []string{"Expires", "0"}},
		{name: "private", header: []string{"Cache-Control", "private, max-age=60"}},
		{name: "no-store", header: []string{"Cache-Control", "no-store"}},
		{name: "no-cache", header: []string{"Cache-Control", "no-cache"}},
		{name: "max-age=0", header: []string{"Cache-Control", "max-age=0"}},
		{name: "max-age unreadable", header: []string{"Cache-Control", "max-age=soon"}},
		{name: "request no-store", req: []string{"Cache-Control", "no-store"}},
		{name: "404", status: http.StatusNotFound, ttl: optTTL, cached: true},
		{name: "301 with max-age", status: http.StatusMovedPermanently, header: []string{"Location", "/b", "Cache-Control", "max-age=60"}, ttl: time.Minute, cached: true},
		{name: "410", status: http.StatusGone, ttl: optTTL, cached: true},
		{name: "401 without freshness", status: http.StatusUnauthorized},
		{name: "403 without freshness", status: http.StatusForbidden},
		{name: "302 without freshness", status: http.StatusFound, header: []string{"Location", "/b"}},
		{name: "302 with max-age", status: http.StatusFound, header: []string{"Location", "/b", "Cache-Control", "max-age=60"}, ttl: time.Minute, cached: true},
		{name: "Set-Cookie", header: []string{"Set-Cookie", "session=1", "Cache-Control", "max-age=60"}},
		{name: "408", status: http.StatusRequestTimeout},
		{name: "500", status: http.StatusInternalServerError},
		{name: "503 with max-age", status: http.StatusServiceUnavailable, header: []string{"Cache-Control", "max-age=60"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
				for i := 0; i+1 < len(tt.header); i += 2 {
					w.Header().Set(tt.header[i], tt.header[i+1])
				}
				if tt.status != 0 {
					w.WriteHeader(tt.status)
				}
				hello(w, r)
			})
			m, rdb := redistest.Mini(t)
			opt := &httpfill.Options{TTL: optTTL}
			if tt.noOpt {
				opt = nil
			}
			c := newClient(u, newCache(t, rdb, &fill.Options{Jitter: -1}), opt)
			c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
			want := tt.status
			if want == 0 {
				want = http.StatusOK
			}
			for i := range 2 {
				if r := mustDo(t, c, http.MethodGet, u.url("/a"), tt.req...); r.resp.StatusCode != want || r.body != "hello" {
					t.Errorf("request %d: %d %q; want %d hello", i+1, r.resp.StatusCode, r.body, want)
				}
			}
			ttl, cached := valueTTL(t, m)
			if cached != tt.cached || ttl != tt.ttl {
				t.Errorf("cached %v, TTL %v; want %v, %v", cached, ttl, tt.cached, tt.ttl)
			}
			wantCalls(t, u, map[bool]int32{true: 1, false: 2}[tt.cached])
		})
	}
}

func TestMaxAgeExpiry(t *testing.T) {
	u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		hello(w, r)
	})
	m, rdb := redistest.Mini(t)
	c := newClient(u, newCache(t, rdb, nil), nil)
	mustDo(t, c, http.MethodGet, u.url("/a"))
	m.FastForward(59 * time.Second)
	mustDo(t, c, http.MethodGet, u.url("/a"))
	wantCalls(t, u, 1)
	m.FastForward(2 * time.Second)
	mustDo(t, c, http.MethodGet, u.url("/a"))
	wantCalls(t, u, 2)
}

// TestNotStoredStillShared checks that the callers merged on a response
// that is not stored all get it, from one upstream call.
func TestNotStoredStillShared(t *testing.T) {
	tests := []struct {
		name   string
		status int
		header []string // of the response
		req    []string // of the request
	}{
		{name: "response no-store", status: http.StatusOK, header: []string{"Cache-Control", "no-store"}},
		{name: "request no-store", status: http.StatusOK, req: []string{"Cache-Control", "no-store"}},
		{name: "503", status: http.StatusServiceUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var answered atomic.Bool
			u := newUpstream(t, true, func(w http.ResponseWriter, r *http.Request) {
				if answered.Swap(true) {
					_, _ = io.WriteString(w, "later")
					return
				}
				for i := 0; i+1 < len(tt.header); i += 2 {
					w.Header().Set(tt.header[i], tt.header[i+1])
				}
				w.WriteHeader(tt.status)
				hello(w, r)
			})
			_, rdb := redistest.Mini(t)
			cache := newCache(t, rdb, nil)
			c := newClient(u, cache, nil)
			const n = 4
			out := goDo(t.Context(), c, n, http.MethodGet, u.url("/a"), tt.req...)
			redistest.WaitFor(t, "the requests merged", func() bool { return cache.Stats().LocalMerges == n-1 })
			u.open()
			for range n {
				r := <-out
				if r.err != nil || r.resp.StatusCode != tt.status || r.body != "hello" {
					t.Fatalf("merged GET: %v; want %d hello", r.err, tt.status)
				}
			}
			wantCalls(t, u, 1)
			if r := mustDo(t, c, http.MethodGet, u.url("/a")); r.body != "later" {
				t.Errorf("next GET: %q; want the upstream's next answer, later", r.body)
			}
			wantCalls(t, u, 2)
		})
	}
}

func TestMaxBody(t *testing.T) {
	big := strings.Repeat("x", 100)
	tests := []struct {
		name    string
		chunked bool // no Content-Length: found out by reading
	}{
		{"Content-Length", false},
		{"chunked", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpstream(t, true, func(w http.ResponseWriter, r *http.Request) {
				if tt.chunked {
					_, _ = io.WriteString(w, big[:50])
					w.(http.Flusher).Flush()
					_, _ = io.WriteString(w, big[50:])
					return
				}
				w.Header().Set("Content-Length", "100")
				_, _ = io.WriteString(w, big)
			})
			_, rdb := redistest.Mini(t)
			cache := newCache(t, rdb, nil)
			c := newClient(u, cache, &httpfill.Options{MaxBody: 64})
			const n = 3
			out := goDo(t.Context(), c, n, http.MethodGet, u.url("/big"))
			redistest.WaitFor(t, "the requests merged", func() bool { return cache.Stats().LocalMerges == n-1 })
			u.open()
			for range n {
				if r := <-out; r.err != nil || r.body != big {
					t.Fatalf("GET: %d bytes, %v; want the 100 bytes", len(r.body), r.err)
				}
			}
			// One call found the body too large; each caller then made its own.
			wantCalls(t, u, 1+n)
			// The marker is cached: a later request passes through at once.
			if r := mustDo(t, c, http.MethodGet, u.url("/big")); r.body != big {
				t.Errorf("later GET: %d bytes; want 100", len(r.body))
			}
			wantCalls(t, u, 1+n+1)
		})
	}
}

// TestMaxHeader: a response whose header is larger than 64 KiB (an
// upstream may send up to the client's limit, 10 MiB by default) is
// neither cached nor handed on, as an oversized body: every request passes
// through and gets its own.
func TestMaxHeader(t *testing.T) {
	u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		for i := range 20 {
			w.Header().Set(fmt.Sprintf("X-Pad-%d", i), strings.Repeat("p", 4<<10))
		}
		_, _ = io.WriteString(w, "small")
	})
	_, rdb := redistest.Mini(t)
	c := newClient(u, newCache(t, rdb, nil), nil)
	for i := range 3 {
		r := mustDo(t, c, http.MethodGet, u.url("/h"))
		if r.body != "small" || r.resp.Header.Get("X-Pad-19") == "" {
			t.Fatalf("GET %d: %q, X-Pad-19 %d bytes; want small, with the upstream's header", i, r.body, len(r.resp.Header.Get("X-Pad-19")))
		}
	}
	// One call found the header too large, then each request its own.
	wantCalls(t, u, 1+3)
	keys, err := rdb.Keys(t.Context(), "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if n, _ := rdb.StrLen(t.Context(), k).Result(); n > 4<<10 {
			t.Errorf("%s holds %d bytes; want no copy of the 80 KiB header in Redis", k, n)
		}
	}
}

func TestVary(t *testing.T) {
	u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Vary", "Accept-Encoding, X-Tenant")
		_, _ = io.WriteString(w, "for "+r.Header.Get("X-Tenant"))
	})
	_, rdb := redistest.Mini(t)
	c := newClient(u, newCache(t, rdb, nil), nil)
	steps := []struct {
		tenant string
		calls  int32
	}{
		{"a", 1}, // loaded and cached with X-Tenant: a
		{"a", 1}, // cached
		{"b", 2}, // the cached response varies: b passes through
		{"b", 3},
		{"a", 3},
	}
	for i, s := range steps {
		r := mustDo(t, c, http.MethodGet, u.url("/v"), "X-Tenant", s.tenant)
		if r.body != "for "+s.tenant || u.calls.Load() != s.calls {
			t.Errorf("request %d for %s: %q after %d calls; want %q after %d",
				i, s.tenant, r.body, u.calls.Load(), "for "+s.tenant, s.calls)
		}
	}
}

func TestVaryStar(t *testing.T) {
	u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Vary", "*")
		hello(w, r)
	})
	_, rdb := redistest.Mini(t)
	c := newClient(u, newCache(t, rdb, nil), nil)
	mustDo(t, c, http.MethodGet, u.url("/v"))
	wantCalls(t, u, 2) // the load that found Vary *, then the request's own
	mustDo(t, c, http.MethodGet, u.url("/v"))
	wantCalls(t, u, 3)
}

func TestHead(t *testing.T) {
	u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "5")
		hello(w, r)
	})
	_, rdb := redistest.Mini(t)
	cache := newCache(t, rdb, nil)
	c := newClient(u, cache, nil)
	for range 2 {
		r := mustDo(t, c, http.MethodHead, u.url("/h"))
		if r.resp.StatusCode != http.StatusOK || r.resp.ContentLength != 5 || r.body != "" {
			t.Errorf("HEAD: %d, ContentLength %d, body %q; want 200, 5, none", r.resp.StatusCode, r.resp.ContentLength, r.body)
		}
	}
	wantCalls(t, u, 1)
	if r := mustDo(t, c, http.MethodGet, u.url("/h")); r.body != "hello" {
		t.Errorf("GET after HEAD: %q; want hello", r.body)
	}
	wantCalls(t, u, 2)

	// A Key blind to the method: a GET that finds a HEAD's response passes
	// through rather than get no body.
	blind := newClient(u, cache, &httpfill.Options{Key: func(r *http.Request) string { return "blind " + r.URL.String() }})
	mustDo(t, blind, http.MethodHead, u.url("/h"))
	wantCalls(t, u, 3)
	if r := mustDo(t, blind, http.MethodGet, u.url("/h")); r.body != "hello" {
		t.Errorf("GET finding a HEAD's response: %q; want hello", r.body)
	}
	wantCalls(t, u, 4)
}

func TestCallerGivesUp(t *testing.T) {
	upstreamCtxErr := make(chan error, 1)
	u := newUpstream(t, true, func(w http.ResponseWriter, r *http.Request) {
		upstreamCtxErr <- r.Context().Err()
		hello(w, r)
	})
	_, rdb := redistest.Mini(t)
	cache := newCache(t, rdb, nil)
	c := newClient(u, cache, nil)

	ctx, cancel := context.WithCancel(t.Context())
	quitter := goDo(ctx, c, 1, http.MethodGet, u.url("/a"))
	redistest.WaitFor(t, "the upstream call", func() bool { return u.calls.Load() == 1 })
	stayer := goDo(t.Context(), c, 1, http.MethodGet, u.url("/a"))
	redistest.WaitFor(t, "the second caller merged", func() bool { return cache.Stats().LocalMerges == 1 })
	cancel()
	if r := <-quitter; !errors.Is(r.err, context.Canceled) {
		t.Errorf("the caller that gave up got %v; want context.Canceled", r.err)
	}
	u.open()
	if r := <-stayer; r.err != nil || r.body != "hello" {
		t.Errorf("the caller that stayed got %q, %v; want hello", r.body, r.err)
	}
	if err := <-upstreamCtxErr; err != nil {
		t.Errorf("the upstream request's ctx: %v; want it alive", err)
	}
	wantCalls(t, u, 1)
}

// rateLimited answers 429 with Retry-After to the first `refusals`
// requests (all of them if negative), then "hello".
func rateLimited(refusals int32, retryAfter string) (http.HandlerFunc, *atomic.Int32) {
	var n atomic.Int32
	return func(w http.ResponseWriter, r *http.Request) {
		if i := n.Add(1); refusals < 0 || i <= refusals {
			w.Header().Set("Retry-After", retryAfter)
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		hello(w, r)
	}, &n
}

// newBudget returns a budget on rdb, closed in t.Cleanup. Per is short, so
// that a pause of one Per (a 429 that says nothing) is short too.
func newBudget(t *testing.T, rdb redis.UniversalClient) *budget.Budget {
	b := budget.New(rdb, "api", budget.Limit{Rate: 100, Per: 100 * time.Millisecond, Burst: 10}, nil)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func TestRateLimitedRetried(t *testing.T) {
	h, _ := rateLimited(2, "0")
	u := newUpstream(t, false, h)
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb)
	cache := newCache(t, rdb, &fill.Options{Budget: b})
	c := newClient(u, cache, &httpfill.Options{Budget: b})
	if r := mustDo(t, c, http.MethodGet, u.url("/a")); r.resp.StatusCode != http.StatusOK || r.body != "hello" {
		t.Errorf("GET: %d %q; want 200 hello once the upstream serves again", r.resp.StatusCode, r.body)
	}
	wantCalls(t, u, 3)
	if got := cache.Stats().RateLimited; got != 2 {
		t.Errorf("loads rate-limited = %d; want 2", got)
	}
	mustDo(t, c, http.MethodGet, u.url("/a"))
	wantCalls(t, u, 3) // the 200 is cached, the 429s were not
	if n := b.Stats().PausesRateLimited; n != 0 {
		t.Errorf("budget pauses for 429 = %d; want 0: Retry-After 0 asks for none", n)
	}
}

func TestRateLimitedWithoutBudget(t *testing.T) {
	h, _ := rateLimited(-1, "7")
	u := newUpstream(t, false, h)
	_, rdb := redistest.Mini(t)
	c := newClient(u, newCache(t, rdb, nil), nil)
	for i := range 2 {
		r := do(t.Context(), c, http.MethodGet, u.url("/a"))
		var rle *budget.RateLimitedError
		if !errors.Is(r.err, budget.ErrRateLimited) || !errors.As(r.err, &rle) || rle.RetryAfter != 7*time.Second {
			t.Fatalf("GET %d: %v; want an error wrapping a RateLimitedError of 7s", i+1, r.err)
		}
		if !strings.Contains(r.err.Error(), "httpfill: upstream answered 429 Too Many Requests") {
			t.Errorf("GET %d: error %q; want it to say httpfill: upstream answered 429 Too Many Requests", i+1, r.err)
		}
	}
	wantCalls(t, u, 2) // never cached

	// A POST's 429 is the upstream's response, as it is.
	r := mustDo(t, c, http.MethodPost, u.url("/a"))
	if r.resp.StatusCode != http.StatusTooManyRequests || r.resp.Header.Get("Retry-After") != "7" {
		t.Errorf("POST: %d, Retry-After %q; want 429, 7", r.resp.StatusCode, r.resp.Header.Get("Retry-After"))
	}
}

func TestRateLimitedCallerGivesUp(t *testing.T) {
	h, _ := rateLimited(-1, "1")
	u := newUpstream(t, false, h)
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb)
	c := newClient(u, newCache(t, rdb, &fill.Options{Budget: b}), nil)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	r := do(ctx, c, http.MethodGet, u.url("/a"))
	if !errors.Is(r.err, context.DeadlineExceeded) || !errors.Is(r.err, budget.ErrRateLimited) {
		t.Fatalf("GET = %v; want an error wrapping context.DeadlineExceeded and budget.ErrRateLimited", r.err)
	}
	var rle *budget.RateLimitedError
	if !errors.As(r.err, &rle) || rle.RetryAfter != time.Second {
		t.Errorf("RateLimitedError = %v; want RetryAfter 1s", rle)
	}
}

func TestBudget(t *testing.T) {
	u := newUpstream(t, false, hello)
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb)
	// The Transport takes the Cache's budget by default.
	c := newClient(u, newCache(t, rdb, &fill.Options{Budget: b}), nil)
	for _, method := range []string{http.MethodGet, http.MethodGet, http.MethodPost} {
		if r := mustDo(t, c, method, u.url("/a")); r.body != "hello" {
			t.Errorf("%s: %q; want hello", method, r.body)
		}
	}
	wantCalls(t, u, 2)

	// A pass-through whose ctx ends waits no longer for the budget.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, u.url("/a"), strings.NewReader("x"))
	_, err := c.Transport.RoundTrip(req)
	if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "httpfill: waiting for the budget: ") {
		t.Errorf("POST with its ctx ended = %v; want httpfill: waiting for the budget: ... wrapping context.Canceled", err)
	}
	wantCalls(t, u, 2)
	// One wait per upstream call: the load's in the Cache, the POST's in
	// the Transport; none for the hit.
	if w := b.Stats().Waits; w != 2 {
		t.Errorf("budget waits = %d; want 2", w)
	}
}

// TestBudgetObserves: every upstream response, loaded or passed through,
// feeds the budget's Observe.
func TestBudgetObserves(t *testing.T) {
	exhausted := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Rate-Limit-Limit", "100")
		w.Header().Set("X-Rate-Limit-Remaining", "0")
		w.Header().Set("X-Rate-Limit-Reset", fmt.Sprint(time.Now().Add(time.Second).Unix()))
		hello(w, r)
	}
	u := newUpstream(t, false, exhausted)
	_, rdb := redistest.Mini(t)
	b := newBudget(t, rdb)
	c := newClient(u, newCache(t, rdb, &fill.Options{Budget: b}), nil)
	mustDo(t, c, http.MethodGet, u.url("/a"))
	if n := b.Stats().PausesExhausted; n != 1 {
		t.Errorf("after a load: pauses for remaining 0 = %d; want 1", n)
	}
	mustDo(t, c, http.MethodPost, u.url("/a"))
	if n := b.Stats().PausesExhausted; n != 2 {
		t.Errorf("after a pass-through: pauses for remaining 0 = %d; want 2", n)
	}
}

func TestClosedCache(t *testing.T) {
	u := newUpstream(t, false, hello)
	_, rdb := redistest.Mini(t)
	cache := newCache(t, rdb, nil)
	c := newClient(u, cache, nil)
	_ = cache.Close()
	if r := do(t.Context(), c, http.MethodGet, u.url("/a")); !errors.Is(r.err, fill.ErrClosed) {
		t.Errorf("GET on a closed Cache = %v; want an error wrapping fill.ErrClosed", r.err)
	}
	wantCalls(t, u, 0)
}

func TestDefaultKey(t *testing.T) {
	req := func(url string, header ...string) *http.Request {
		r, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(header); i += 2 {
			r.Header.Add(header[i], header[i+1])
		}
		return r
	}
	base := httpfill.DefaultKey(req("http://api.test/a?x=1"))
	if !strings.HasPrefix(base, "GET http://api.test/a?x=1 ") || len(base) != len("GET http://api.test/a?x=1 ")+32 {
		t.Errorf("DefaultKey = %q; want the method, the URL and 32 hex digits", base)
	}
	same := []*http.Request{
		req("http://api.test/a?x=1#frag"),
		req("http://api.test/a?x=1", "X-Request-Id", "7"),
	}
	for _, r := range same {
		if k := httpfill.DefaultKey(r); k != base {
			t.Errorf("DefaultKey(%s %v) = %q; want %q", r.URL, r.Header, k, base)
		}
	}
	differ := []*http.Request{
		req("http://api.test/a?x=2"),
		req("http://api.test/a?x=1", "Authorization", "Bearer a"),
		req("http://api.test/a?x=1", "Cookie", "s=1"),
		req("http://api.test/a?x=1", "Accept", "text/csv"),
		req("http://api.test/a?x=1", "Accept-Encoding", "gzip"),
		req("http://api.test/a?x=1", "Accept-Language", "fr"),
		req("http://user:secret@api.test/a?x=1"),
		req("http://api.test/a?x=1", "X-Api-Key", "k"),
		req("http://api.test/a?x=1", "Proxy-Authorization", "Basic p"),
		req("http://api.test/a?x=1", "Authorization", "Bearer a", "Authorization", "Bearer b"),
	}
	seen := map[string]bool{base: true}
	for _, r := range differ {
		k := httpfill.DefaultKey(r)
		if seen[k] {
			t.Errorf("DefaultKey(%s %v) = %q, another request's key", r.URL.Redacted(), r.Header, k)
		}
		seen[k] = true
		if strings.Contains(k, "secret") || strings.Contains(k, "Bearer") {
			t.Errorf("DefaultKey = %q; want no credentials in it", k)
		}
	}
	// A header counts under any spelling of its name, as the upstream
	// gets it.
	odd := req("http://api.test/a?x=1")
	odd.Header["authorization"] = []string{"Bearer a"}
	if k, want := httpfill.DefaultKey(odd), httpfill.DefaultKey(req("http://api.test/a?x=1", "Authorization", "Bearer a")); k != want {
		t.Errorf("DefaultKey with authorization: Bearer a = %q; want %q, the key with Authorization: Bearer a", k, want)
	}
	vhost := req("http://api.test/a?x=1")
	vhost.Host = "other.test"
	if httpfill.DefaultKey(vhost) == base {
		t.Errorf("DefaultKey ignores a Host header other than the URL's")
	}
}

func TestBracesInURL(t *testing.T) {
	u := newUpstream(t, false, hello)
	_, rdb := redistest.Mini(t)
	c := newClient(u, newCache(t, rdb, nil), nil)
	for range 2 {
		if r := mustDo(t, c, http.MethodGet, u.url("/a?q={x}}{")); r.body != "hello" {
			t.Errorf("GET: %q; want hello", r.body)
		}
	}
	wantCalls(t, u, 1)
}

// TestClientTimeout checks that the load does not end with the http.Client
// deadline of the caller that started it: the client signals its timeout on
// the deprecated Request.Cancel too, which the clone sent upstream must not
// keep.
func TestClientTimeout(t *testing.T) {
	upstreamCtxErr := make(chan error, 1)
	u := newUpstream(t, true, func(w http.ResponseWriter, r *http.Request) {
		upstreamCtxErr <- r.Context().Err()
		hello(w, r)
	})
	_, rdb := redistest.Mini(t)
	cache := newCache(t, rdb, nil)
	c := newClient(u, cache, nil)
	hasty := &http.Client{Transport: c.Transport, Timeout: 50 * time.Millisecond}

	first := goDo(t.Context(), hasty, 1, http.MethodGet, u.url("/a"))
	redistest.WaitFor(t, "the upstream call", func() bool { return u.calls.Load() == 1 })
	second := goDo(t.Context(), c, 1, http.MethodGet, u.url("/a"))
	redistest.WaitFor(t, "the second caller merged", func() bool { return cache.Stats().LocalMerges == 1 })
	if r := <-first; r.err == nil {
		t.Fatalf("the client with a timeout got %q; want its timeout", r.body)
	}
	u.open()
	if r := <-second; r.err != nil || r.body != "hello" {
		t.Errorf("the other caller got %q, %v; want hello", r.body, r.err)
	}
	if err := <-upstreamCtxErr; err != nil {
		t.Errorf("the upstream request's ctx: %v; want it alive", err)
	}
}

// fleetOfTwo starts a load on server a, held at u's gate, then a request
// on server b that waits for it, and returns both replies once the gate is
// open.
func fleetOfTwo(t *testing.T, u *upstream) (a, b reply) {
	t.Helper()
	m, rdb := redistest.Mini(t)
	ca := newCache(t, rdb, nil)
	cb := newCache(t, redistest.Client(t, m.Addr()), nil)
	ra := goDo(t.Context(), newClient(u, ca, nil), 1, http.MethodGet, u.url("/a"))
	redistest.WaitFor(t, "server a's load", func() bool { return u.calls.Load() == 1 })
	rb := goDo(t.Context(), newClient(u, cb, nil), 1, http.MethodGet, u.url("/a"))
	redistest.WaitFor(t, "server b to wait for the load", func() bool {
		return slices.ContainsFunc(m.PubSubChannels(""), func(ch string) bool { return strings.Contains(ch, u.url("/a")) })
	})
	u.open()
	return <-ra, <-rb
}

func TestFleetRateLimited(t *testing.T) {
	u := newUpstream(t, true, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3")
		w.WriteHeader(http.StatusTooManyRequests)
	})
	a, b := fleetOfTwo(t, u)
	if !errors.Is(a.err, budget.ErrRateLimited) {
		t.Errorf("server a: %v; want an error wrapping budget.ErrRateLimited", a.err)
	}
	if !errors.Is(b.err, fill.ErrLoadFailed) || !strings.Contains(b.err.Error(), "429 Too Many Requests") {
		t.Errorf("server b: %v; want an error wrapping fill.ErrLoadFailed that names the 429", b.err)
	}
	wantCalls(t, u, 1)
}

func TestFleetNotStored(t *testing.T) {
	u := newUpstream(t, true, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		hello(w, r)
	})
	a, b := fleetOfTwo(t, u)
	for name, r := range map[string]reply{"a": a, "b": b} {
		if r.err != nil || r.body != "hello" {
			t.Errorf("server %s: %q, %v; want hello", name, r.body, r.err)
		}
	}
	// A response that is not stored is published, and left a short while
	// for the holder's waiters that look again before the message reaches
	// them: server b gets it either way.
	if n := u.calls.Load(); n != 1 {
		t.Errorf("upstream calls = %d; want 1", n)
	}
}

// TestVaryKeepsNoCredential: a response that varies on Authorization and
// Cookie (GitHub's API sends Vary: Authorization) keeps what a request
// had for them as a digest: no credential appears in Redis, and a request
// with another credential does not get the response.
func TestVaryKeepsNoCredential(t *testing.T) {
	u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Vary", "Authorization, Cookie")
		user := "other"
		if r.Header.Get("Authorization") == "Bearer ghp_secret-xyz" {
			user = "ann"
		}
		_, _ = io.WriteString(w, "for "+user)
	})
	_, rdb := redistest.Mini(t)
	// A Key without the credentials: only Vary tells the users apart.
	c := newClient(u, newCache(t, rdb, nil), &httpfill.Options{Key: func(r *http.Request) string { return r.URL.String() }})
	const secret = "Bearer ghp_secret-xyz"
	for i := range 2 {
		if r := mustDo(t, c, http.MethodGet, u.url("/v"), "Authorization", secret, "Cookie", "session=cookie-abc"); r.body != "for ann" {
			t.Fatalf("GET %d: %q", i, r.body)
		}
	}
	wantCalls(t, u, 1) // the second was served from the cache
	if r := mustDo(t, c, http.MethodGet, u.url("/v"), "Authorization", "Bearer other", "Cookie", "session=cookie-abc"); r.body != "for other" {
		t.Errorf("GET with another credential: %q; want its own response", r.body)
	}
	keys, err := rdb.Keys(t.Context(), "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if typ, _ := rdb.Type(t.Context(), k).Result(); typ != "string" {
			continue
		}
		v, _ := rdb.Get(t.Context(), k).Result()
		for _, cred := range []string{"ghp_secret-xyz", "cookie-abc"} {
			if strings.Contains(v, cred) || strings.Contains(k, cred) {
				t.Errorf("%s holds the credential %q", k, cred)
			}
		}
	}
}
