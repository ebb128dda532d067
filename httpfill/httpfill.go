package httpfill

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/budgetctx"
)

// Options configure a [Transport]. The zero value gives the defaults.
type Options struct {
	// Base sends the requests that reach the upstream: loads and
	// pass-throughs.
	// default: http.DefaultTransport
	Base http.RoundTripper

	// Budget is the upstream's rate budget. Every upstream call reserves
	// its cost (see Cost) first, loads and pass-throughs alike, and runs
	// under that reservation: the request's ctx carries it
	// (budget.FromContext), so a Base that learns what the call really
	// spent reports it (Reservation.Spent) before it returns; every
	// upstream response is reported to the budget through the reservation
	// (Reservation.Observe), which is done once Base has returned; and a
	// load that meets a 429 is retried, once the pause it caused is over,
	// while one of its callers waits.
	// It governs the Transport's loads whatever the Cache holds: in place
	// of the Cache's own budget (fill.Options.Budget), if it has another,
	// or none. Requests of one key merged from Transports with different
	// budgets on one Cache load under the first one's.
	// default: the Cache's budget (nil when it has none: nothing waits,
	// nothing is observed)
	Budget *budget.Budget

	// Cost returns what a request to the upstream is expected to spend of
	// Budget: its estimate, reserved before the request goes (with a
	// load, the cost of the request that started it). It is not called
	// without a budget.
	// default: one call, no meter
	Cost func(req *http.Request) budget.Cost

	// Authorize sets the credential key on req, an upstream request about
	// to go, when Budget has a pool of keys (budget.Options.Keys): key is
	// the one its reservation was booked on, the key with the most room
	// (Reservation.Key). It is called on the Transport's own copy of the
	// caller's request, after the cache key was made: the pool's credential
	// is not part of it, and requests that differ only by the key they
	// went with share one response; the caller's own credentials still
	// tell responses apart (see DefaultKey). The response is the key's: a
	// 429 pauses that key only, and the load goes again on another; a 401
	// removes the key from the pool, fleet-wide, and reaches the callers.
	// Use a pool only where its key is the request's credential: a 401 for
	// a caller's own credentials would remove a key of the pool.
	//	Authorize: func(req *http.Request, key string) { req.Header.Set("Authorization", "Bearer "+key) }
	// default: nil (requests go as the callers made them)
	Authorize func(req *http.Request, key string)

	// TTL is how long a response is cached when it says nothing of its
	// freshness: no Cache-Control s-maxage or max-age, no Expires.
	// default: 0, the Cache's TTL (fill.Options.TTL)
	TTL time.Duration

	// Key returns the cache key of a GET or HEAD request: requests with
	// the same key merge and share a response. A Key that returns "" sends
	// the request through uncached. A custom Key must keep apart what the
	// upstream tells apart without saying so in Vary: credentials, content
	// negotiation; and should keep the method (a GET that finds a HEAD's
	// response, which has no body, passes through).
	// default: [DefaultKey]
	Key func(r *http.Request) string

	// MaxBody is the largest response body cached and shared. A larger one
	// passes through (see the package documentation). Every cached body is
	// one Redis value, published in full to waiting servers up to the
	// Cache's PublishLimit, copied to each server that reads it and held in
	// memory while its callers read it: 1 MiB is far above an API page
	// and still cheap for Redis to move. A response whose header (names
	// and values) is larger than 64 KiB passes through in the same way,
	// whatever its body.
	// default: 1 MiB
	MaxBody int64

	// MaxTTL is the longest a response's own freshness (s-maxage,
	// max-age, Expires) keeps it cached: an upstream that says a decade,
	// by mistake or not, is cached for MaxTTL.
	// default: 24h
	MaxTTL time.Duration
}

const defaultMaxBody = 1 << 20

// maxHeader is the largest response header cached and shared, in bytes of
// names and values: an API's header is a few KiB, and Go's client reads up
// to 10 MiB of one.
const maxHeader = 64 << 10

// headerSize returns the bytes of h's names and values, counting up to
// past limit only.
func headerSize(h http.Header, limit int) int {
	n := 0
	for name, vals := range h {
		for _, v := range vals {
			if n += len(name) + len(v); n > limit {
				return n
			}
		}
	}
	return n
}

// defaultMaxTTL is Options.MaxTTL's default.
const defaultMaxTTL = 24 * time.Hour

