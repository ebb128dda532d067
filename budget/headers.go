package budget

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// This file reads what upstreams say of their own limits. Every vendor
// names the same three facts differently: how many units a window allows,
// how many remain, and when the window resets. readHeadroom turns them into
// one list of headrooms, one per dimension (calls, or a meter such as
// "tokens"), so that the rest of the budget speaks one language.
//
// Every value is hostile input: counts must be decimal, non-negative and
// below maxCount; resets must lie less than maxHeaderWait ahead. A value
// outside those bounds is malformed and ignored, as if it were absent.

// maxCount is the largest count a header may state; a larger one is
// malformed. Token limits reach the billions a window; 2^53 leaves room for
// any real one and stays exact in a Lua number.
const maxCount = 1 << 53

// headroom is one dimension's "remaining until reset" as an upstream states
// it: at most remaining more units of it before now + reset.
type headroom struct {
	// meter is the dimension: "" for calls (requests), else the meter's
	// name: "tokens", "input-tokens", "output-tokens".
	meter string
	// limit is the window's allowance when stated, else 0.
	limit int64
	// remaining is the units left before the reset.
	remaining int64
	// reset is how far ahead the window resets; 0 when not stated (then
	// the remaining count holds for an unknown time and only a "remaining
	// 0" is acted on, for one Per).
	reset time.Duration
}

// readHeadroom reads every dimension a response's header states, as of ref
// (now, or the upstream's clock from its Date header). It understands:
//
//   - the X API: x-rate-limit-limit, -remaining, -reset (epoch seconds);
//   - GitHub: x-ratelimit-limit, -remaining, -used, -reset (epoch seconds);
//   - OpenAI: x-ratelimit-limit-requests, -remaining-requests,
//     -reset-requests (a duration such as "6m0s" or "20ms"), and the same
//     for -tokens;
//   - Anthropic: anthropic-ratelimit-requests-limit, -remaining, -reset
//     (RFC 3339), and the same for -tokens, -input-tokens and
//     -output-tokens;
//   - the IETF RateLimit fields: RateLimit-Limit, -Remaining, -Reset (delta
//     seconds); the RateLimit dictionary "limit=, remaining=, reset="; and
//     the named form `"policy";r=remaining;t=reset` whose quota units, from
//     RateLimit-Policy's qu parameter, are requests unless stated.
//
// Calls a header counts but whose unit is not known here (IETF
// "content-bytes", "concurrent-requests") are left out. The first value of
// a repeated header is read.
func readHeadroom(h http.Header, ref time.Time) []headroom {
	var out []headroom
	add := func(meter string, limit, remaining string, reset time.Duration, resetOK bool) {
		rem, ok := count(remaining)
		if !ok {
			return
		}
		hr := headroom{meter: meter, remaining: rem}
		if l, ok := count(limit); ok {
			hr.limit = l
		}
		if resetOK {
			hr.reset = reset
		}
		out = append(out, hr)
	}

	// The X API and GitHub: one dimension, calls, reset in epoch seconds.
	for _, prefix := range []string{"X-Rate-Limit-", "X-Ratelimit-"} {
		remaining := h.Get(prefix + "Remaining")
		if remaining == "" && prefix == "X-Ratelimit-" {
			used, okU := count(h.Get(prefix + "Used"))
			limit, okL := count(h.Get(prefix + "Limit"))
			if okU && okL && used <= limit {
				remaining = strconv.FormatInt(limit-used, 10)
			}
		}
		if remaining == "" {
			continue
		}
		reset, ok := epochReset(h.Get(prefix+"Reset"), ref)
		add("", h.Get(prefix+"Limit"), remaining, reset, ok)
		break
	}

	// OpenAI: requests and tokens, resets as Go-style durations.
	for _, dim := range []struct{ suffix, meter string }{{"Requests", ""}, {"Tokens", "tokens"}} {
		remaining := h.Get("X-Ratelimit-Remaining-" + dim.suffix)
		if remaining == "" {
			continue
		}
		reset, ok := durationReset(h.Get("X-Ratelimit-Reset-" + dim.suffix))
		add(dim.meter, h.Get("X-Ratelimit-Limit-"+dim.suffix), remaining, reset, ok)
	}

	// Anthropic: requests and three token meters, resets in RFC 3339.
	for _, dim := range []struct{ name, meter string }{
		{"Requests", ""}, {"Tokens", "tokens"}, {"Input-Tokens", "input-tokens"}, {"Output-Tokens", "output-tokens"},
	} {
		p := "Anthropic-Ratelimit-" + dim.name + "-"
		remaining := h.Get(p + "Remaining")
		if remaining == "" {
			continue
		}
		reset, ok := dateReset(h.Get(p+"Reset"), ref)
		add(dim.meter, h.Get(p+"Limit"), remaining, reset, ok)
	}

	out = append(out, ietfHeadroom(h)...)
	return out
}

