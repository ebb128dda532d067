package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
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

// CompletionRequest is the body of POST /v1/completions.
type CompletionRequest struct {
	Model  string `json:"model"`
	Prompt string `json:"prompt"`
}

// Completion is what the fake API answers to a CompletionRequest.
type Completion struct {
	ID      string   `json:"id"`
	Object  string   `json:"object"` // "text_completion"
	Model   string   `json:"model"`
	Choices []Choice `json:"choices"`
	Usage   Usage    `json:"usage"`
}

// Choice is one completion of the prompt; the fake API gives one.
type Choice struct {
	Text  string `json:"text"`
	Index int    `json:"index"`
}

// Usage is the tokens a completion used: what the tokens-per-minute limit
// is charged.
type Usage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
}

// limitRequests and limitTokens name the API's two limits, as OpenAI's 429
// body (error.type) and headers (the -requests and -tokens suffixes) do.
const (
	limitRequests = "requests"
	limitTokens   = "tokens"
)

// tokenModel is how many tokens the completion of a prompt uses:
// log-normal, of median median and shape sigma, drawn from the prompt and
// seed alone, so that the same prompt always uses the same tokens, and at
// most max (the TPM limit: a larger call could never be served).
type tokenModel struct {
	median, sigma float64
	seed          uint64
	max           int64
}

// tokens returns the tokens prompt's completion uses.
func (m tokenModel) tokens(prompt string) int64 {
	r := rand.New(rand.NewPCG(m.seed, promptHash(prompt)))
	n := int64(math.Round(m.median * math.Exp(m.sigma*r.NormFloat64())))
	return min(max(n, 1), max(m.max, 1))
}

// estimate returns what a client that cannot count the tokens before the
// call estimates them at: the true count times a factor uniform in
// [1-e, 1+e], the same for the same prompt, at least 1. The demo has the
// true count at hand, which a client does not: this stands for an
// estimator of known accuracy (a tokenizer on the prompt and a guess at the
// answer's length).
func (m tokenModel) estimate(prompt string, e float64) int64 {
	r := rand.New(rand.NewPCG(m.seed^0x657374696d617465, promptHash(prompt)))
	f := 1 - e + 2*e*r.Float64()
	return max(1, int64(math.Round(float64(m.tokens(prompt))*f)))
}

// promptHash is a 64-bit hash of prompt.
func promptHash(prompt string) uint64 {
	h := fnv.New64a()
	_, _ = io.WriteString(h, prompt)
	return h.Sum64()
}

// fakeAPI is a rate-limited completion API on a loopback listener, limited
// as OpenAI limits an API key: in requests per minute (RPM) and in tokens
// per minute (TPM), both shared by every caller. Each limit is a token
// bucket that holds one minute's allowance and refills continuously at it;
// a minute lasts cfg.minute, so that a run of "minutes" takes seconds.
//
// A call arriving takes one request from the RPM bucket: with none left it
// is refused (429, error type "requests") and takes nothing. Then it takes
// its completion's tokens from the TPM bucket: with fewer left it is
// refused (429, error type "tokens"), and the request it took stays spent,
// as OpenAI counts refused calls against the RPM limit. The API knows a
// completion's tokens when the call arrives (they depend on the prompt
// alone); its client does not until the answer's usage.total_tokens.
//
// Every response states both limits as OpenAI does (see
// [fakeAPI.setRateLimit]); a 429 adds Retry-After, and comes at once, where
// a completion takes the API's latency.
type fakeAPI struct {
	srv     *httptest.Server
	tokens  tokenModel
	latency time.Duration
	now     func() time.Time

	mu       sync.Mutex // guards rpm, tpm and asked
	rpm, tpm *bucket
	asked    map[string]int64 // by prompt: the calls that asked for it

	served          atomic.Int64 // calls answered 200
	refusedRequests atomic.Int64 // calls answered 429 for the RPM limit
	refusedTokens   atomic.Int64 // calls answered 429 for the TPM limit
	tokensUsed      atomic.Int64 // by the calls answered 200
}

