package budget

// Feedback: what the upstream's responses say (a 429, a Retry-After, calls
// remaining until a reset), read by Observe and applied as a pause or a cap
// (cap.lua).

import (
	"context"
	_ "embed"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/redisx"
)

// RateLimitedError is the error a loader returns, or wraps, when the
// upstream refused a call for its rate limit (a 429). [Budget.PauseFor]
// pauses the fleet for it.
type RateLimitedError struct {
	// RetryAfter is how long the upstream asked to wait: see [RetryAfter],
	// which reads it from a response as Observe does. 0 means unknown:
	// PauseFor then pauses for one Per of the budget's limit (with
	// Options.Adaptive, cuts the learned rate instead). PauseFor pauses
	// for at most 24 hours.
	RetryAfter time.Duration

	// Observed says that the response was reported to the budget's
	// [Budget.Observe], which paused the budget for it already: PauseFor
	// then reports err as rate limited, so that the caller retries after
	// that pause, without pausing the budget a second time.
	Observed bool
}

// Error says that the upstream refused a call for its rate limit, and when
// to retry if known.
func (e *RateLimitedError) Error() string {
	if e.RetryAfter > 0 {
		return "budget: rate limited: retry after " + e.RetryAfter.String()
	}
	return "budget: rate limited"
}

// Is reports whether target is [ErrRateLimited].
func (e *RateLimitedError) Is(target error) bool { return target == ErrRateLimited }

// cause is why the budget was paused, for Stats.
type cause int

const (
	rateLimited cause = iota // 429, or GitHub's 403
	exhausted                // remaining 0
	requested                // PauseUntil
)

func (c cause) String() string {
	switch c {
	case rateLimited:
		return "rate limited"
	case exhausted:
		return "remaining 0"
	}
	return "requested"
}

// feedback is what a response says about the budget.
type feedback struct {
	// pause > 0: no call before now + pause.
	pause time.Duration
	cause cause
	// pull: at most remaining calls before now + reset.
	pull      bool
	remaining int64
	reset     time.Duration
	// metered: a 429's response says a limit on other units than calls
	// (tokens, say) has nothing left: the refusal is that limit's, not an
	// overshoot of the calls' pace.
	metered bool
	// slot is the slot the refused call was booked for (µs of the Redis
	// clock), when its reservation is known, else 0: a 429 for a call
	// booked before the schedule was last respaced is old news of the
	// old schedule (see pause.lua).
	slot int64
	// unstated: a 429 that says neither how long to wait nor when the
	// limit resets (pause is then one Per): with Options.Adaptive it cuts
	// the learned rate instead (adaptive.go).
	unstated bool
	// perDefault: pause is one Per for want of a stated wait, not a
	// whole second a shorter wait was rounded up to (see apply).
	perDefault bool
	// key is the key of the pool (Options.Keys) the response is of, 1 +
	// its index; 0 for the whole budget.
	key int
}

// maxHeaderWait is the longest wait a header may announce; a longer one is
// malformed. Upstream windows reset within the hour. It is also the longest
// pause: PauseFor and PauseUntil cap theirs to it, so that no value read
// from a response, by Observe or by a loader, stops the fleet for longer.
const maxHeaderWait = 24 * time.Hour

