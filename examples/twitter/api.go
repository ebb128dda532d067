package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/locksmith-go/locksmith/budget"
)

// Timeline is what the fake API returns for GET /users/{id}/timeline, and
// one entry of what it returns for GET /users/timelines.
type Timeline struct {
	UserID uint64  `json:"user_id"`
	Tweets []Tweet `json:"tweets"`
}

// Tweet is one entry of a Timeline.
type Tweet struct {
	ID        uint64    `json:"id"`
	Text      string    `json:"text"`
	CreatedAt time.Time `json:"created_at"`
}

// fakeAPI is a rate-limited "Twitter" on a loopback listener. Its token
// bucket is shared by every caller, as an API key's limit is shared by every
// server of a fleet. Like the X API, it states the limit on every response
// (see [fakeAPI.setRateLimit]) and refuses a call over it with 429 and
// Retry-After.
type fakeAPI struct {
	srv     *httptest.Server
	bucket  *tokenBucket
	latency time.Duration
	now     func() time.Time
	conc    inFlight // the calls in flight, and their cap

	served  atomic.Int64 // calls answered 200
	refused atomic.Int64 // calls answered 429, for the rate or past the cap on calls in flight
	// hidden: the API states no limit, and refuses a call over it with a
	// bare 429 (-hidden-limit)
	hidden atomic.Bool
	denied atomic.Int64 // calls answered 401: a token the API does not know

	// With -tokens, a bucket per token (see tokens.go), and the tokens in
	// order; nil without.
	perToken map[string]*tokenBucket
	tokens   []string

	mu          sync.Mutex       // guards first, last, asked and tokenCalls
	first, last time.Time        // arrival of the first and the latest call
	asked       map[uint64]int64 // by user id: the calls that asked for it
	tokenCalls  map[string]int64 // by token: the calls that came with it
}

// startAPI starts a fake API allowing rate calls per second with bursts of
// up to burst calls, each call taking latency, on the clock now; with
// maxInFlight above 0, it refuses a call that arrives while that many are in
// flight (see inFlight). Close stops it.
func startAPI(rate float64, burst int, latency time.Duration, maxInFlight int, now func() time.Time) *fakeAPI {
	a := &fakeAPI{bucket: newTokenBucket(rate, burst), latency: latency, now: now, asked: make(map[uint64]int64)}
	a.conc.limit = int64(maxInFlight)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /users/{id}/timeline", a.conc.count(a.timeline))
	mux.HandleFunc("GET /users/timelines", a.conc.count(a.timelines))
	mux.HandleFunc("GET /health", a.health)
	a.srv = httptest.NewServer(mux)
	return a
}

// URL is the API's base address.
func (a *fakeAPI) URL() string { return a.srv.URL }

// Close stops the API, waiting for the calls in progress.
func (a *fakeAPI) Close() { a.srv.Close() }

// calls returns the number of calls served and refused so far.
func (a *fakeAPI) calls() (served, refused int64) {
	return a.served.Load(), a.refused.Load()
}

// span returns when the first call and the latest one arrived; zero times
// before any call.
func (a *fakeAPI) span() (first, last time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.first, a.last
}

// users returns how many user ids the calls so far asked for, a batch call
// counting each of its ids, served or refused, and how many of them were
// distinct.
func (a *fakeAPI) users() (ids, distinct int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, n := range a.asked {
		ids += n
	}
	return ids, int64(len(a.asked))
}

// maxBatch is the most user ids one call of GET /users/timelines takes.
const maxBatch = 100

// The X API's rate-limit headers.
const (
	headerLimit     = "X-Rate-Limit-Limit"     // calls allowed in a window
	headerRemaining = "X-Rate-Limit-Remaining" // calls left in this one
	headerReset     = "X-Rate-Limit-Reset"     // when Remaining is back at Limit, in epoch seconds
)

func (a *fakeAPI) timeline(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 63)
	if !a.admit(w, r, []uint64{id}, err) {
		return
	}
	if err != nil {
		apiError(w, http.StatusNotFound, "Sorry, that page does not exist", 34)
		return
	}
	a.served.Add(1)
	_ = json.NewEncoder(w).Encode(timelineFor(id))
}

// timelines answers GET /users/timelines?ids=1,2,3: the timelines of up to
// maxBatch users, in the order asked, for one call of the rate limit.
func (a *fakeAPI) timelines(w http.ResponseWriter, r *http.Request) {
	ids, err := parseIDs(r.URL.Query().Get("ids"))
	if !a.admit(w, r, ids, err) {
		return
	}
	if err != nil {
		apiError(w, http.StatusBadRequest, err.Error(), 44)
		return
	}
	tls := make([]Timeline, len(ids))
	for i, id := range ids {
		tls[i] = timelineFor(id)
	}
	a.served.Add(1)
	_ = json.NewEncoder(w).Encode(tls)
}