// startAPI starts a fake API allowing rpm requests and tpm tokens per
// minute, a minute lasting minute, each call taking latency, on the clock
// now. Close stops it.
func startAPI(rpm, tpm int64, minute time.Duration, tokens tokenModel, latency time.Duration, now func() time.Time) *fakeAPI {
	tokens.max = tpm
	a := &fakeAPI{
		tokens: tokens, latency: latency, now: now, asked: make(map[string]int64),
		rpm: newBucket(rpm, minute), tpm: newBucket(tpm, minute),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/completions", a.complete)
	a.srv = httptest.NewServer(mux)
	return a
}

// URL is the API's base address.
func (a *fakeAPI) URL() string { return a.srv.URL }

// Close stops the API, waiting for the calls in progress.
func (a *fakeAPI) Close() { a.srv.Close() }

// apiCounts are the API's counters.
type apiCounts struct {
	served, refusedRequests, refusedTokens, tokensUsed int64
}

func (a *fakeAPI) counts() apiCounts {
	return apiCounts{a.served.Load(), a.refusedRequests.Load(), a.refusedTokens.Load(), a.tokensUsed.Load()}
}

// prompts returns how many distinct prompts the calls so far asked for,
// served or refused.
func (a *fakeAPI) prompts() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.asked)
}

// The OpenAI rate-limit headers; each is followed by "requests" or
// "tokens".
const (
	headerLimit     = "X-Ratelimit-Limit-"     // allowed per minute
	headerRemaining = "X-Ratelimit-Remaining-" // left now
	headerReset     = "X-Ratelimit-Reset-"     // until the limit is back at its initial state, as "1m0s" or "120ms"
)

func (a *fakeAPI) complete(w http.ResponseWriter, r *http.Request) {
	var req CompletionRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || req.Prompt == "" {
		apiError(w, http.StatusBadRequest, "invalid_request_error", "the body must be JSON with a prompt")
		return
	}
	tokens := a.tokens.tokens(req.Prompt)
	q := a.admit(req.Prompt, tokens)
	a.setRateLimit(w.Header(), q)
	w.Header().Set("Content-Type", "application/json")
	if q.refused != "" {
		// Refused at the door, at once: no completion is computed.
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(q.wait)))
		apiError(w, http.StatusTooManyRequests, q.refused,
			fmt.Sprintf("Rate limit reached on %s per min: Limit %d, Requested %d", q.refused, q.limit(q.refused), q.asked))
		return
	}
	if !sleep(r.Context(), a.latency) {
		return // the caller went away
	}
	a.served.Add(1)
	a.tokensUsed.Add(tokens)
	_ = json.NewEncoder(w).Encode(completionFor(req, tokens))
}

// quota is what a call found in the API's buckets.
type quota struct {
	refused string        // "", or the limit that refused the call
	asked   int64         // tokens the call needed
	wait    time.Duration // until the refusing limit has room for the call
	// Each limit: per minute, left after the call, and until its bucket
	// is full again.
	rpmLimit, rpmLeft, tpmLimit, tpmLeft int64
	rpmReset, tpmReset                   time.Duration
}

func (q quota) limit(name string) int64 {
	if name == limitRequests {
		return q.rpmLimit
	}
	return q.tpmLimit
}

// admit takes one request and tokens tokens for a call for prompt, if both
// limits have room; see fakeAPI.
func (a *fakeAPI) admit(prompt string, tokens int64) quota {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	a.asked[prompt]++
	a.rpm.refill(now)
	a.tpm.refill(now)
	q := quota{asked: tokens}
	switch {
	case !a.rpm.take(1):
		q.refused, q.wait = limitRequests, a.rpm.until(1)
		a.refusedRequests.Add(1)
	case !a.tpm.take(tokens):
		q.refused, q.wait = limitTokens, a.tpm.until(tokens)
		a.refusedTokens.Add(1)
	}
	q.rpmLimit, q.rpmLeft, q.rpmReset = a.rpm.state()
	q.tpmLimit, q.tpmLeft, q.tpmReset = a.tpm.state()
	return q
}

