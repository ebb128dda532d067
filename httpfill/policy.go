package httpfill

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math"
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"time"
)

// This file is the HTTP caching policy: which requests may be answered from
// the cache, under which key, and how long a response stays cached.

// keyHeaders are the request headers DefaultKey hashes first, in this
// order: the credentials, and the content negotiation that upstreams often
// do without saying so in Vary. Any other header whose name looks like a
// credential's (see credential) follows.
var keyHeaders = []string{"Authorization", "Cookie", "Accept", "Accept-Encoding", "Accept-Language"}

// credentialWords are the words whose presence in a request header's name
// makes DefaultKey hash it: Proxy-Authorization, X-Api-Key, Api-Key,
// X-Auth-Token, Private-Token, X-Amz-Security-Token, X-Csrf-Token, ...
var credentialWords = []string{"auth", "cookie", "credential", "key", "password", "secret", "session", "signature", "token"}

// credential reports whether the request header of canonical name name
// looks like it carries a credential.
func credential(name string) bool {
	for _, w := range credentialWords {
		for i := 0; i+len(w) <= len(name); i++ {
			if strings.EqualFold(name[i:i+len(w)], w) {
				return true
			}
		}
	}
	return false
}

// DefaultKey is the default Options.Key: the method, the URL without user
// information and fragment, and a hash (the first 128 bits of a SHA-256, in
// hex) of the request's Authorization, Cookie, Accept, Accept-Encoding and
// Accept-Language headers, of every other header whose name holds one of
// the words auth, cookie, credential, key, password, secret, session,
// signature or token (Proxy-Authorization, X-Api-Key, X-Auth-Token,
// Private-Token, ...), of the URL's user information, and of the Host
// header when it is not the URL's host. A header counts under any spelling
// of its name: one set directly in the map (req.Header["authorization"])
// reaches the upstream as it is, and is hashed as it reaches it. Requests
// with other credentials never share a response; the URL stays readable in
// Redis, the credentials do not appear there. An API that takes
// credentials in the query string has them in the key with the URL; a
// custom Key that leaves the query out must hash them. To widen the
// default, append to it:
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
	hdr := canonical(r.Header)
	for _, name := range keyHeaders {
		write(name, hdr[name]...)
	}
	var more []string
	for name := range hdr {
		if credential(name) && !slices.Contains(keyHeaders, name) {
			more = append(more, name)
		}
	}
	slices.Sort(more)
	for _, name := range more {
		write(name, hdr[name]...)
	}
	if r.URL.User != nil {
		write("userinfo", r.URL.User.String())
	}
	if r.Host != "" && r.Host != r.URL.Host {
		write("host", r.Host)
	}
	return r.Method + " " + u.String() + " " + hex.EncodeToString(h.Sum(nil)[:16])
}

// canonical returns h with every name in canonical form. A header set
// directly in the map (h["authorization"]) keeps its name as written, and
// reaches the upstream all the same: its values join those of the
// canonical spelling, after them, the other spellings' in their sorted
// order. h itself is returned when its names are all canonical.
func canonical(h http.Header) http.Header {
	var odd []string
	for k := range h {
		if textproto.CanonicalMIMEHeaderKey(k) != k {
			odd = append(odd, k)
		}
	}
	if len(odd) == 0 {
		return h
	}
	slices.Sort(odd)
	c := make(http.Header, len(h))
	for k, v := range h {
		if textproto.CanonicalMIMEHeaderKey(k) == k {
			c[k] = v
		}
	}
	for _, k := range odd {
		name := textproto.CanonicalMIMEHeaderKey(k)
		c[name] = append(slices.Clip(c[name]), h[k]...)
	}
	return c
}

// values returns the values of the header name in h under every spelling
// of the name (see canonical).
func values(h http.Header, name string) []string {
	return canonical(h)[textproto.CanonicalMIMEHeaderKey(name)]
}

// get returns the first value of the header name in h under any spelling
// of the name, or "".
func get(h http.Header, name string) string {
	if v := values(h, name); len(v) > 0 {
		return v[0]
	}
	return ""
}