func (o *Options) withDefaults() Options {
	var opt Options
	if o != nil {
		opt = *o
	}
	if opt.Base == nil {
		opt.Base = http.DefaultTransport
	}
	if opt.Key == nil {
		opt.Key = DefaultKey
	}
	if opt.MaxBody <= 0 {
		opt.MaxBody = defaultMaxBody
	}
	if opt.MaxTTL <= 0 {
		opt.MaxTTL = defaultMaxTTL
	}
	return opt
}

// Transport is an [http.RoundTripper] that merges and caches GET and HEAD
// requests fleet-wide through a [fill.Cache]; see the package
// documentation. It is safe for concurrent use.
type Transport struct {
	cache *fill.Cache
	opt   Options

	mu      sync.Mutex          // guards callers
	callers map[string]*callers // by cache key, while a RoundTrip of the key runs
}

// callers are the RoundTrips of one key in progress on a Transport, and
// the rate limit their load last met, if any: what one of them is told
// when it gives up.
type callers struct {
	n       int
	limited *budget.RateLimitedError
}

// New returns a Transport that caches in c. A nil opt gives the defaults.
// Closing c ends the Transport's caching: its cached requests then fail
// with an error wrapping [fill.ErrClosed].
func New(c *fill.Cache, opt *Options) *Transport {
	t := &Transport{cache: c, opt: opt.withDefaults(), callers: make(map[string]*callers)}
	if t.opt.Budget == nil {
		t.opt.Budget = budgetctx.CacheBudget(c)
	}
	return t
}

// RoundTrip answers req from the cache, from a request in flight on any
// server, or from the upstream; requests that cannot be cached pass
// through to Options.Base. It implements [http.RoundTripper].
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	snap := t.snapshot(req)
	if snap == nil {
		return t.pass(req)
	}
	key := t.opt.Key(snap)
	if key == "" {
		return t.pass(req)
	}
	ctx := req.Context()
	cs := t.join(key)
	defer t.leave(key, cs)
	var opts []fill.Option
	if t.opt.TTL > 0 {
		opts = append(opts, fill.WithTTL(t.opt.TTL))
	}
	if t.opt.Cost != nil && t.opt.Budget != nil {
		opts = append(opts, fill.WithCost(t.opt.Cost(snap)))
	}
	// own is a response this request's load got for this request only.
	var own atomic.Pointer[entry]
	fctx := ctx
	if b := t.opt.Budget; b != nil && b != budgetctx.CacheBudget(t.cache) {
		// The load waits for this Transport's budget, and a 429 pauses it
		// and is retried, whatever budget the Cache has.
		fctx = budgetctx.With(ctx, b)
	}
	e, err := fill.Get(fctx, t.cache, key, func(ctx context.Context) (*entry, error) {
		return t.load(ctx, snap, cs, &own)
	}, opts...)
	switch {
	case err != nil:
		if cerr := ctx.Err(); cerr != nil && errors.Is(err, cerr) {
			if rle := t.limited(cs); rle != nil {
				return nil, fmt.Errorf("httpfill: %w while the upstream rate-limits: %w", err, rle)
			}
		}
		return nil, fmt.Errorf("httpfill: %w", err)
	case e.Pass:
		if o := own.Load(); o != nil {
			return o.response(req, time.Now()), nil
		}
		return t.pass(req)
	case !e.fits(snap):
		return t.pass(req)
	}
	return e.response(req, time.Now()), nil
}

// pass sends req to Base under a reservation of its cost in the budget,
// done once Base returned.
func (t *Transport) pass(req *http.Request) (*http.Response, error) {
	b := t.opt.Budget
	if b == nil {
		return t.opt.Base.RoundTrip(req)
	}
	cost := budget.Cost{}
	if t.opt.Cost != nil {
		cost = t.opt.Cost(req)
	}
	ctx := req.Context()
	res, err := b.Reserve(ctx, budget.Foreground, cost)
	if err != nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, fmt.Errorf("httpfill: waiting for the budget: %w", err)
	}
	// Done settles even when ctx has ended, and its error, like
	// Observe's, is no reason to fail the request.
	defer func() { _ = res.Done(ctx) }()
	octx := budgetctx.WithReservation(ctx, res)
	var stop context.CancelFunc
	if rc := res.Context(); rc != ctx {
		// The reservation holds a concurrency slot: the request runs
		// under its lease, as loads do, until its body is closed.
		octx, stop = budgetctx.UnderSlot(octx, rc)
	}
	out := t.authorize(req.WithContext(octx), res)
	resp, err := t.opt.Base.RoundTrip(out)
	if stop != nil {
		if err != nil {
			stop()
		} else {
			resp.Body = closing(resp.Body, stop)
		}
	}
	if err != nil {
		return nil, err
	}
	// The caller's request, as if Base had been given it.
	if resp.Request == out {
		resp.Request = req
	}
	observe(ctx, res, resp)
	return resp, nil
}