// setRateLimit sets OpenAI's headers for both limits: the limit per
// minute, what is left (whole units), and the time until the bucket is full
// again, which is when OpenAI's limit "resets to its initial state". A
// client may spend the remaining units at once; the bucket's refill meanwhile
// is extra.
func (a *fakeAPI) setRateLimit(h http.Header, q quota) {
	for _, l := range []struct {
		name        string
		limit, left int64
		reset       time.Duration
	}{{limitRequests, q.rpmLimit, q.rpmLeft, q.rpmReset}, {limitTokens, q.tpmLimit, q.tpmLeft, q.tpmReset}} {
		h.Set(headerLimit+l.name, strconv.FormatInt(l.limit, 10))
		h.Set(headerRemaining+l.name, strconv.FormatInt(l.left, 10))
		h.Set(headerReset+l.name, l.reset.String())
	}
}

// apiError answers with status and OpenAI's error body.
func apiError(w http.ResponseWriter, status int, typ, msg string) {
	w.WriteHeader(status)
	code := "invalid_request"
	if status == http.StatusTooManyRequests {
		code = "rate_limit_exceeded"
	}
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"message": msg, "type": typ, "code": code}})
	_, _ = w.Write(b)
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

// retryAfterSeconds rounds d up to whole seconds, as Retry-After counts,
// and never says 0: the caller would come straight back.
func retryAfterSeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}

var words = strings.Fields(`the cache holds the answer while the fleet waits; one call
	per prompt across every server, and the budget keeps the calls under the limit
	of requests and tokens per minute`)

// completionFor makes the completion of req: text drawn from the prompt,
// the same on every call, and its usage, tokens in all.
func completionFor(req CompletionRequest, tokens int64) Completion {
	h := promptHash(req.Prompt)
	r := rand.New(rand.NewPCG(h, 0x636f6d706c657465))
	text := make([]string, min(tokens, 4+int64(r.IntN(20))))
	for i := range text {
		text[i] = words[r.IntN(len(words))]
	}
	prompt := min(int64(len(strings.Fields(req.Prompt))), tokens)
	return Completion{
		ID: "cmpl-" + strconv.FormatUint(h, 36), Object: "text_completion", Model: req.Model,
		Choices: []Choice{{Text: strings.Join(text, " ")}},
		Usage:   Usage{PromptTokens: prompt, CompletionTokens: tokens - prompt, TotalTokens: tokens},
	}
}

// promptText is the text of prompt number i.
func promptText(i int) string {
	return fmt.Sprintf("Summarize support ticket #%d in one sentence.", i)
}

// promptKey is the cache key of prompt's completion: a digest, as a prompt
// may be long.
func promptKey(prompt string) string {
	sum := sha256.Sum256([]byte(prompt))
	return "completion:" + strconv.FormatUint(binary.BigEndian.Uint64(sum[:8]), 16)
}

// errRateLimited is what the error of a call the API refused with 429 is:
// test for it with errors.Is.
var errRateLimited = errors.New("completion API: 429 Too Many Requests")

// rateLimitedError is the error of a call the API refused with 429: which
// limit refused it, and the Retry-After as a *budget.RateLimitedError,
// which a fill.Cache with a budget answers by pausing the fleet's budget and
// loading again once the pause is over.
type rateLimitedError struct {
	limit   string // limitRequests or limitTokens
	limited *budget.RateLimitedError
}

func (e *rateLimitedError) Error() string {
	return fmt.Sprintf("%v on %s (Retry-After: %s)", errRateLimited, e.limit, e.limited.RetryAfter)
}

func (e *rateLimitedError) Is(target error) bool { return target == errRateLimited }

func (e *rateLimitedError) Unwrap() error { return e.limited }

