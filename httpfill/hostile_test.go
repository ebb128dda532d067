package httpfill_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/httpfill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// doRaw sends a GET with header set as given, names untouched: an SDK that
// writes req.Header["authorization"] directly reaches the upstream so.
func doRaw(t *testing.T, c *http.Client, url string, header http.Header) reply {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = header
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{resp: resp, body: string(b), err: err}
}

// TestCredentialsOddCase: a credential under a name that is not canonical
// is still the request's credential: two users never share a response.
func TestCredentialsOddCase(t *testing.T) {
	names := []string{"Authorization", "Proxy-Authorization", "Cookie", "X-Api-Key", "Api-Key", "X-Auth-Token", "Private-Token"}
	for _, name := range names {
		for _, spelling := range []string{strings.ToLower(name), strings.ToUpper(name), name} {
			t.Run(spelling, func(t *testing.T) {
				u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
					_, _ = io.WriteString(w, strings.Join(r.Header.Values(name), ","))
				})
				_, rdb := redistest.Mini(t)
				c := newClient(u, newCache(t, rdb, nil), nil)
				for i, user := range []string{"alice", "bob", "alice"} {
					r := doRaw(t, c, u.url("/me"), http.Header{spelling: {user}})
					if r.body != user {
						t.Errorf("request %d with %s: %s got %q; want its own answer", i+1, spelling, user, r.body)
					}
				}
				wantCalls(t, u, 2)
			})
		}
	}
}

// TestCredentialsSplit: the same credential header under two spellings
// reaches the upstream as two values; a request with one of them is
// another request.
func TestCredentialsSplit(t *testing.T) {
	u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, strings.Join(r.Header.Values("Cookie"), ";"))
	})
	_, rdb := redistest.Mini(t)
	c := newClient(u, newCache(t, rdb, nil), nil)
	both := doRaw(t, c, u.url("/me"), http.Header{"Cookie": {"a=1"}, "cookie": {"b=2"}})
	one := doRaw(t, c, u.url("/me"), http.Header{"Cookie": {"a=1"}})
	if both.body == one.body {
		t.Errorf("a request with cookies a=1 and b=2 and one with a=1 only both got %q", one.body)
	}
	wantCalls(t, u, 2)
}

// TestVaryOddCase: the value a response varies on is read under every
// spelling of its name.
func TestVaryOddCase(t *testing.T) {
	u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Vary", "x-tenant")
		_, _ = io.WriteString(w, "for "+r.Header.Get("X-Tenant"))
	})
	_, rdb := redistest.Mini(t)
	c := newClient(u, newCache(t, rdb, nil), nil)
	for i, tenant := range []string{"a", "b"} {
		if r := doRaw(t, c, u.url("/v"), http.Header{"x-tenant": {tenant}}); r.body != "for "+tenant {
			t.Errorf("request %d for %s: %q; want %q", i+1, tenant, r.body, "for "+tenant)
		}
	}
	wantCalls(t, u, 2)
}

// TestRequestDirectivesOddCase: a request's Cache-Control and Pragma ask
// for the upstream's own answer under any spelling of their names.
func TestRequestDirectivesOddCase(t *testing.T) {
	var n atomic.Int32
	u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, strings.Repeat("x", int(n.Add(1))))
	})
	m, rdb := redistest.Mini(t)
	c := newClient(u, newCache(t, rdb, nil), nil)
	mustDo(t, c, http.MethodGet, u.url("/a")) // cached
	for _, h := range []http.Header{
		{"cache-control": {"no-cache"}},
		{"CACHE-CONTROL": {"max-age=0"}},
		{"pragma": {"no-cache"}},
		{"range": {"bytes=0-1"}},
	} {
		if r := doRaw(t, c, u.url("/a"), h); r.body == "x" {
			t.Errorf("GET with %v: the cached answer; want the upstream's own", h)
		}
	}
	wantCalls(t, u, 5)
	// A request that says no-store under another spelling leaves nothing.
	m.FlushAll()
	doRaw(t, c, u.url("/b"), http.Header{"cache-control": {"no-store"}})
	if _, cached := valueTTL(t, m); cached {
		t.Errorf("the answer to a request with cache-control: no-store was stored")
	}
}

