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
)

// Timeline is what the fake API returns for GET /users/{id}/timeline.
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

	served  atomic.Int64 // calls answered 200
	refused atomic.Int64 // calls answered 429
}

// startAPI starts a fake API allowing rate calls per second with bursts of
// up to burst calls, each call taking latency, on the clock now. Close stops
// it.
func startAPI(rate float64, burst int, latency time.Duration, now func() time.Time) *fakeAPI {
	a := &fakeAPI{bucket: newTokenBucket(rate, burst), latency: latency, now: now}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /users/{id}/timeline", a.timeline)
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

// The X API's rate-limit headers.
const (
	headerLimit     = "X-Rate-Limit-Limit"     // calls allowed in a window
	headerRemaining = "X-Rate-Limit-Remaining" // calls left in this one
	headerReset     = "X-Rate-Limit-Reset"     // when Remaining is back at Limit, in epoch seconds
)

func (a *fakeAPI) timeline(w http.ResponseWriter, r *http.Request) {
	// The budget is spent when the call arrives, whatever happens next, as
	// on the X API: a call for a page that does not exist counts too.
	now := a.now()
	q := a.bucket.take(now)
	a.setRateLimit(w.Header(), now, q)
	w.Header().Set("Content-Type", "application/json")
	if !sleep(r.Context(), a.latency) {
		return // the caller went away
	}
	if !q.ok {
		a.refused.Add(1)
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(q.wait)))
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = io.WriteString(w, `{"errors":[{"message":"Rate limit exceeded","code":88}]}`)
		return
	}
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 63)
	if err != nil {
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"errors":[{"message":"Sorry, that page does not exist","code":34}]}`)
		return
	}
	a.served.Add(1)
	_ = json.NewEncoder(w).Encode(timelineFor(id))
}

// setRateLimit sets the X API's rate-limit headers for a call that took q at
// now. The X API counts calls in fixed windows; the analogue for a token
// bucket is its size as the limit, its whole tokens as the calls remaining,
// and the time it is full again as the reset.
func (a *fakeAPI) setRateLimit(h http.Header, now time.Time, q quota) {
	h.Set(headerLimit, strconv.Itoa(int(a.bucket.burst)))
	h.Set(headerRemaining, strconv.Itoa(q.remaining))
	h.Set(headerReset, strconv.FormatInt(ceilUnix(now.Add(q.full)), 10))
}

// ceilUnix is t in epoch seconds, rounded up: a caller that waits until
// then finds the bucket full.
func ceilUnix(t time.Time) int64 {
	s := t.Unix()
	if t.After(time.Unix(s, 0)) {
		s++
	}
	return s
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

// tokenBucket holds up to burst tokens and gains rate tokens per second; a
// call takes one.
type tokenBucket struct {
	rate  float64
	burst float64

	mu     sync.Mutex // guards tokens and last
	tokens float64
	last   time.Time
}

func newTokenBucket(rate float64, burst int) *tokenBucket {
	return &tokenBucket{rate: rate, burst: float64(burst), tokens: float64(burst)}
}

// quota is what a call found in the bucket.
type quota struct {
	ok        bool          // it took a token
	remaining int           // whole tokens left after it
	wait      time.Duration // until the next token, when not ok
	full      time.Duration // until the bucket is full again
}

// take takes a token at now if there is one.
func (b *tokenBucket) take(now time.Time) quota {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	var q quota
	if b.tokens >= 1 {
		b.tokens--
		q.ok = true
	} else {
		q.wait = b.duration(1 - b.tokens)
	}
	q.remaining = int(b.tokens)
	q.full = b.duration(b.burst - b.tokens)
	return q
}

// duration is how long the bucket takes to gain tokens.
func (b *tokenBucket) duration(tokens float64) time.Duration {
	return time.Duration(math.Ceil(tokens / b.rate * float64(time.Second)))
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

// errRateLimited is wrapped by the error of a call the API refused with 429.
var errRateLimited = errors.New("twitter API: 429 Too Many Requests")

// apiClient calls the API the way one app server does.
type apiClient struct {
	hc   *http.Client
	base string
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
	url := c.base + "/users/" + strconv.FormatUint(id, 10) + "/timeline"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		return nil, fmt.Errorf("%w (Retry-After: %ss)", errRateLimited, resp.Header.Get("Retry-After"))
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