// apiClient calls the API the way one app server does.
type apiClient struct {
	hc   *http.Client
	base string
	// meterTokens says that the budget a load runs under meters tokens:
	// each call reports to its reservation the tokens it used.
	meterTokens bool
	// usage, if not nil, is told of every completion received.
	usage *usageLog
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

// complete asks the API to complete prompt; a 429 is a *rateLimitedError.
func (c *apiClient) complete(ctx context.Context, prompt string) (Completion, error) {
	body, _ := json.Marshal(CompletionRequest{Model: "fake-1", Prompt: prompt})
	url := c.base + "/v1/completions"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return Completion{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return Completion{}, err
	}
	defer resp.Body.Close()
	// A load under a budget runs under its reservation: the response's
	// rate-limit headers and status go to the budget through it. A budget
	// that cannot record them (Redis down) is no reason to fail the
	// request, which has its answer.
	res := budget.FromContext(ctx)
	_ = res.Observe(ctx, resp.Header, resp.StatusCode)
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		if c.meterTokens {
			// Refused at the door: the call used no tokens.
			res.Spent(budget.Cost{Meters: map[string]int64{meterTokens: 0}})
		}
		secs, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		var e struct {
			Error struct {
				Type string `json:"type"`
			} `json:"error"`
		}
		_ = json.Unmarshal(b, &e)
		return Completion{}, &rateLimitedError{limit: e.Error.Type,
			limited: &budget.RateLimitedError{RetryAfter: time.Duration(max(secs, 0)) * time.Second}}
	case resp.StatusCode != http.StatusOK:
		return Completion{}, fmt.Errorf("completion API: POST %s: %s", url, resp.Status)
	case err != nil:
		return Completion{}, fmt.Errorf("completion API: POST %s: %w", url, err)
	}
	var cmpl Completion
	if err := json.Unmarshal(b, &cmpl); err != nil {
		return Completion{}, fmt.Errorf("completion API: decoding the completion: %w", err)
	}
	if c.meterTokens {
		res.Spent(budget.Cost{Meters: map[string]int64{meterTokens: cmpl.Usage.TotalTokens}})
	}
	c.usage.add(prompt, cmpl.Usage.TotalTokens)
	return cmpl, nil
}

// close closes the client's idle connections.
func (c *apiClient) close() { c.hc.CloseIdleConnections() }

// usageLog compares, for every completion a fleet received, the tokens it
// used with the client's estimate of them (tokenModel.estimate): the input
// a budget metering tokens would book before the call.
type usageLog struct {
	model tokenModel
	e     float64 // -estimate-error

	mu                   sync.Mutex // guards the fields below
	calls                int64
	used, estimated      int64
	sumAbsErr, maxAbsErr float64 // |estimate-used|/used
}

// add records a completion of prompt that used tokens.
func (l *usageLog) add(prompt string, tokens int64) {
	if l == nil || tokens <= 0 {
		return
	}
	est := l.model.estimate(prompt, l.e)
	rel := math.Abs(float64(est-tokens)) / float64(tokens)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls++
	l.used += tokens
	l.estimated += est
	l.sumAbsErr += rel
	l.maxAbsErr = max(l.maxAbsErr, rel)
}

// estimateStats are what a usageLog found.
type estimateStats struct {
	Estimated int64 `json:"estimated_tokens"` // summed over the completions received
	Used      int64 `json:"used_tokens"`      // the same completions' usage.total_tokens
	// MeanAbsErrPct and MaxAbsErrPct are |estimate-used|/used of one
	// completion, in percent: the mean and the largest.
	MeanAbsErrPct float64 `json:"mean_abs_error_pct"`
	MaxAbsErrPct  float64 `json:"max_abs_error_pct"`
}

func (l *usageLog) stats() estimateStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := estimateStats{Estimated: l.estimated, Used: l.used, MaxAbsErrPct: round2(100 * l.maxAbsErr)}
	if l.calls > 0 {
		s.MeanAbsErrPct = round2(100 * l.sumAbsErr / float64(l.calls))
	}
	return s
}