// TestPrivateNotStored: a response the upstream marks private is never
// stored in the shared cache, whatever its lifetime.
func TestPrivateNotStored(t *testing.T) {
	for _, cc := range []string{"private, max-age=60", "PRIVATE", `max-age=60, private="Set-Cookie"`} {
		t.Run(cc, func(t *testing.T) {
			u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Cache-Control", cc)
				_, _ = io.WriteString(w, "for "+r.Header.Get("X-User"))
			})
			m, rdb := redistest.Mini(t)
			// A Key that does not tell the users apart.
			c := newClient(u, newCache(t, rdb, nil), nil)
			for _, user := range []string{"alice", "bob"} {
				if r := mustDo(t, c, http.MethodGet, u.url("/me"), "X-User", user); r.body != "for "+user {
					t.Errorf("%s got %q; want its own answer", user, r.body)
				}
			}
			wantCalls(t, u, 2)
			if _, cached := valueTTL(t, m); cached {
				t.Errorf("a private response was stored")
			}
		})
	}
}

// TestSetCookieOwnRequestOnly: a response that sets a cookie goes to the
// request that caused it; the callers merged on its flight, here and on
// another server, get answers of their own.
func TestSetCookieOwnRequestOnly(t *testing.T) {
	var n atomic.Int32
	u := newUpstream(t, true, func(w http.ResponseWriter, r *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: "session", Value: strings.Repeat("s", int(n.Add(1)))})
		hello(w, r)
	})
	m, rdb := redistest.Mini(t)
	ca := newCache(t, rdb, nil)
	cb := newCache(t, redistest.Client(t, m.Addr()), nil)
	a, b := newClient(u, ca, nil), newClient(u, cb, nil)
	ra := goDo(t.Context(), a, 3, http.MethodGet, u.url("/login"))
	redistest.WaitFor(t, "server a's load and merges", func() bool {
		return u.calls.Load() == 1 && ca.Stats().LocalMerges == 2
	})
	rb := goDo(t.Context(), b, 1, http.MethodGet, u.url("/login"))
	redistest.WaitFor(t, "server b to find the load held", func() bool { return cb.Stats().Misses == 1 })
	u.open()
	seen := map[string]bool{}
	for _, ch := range []<-chan reply{ra, ra, ra, rb} {
		r := <-ch
		if r.err != nil || r.body != "hello" {
			t.Fatalf("GET: %q, %v; want hello", r.body, r.err)
		}
		c := r.resp.Header.Get("Set-Cookie")
		if seen[c] {
			t.Errorf("two callers got the cookie %q", c)
		}
		seen[c] = true
	}
	wantCalls(t, u, 4)
	if _, cached := valueTTL(t, m); cached {
		t.Errorf("a response with Set-Cookie was stored")
	}
}

// TestRateLimitedHugeRetryAfter: a 429 whose Retry-After asks for years is
// malformed: the fleet pauses once, for one Per, and the request is served
// once the upstream serves again.
func TestRateLimitedHugeRetryAfter(t *testing.T) {
	for _, ra := range []string{"99999999999", "-5", "NaN", "Fri, 01 Jan 2077 00:00:00 GMT"} {
		t.Run(ra, func(t *testing.T) {
			h, _ := rateLimited(1, ra)
			u := newUpstream(t, false, h)
			_, rdb := redistest.Mini(t)
			b := newBudget(t, rdb)
			c := newClient(u, newCache(t, rdb, &fill.Options{Budget: b}), nil)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if r := do(ctx, c, http.MethodGet, u.url("/a")); r.err != nil || r.body != "hello" {
				t.Fatalf("GET: %q, %v; want hello after a pause of one Per", r.body, r.err)
			}
			wantCalls(t, u, 2)
			if n := b.Stats().PausesRateLimited; n != 1 {
				t.Errorf("budget pauses for one 429 = %d; want 1", n)
			}
			if ttl := rdb.PTTL(ctx, "__locksmith:{api}:budget").Val(); ttl > time.Minute {
				t.Errorf("the budget's key lives %v; want no long pause kept", ttl)
			}
		})
	}
}

// TestLifetimeCapped: a response whose own freshness says decades (a huge
// max-age, an Expires far ahead) is cached for at most Options.MaxTTL.
func TestLifetimeCapped(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header map[string]string
		maxTTL time.Duration
		want   time.Duration
	}{
		{"max-age", map[string]string{"Cache-Control": "max-age=2147483648"}, 0, 24 * time.Hour},
		{"expires", map[string]string{"Expires": time.Now().AddDate(60, 0, 0).UTC().Format(http.TimeFormat)}, 0, 24 * time.Hour},
		{"option", map[string]string{"Cache-Control": "s-maxage=999999999"}, time.Hour, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, rdb := redistest.Mini(t)
			u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tc.header {
					w.Header().Set(k, v)
				}
				_, _ = io.WriteString(w, "hello")
			})
			c := newClient(u, newCache(t, rdb, nil), &httpfill.Options{
				MaxTTL: tc.maxTTL,
				Key:    func(*http.Request) string { return "k" },
			})
			if r := do(t.Context(), c, http.MethodGet, u.url("/")); r.err != nil || r.body != "hello" {
				t.Fatalf("GET: %q, %v", r.body, r.err)
			}
			if ttl := m.TTL("__locksmith:{k}:value"); ttl <= 0 || ttl > tc.want {
				t.Errorf("cached for %v; want at most %v", ttl, tc.want)
			}
		})
	}
}