// parseFeedback reads the upstream's accounting from a response's header and
// status, as of now: Retry-After (delta seconds or an HTTP date), the X API's
// x-rate-limit-limit/-remaining/-reset and GitHub's
// x-ratelimit-limit/-remaining/-reset/-used (reset in epoch seconds). Dates
// and resets are read against the response's Date header when the
// upstream's clock differs from this server's by more than a second, so
// that the upstream's clock places them; within a second, this server's
// clock is the better reference (Date counts whole seconds: read against
// it, a reset a fraction of a second away could look a second away).
func parseFeedback(h http.Header, status int, now time.Time, per time.Duration) feedback {
	ref := refTime(h, now)
	retryAfter, hasRetry := parseRetryAfter(h.Values("Retry-After"), ref)

	prefix := "X-Rate-Limit-"
	if h.Get(prefix+"Remaining") == "" && h.Get(prefix+"Reset") == "" {
		prefix = "X-Ratelimit-"
	}
	remaining, hasRemaining := count(h.Get(prefix + "Remaining"))
	if !hasRemaining {
		// GitHub: used of limit.
		used, okU := count(h.Get(prefix + "Used"))
		limit, okL := count(h.Get(prefix + "Limit"))
		if okU && okL && used <= limit {
			remaining, hasRemaining = limit-used, true
		}
	}
	// A reset already passed reads as 0: the window has just ended.
	reset, hasReset := epochReset(h.Get(prefix+"Reset"), ref)

	var f feedback
	var hrs []headroom // OpenAI's, Anthropic's, the IETF's: read for a refusal
	switch {
	case status == http.StatusTooManyRequests ||
		status == http.StatusForbidden && (hasRetry || hasRemaining && remaining == 0):
		f.cause = rateLimited
		hrs = readHeadroom(h, ref)
		var stated time.Duration
		if !hasRetry && !hasReset {
			stated = callsReset(hrs)
		}
		switch {
		case hasRetry:
			f.pause = retryAfter
		case hasReset && reset > 0:
			f.pause = reset
		case hasReset:
			// The window the upstream counted has just ended.
			f.pause = time.Second
		case stated > 0:
			// OpenAI's, Anthropic's or the IETF's headers: no calls left
			// until their reset.
			f.pause = stated
		default:
			f.pause, f.perDefault = per, true
			f.unstated = status == http.StatusTooManyRequests && !(hasRemaining && remaining == 0)
		}
	case hasRemaining && remaining == 0:
		f.cause = exhausted
		switch {
		case hasReset:
			f.pause = reset
		default:
			f.pause = per
		}
	case hasRemaining && hasReset && reset > 0:
		f.pull, f.remaining, f.reset = true, remaining, reset
	}
	if f.pause <= 0 && !f.pull {
		return feedback{} // a reset already passed: nothing to do
	}
	for _, hr := range hrs {
		if hr.meter != "" && hr.remaining == 0 {
			f.metered = true
		}
	}
	return f
}

// callsReset returns the latest reset of the calls' windows that OpenAI's,
// Anthropic's or the IETF's headers say, in hrs, have no call left; 0 for
// none.
func callsReset(hrs []headroom) time.Duration {
	var d time.Duration
	for _, hr := range hrs {
		if hr.meter == "" && hr.remaining == 0 && hr.reset > d {
			d = hr.reset
		}
	}
	return d
}

// refTime returns the instant a response's times are read against: its
// Date when the upstream's clock differs from this server's (now) by more
// than a second, else now (see parseFeedback).
func refTime(h http.Header, now time.Time) time.Time {
	if d, err := http.ParseTime(h.Get("Date")); err == nil && d.Sub(now).Abs() < maxHeaderWait &&
		d.Sub(now.Truncate(time.Second)).Abs() > time.Second {
		return d
	}
	return now
}