// authorize returns out, an upstream request, with the key of res set by
// Options.Authorize, on a copy: out's header may be the caller's. Without
// Authorize or a pool of keys, it returns out.
func (t *Transport) authorize(out *http.Request, res *budget.Reservation) *http.Request {
	if t.opt.Authorize == nil || res.Key() == "" {
		return out
	}
	out = out.Clone(out.Context())
	t.opt.Authorize(out, res.Key())
	return out
}

// closing returns body, which calls stop once closed; a writable body (a
// 101 Switching Protocols response's) stays writable.
func closing(body io.ReadCloser, stop func()) io.ReadCloser {
	switch rw := body.(type) {
	case nil:
		stop()
		return nil
	case io.ReadWriteCloser:
		return &stopRWBody{stopBody{rw, stop}, rw}
	}
	return &stopBody{body, stop}
}

// stopBody is a response body that calls stop once closed.
type stopBody struct {
	io.ReadCloser
	stop func()
}

func (b *stopBody) Close() error {
	err := b.ReadCloser.Close()
	b.stop()
	return err
}

// stopRWBody is a writable stopBody.
type stopRWBody struct {
	stopBody
	w io.Writer
}

func (b *stopRWBody) Write(p []byte) (int, error) { return b.w.Write(p) }

// observe reports an upstream response to the budget through the call's
// reservation, and whether the budget took it: false without a budget. A
// budget that cannot record it is no reason to fail the request: the error
// is dropped (Redis down, the budget keeps a pause in this process and
// returns nil).
func observe(ctx context.Context, res *budget.Reservation, resp *http.Response) bool {
	return res != nil && res.Observe(ctx, resp.Header, resp.StatusCode) == nil
}

// load is the loader of a GET or HEAD: it sends req upstream on the
// flight's ctx and makes the entry its callers share, setting its TTL. A
// response that sets a cookie is for req only: it goes to own, and the
// callers share a marker, not stored, that sends them through.
func (t *Transport) load(ctx context.Context, req *http.Request, cs *callers, own *atomic.Pointer[entry]) (*entry, error) {
	// The upstream request does not carry the Transport's budget to a Base
	// that loads through a Cache of its own.
	out := req.Clone(budgetctx.With(ctx, nil))
	// An http.Client with a Timeout signals it on Cancel too: the flight
	// must not end with its first caller's deadline.
	//lint:ignore SA1019 cleared, not used
	out.Cancel = nil
	out = t.authorize(out, budget.FromContext(ctx))
	resp, err := t.opt.Base.RoundTrip(out)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	// The load runs under the reservation fill made for it in the
	// Transport's budget.
	observed := observe(ctx, budget.FromContext(ctx), resp)
	now := time.Now()
	if resp.StatusCode == http.StatusTooManyRequests {
		// Observe paused the budget for the 429: Observed keeps fill's
		// PauseFor from pausing it again.
		rle := &budget.RateLimitedError{RetryAfter: budget.RetryAfter(resp.Header, now), Observed: observed}
		t.setLimited(cs, rle)
		return nil, fmt.Errorf("upstream answered %s: %w", resp.Status, rle)
	}
	t.setLimited(cs, nil)

	ttl, store := lifetime(req, resp, now)
	if !store {
		fill.SetTTL(ctx, 0)
	} else if ttl > 0 {
		fill.SetTTL(ctx, min(ttl, t.opt.MaxTTL))
	}
	e := &entry{
		Status: resp.Status, Code: resp.StatusCode,
		Proto: resp.Proto, ProtoMajor: resp.ProtoMajor, ProtoMinor: resp.ProtoMinor,
		Header: resp.Header, Length: resp.ContentLength, Uncompressed: resp.Uncompressed,
		Head: req.Method == http.MethodHead, At: now.UnixMilli(),
	}
	vals, star := vary(req, resp.Header)
	if star || headerSize(resp.Header, maxHeader) > maxHeader {
		return &entry{Pass: true}, nil
	}
	e.Vary = vals
	if req.Method != http.MethodHead {
		if resp.ContentLength > t.opt.MaxBody {
			return &entry{Pass: true}, nil
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, t.opt.MaxBody+1))
		switch {
		case err != nil:
			return nil, fmt.Errorf("reading the response to %s %s: %w", req.Method, req.URL.Redacted(), err)
		case int64(len(body)) > t.opt.MaxBody:
			return &entry{Pass: true}, nil
		}
		e.Body, e.Length = body, int64(len(body))
	}
	if setsCookie(resp.Header) {
		// One client's cookie: the callers merged on req (anonymous ones
		// would share one session) get answers of their own.
		own.Store(e)
		return &entry{Pass: true}, nil
	}
	return e, nil
}