// admit spends a call of the rate limit on r, which asks for the user ids
// (or is malformed: err), sets the rate-limit headers and takes the API's
// latency. A call over the limit it answers 429 with Retry-After. It
// reports whether the handler goes on to answer r.
func (a *fakeAPI) admit(w http.ResponseWriter, r *http.Request, ids []uint64, err error) bool {
	now := a.now()
	a.countToken(r)
	if overCap(r) {
		a.record(now, ids, err)
		a.refused.Add(1)
		refuseInFlight(w)
		return false
	}
	// The budget is spent when the call arrives, whatever happens next, as
	// on the X API: a call for a page that does not exist counts too.
	bucket, known := a.bucketFor(r)
	if !known {
		apiError(w, http.StatusUnauthorized, "Invalid or expired token", 89)
		return false
	}
	q := bucket.take(now)
	a.record(now, ids, err)
	hidden := a.hidden.Load()
	if !hidden {
		a.setRateLimit(w.Header(), now, q)
	}
	w.Header().Set("Content-Type", "application/json")
	if !sleep(r.Context(), a.latency) {
		return false // the caller went away
	}
	if !q.ok {
		a.refused.Add(1)
		if !hidden {
			w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(q.wait)))
		}
		apiError(w, http.StatusTooManyRequests, "Rate limit exceeded", 88)
		return false
	}
	return true
}

// record counts a call arriving at now for ids (none when err is not nil).
func (a *fakeAPI) record(now time.Time, ids []uint64, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.first.IsZero() {
		a.first = now
	}
	a.last = now
	if err == nil {
		for _, id := range ids {
			a.asked[id]++
		}
	}
}

// apiError answers with status and the X API's error body.
func apiError(w http.ResponseWriter, status int, msg string, code int) {
	w.WriteHeader(status)
	b, _ := json.Marshal(map[string]any{"errors": []any{map[string]any{"message": msg, "code": code}}})
	_, _ = w.Write(b)
}

// parseIDs parses the ids parameter of GET /users/timelines: 1 to maxBatch
// user ids, comma-separated.
func parseIDs(s string) ([]uint64, error) {
	if s == "" {
		return nil, errors.New("the ids parameter is missing")
	}
	parts := strings.Split(s, ",")
	if len(parts) > maxBatch {
		return nil, fmt.Errorf("%d ids: at most %d per call", len(parts), maxBatch)
	}
	ids := make([]uint64, len(parts))
	for i, p := range parts {
		id, err := strconv.ParseUint(p, 10, 63)
		if err != nil {
			return nil, fmt.Errorf("%q is not a user id", p)
		}
		ids[i] = id
	}
	return ids, nil
}

// setRateLimit sets the X API's rate-limit headers for a call that took q at
// now. The X API counts calls in fixed windows: x-rate-limit-remaining more
// calls succeed before x-rate-limit-reset, when the count is back at
// x-rate-limit-limit, and its clients rely on that. The fake API states its
// bucket in the same terms, its windows being the seconds of its clock: the
// limit is the most calls one second can take (a full bucket and a second of
// refill), the remaining are the calls that can still succeed before the
// second ends (the whole tokens now, and those the bucket gains by then),
// and the reset is the second's end. A client that reads them as the X
// API's, as budget.Observe does, is told the truth: it neither overruns the
// bucket nor waits for a full bucket when one token will do.
func (a *fakeAPI) setRateLimit(h http.Header, now time.Time, q quota) {
	reset := now.Truncate(time.Second).Add(time.Second)
	remaining := math.Floor(q.tokens + reset.Sub(now).Seconds()*a.bucket.rate)
	h.Set(headerLimit, strconv.Itoa(int(a.bucket.burst+a.bucket.rate)))
	h.Set(headerRemaining, strconv.Itoa(int(remaining)))
	h.Set(headerReset, strconv.FormatInt(reset.Unix(), 10))
}

// sleep waits for d, or until ctx is done; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// retryAfterSeconds rounds wait up to whole seconds, as Retry-After counts,
// and never says 0: the caller would come straight back.
func retryAfterSeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}

var words = strings.Fields(`just shipped a new build of the cache, rate limits are
	hard; coffee first then redis, who else is at the conference today? deploying
	on a friday again... lunch was great thanks everyone #golang #redis`)

// epoch is the newest tweet's time: timelines do not depend on the clock.
var epoch = time.Date(2012, time.March, 1, 12, 0, 0, 0, time.UTC)