// TestReusedRequest: a caller may reuse its request once the response is
// read (net/http allows it), for another user's call. A background refresh
// of the first call's entry still to run reads the request as it was sent,
// not as reused: one user's credentials never fetch the entry of another.
// The refresh used to read the caller's request when it ran: it fetched
// bob's answer with bob's token and stored it as alice's.
func TestReusedRequest(t *testing.T) {
	posted := make(chan struct{})
	gate := make(chan struct{})
	var gets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			close(posted)
			<-gate
			return
		}
		gets.Add(1)
		w.Header().Set("Cache-Control", "max-age=1")
		_, _ = io.WriteString(w, "for "+r.Header.Get("Authorization"))
	}))
	defer srv.Close()
	m, rdb := redistest.Mini(t)
	// One call in flight at a time: a POST passing through holds the slot
	// the refresh waits for.
	b := budget.New(rdb, "api", budget.Limit{Rate: 1000, Per: time.Second}, &budget.Options{Concurrency: 1})
	defer b.Close()
	c := newCache(t, rdb, &fill.Options{StaleWhileRevalidate: time.Minute, Budget: b})
	cl := &http.Client{Transport: httpfill.New(c, &httpfill.Options{Base: srv.Client().Transport})}
	get := func(req *http.Request) string {
		t.Helper()
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/me", nil)
	req.Header.Set("Authorization", "alice")
	if got := get(req); got != "for alice" {
		t.Fatalf("first GET: %q", got)
	}
	stored := entryValue(t, m)
	m.FastForward(1500 * time.Millisecond) // stale: served, refreshed in the background
	post := make(chan error, 1)
	go func() {
		p, _ := http.NewRequest(http.MethodPost, srv.URL+"/x", strings.NewReader("x"))
		resp, err := cl.Do(p)
		if err == nil {
			resp.Body.Close()
		}
		post <- err
	}()
	<-posted
	if got := get(req); got != "for alice" {
		t.Fatalf("stale GET: %q", got)
	}
	req.Header.Set("Authorization", "bob") // reused, its response read
	close(gate)
	if err := <-post; err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "the refresh stored", func() bool { return gets.Load() == 2 && entryValue(t, m) != stored })
	alice, _ := http.NewRequest(http.MethodGet, srv.URL+"/me", nil)
	alice.Header.Set("Authorization", "alice")
	if got := get(alice); got != "for alice" {
		t.Errorf("alice got %q", got)
	}
}

// entryValue returns the value of the only entry in m, or "".
func entryValue(t *testing.T, m *miniredis.Miniredis) string {
	t.Helper()
	for _, k := range m.Keys() {
		if strings.HasSuffix(k, ":value") {
			v, _ := m.Get(k)
			return v
		}
	}
	return ""
}

// TestEmptyMethod: net/http sends a request with an empty Method as a GET,
// and so it is merged and cached as one. It used to pass through: every
// call reached the upstream.
func TestEmptyMethod(t *testing.T) {
	u := newUpstream(t, false, hello)
	_, rdb := redistest.Mini(t)
	c := newClient(u, newCache(t, rdb, nil), nil)
	target, err := url.Parse(u.url("/a"))
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		resp, err := c.Do((&http.Request{URL: target, Header: http.Header{}}).WithContext(t.Context()))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	wantCalls(t, u, 1)
}

// TestRepeatedMaxAge: of two max-age directives, the first counts (RFC
// 9111, 4.2.1): a proxy that appends its own does not extend a response's
// life. The last used to win: max-age=0 then max-age=86400 was stored a day.
func TestRepeatedMaxAge(t *testing.T) {
	u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Cache-Control", "max-age=0")
		w.Header().Add("Cache-Control", "max-age=86400")
		hello(w, r)
	})
	m, rdb := redistest.Mini(t)
	c := newClient(u, newCache(t, rdb, nil), nil)
	mustDo(t, c, http.MethodGet, u.url("/a"))
	if ttl, ok := valueTTL(t, m); ok {
		t.Errorf("stored for %v; want not stored (max-age=0 first)", ttl)
	}
}