// count parses a count a header states: decimal, non-negative, below
// maxCount.
func count(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 20 {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil && n >= 0 && n < maxCount
}

// parseRetryAfter reads Retry-After values, delta seconds or HTTP dates
// (read against ref), and reports whether one of them could be read. A
// value that is negative, not a number nor a date, or a wait longer than
// maxHeaderWait, is malformed and ignored; of several values (a header
// sent twice), the longest wait read counts.
func parseRetryAfter(vals []string, ref time.Time) (time.Duration, bool) {
	var wait time.Duration
	var ok bool
	for _, s := range vals {
		d, valid := parseRetryAfterValue(s, ref)
		if valid && (!ok || d > wait) {
			wait, ok = d, true
		}
	}
	return wait, ok
}

func parseRetryAfterValue(s string, ref time.Time) (time.Duration, bool) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, false
	}
	if n, ok := count(s); ok {
		if n > int64(maxHeaderWait/time.Second) {
			return 0, false
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(s)
	if err != nil {
		return 0, false
	}
	d := max(t.Sub(ref), 0)
	return d, d < maxHeaderWait
}

// RetryAfter returns how long a 429 with header h, received at now, asks
// the fleet to wait, read as [Budget.Observe] reads it: its Retry-After
// (delta seconds or an HTTP date; read against the Date header when the
// upstream's clock differs), else the time until the rate limit's reset
// (x-rate-limit-reset, x-ratelimit-reset). Of a Retry-After sent twice, the
// longest wait counts. It returns 0 when the 429 asks for no wait
// (Retry-After 0, or a date past: Observe does not pause), and when it does
// not say how long: no Retry-After nor reset, or only malformed ones (a
// negative or unreadable value, a wait longer than 24 hours); Observe then
// pauses for one Per of the limit, as PauseFor does for a RetryAfter of 0.
// A loader that reports a 429 as a [RateLimitedError] takes its RetryAfter
// from here.
func RetryAfter(h http.Header, now time.Time) time.Duration {
	return parseFeedback(h, http.StatusTooManyRequests, now, 0).pause
}

// Observe applies the upstream's own accounting, read from a response's
// header and status code, to the budget of the whole fleet:
//
//   - A 429 (or a 403 with Retry-After, or with GitHub's
//     x-ratelimit-remaining: 0) pauses the budget for Retry-After, else
//     until the rate limit's reset, else for one Per. A 429 that asks for
//     no more than one interval (Per/Rate), or for exactly 1s (what a
//     shorter wait rounds up to in Retry-After), with no longer pause in
//     force, is an overshoot: arrival jitter brought a call of a budget
//     pacing at its limit to the upstream early, unless its headers say a
//     limit on other units than calls (tokens) has nothing left. It pauses
//     for one interval only, widens the spacing of paced slots (from an
//     interval/48, doubling up to a whole interval, halving every 100
//     intervals without an overshoot), and stretches the schedule to the
//     new spacing: the Waits sleeping on every server move their own
//     slots; see [Stats].Overshoots and [Stats].Stretched.
//     Only max(3, Rate/4) overshoots (at most 10) within one Per, the
//     spacing at its widest, are a storm, which pauses for Retry-After.
//   - Remaining 0 (x-rate-limit-remaining, the X API, or
//     x-ratelimit-remaining, GitHub) pauses it until the reset
//     (x-rate-limit-reset or x-ratelimit-reset, epoch seconds), or for one
//     Per when the reset is missing.
//   - Fewer calls remaining before the reset than the budget would allow
//     (the X API's and GitHub's counts above; without them, OpenAI's
//     x-ratelimit-remaining-requests and x-ratelimit-reset-requests,
//     Anthropic's anthropic-ratelimit-requests-*, or the IETF draft's
//     RateLimit-Remaining and RateLimit-Reset, or RateLimit's r and t)
//     caps it, fleet-wide: that many more calls go before the reset, at the
//     budget's own pace (less the calls already booked for a slot ahead,
//     which have not reached the upstream yet), and the next waits for the
//     reset. The cap never delays a call the upstream would take. A later
//     response of the same window lowers the cap, never raises it; one of a
//     later window replaces it.
//   - Fewer units of a meter remaining before its reset than the budget
//     would allow caps that meter the same way, when the budget has a meter
//     of that name (see [Options].Meters): "tokens" from OpenAI's
//     x-ratelimit-remaining-tokens and x-ratelimit-reset-tokens or
//     Anthropic's anthropic-ratelimit-tokens-*, "input-tokens" and
//     "output-tokens" from Anthropic's. At most that many more units go
//     before the reset, spendable at once; a reservation wanting more waits
//     for the reset.
//   - With [Options].Adaptive, a 429 that states no wait (no Retry-After
//     nor reset, or Retry-After 0) cuts the fleet's learned rate instead
//     of pausing it, once per episode, and a 2xx counts toward raising it
//     again (see the package documentation): report every response.
//
// A pause is kept in Redis and announced to every server; Waits sleeping on
// a slot before its end book again after it. Missing or malformed headers
// change nothing and are not an error. Times are read against the response's
// Date header when it has one. When Redis is unreachable a pause is kept in
// this process only, and a cap is not kept.
//
// With [Options].Keys, the response is applied to one key: that of the
// reservation ctx carries ([Reservation.Observe] passes its own; a fill
// load's ctx carries its reservation), and a 401 removes the key from the
// pool ([Budget.Remove]). A response with something to apply and no
// reservation of the budget in ctx is an error, and changes nothing: which
// key it is of cannot be told.
func (b *Budget) Observe(ctx context.Context, h http.Header, status int) error {
	if err := b.check(); err != nil {
		return err
	}
	now := time.Now()
	f := parseFeedback(h, status, now, b.lim.Per)
	f.slot = b.slotOf(ctx)
	if b.pool != nil {
		return b.observeKey(ctx, h, status, now, f)
	}
	if b.opt.Adaptive {
		if done, err := b.adapt(ctx, f, status); done {
			return err
		}
	}
	if f.pause > 0 {
		return b.apply(ctx, "observe", f)
	}
	caps := b.capsOf(h, now, f)
	if len(caps) == 0 {
		return nil
	}
	return b.applyCaps(ctx, "observe", caps, 0)
}

// capsOf returns the cap script's groups for what a response read at now
// says is left: of the calls (f), and of the budget's meters (h).
func (b *Budget) capsOf(h http.Header, now time.Time, f feedback) []any {
	var caps []any
	if !f.pull {
		// No X or GitHub count: the requests left as OpenAI's,
		// Anthropic's or the IETF's headers state them cap the calls; of
		// several windows (IETF policies), the one that binds hardest.
		worst := 2.0
		for _, hr := range readHeadroom(h, refTime(h, now)) {
			if hr.meter != "" || hr.reset <= 0 {
				continue
			}
			if r := float64(hr.remaining) / float64(allowed(hr.reset, b.t, b.tau)); r < worst || r == worst && hr.reset > f.reset {
				worst = r
				f.pull, f.remaining, f.reset = true, hr.remaining, hr.reset
			}
		}
	}
	if f.pull && f.remaining < allowed(f.reset, b.t, b.tau) {
		caps = append(caps, f.reset.Microseconds(), f.remaining, b.t, b.tau, "tat", "cap")
	}
	if len(b.opt.Meters) > 0 {
		caps = append(caps, b.meterCaps(h, now)...)
	}
	return caps
}

// allowed returns how many units a limit of t µs per unit and burst
// tolerance tau lets go within d, burst included: a cap of as many or more
// could never bind, and costs no round trip (the common answer "plenty
// left").
func allowed(d time.Duration, t, tau int64) int64 {
	return (d.Microseconds() + tau + t - 1) / t
}

// meterCaps returns the cap script's groups for the meters of the budget
// whose remaining units, as h states them, could bind before their reset.
func (b *Budget) meterCaps(h http.Header, now time.Time) []any {
	var caps []any
	for _, hr := range readHeadroom(h, refTime(h, now)) {
		if hr.meter == "" || hr.reset <= 0 {
			continue
		}
		first := -1
		bind := false
		for i, d := range b.dims {
			if d.meter == hr.meter {
				if first < 0 {
					first = i
				}
				bind = bind || hr.remaining < allowed(hr.reset, d.t, d.tau)
			}
		}
		if first >= 0 && bind {
			d := b.dims[first]
			caps = append(caps, hr.reset.Microseconds(), hr.remaining, d.t, d.tau, d.field, d.cap)
		}
	}
	return caps
}

//go:embed cap.lua
var capLua string

var capScript = redis.NewScript(capLua)

// applyCaps caps the budget's dimensions (those of key k of the pool, 1 +
// its index, with Options.Keys), each at the units remaining before its
// reset, fleet-wide, with one round trip; caps holds the cap script's
// groups. While Redis is unreachable nothing is kept: the local limiter
// knows nothing of the upstream's count.
func (b *Budget) applyCaps(ctx context.Context, op string, caps []any, k int) error {
	script, keys, args := b.onKey(k, capScript, keyCapScript, append([]any{maxAhead.Microseconds()}, caps...))
	n, err := redisx.Run(ctx, b.rdb, func(ctx context.Context) (int64, error) {
		return script.Run(ctx, b.rdb.Redis(), keys, args...).Int64()
	}, nil)
	switch {
	case err != nil && redisx.Outage(err):
		return nil
	case err != nil:
		return b.fail(ctx, op, err)
	}
	if n > 0 {
		b.stats.pullDowns.Add(1)
	}
	return nil
}

// slotOf returns the Redis slot of the reservation of b that ctx carries
// (a fill load's, an httpfill request's), or 0.
func (b *Budget) slotOf(ctx context.Context) int64 {
	if r := FromContext(ctx); r != nil && r.b == b && !r.r.local {
		return r.r.slot
	}
	return 0
}
