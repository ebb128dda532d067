package httpfill

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"time"
)

// This file is the HTTP caching policy: which requests may be answered from
// the cache, under which key, and how long a response stays cached.

// keyHeaders are the request headers DefaultKey hashes: the credentials,
// and the content negotiation that upstreams often do without saying so in
// Vary.
var keyHeaders = []string{"Authorization", "Cookie", "Accept", "Accept-Encoding", "Accept-Language"}

// DefaultKey is the default Options.Key: the method, the URL without user
// information and fragment, and a hash (the first 128 bits of a SHA-256, in
// hex) of the request's Authorization, Cookie, Accept, Accept-Encoding and
// Accept-Language headers, of the URL's user information, and of the Host
// header when it is not the URL's host. Requests with other credentials
// never share a response; the URL stays readable in Redis, the credentials
// do not appear there. An API that takes credentials in the query string
// wants a Key that hashes the query too. To widen the default, append to
// it:
//
//	Key: func(r *http.Request) string { return httpfill.DefaultKey(r) + " " + r.Header.Get("X-Tenant") }
func DefaultKey(r *http.Request) string {
	u := *r.URL
	u.User, u.Fragment, u.RawFragment = nil, "", ""
	h := sha256.New()
	write := func(name string, vals ...string) {
		for _, v := range vals {
			_, _ = io.WriteString(h, name+"\x00"+v+"\x00")
		}
	}
	for _, name := range keyHeaders {
		write(name, r.Header.Values(name)...)
	}
	if r.URL.User != nil {
		write("userinfo", r.URL.User.String())
	}
	if r.Host != "" && r.Host != r.URL.Host {
		write("host", r.Host)
	}
	return r.Method + " " + u.String() + " " + hex.EncodeToString(h.Sum(nil)[:16])
}

// cacheable reports whether a GET or HEAD request may be answered from the
// cache: it has no body, asks for no part of the resource, no validation
// and no protocol switch, and does not ask for the upstream's own answer.
func cacheable(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody || req.ContentLength != 0 {
		return false
	}
	for name, vals := range req.Header {
		name = textproto.CanonicalMIMEHeaderKey(name)
		if len(vals) > 0 && (name == "Range" || name == "Upgrade" || strings.HasPrefix(name, "If-")) {
			return false
		}
	}
	if len(req.Header.Values("Cache-Control")) == 0 {
		return !strings.Contains(strings.ToLower(req.Header.Get("Pragma")), "no-cache")
	}
	cc := directives(req.Header)
	if _, ok := cc["no-cache"]; ok {
		return false
	}
	if v, ok := cc["max-age"]; ok && seconds(v) == 0 {
		return false
	}
	return true
}

// heuristic holds the statuses a response may be cached with no explicit
// lifetime (RFC 9110, 15.1: "heuristically cacheable"); 206 is left out, as
// a Range request passes through.
var heuristic = map[int]bool{
	http.StatusOK: true, http.StatusNonAuthoritativeInfo: true, http.StatusNoContent: true,
	http.StatusMultipleChoices: true, http.StatusMovedPermanently: true,
	http.StatusPermanentRedirect: true, http.StatusNotFound: true, http.StatusMethodNotAllowed: true,
	http.StatusGone: true, http.StatusRequestURITooLong: true, http.StatusNotImplemented: true,
}

// lifetime returns how long resp, the answer to req at now, may be cached:
// store false means not at all, a ttl of 0 the Transport's default.
func lifetime(req *http.Request, resp *http.Response, now time.Time) (ttl time.Duration, store bool) {
	if resp.StatusCode >= 500 || resp.StatusCode == http.StatusRequestTimeout {
		return 0, false
	}
	if _, ok := directives(req.Header)["no-store"]; ok {
		return 0, false
	}
	if len(resp.Header.Values("Set-Cookie")) > 0 {
		// A cookie the upstream set for one client is not handed to
		// others later, whatever the response's freshness says.
		return 0, false
	}
	cc := directives(resp.Header)
	for _, d := range []string{"no-store", "no-cache"} {
		if _, ok := cc[d]; ok {
			return 0, false
		}
	}
	var life time.Duration
	if v, ok := cc["s-maxage"]; ok {
		life = seconds(v)
	} else if v, ok := cc["max-age"]; ok {
		life = seconds(v)
	} else if exp := resp.Header.Get("Expires"); exp != "" {
		// An Expires that cannot be read is in the past (RFC 9111, 5.3).
		if t, err := http.ParseTime(exp); err == nil {
			date, err := http.ParseTime(resp.Header.Get("Date"))
			if err != nil {
				date = now
			}
			life = t.Sub(date)
		}
	} else if heuristic[resp.StatusCode] {
		return 0, true
	} else {
		// Other statuses (400, 401, 403, 302, ...) are stored only when
		// the response says for how long (RFC 9111, 4.2.2).
		return 0, false
	}
	if age := seconds(resp.Header.Get("Age")); age > 0 {
		life -= age
	}
	if life <= 0 {
		return 0, false
	}
	return life, true
}

// vary returns the values req has for the headers named by the Vary of a
// response with header h, and whether the response varies on more than
// request headers (Vary "*").
func vary(req *http.Request, h http.Header) (vals http.Header, star bool) {
	for _, v := range h.Values("Vary") {
		for name := range strings.SplitSeq(v, ",") {
			name = strings.TrimSpace(name)
			switch name {
			case "":
				continue
			case "*":
				return nil, true
			}
			if vals == nil {
				vals = make(http.Header)
			}
			vals[textproto.CanonicalMIMEHeaderKey(name)] = req.Header.Values(name)
		}
	}
	return vals, false
}

// directives parses the Cache-Control header of h: directive names in
// lower case, to their values unquoted ("" for none).
func directives(h http.Header) map[string]string {
	d := make(map[string]string)
	for _, v := range h.Values("Cache-Control") {
		for part := range strings.SplitSeq(v, ",") {
			name, val, _ := strings.Cut(part, "=")
			name = strings.ToLower(strings.TrimSpace(name))
			if name != "" {
				d[name] = strings.Trim(strings.TrimSpace(val), `"`)
			}
		}
	}
	return d
}

// seconds parses a delta-seconds value (max-age, Age); what cannot be read
// is 0, and what is too large to count is capped at 2^31 seconds (RFC 9111,
// 1.2.2).
func seconds(v string) time.Duration {
	const limit = math.MaxInt32 + 1
	n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return 0
	}
	return time.Duration(min(n, limit)) * time.Second
}

// retryAfter returns how long a 429 with header h, received at now, asks
// to wait: its Retry-After in seconds or as a date; 0 when it does not say.
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if d := seconds(v); d > 0 {
		return d
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
