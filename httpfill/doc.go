// Package httpfill is an [http.RoundTripper] for a fleet of servers that
// live off one rate-limited HTTP API: the GET and HEAD requests of every
// server are merged and cached fleet-wide through [fill.Get], so the API
// sees one request per distinct request (its method, URL and credentials)
// however many servers and callers ask for it at once, and none while the
// response is cached.
//
//	client := &http.Client{Transport: httpfill.New(cache, nil)}
//
// # What is cached
//
// A GET or HEAD request is looked up under its key ([Options.Key], by
// default [DefaultKey]: method, URL, and a hash of the credentials, any
// header whose name says auth, cookie, key, token and the like, and of the
// Accept headers). On a miss, one server runs the request upstream, on a
// context detached from its callers (one caller giving up does not cancel
// it for the others), and every caller of that key, on every server, gets
// the response; then it is stored as fill stores any value, for
//
//   - the response's Cache-Control s-maxage, else its max-age, else its
//     Expires minus its Date, less its Age header; a lifetime of 0 or less
//     is not stored;
//   - else, for a status cacheable without an explicit lifetime (200, 203,
//     204, 300, 301, 308, 404, 405, 410, 414, 501), [Options.TTL], else the
//     Cache's TTL.
//
// Not stored, but handed to the callers merged on the request that got it:
// a response with Cache-Control no-store, no-cache or private (a response
// for one user is never kept in a shared cache: its key may not tell that
// user from others), or to a request with Cache-Control no-store; another
// status (302, 401, 403, ...) without an explicit lifetime; a 5xx; a 408. A
// response with Set-Cookie is neither stored nor handed on: it goes to the
// request that caused it only, and the callers merged on that request, on
// every server, pass through, each for a cookie of its own. A 429 is
// neither stored nor handed on as a response (see Rate limits below).
//
// Header names count under any spelling: a header set directly in the
// request's map (req.Header["authorization"]) reaches the upstream as
// written, so the key, Vary and the request's Cache-Control read it too.
//
// A response names in Vary the request headers it depends on: the values
// the request that got it had for them are kept with it, and a request
// with other values does not get it but passes through. A response with
// Vary "*", a body larger than [Options.MaxBody], or a header larger than
// 64 KiB, are never handed on:
// a marker takes their place in the cache, for as long as the response
// would have been cached, and every request that finds it passes through,
// the callers merged on the request that found out included (the body read
// to find out is discarded: one upstream call spent per lifetime).
//
// # What passes through
//
// Every other method; a GET or HEAD with a body, with a Range, If-* or
// Upgrade header, or with Cache-Control no-cache or max-age=0 (or Pragma
// no-cache), which asks for the upstream's own answer; and a request whose
// Key is "". Such a request goes to Options.Base unmerged, after reserving
// its cost in Options.Budget (its ctx then carries the reservation), and
// its response, whatever its status, or its error, comes back as Base
// returned it.
//
// # Responses
//
// Each caller gets a response of its own: its own header map, a body it
// reads and closes independently, ContentLength set, Request its own
// request, and an Age header when the response has been cached for a
// second or more.
//
// # Rate limits
//
// Every call to the upstream, loaded or passed through, reserves its cost in
// Options.Budget first (by default the Cache's budget, fill.Options.Budget):
// [Options].Cost's estimate of the request, one call by default, such as
// the tokens an LLM request will take. The request Base is given carries
// the reservation in its ctx (budget.FromContext), so a Base that learns
// what the call really spent reports it (Reservation.Spent) before it
// returns; the reservation is done, settling what was spent, once Base
// has returned. With the budget's Concurrency, the request holds one of
// the fleet's slots while Base runs, and runs under the slot's lease: its
// ctx ends, with cause [budget.ErrSlotLost], if the slot is lost before
// (a pass-through's, until its body is closed). Each response is reported to the budget through the
// reservation (Reservation.Observe): rate-limit headers such as OpenAI's
// x-ratelimit-remaining-tokens cap what the fleet books before the reset,
// and a 429 pauses the budget fleet-wide, once, for its Retry-After (read
// by [budget.RetryAfter]: a wait over 24 hours is malformed), else until
// the rate limit's reset, else for one Per. A load that met the 429 is retried
// by the same flight once the pause is over, for as long as one of its
// callers waits; the Transport's budget governs its loads whatever budget
// the Cache has, or none. A caller that gives up meanwhile, on the server
// whose load met the 429, gets an error wrapping both its ctx's error and
// [budget.ErrRateLimited]. A 429 without a budget, or one that outlasts the
// Cache's LoadTimeout, is an error wrapping a *[budget.RateLimitedError]
// with the wait the response asked for; callers on other servers that
// waited for it get an error wrapping [fill.ErrLoadFailed] that names it.
// A 429 is never a response of a cached request: code that retries by
// status should also retry on budget.ErrRateLimited.
//
// A budget with a pool of credentials (budget.Options.Keys) books each
// upstream request on the key with the most room, and [Options].Authorize
// sets it on the Transport's copy of the request, after the cache key was
// made: callers share responses whatever key fetched them, and their own
// credentials still keep them apart. The response is that key's: a 429
// pauses it alone, and the load goes again at once on another key; a 401
// removes it from the pool, fleet-wide.
package httpfill