// timelineFor makes the timeline of user id: a few tweets, the same ones on
// every call.
func timelineFor(id uint64) Timeline {
	r := rand.New(rand.NewPCG(id, 0x7477656574))
	tl := Timeline{UserID: id, Tweets: make([]Tweet, 3+r.IntN(3))}
	at := epoch
	for i := range tl.Tweets {
		text := make([]string, 4+r.IntN(8))
		for j := range text {
			text[j] = words[r.IntN(len(words))]
		}
		at = at.Add(-time.Duration(1+r.IntN(36*60)) * time.Minute)
		tl.Tweets[i] = Tweet{ID: id*1000 + uint64(i), Text: strings.Join(text, " "), CreatedAt: at}
	}
	return tl
}

// errRateLimited is what the error of a call the API refused with 429 is:
// test for it with errors.Is.
var errRateLimited = errors.New("twitter API: 429 Too Many Requests")

// rateLimitedError is the error of a call the API refused with 429. It is
// errRateLimited, and wraps a *budget.RateLimitedError with the
// Retry-After, which a fill.Cache with a budget answers by pausing the
// fleet's budget and loading again once the pause is over.
type rateLimitedError struct {
	limited *budget.RateLimitedError
}

func (e *rateLimitedError) Error() string {
	return fmt.Sprintf("%v (Retry-After: %s)", errRateLimited, e.limited.RetryAfter)
}

func (e *rateLimitedError) Is(target error) bool { return target == errRateLimited }

func (e *rateLimitedError) Unwrap() error { return e.limited }

// apiClient calls the API the way one app server does.
type apiClient struct {
	hc   *http.Client
	base string
	// budget, if not nil, is told of every response the API gives: its
	// Observe reads the rate-limit headers and the status.
	budget *budget.Budget
	// own are the tokens (-tokens) the client takes in turn when a call's
	// ctx has no budget reservation to tell its token.
	own clientTokens
}

// newHTTPClient returns the HTTP client of one app server; every server of
// every mode gets the same settings.
func newHTTPClient(conns int, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			MaxIdleConns:        conns,
			MaxIdleConnsPerHost: conns,
			IdleConnTimeout:     30 * time.Second,
		},
	}
}

// timeline fetches the JSON timeline of user id.
func (c *apiClient) timeline(ctx context.Context, id uint64) ([]byte, error) {
	return c.get(ctx, "/users/"+strconv.FormatUint(id, 10)+"/timeline")
}

// timelines fetches the timelines of up to maxBatch users with one call.
func (c *apiClient) timelines(ctx context.Context, ids []uint64) ([]Timeline, error) {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.FormatUint(id, 10)
	}
	b, err := c.get(ctx, "/users/timelines?ids="+strings.Join(s, ","))
	if err != nil {
		return nil, err
	}
	var tls []Timeline
	if err := json.Unmarshal(b, &tls); err != nil {
		return nil, fmt.Errorf("decoding timelines: %w", err)
	}
	return tls, nil
}

// warmConns is how many connections each server's client opens to the API
// before a run: more than the calls one server has in flight at the API's
// rate and latency in these runs.
const warmConns = 6

// warm opens n connections to the API at once, as a server that has been
// up a while has them: a run then measures the fleet's pacing, not the
// first calls' dialling (cold, a server's first calls reached the API a
// few milliseconds later than the next server's, and an API that allows no
// burst refused the next).
func (c *apiClient) warm(ctx context.Context, n int) error {
	errs := make(chan error, n)
	for range n {
		go func() {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/health", nil)
			if err == nil {
				var resp *http.Response
				if resp, err = c.hc.Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
			errs <- err
		}()
	}
	var err error
	for range n {
		err = errors.Join(err, <-errs)
	}
	return err
}

// get GETs path and returns the body of a 200; a 429 is a
// *rateLimitedError.
func (c *apiClient) get(ctx context.Context, path string) ([]byte, error) {
	url := c.base + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if tok := c.token(ctx); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if c.budget != nil {
		// A budget that cannot record the response (Redis down) is no
		// reason to fail the request, which has its answer.
		_ = c.budget.Observe(ctx, resp.Header, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		secs, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		return nil, &rateLimitedError{&budget.RateLimitedError{RetryAfter: time.Duration(max(secs, 0)) * time.Second}}
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("twitter API: GET %s: %s", url, resp.Status)
	case err != nil:
		return nil, fmt.Errorf("twitter API: GET %s: %w", url, err)
	}
	return body, nil
}

// close closes the client's idle connections.
func (c *apiClient) close() { c.hc.CloseIdleConnections() }

// decodeTimeline parses the API's JSON.
func decodeTimeline(b []byte) (Timeline, error) {
	var tl Timeline
	if err := json.Unmarshal(b, &tl); err != nil {
		return Timeline{}, fmt.Errorf("decoding a timeline: %w", err)
	}
	return tl, nil
}

// health answers 204 after a moment, so that concurrent calls each need a
// connection of their own. It is not rate-limited.
func (a *fakeAPI) health(w http.ResponseWriter, r *http.Request) {
	sleep(r.Context(), 20*time.Millisecond)
	w.WriteHeader(http.StatusNoContent)
}