// ietfHeadroom reads the IETF RateLimit fields in their three published
// shapes; see readHeadroom.
func ietfHeadroom(h http.Header) []headroom {
	var out []headroom
	if remaining, ok := count(h.Get("Ratelimit-Remaining")); ok {
		hr := headroom{remaining: remaining}
		if l, ok := count(h.Get("Ratelimit-Limit")); ok {
			hr.limit = l
		}
		if r, ok := deltaReset(h.Get("Ratelimit-Reset")); ok {
			hr.reset = r
		}
		return append(out, hr)
	}
	field := h.Get("Ratelimit")
	if field == "" || len(field) > 4096 {
		return nil
	}
	units := policyUnits(h.Get("Ratelimit-Policy"))
	for _, member := range splitList(field) {
		if strings.Contains(member, "remaining=") && !strings.Contains(member, ";") {
			// The dictionary shape: the whole field is one member
			// list "limit=10, remaining=5, reset=3".
			return dictHeadroom(field)
		}
		name, params := splitItem(member)
		if u, ok := units[name]; ok && u != "requests" {
			continue
		}
		remaining, ok := count(params["r"])
		if !ok {
			continue
		}
		hr := headroom{remaining: remaining}
		if r, ok := deltaReset(params["t"]); ok {
			hr.reset = r
		}
		out = append(out, hr)
	}
	return out
}

// dictHeadroom reads `RateLimit: limit=10, remaining=5, reset=3`.
func dictHeadroom(field string) []headroom {
	kv := map[string]string{}
	for _, m := range splitList(field) {
		k, v, _ := strings.Cut(m, "=")
		kv[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
	}
	remaining, ok := count(kv["remaining"])
	if !ok {
		return nil
	}
	hr := headroom{remaining: remaining}
	if l, ok := count(kv["limit"]); ok {
		hr.limit = l
	}
	if r, ok := deltaReset(kv["reset"]); ok {
		hr.reset = r
	}
	return []headroom{hr}
}

// policyUnits maps each named policy of a RateLimit-Policy field to its
// quota unit (the qu parameter; "requests" when absent).
func policyUnits(field string) map[string]string {
	units := map[string]string{}
	if field == "" || len(field) > 4096 {
		return units
	}
	for _, member := range splitList(field) {
		name, params := splitItem(member)
		u := "requests"
		if v, ok := params["qu"]; ok {
			u = v
		}
		units[name] = u
	}
	return units
}

// splitList splits a structured-field list on commas outside quotes; a
// field with an unbalanced quote is malformed and yields nothing.
func splitList(s string) []string {
	var out []string
	quoted, start := false, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			quoted = !quoted
		case ',':
			if !quoted {
				out = append(out, strings.TrimSpace(s[start:i]))
				start = i + 1
			}
		}
	}
	if quoted {
		return nil
	}
	return append(out, strings.TrimSpace(s[start:]))
}

// splitItem splits a list member `"name";a=1;b="x"` into its name (quotes
// dropped) and parameters (values unquoted).
func splitItem(member string) (string, map[string]string) {
	parts := strings.Split(member, ";")
	params := map[string]string{}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		params[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"`)
	}
	return strings.Trim(strings.TrimSpace(parts[0]), `"`), params
}

// epochReset reads a reset given in Unix epoch seconds against ref. A value
// below 10^9 (before 2001) is a delta in seconds, as some upstreams send.
func epochReset(s string, ref time.Time) (time.Duration, bool) {
	n, ok := count(s)
	if !ok {
		return 0, false
	}
	if n < 1e9 {
		return deltaReset(s)
	}
	if n > ref.Unix()+int64(maxHeaderWait/time.Second) {
		return 0, false
	}
	return bounded(time.Unix(n, 0).Sub(ref))
}

// deltaReset reads a reset given in seconds from now.
func deltaReset(s string) (time.Duration, bool) {
	n, ok := count(s)
	if !ok || n >= int64(maxHeaderWait/time.Second) {
		return 0, false
	}
	return time.Duration(n) * time.Second, true
}

// durationReset reads a reset given as a duration: "1s", "6m0s", "20ms",
// "1h2m3.5s" (OpenAI).
func durationReset(s string) (time.Duration, bool) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 32 {
		return 0, false
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, false
	}
	return bounded(d)
}

// dateReset reads a reset given as an RFC 3339 time (Anthropic) against
// ref.
func dateReset(s string, ref time.Time) (time.Duration, bool) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 64 {
		return 0, false
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return 0, false
	}
	return bounded(t.Sub(ref))
}

// bounded accepts a reset within maxHeaderWait ahead; one already passed is
// 0 (the window has just turned).
func bounded(d time.Duration) (time.Duration, bool) {
	if d >= maxHeaderWait {
		return 0, false
	}
	return max(d, 0), true
}
