package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
)

// The API's cap on calls in flight (-api-concurrency), a secondary limit
// like GitHub's (at most 100 requests in flight per user), and what the
// report says of it.

// inFlight counts the API's calls in flight, as the API sees them: from
// the handler's start to its end, a refused call included until it is
// refused. With a limit, a call that arrives while limit calls are in
// flight is over the cap (see overCap).
type inFlight struct {
	limit   int64 // 0: no cap
	now     atomic.Int64
	peak    atomic.Int64 // the most in flight at once, a call over the cap included
	refused atomic.Int64 // calls refused past the cap
}

// overCapKey marks, in a request's context, a call that arrived over the
// cap.
type overCapKey struct{}

// count wraps h, counting its calls in flight and marking those over the
// cap for admit to refuse.
func (f *inFlight) count(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n := f.now.Add(1)
		defer f.now.Add(-1)
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
func inFlightLines(w io.Writer, capacity int, results []result) {
	for _, r := range results {
		fmt.Fprintf(w, "%s, API: at most %s in flight at once; %d refused past the cap of %d\n",
			r.Mode, plural(r.MaxInFlight, "call"), r.RefusedInFlight, capacity)
	}
}
