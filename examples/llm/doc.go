// Llm shows locksmith in front of an LLM completion API, which limits an
// API key in requests per minute (RPM) and in tokens per minute (TPM), a
// call's tokens being known only from its answer. A fleet of app servers
// answers prompts, the popular ones asked again and again, from one Redis,
// and every prompt that misses before the cache is filled costs a
// completion.
//
// It starts a fake completion API on a loopback listener: POST
// /v1/completions with a JSON body {"model": ..., "prompt": ...} answers a
// completion whose usage.total_tokens is its token use. That use is
// log-normal (median -tokens-median, -tokens-sigma the standard deviation of
// its log, at most -tpm), drawn from the prompt and -seed alone: the same
// prompt always uses the same tokens, and the client learns them only from
// the answer. A completion takes -latency.
//
// The API enforces both limits, fleet-wide, with two token buckets: each
// holds one minute's allowance (-rpm requests, -tpm tokens), starts full,
// and refills continuously at that allowance per minute. A minute lasts
// -minute, 6s by default: time runs ten times faster than OpenAI's, so a
// run of several minutes of traffic takes seconds, and every figure per
// minute is per -minute. A call takes one request: with none left it is
// refused, 429 with error type "requests", and takes nothing. Then it takes
// its tokens: with fewer left it is refused, 429 with error type "tokens",
// and its request stays spent, as OpenAI counts refused calls against the
// RPM limit. A 429 comes at once, with Retry-After in whole seconds (at
// least 1) until the refusing bucket has room. Every response states both
// limits with OpenAI's headers: x-ratelimit-limit-requests (per minute),
// x-ratelimit-remaining-requests (left now) and x-ratelimit-reset-requests
// (until the bucket is full again, which is when OpenAI's limit is "back to
// its initial state", as a Go duration: "1.2s", "1m0s"), and the same for
// -tokens.
//
// It starts a fleet of -servers app servers, each with its own Redis client
// and cache as separate processes would have, and sends one sequence of
// requests for prompts drawn from a Zipf distribution (-prompts distinct,
// skew -zipf: a few hot prompts, the rest cold) through the fleet once per
// mode, each time on an empty cache, full buckets and a new budget. The
// modes:
//
//   - naive: cache-aside by hand. GET; on a miss, call the API and SET the
//     completion. A 429 fails the request.
//   - fill: [github.com/locksmith-go/locksmith/fill.Get], whose loader calls
//     the API: one call per prompt across the fleet. A 429 fails the load,
//     and every request waiting on it; a later request loads again, so
//     calls/prompt can exceed 1.
//   - fill+requests: fill, on a Cache whose Options.Budget is the fleet's
//     [github.com/locksmith-go/locksmith/budget.Budget] of requests:
//     Limit{Rate: -rpm, Per: -minute}, burst 1, shared by every server of the
//     mode. Every load reserves its slot (a request); the loader reports
//     each response to the budget through its reservation
//     (budget.FromContext(ctx).Observe) and returns a 429 as an error
//     wrapping a *budget.RateLimitedError with its Retry-After, so that
//     the fleet pauses and the same load tries again.
//   - fill+tokens: fill, on a Cache whose budget meters requests and
//     tokens (budget.Options.Meters: the requests' Limit, and
//     {"tokens": {Rate: -tpm, Per: -minute, Burst: -tpm/2}}). Each load
//     reserves a request and its prompt's estimated tokens
//     (fill.WithCost) in one round trip before the call; the loader reads
//     its reservation with budget.FromContext, reports each response
//     through it (Reservation.Observe: OpenAI's remaining-tokens headers
//     cap the meter until their reset) and the tokens the answer's
//     usage.total_tokens says it used (Reservation.Spent, 0 for a 429),
//     which fill settles against the estimate once the loader returns:
//     tokens not used go back at once, tokens used beyond the estimate
//     are booked after the fact. The burst of half a minute's tokens,
//     where the API's bucket holds a whole minute, is the margin for
//     calls in flight that use more than their estimate.
//
// The budget of requests keeps the fleet under the RPM limit, but it does
// not know what a call costs in tokens: at -rpm, completions of the default
// size would spend about four times the TPM. It learns of the TPM limit only
// from 429s for tokens, each pausing the fleet for its Retry-After. Those
// 429s are what it cannot avoid; the budget metering tokens (fill+tokens)
// books each call's tokens first. That needs an estimate of them: the
// demo's stands for a client's (a tokenizer on the prompt, a guess at the
// answer's length), the true count times a factor uniform in [1-e, 1+e], e
// being -estimate-error, the same for the same prompt. The report gives the
// estimates' error, computed in every mode from the completions received.
//
// It prints for each mode the requests, the distinct prompts requested, the
// API calls (answered or refused), the 429s for requests and for tokens, the
// requests failed, the API calls per distinct prompt (calls/prompt: 1.00 is
// one call each), the tokens the completions used, the tokens used and the
// requests spent as a percentage of what the API allowed over the run (TPM
// %, RPM %: a full bucket, and its refill over the mode's wall time), the
// request latencies and the wall time; then the fill and budget counters,
// the estimates' error, and a conclusion computed from the run, one line a
// mode, such as
//
//	fill+requests made 302 API calls where naive made 682 (380 saved, 55%); the API refused naive 511 (135 for requests, 376 for tokens), fill+requests 6 (0 for requests, 6 for tokens); failed requests: naive 511, fill+requests 0.
//
// With the defaults, naive runs out of tokens within a second and of
// requests soon after: its calls refused for tokens spend requests too.
// Fill calls the API for each prompt once at a time, but sends the cold
// prompts together, past the TPM, and the loads refused are loaded again by
// later requests (about 1.3 calls a prompt, a tenth of the requests
// failed). Fill+requests fails no request, gets no 429 for requests, and
// completes every prompt, about 2.6 minutes of tokens at 96 to 99% of the
// TPM over its run, paying a few 429s for tokens (6 to 20 in the runs
// measured) and the pause after each. Fill+tokens gets no 429 at all and
// calls the API exactly once per prompt, at 81 to 84% of the TPM over its
// run (three seeds): the half minute of tokens it keeps as a margin at the
// start is the share it leaves unused, so it ends later than
// fill+requests, but its p99 latency is lower, not waiting out pauses. Naive's and fill's figures vary from
// run to run (naive made 625 to 739 calls in four runs): they depend on
// which requests miss together.
//
// Usage:
//
//	go run ./examples/llm [flags]
//
// The flags:
//
//	-servers 8           app servers in the fleet
//	-requests 2000       requests sent, spread over the servers in turn
//	-concurrency 100     requests in flight at once, over the whole fleet
//	-prompts 400         distinct prompts that can be requested
//	-zipf 1.1            skew of the prompts' Zipf distribution; above 1
//	-seed 1              seed of the request sequence and of the token use
//	-rpm 500             the API's requests per minute
//	-tpm 200000          the API's tokens per minute
//	-minute 6s           how long the API's minute lasts
//	-tokens-median 1000  median tokens of a completion
//	-tokens-sigma 1      standard deviation of the log of a completion's tokens
//	-estimate-error 0.5  the estimates' error: a factor in [1-e, 1+e]
//	-latency 100ms       time the API takes per completion
//	-ttl 10m             how long a completion stays cached
//	-timeout 0           the longest one request may take: its deadline,
//	                     which also bounds each API call. 0 computes it:
//	                     the minutes the limits need for one call per
//	                     distinct prompt (the larger of the calls ÷ -rpm and
//	                     their tokens ÷ -tpm) times -minute, + -latency +
//	                     5s, rounded up to whole seconds, at least 10s.
//	-redis ADDR          use the Redis at ADDR (host:port) instead of an
//	                     embedded in-memory one; an empty host or port means
//	                     localhost or 6379
//	-prefix llm-demo:    prefix of every Redis key the demo writes; keys
//	                     under it are deleted before each mode and at the end
//	-modes naive,fill,fill+requests,fill+tokens
//	                     the modes to run, comma-separated, in that order
//	-json                print on stdout one JSON object and nothing else:
//	                     "settings" (the flags, durations in ms), "results"
//	                     by mode (the table's figures, "estimate",
//	                     "fill_stats", "budget"), "conclusion" (its lines)
//	                     and "timing_note"
//
// While a mode runs, a progress line is kept on stderr if stderr is a
// terminal; a file or a pipe gets none.
//
// A mode is one entry of the table modes: a name, a line of help, and a
// function that builds one app server of the fleet from a serverEnv (its
// Redis client, its API client, the mode's key prefix).
package main
