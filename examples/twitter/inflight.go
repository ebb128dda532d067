package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
)

// The API's cap on calls in flight (-api-concurrency), a secondary limit
// like GitHub's (at most 100 requests in flight per user), and what the
// report says of it.

// inFlight counts the API's calls in flight, as the API sees them: from
// the handler's start to its end, a refused call included until it is
// refused. With a limit, a call that arrives while limit calls are in
// flight is over the cap (see overCap); with -tokens, limit calls of its
// token.
type inFlight struct {
	limit   int64 // 0: no cap
	now     atomic.Int64
	peak    atomic.Int64 // the most in flight at once (of one token, with perToken), a call over the cap included
	refused atomic.Int64 // calls refused past the cap
	// perToken counts, caps and peaks the calls of each Authorization
	// header on their own (-tokens: GitHub caps each user's), in byToken.
	perToken bool
	mu       sync.Mutex
	byToken  map[string]*atomic.Int64
}

// counter returns the count r's call goes in: the API's, or its token's.
func (f *inFlight) counter(r *http.Request) *atomic.Int64 {
	if !f.perToken {
		return &f.now
	}
	tok := r.Header.Get("Authorization")
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.byToken[tok]
	if c == nil {
		if f.byToken == nil {
			f.byToken = make(map[string]*atomic.Int64)
		}
		c = new(atomic.Int64)
		f.byToken[tok] = c
	}
	return c
}

// overCapKey marks, in a request's context, a call that arrived over the
// cap.
type overCapKey struct{}

// count wraps h, counting its calls in flight and marking those over the
// cap for admit to refuse.
func (f *inFlight) count(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c := f.counter(r)
		n := c.Add(1)
		defer c.Add(-1)
		for {
			if p := f.peak.Load(); n <= p || f.peak.CompareAndSwap(p, n) {
				break
			}
		}
		if f.limit > 0 && n > f.limit {
			f.refused.Add(1)
			r = r.WithContext(context.WithValue(r.Context(), overCapKey{}, true))
		}
		h(w, r)
	}
}

// overCap reports whether r arrived while the cap's number of calls were
// in flight.
func overCap(r *http.Request) bool { return r.Context().Value(overCapKey{}) != nil }

// refuseInFlight answers a call over the cap at once, as GitHub answers a
// secondary rate limit: 429 with Retry-After. It spends nothing of the
// rate limit.
func refuseInFlight(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Retry-After", "1")
	apiError(w, http.StatusTooManyRequests, "You have exceeded a secondary rate limit: too many requests in flight", 88)
}

// inFlightLines reports, for each mode, the most calls the API had in
// flight at once and the calls it refused past its cap.
// With tokens, the counts are of one token's calls.
func inFlightLines(w io.Writer, capacity int, tokens bool, results []result) {
	of := ""
	if tokens {
		of = " of a token"
	}
	for _, r := range results {
		fmt.Fprintf(w, "%s, API: at most %s%s in flight at once; %d refused past the cap of %d\n",
			r.Mode, plural(r.MaxInFlight, "call"), of, r.RefusedInFlight, capacity)
	}
}