// join counts a RoundTrip of key in.
func (t *Transport) join(key string) *callers {
	t.mu.Lock()
	defer t.mu.Unlock()
	cs := t.callers[key]
	if cs == nil {
		cs = &callers{}
		t.callers[key] = cs
	}
	cs.n++
	return cs
}

// leave counts a RoundTrip of key out.
func (t *Transport) leave(key string, cs *callers) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if cs.n--; cs.n == 0 {
		delete(t.callers, key)
	}
}

func (t *Transport) setLimited(cs *callers, rle *budget.RateLimitedError) {
	t.mu.Lock()
	cs.limited = rle
	t.mu.Unlock()
}

func (t *Transport) limited(cs *callers) *budget.RateLimitedError {
	t.mu.Lock()
	defer t.mu.Unlock()
	return cs.limited
}

// entry is what the cache holds for a request: a response, or a marker
// that requests of its key pass through. It is shared by the callers of a
// flight and must not be modified.
type entry struct {
	Pass         bool        `json:"pass,omitempty"` // requests pass through; nothing else is set
	Head         bool        `json:"head,omitempty"` // the response to a HEAD
	Status       string      `json:"status,omitempty"`
	Code         int         `json:"code,omitempty"`
	Proto        string      `json:"proto,omitempty"`
	ProtoMajor   int         `json:"proto_major,omitempty"`
	ProtoMinor   int         `json:"proto_minor,omitempty"`
	Header       http.Header `json:"header,omitempty"`
	Body         []byte      `json:"body,omitempty"`
	Length       int64       `json:"length,omitempty"` // the Content-Length; of a HEAD, as the upstream said
	Uncompressed bool        `json:"uncompressed,omitempty"`
	Vary         http.Header `json:"vary,omitempty"` // the digest of the request's values of each header named by Vary
	At           int64       `json:"at,omitempty"`   // when the response arrived, in Unix milliseconds
}

// fits reports whether the response in e answers req: req has the values
// the response varies on, and is not a GET finding a HEAD's response (under
// a custom Key that lets the two meet).
func (e *entry) fits(req *http.Request) bool {
	if e.Head && req.Method != http.MethodHead {
		return false
	}
	rh := canonical(req.Header)
	for name, vals := range e.Vary {
		// An entry from before digests holds the values themselves: it
		// matches no digest, and the request passes through.
		if len(vals) != 1 || vals[0] != varyDigest(rh[name]) {
			return false
		}
	}
	return true
}

// response makes a caller's own response from e at now.
func (e *entry) response(req *http.Request, now time.Time) *http.Response {
	h := e.Header.Clone()
	if h == nil {
		h = make(http.Header)
	}
	if age := now.Sub(time.UnixMilli(e.At)); age >= time.Second {
		// The upstream's Age (0 when unreadable, 2^31 at most, see
		// seconds) and the time the entry has been cached.
		prior := seconds(get(h, "Age"))
		h.Set("Age", strconv.FormatInt(int64((prior+age)/time.Second), 10))
	}
	r := &http.Response{
		Status: e.Status, StatusCode: e.Code,
		Proto: e.Proto, ProtoMajor: e.ProtoMajor, ProtoMinor: e.ProtoMinor,
		Header: h, Request: req, Uncompressed: e.Uncompressed,
		Body: http.NoBody, ContentLength: e.Length,
	}
	if req.Method != http.MethodHead {
		r.Body = io.NopCloser(bytes.NewReader(e.Body))
		r.ContentLength = int64(len(e.Body))
	}
	return r
}