// snapshot returns a copy of req for its key and its flight, or nil when
// req passes through (a method other than GET and HEAD, a body, a
// conditional or no-cache request). The flight reads its request after
// RoundTrip returned (a background refresh, a load tried again after a
// 429), when its caller may have reused req for someone else's call
// (net/http allows it once the response is read): it reads the copy. An
// empty Method is GET, as net/http sends it.
func (t *Transport) snapshot(req *http.Request) *http.Request {
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	if method != http.MethodGet && method != http.MethodHead || !cacheable(req) {
		return nil
	}
	snap := req.Clone(req.Context())
	snap.Method = method
	return snap
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
	if len(values(req.Header, "Cache-Control")) == 0 {
		return !slices.ContainsFunc(values(req.Header, "Pragma"), func(v string) bool {
			return strings.Contains(strings.ToLower(v), "no-cache")
		})
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
	if setsCookie(resp.Header) {
		// A cookie the upstream set for one client is not handed to
		// others later, whatever the response's freshness says.
		return 0, false
	}
	cc := directives(resp.Header)
	// private: for one user, never for a shared cache (RFC 9111, 5.2.2.7),
	// whose key may not tell that user from others (an API key in a
	// header of its own, a custom Key).
	for _, d := range []string{"no-store", "no-cache", "private"} {
		if _, ok := cc[d]; ok {
			return 0, false
		}
	}
	var life time.Duration
	if v, ok := cc["s-maxage"]; ok {
		life = seconds(v)
	} else if v, ok := cc["max-age"]; ok {
		life = seconds(v)
	} else if exp := get(resp.Header, "Expires"); exp != "" {
		// An Expires that cannot be read is in the past (RFC 9111, 5.3).
		if t, err := http.ParseTime(exp); err == nil {
			date, err := http.ParseTime(get(resp.Header, "Date"))
			if err != nil {
				date = now
			}
			// Within 2^31 seconds either way, as a delta-seconds value
			// is (see seconds): a date of year 1 or 9999 neither
			// saturates the difference nor wraps it once Age is taken.
			life = min(max(t.Sub(date), -maxDelta), maxDelta)
		}
	} else if heuristic[resp.StatusCode] {
		return 0, true
	} else {
		// Other statuses (400, 401, 403, 302, ...) are stored only when
		// the response says for how long (RFC 9111, 4.2.2).
		return 0, false
	}
	if age := seconds(get(resp.Header, "Age")); age > 0 {
		life -= age
	}
	if life <= 0 {
		return 0, false
	}
	return life, true
}

// vary returns, for each request header named by the Vary of a response
// with header h, a digest of the values req has for it (see varyDigest),
// and whether the response varies on more than request headers (Vary
// "*").
func vary(req *http.Request, h http.Header) (vals http.Header, star bool) {
	rh := canonical(req.Header)
	for _, v := range values(h, "Vary") {
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
			name = textproto.CanonicalMIMEHeaderKey(name)
			vals[name] = []string{varyDigest(rh[name])}
		}
	}
	return vals, false
}

// varyDigest is what an entry keeps of the values a request had for a
// header its response varies on: the first 128 bits of their SHA-256, so
// that a credential (Vary: Authorization, Cookie, as GitHub's API sends)
// never appears in Redis, while another request's values still tell
// whether the response is theirs.
func varyDigest(vals []string) string {
	h := sha256.New()
	for _, v := range vals {
		_, _ = io.WriteString(h, strconv.Itoa(len(v))+":"+v)
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// setsCookie reports whether a response with header h sets a cookie.
func setsCookie(h http.Header) bool { return len(values(h, "Set-Cookie")) > 0 }

// directives parses the Cache-Control header of h: directive names in
// lower case, to their values unquoted ("" for none). Of a directive given
// twice, the first counts (RFC 9111, 4.2.1): a proxy that appends its own
// max-age does not extend the upstream's.
func directives(h http.Header) map[string]string {
	d := make(map[string]string)
	for _, v := range values(h, "Cache-Control") {
		for part := range strings.SplitSeq(v, ",") {
			name, val, _ := strings.Cut(part, "=")
			name = strings.ToLower(strings.TrimSpace(name))
			if _, seen := d[name]; name != "" && !seen {
				d[name] = strings.Trim(strings.TrimSpace(val), `"`)
			}
		}
	}
	return d
}

// maxDelta is the largest delta-seconds value counted: 2^31 seconds (RFC
// 9111, 1.2.2).
const maxDelta = (math.MaxInt32 + 1) * time.Second

// seconds parses a delta-seconds value (max-age, Age); what cannot be read
// is 0, and what is too large to count is capped at maxDelta.
func seconds(v string) time.Duration {
	n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return 0
	}
	return time.Duration(min(n, uint64(maxDelta/time.Second))) * time.Second
}
