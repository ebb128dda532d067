// Twitter shows the problem locksmith solves, and its solution, on the case
// that started it: a fleet of app servers caches user timelines from the
// rate-limited Twitter API in one Redis, and every request that misses before
// the cache is filled calls the API for the same data.
//
// It starts a fake Twitter API on a loopback listener, limited by one token
// bucket for the whole fleet: GET /users/{id}/timeline, and GET
// /users/timelines?ids=1,2,3 for up to 100 users in one call, which costs
// the limit one call like any other. Like the X API it states the limit on
// every response (x-rate-limit-limit, x-rate-limit-remaining,
// x-rate-limit-reset, in windows of one second: see fakeAPI.setRateLimit)
// and refuses a call over it with 429 and Retry-After. It starts a fleet of
// app servers, each with its own Redis client and cache as separate
// processes would have, and sends one sequence of requests, for user ids
// drawn from a Zipf distribution (a few hot users, the rest cold), through
// the fleet once per mode, each time on an empty cache, a full bucket and a
// new budget. The modes:
//
//   - naive: cache-aside by hand. GET; on a miss, call the API and SET the
//     result. A 429 fails the request.
//   - fill: [github.com/locksmith-go/locksmith/fill.Get], whose loader calls
//     the API. A 429 fails the load.
//   - fill+budget: fill, on a Cache whose Options.Budget is the fleet's
//     budget of API calls (see below). Every load waits for its slot; the
//     loader reports each response to the budget's Observe and returns a
//     429 as an error wrapping a *budget.RateLimitedError, so that the fleet
//     pauses for its Retry-After and the same load tries again.
//   - fill+batch: a [github.com/locksmith-go/locksmith/fill.Batcher] per
//     server, on a Cache with the fleet's budget, whose loader asks for up
//     to 100 users with one call of GET /users/timelines, for one slot of
//     the budget. Its batches are the fleet's (BatchOptions.FleetWide): the
//     users each server misses are handed off (within 2 ms) to one gatherer
//     for the whole fleet, which sends them -batch-window after the first,
//     with the users every other server missed, up to 100 per call, one
//     call at a time while users keep coming (the users missed during a
//     call go out together in the next). So the calls do not grow with the fleet: about the users ÷
//     100, with 8 servers as with 64. Without FleetWide, each server would
//     batch only the users it missed, and a fleet of 64 would make a few
//     users per call (217 calls for the 514 users of -keys 2000).
//   - httpfill: naive's API call without naive's cache, through an
//     http.Client whose Transport is
//     [github.com/locksmith-go/locksmith/httpfill.New]'s, on a Cache with
//     the fleet's budget: the same fleet-wide merge, cache and budget as
//     fill+budget, under the HTTP client, over real HTTP to the API. Its
//     report line counts the requests sent through the HTTP clients against
//     those that reached the API.
//   - fill+conc (runs only when -modes names it, with -api-concurrency):
//     fill+budget whose budget also caps the fleet's calls in flight at
//     the API's cap (budget.Options.Concurrency): each load holds one of
//     the fleet's slots while it calls the API. With -api-concurrency, the
//     API refuses a call that arrives while that many are in flight (429,
//     Retry-After 1: GitHub's secondary limit, past 100 requests in
//     flight), and the report says, for each mode, the most calls the API
//     had in flight at once and the calls it refused past its cap: naive
//     and fill send every miss at once and get refused; fill+budget paces
//     its calls but does not cap them, and retries each refused one;
//     fill+conc has no more in flight than the cap. With -tokens the API
//     caps each token's calls in flight, and fill+conc's budget each key
//     of its pool.
//   - fill+adaptive: fill+budget whose budget has Options.Adaptive: -rate
//     is a ceiling, and the fleet learns the rate the API accepts. It runs
//     only when named, or against a hidden limit (-hidden-limit, below).
//
// The fleet's budget is a [github.com/locksmith-go/locksmith/budget.Budget]
// that every server of a mode makes with the same name under the mode's key
// prefix, FleetSize the number of servers, so the fleet shares one. Its
// limit is the API's rate with a burst of 1: it lets calls go evenly, one
// every 1/rate, and leaves the API's burst whole as a margin. A call reaches
// the API some time after its slot (the HTTP client, a new connection, the
// scheduler of a busy machine), and calls held up that way can arrive
// together: up to (burst-1)/rate of such delay, 180 ms with the defaults,
// draws no 429. With the API's own burst, or that less one, the first calls
// went at once and, held up a few milliseconds while the servers dialled the
// API, drew a 429 in about one run in three with -keys 2000. Observe reads
// every response's headers, so the budget pauses when the API says nothing
// is left before its reset and holds back ("pulls down") when fewer calls
// are left than it would allow. The pull-downs the report counts come from
// the reset being read against the response's Date header, which counts
// whole seconds: a reset a fraction of a second away reads as up to a
// second away (without the header, runs had none). They did not lower
// calls/s in the runs measured: while calls queue in the budget, its
// schedule already lies beyond them.
//
// It prints for each mode the API calls, the 429s, the requests failed, the
// API calls per distinct user requested (calls/key: 1.00 is one call per
// user), the API calls per second from the first call's arrival to the
// last's (calls/s: the API allows -rate after a burst of -burst), and the
// request latencies; then the fill and budget counters, the user ids the
// batch calls asked for, and a conclusion computed from the run, one line a
// mode, such as
//
//	fill+budget made 10 API calls where naive made 527 (517 saved, 98%); naive had 505 calls refused (429), fill+budget 0.
//
// Naive makes many calls per user and runs out of budget. Fill makes one call
// per user, but the users that miss together call at once: with more of them
// than the bucket holds (-keys above -burst), it gets 429s too. Fill+budget
// and httpfill make one call per user at the API's rate, and none is
// refused; fill+batch makes fewer calls, several users each.
//
// Naive's figures vary from run to run, by about 30% with the default flags,
// although the request sequence is the same: they depend on timing, which
// requests miss together and which of their calls find a token in the
// bucket. That race is what the demo is about, so it is left to the machine
// rather than decided by a rule. 30 runs on a busy 2-core machine made from
// 177 to 577 API calls (mean 354, standard deviation 27% of it) and got
// from 134 to 553 429s (mean 322, standard deviation 31%); two runs on a
// less busy one made 469 and 503 calls, and one on a busier one 149.
// Fill's calls do not vary while -keys is at most -burst (see below), nor
// do fill+budget's and httpfill's at all: one per distinct user.
// Fill+batch's depend on which users the fleet misses while a batch call is
// under way.
// The latencies vary in every mode.
//
// Usage:
//
//	go run ./examples/twitter [flags]
//
// The flags:
//
//	-servers 8         app servers in the fleet; a comma-separated list
//	                   (8,32,64) runs the modes once per fleet size and
//	                   prints one table of calls, 429s, failures and
//	                   latencies against the size (with -json, a "sweep"
//	                   of runs, each with its "servers" and "results")
//	-requests 2000     requests sent, spread over the servers in turn
//	-concurrency 200   requests in flight at once, over the whole fleet
//	-keys 10           distinct user ids that can be requested (see below)
//	-zipf 1.1          skew of the user ids' Zipf distribution; above 1
//	-seed 1            seed of the request sequence
//	-rate 50           API calls allowed per second, fleet-wide
//	-burst 10          API calls allowed at once after a quiet time
//	-tokens 0          app tokens the fleet holds, the API limiting each on
//	                   its own at -rate and -burst (see tokens.go): the
//	                   modes with a budget spread their calls over them as
//	                   a pool, the others take them in turn; 0: one limit
//	-api-concurrency 0 the API refuses a call that arrives while this many
//	                   are in flight (of its token, with -tokens; 0: no
//	                   cap); mode fill+conc caps the fleet's calls in
//	                   flight at it (per key of its pool, with -tokens)
//	-latency 80ms      time the API takes per call
//	-ttl 10m           how long a timeline stays cached
//	-timeout 0         the longest one request may take: its deadline,
//	                   which also bounds each API call. 0 computes it:
//	                   the distinct users requested ÷ -rate (× -tokens,
//	                   if any: the time the API needs for one call per
//	                   user; with
//	                   -api-concurrency, × -latency ÷ it if longer)
//	                   + -latency + 5s,
//	                   rounded up to whole seconds, at least 10s. The
//	                   report prints it.
//	-batch-window 50ms how long the fleet's gatherer of mode fill+batch
//	                   collects the users the servers missed before its
//	                   API call, and the least time between two of its
//	                   calls. A miss waits that long, and its call; a hit
//	                   waits up to 2 ms (the Batcher reads Redis for the
//	                   keys asked within 2 ms at once).
//	-redis ADDR        use the Redis at ADDR (host:port) instead of an
//	                   embedded in-memory one. An empty host or port takes
//	                   the original locksmith defaults, localhost and 6379:
//	                   -redis '' and -redis : mean localhost:6379,
//	                   -redis :6380 is localhost:6380, -redis db1 is db1:6379.
//	-prefix twitter-demo:
//	                   prefix of every Redis key the demo writes. Keys under
//	                   it are deleted before each mode and at the end; no
//	                   other key is read or written.
//	-hidden-limit STEPS
//	                   the API hides its real limit and changes it: steps
//	                   of calls/s and how long each lasts, the last holding
//	                   (100/10s,150/10s,50/10s). It states no limit and
//	                   refuses a call over it with a bare 429; -rate is
//	                   only what the fleet is told. Without -modes, runs
//	                   fill+budget (told -rate as the limit) and
//	                   fill+adaptive (told it as a ceiling), and prints for
//	                   each, every second, the limit, the calls served and
//	                   refused, and the rate the budget learned (the mean
//	                   of the servers' budget.Stats().Rate)
//	-modes naive,fill,fill+budget,fill+batch,httpfill
//	                   the modes to run, comma-separated, in that order;
//	                   fill+conc and fill+adaptive run only when named
//	-json              print on stdout one JSON object and nothing else:
//	                   "settings" (the flags, durations in ms: the deadline
//	                   is "request_timeout_ms", and
//	                   "request_timeout_computed" says -timeout was not
//	                   given; the budget's "budget_rate_per_s" and
//	                   "budget_burst"; "batch_window_ms"; "redis" is the
//	                   address or "embedded"), "results" by mode,
//	                   "conclusion" (its lines) and "timing_note"
//
// While a mode runs, a progress line is kept on stderr if stderr is a
// terminal; a file or a pipe gets none.
//
// A fleet that makes one API call per distinct user still makes that many
// calls, and with 200 requests in flight every distinct user among the first
// of them is a call at the same instant. Only as many fit in the bucket as
// its burst, hence -keys 10, equal to -burst: fill then gets no 429 whatever
// the timing. Raise -keys above -burst to see that deduplication does not
// create budget, and what the budget does: with -keys 200 (184 users
// requested) or -keys 2000 (514), fill gets 429s too, though only from
// distinct users while naive spends the budget on duplicates, and its
// requests fail; fill+budget and httpfill queue their calls in the budget
// and make one per user, none refused, at the API's rate: about 10 s for
// the 514.
//
// An API that does not state its limit, and changes it under load, is
// what Options.Adaptive is for. For example
//
//	go run ./examples/twitter -hidden-limit 100/10s,150/10s,50/10s -rate 300 \
//	    -keys 10000000 -zipf 1.0001 -requests 4000 -timeout 2m
//
// asks the API for about 2600 users, nearly all of them once, while its
// hidden limit goes from 100 calls/s to 150, then 50. Fill+budget, told
// 300, paces at it, draws a bare 429 for the calls over the limit, takes
// them for overshoots and widens its spacing, and pauses when they keep
// coming; fill+adaptive cuts its learned rate to the limit within a few
// calls of a 429, and follows it. In one run fill+budget had 1060 of its
// 3680 calls refused and took 38 s; fill+adaptive 68 of 2688, in 28 s.
//
// A mode is one entry of the table modes: a name, a line of help, and a
// function that builds one app server of the fleet from a serverEnv (its
// Redis client, its API client, the mode's key prefix).
package main
