package httpfill_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/httpfill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// pooledAPI is an upstream that takes a pool's keys as bearer tokens: it
// records the token and the caller's own key of every call, answers 429
// for the tokens it is told to limit and 401 for those revoked.
type pooledAPI struct {
	mu      sync.Mutex // guards the fields below
	calls   []string   // "token user" per call
	limited map[string]bool
	revoked map[string]bool
}

func (a *pooledAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	a.mu.Lock()
	a.calls = append(a.calls, tok+" "+r.Header.Get("X-Api-Key"))
	limited, revoked := a.limited[tok], a.revoked[tok]
	a.mu.Unlock()
	switch {
	case revoked || tok == "":
		w.WriteHeader(http.StatusUnauthorized)
	case limited:
		w.Header().Set("Retry-After", "60")
		w.WriteHeader(http.StatusTooManyRequests)
	default:
		w.Header().Set("Cache-Control", "max-age=60")
		_, _ = io.WriteString(w, "for "+r.Header.Get("X-Api-Key"))
	}
}

func (a *pooledAPI) took() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.calls...)
}

// TestTransportKeys: with a budget of several keys, Authorize puts the
// reservation's key on each upstream request, never on the caller's; the
// pool's key is not part of the cache key, the caller's own credentials
// are; a 429 on one key sends the load again on another, and a 401 removes
// the key.
func TestTransportKeys(t *testing.T) {
	_, rdb := redistest.Mini(t)
	api := &pooledAPI{limited: map[string]bool{}, revoked: map[string]bool{}}
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	keys := []string{"tok-a", "tok-b", "tok-c"}
	b := budget.New(rdb, "api", budget.Limit{Rate: 100, Burst: 10}, &budget.Options{Keys: keys})
	t.Cleanup(func() { _ = b.Close() })
	c := fill.New(rdb, nil)
	t.Cleanup(func() { _ = c.Close() })
	hc := &http.Client{Transport: httpfill.New(c, &httpfill.Options{
		Budget:    b,
		Authorize: func(req *http.Request, key string) { req.Header.Set("Authorization", "Bearer "+key) },
	})}
	ctx := redistest.Context(t, 10*time.Second)
	get := func(user, method string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, srv.URL+"/timeline", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Api-Key", user)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s as %s: %v", method, user, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if h := req.Header.Get("Authorization"); h != "" {
			t.Fatalf("the caller's request got Authorization %q; want it left as it was", h)
		}
		return resp.StatusCode, string(body)
	}

	// The same caller twice: one upstream call, whatever key the second
	// would have gone with. Another caller: a call of its own.
	for _, user := range []string{"u1", "u1", "u2"} {
		if code, body := get(user, http.MethodGet); code != http.StatusOK || body != "for "+user {
			t.Fatalf("GET as %s: %d %q; want 200 %q", user, code, body, "for "+user)
		}
	}
	calls := api.took()
	if len(calls) != 2 {
		t.Fatalf("upstream calls: %q; want 2 (u1 once, u2 once)", calls)
	}
	for _, call := range calls {
		if tok, _, _ := strings.Cut(call, " "); !strings.HasPrefix(tok, "tok-") {
			t.Fatalf("upstream call %q: want a key of the pool as its bearer token", call)
		}
	}

	// A 429 on every key but one: each load that meets one goes again on
	// another key, and the callers get tok-c's answer; a key that drew a
	// 429 is paused, and not tried again.
	api.mu.Lock()
	api.limited["tok-a"], api.limited["tok-b"] = true, true
	api.mu.Unlock()
	before := len(api.took())
	for _, user := range []string{"u3", "u5", "u6"} {
		if code, body := get(user, http.MethodGet); code != http.StatusOK || body != "for "+user {
			t.Fatalf("GET as %s with two keys rate-limited: %d %q; want 200 from tok-c", user, code, body)
		}
	}
	per := map[string]int{}
	for _, call := range api.took()[before:] {
		tok, _, _ := strings.Cut(call, " ")
		per[tok]++
	}
	if per["tok-c"] != 3 || per["tok-a"] != 1 || per["tok-b"] != 1 {
		t.Fatalf("upstream calls per key with tok-a and tok-b limited: %v; want tok-c 3, tok-a and tok-b once each (then paused)", per)
	}

	// A pass-through carries a key too, and a 401 removes it.
	api.mu.Lock()
	for _, k := range keys {
		api.revoked[k] = true
	}
	api.mu.Unlock()
	if code, _ := get("u4", http.MethodPost); code != http.StatusUnauthorized {
		t.Fatalf("POST with every key revoked: %d; want 401", code)
	}
	if last := api.took(); !strings.HasPrefix(last[len(last)-1], "tok-") {
		t.Fatalf("upstream calls %q: want the POST with a key of the pool", last)
	}
	if n := b.Stats().Keys; n != 2 {
		t.Fatalf("Stats().Keys = %d after a 401; want 2", n)
	}
}
