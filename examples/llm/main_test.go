package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/examples/internal/demo"

	"go.uber.org/goleak"

	"github.com/locksmith-go/locksmith/budget"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// small is a run small enough for tests, with limits nothing reaches:
// whatever duplicates naive makes are served. 64 requests in flight over 40
// prompts, with 5 ms per completion, always miss together on the hot ones.
var small = []string{"-servers", "4", "-requests", "300", "-prompts", "40", "-latency", "5ms",
	"-concurrency", "64", "-rpm", "1000000", "-tpm", "1000000000000"}

// allModes are the modes a run without -modes runs, in order.
var allModes = []string{"naive", "fill", "fill+requests", "fill+tokens"}

// jsonOut is the output of -json, each result both decoded into a result
// and kept as its raw fields.
type jsonOut struct {
	Settings   map[string]any             `json:"settings"`
	Results    map[string]json.RawMessage `json:"results"`
	Conclusion []string                   `json:"conclusion"`
	TimingNote string                     `json:"timing_note"`
}

// runDemo runs the demo with args and -json, checks that stdout is one JSON
// object and nothing else, that stderr, not a terminal, got nothing, and
// that every field of the settings and of each result is there; it returns
// the object and the results by mode.
func runDemo(t *testing.T, args ...string) (jsonOut, map[string]result) {
	t.Helper()
	var out, errOut bytes.Buffer
	if err := run(t.Context(), append(slices.Clone(args), "-json"), &out, &errOut); err != nil {
		t.Fatalf("run: %v\nstderr: %s", err, errOut.String())
	}
	if errOut.Len() > 0 {
		t.Errorf("stderr = %q; want nothing: it is not a terminal", errOut.String())
	}
	var res jsonOut
	dec := json.NewDecoder(&out)
	if err := dec.Decode(&res); err != nil {
		t.Fatalf("stdout is not a JSON object: %v\nstdout:\n%s", err, out.String())
	}
	if rest, _ := io.ReadAll(dec.Buffered()); len(bytes.TrimSpace(rest)) > 0 || out.Len() > 0 {
		t.Errorf("stdout has more than the JSON object: %q", string(rest)+out.String())
	}
	if missing := missingFields(reflect.TypeFor[jsonSettings](), res.Settings); len(missing) > 0 {
		t.Errorf("settings lack %q", missing)
	}
	results := make(map[string]result)
	for mode, raw := range res.Results {
		var fields map[string]any
		var r result
		if err := errors.Join(json.Unmarshal(raw, &fields), json.Unmarshal(raw, &r)); err != nil {
			t.Fatalf("results[%q]: %v", mode, err)
		}
		if missing := missingFields(reflect.TypeFor[result](), fields); len(missing) > 0 {
			t.Errorf("results[%q] lack %q", mode, missing)
		}
		if _, ok := fields["fill_stats"]; ok != (mode != naive) {
			t.Errorf("results[%q] fill_stats present: %v; want them in the modes on fill alone", mode, ok)
		}
		if _, ok := fields["budget"]; ok != (mode == "fill+requests" || mode == "fill+tokens") {
			t.Errorf("results[%q] budget present: %v; want it in the modes with a budget alone", mode, ok)
		}
		if r.Failed > 0 && r.FirstError == "" {
			t.Errorf("results[%q]: %d failed requests and no first_error", mode, r.Failed)
		}
		r.Mode = mode
		results[mode] = r
	}
	return res, results
}

// missingFields returns the JSON names of the fields of struct type typ
// that fields lacks, those tagged omitempty left out.
func missingFields(typ reflect.Type, fields map[string]any) []string {
	var missing []string
	for f := range typ.Fields() {
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || name == "" || strings.Contains(opts, "omitempty") {
			continue
		}
		if _, ok := fields[name]; !ok {
			missing = append(missing, name)
		}
	}
	return missing
}

// oncePerPrompt checks that mode r, refused nothing, called the API at most
// once per distinct prompt requested, asked for each of them, and failed
// no request.
func oncePerPrompt(t *testing.T, r result) {
	t.Helper()
	if r.Refused429Requests != 0 || r.Refused429Tokens != 0 || r.Failed != 0 {
		t.Errorf("%s: %d + %d calls refused, %d requests failed; want none", r.Mode, r.Refused429Requests, r.Refused429Tokens, r.Failed)
	}
	if r.APICalls > int64(r.DistinctPrompts) || r.PromptsAsked != r.DistinctPrompts || r.DistinctPrompts < 1 {
		t.Errorf("%s made %d API calls asking for %d prompts; want at most one for each of the %d requested",
			r.Mode, r.APICalls, r.PromptsAsked, r.DistinctPrompts)
	}
}

// TestRunNoLimits checks the point of the cache with limits nothing
// reaches: fill and fill+requests call the API once per prompt, naive more,
// and every figure of the report is consistent.
func TestRunNoLimits(t *testing.T) {
	const requests = 300
	res, results := runDemo(t, small...)
	if got := slices.Sorted(maps.Keys(results)); !reflect.DeepEqual(got, slices.Sorted(slices.Values(allModes))) {
		t.Fatalf("results for %v; want %v", got, allModes)
	}
	fill := results["fill"]
	for _, mode := range allModes {
		r := results[mode]
		if r.Requests != requests || r.DistinctPrompts != fill.DistinctPrompts {
			t.Errorf("%s: %d requests for %d prompts; want %d for %d", mode, r.Requests, r.DistinctPrompts, requests, fill.DistinctPrompts)
		}
		if mode != naive {
			oncePerPrompt(t, r)
		}
		if e := r.Estimate; e.Used != r.TokensUsed || e.Estimated <= 0 || e.MeanAbsErrPct <= 0 || e.MaxAbsErrPct > 50 || e.MeanAbsErrPct > e.MaxAbsErrPct {
			t.Errorf("%s estimate = %+v for %d tokens used; want estimates of every completion, each off by at most 50%%", mode, e, r.TokensUsed)
		}
		// The limits are so high that the shares of them used round to 0.
		if r.TokensUsed <= 0 || r.TPMUsedPct < 0 || r.RPMUsedPct < 0 || r.P50ms <= 0 || r.P99ms < r.P50ms || r.WallMs <= 0 {
			t.Errorf("%s: tokens %d, TPM %g%%, RPM %g%%, p50 %gms, p99 %gms, wall %gms; want them positive, p99 at least p50",
				mode, r.TokensUsed, r.TPMUsedPct, r.RPMUsedPct, r.P50ms, r.P99ms, r.WallMs)
		}
	}
	if n := results[naive]; n.APICalls <= fill.APICalls || n.Refused429Requests+n.Refused429Tokens != 0 || n.Failed != 0 {
		t.Errorf("naive: %d API calls, %d + %d refused, %d failed; want more calls than fill's %d, none refused or failed",
			n.APICalls, n.Refused429Requests, n.Refused429Tokens, n.Failed, fill.APICalls)
	}
	for _, mode := range []string{"fill+requests", "fill+tokens"} {
		if b := results[mode].Budget; b == nil || int64(b.Waits) != results[mode].APICalls || b.Pauses != 0 {
			t.Errorf("%s budget = %+v; want a wait per API call, no pause", mode, b)
		}
	}
	if len(res.Conclusion) != 3 || !strings.HasPrefix(res.Conclusion[0], "fill made ") || !strings.HasPrefix(res.Conclusion[1], "fill+requests made ") ||
		!strings.HasPrefix(res.Conclusion[2], "fill+tokens made ") {
		t.Errorf("conclusion = %q; want a line on fill, one on fill+requests, then one on fill+tokens", res.Conclusion)
	}
	want := map[string]any{
		"modes": []any{"naive", "fill", "fill+requests", "fill+tokens"}, "servers": 4.0, "requests": 300.0, "concurrency": 64.0,
		"prompts": 40.0, "zipf": 1.1, "seed": 1.0, "rpm": 1e6, "tpm": 1e12, "minute_ms": 6000.0,
		"tokens_median": 1000.0, "tokens_sigma": 1.0, "estimate_error": 0.5, "api_latency_ms": 5.0, "ttl_ms": 600000.0,
		"request_timeout_ms": 10000.0, "request_timeout_computed": true, "redis": "embedded", "prefix": "llm-demo:",
	}
	if !reflect.DeepEqual(res.Settings, want) {
		t.Errorf("settings = %v; want %v", res.Settings, want)
	}
}

// TestRunRequestLimit checks what the budget of requests is for: the first
// 100 requests, in flight at once, ask for 46 prompts where the API's RPM
// bucket holds 30. Plain fill gets 429s for requests; fill+requests queues
// its calls in the budget and gets none.
func TestRunRequestLimit(t *testing.T) {
	_, results := runDemo(t, "-modes", "fill,fill+requests", "-servers", "4", "-requests", "300", "-concurrency", "100",
		"-prompts", "200", "-rpm", "30", "-minute", "1s", "-tpm", "1000000000000", "-latency", "5ms")
	if got := results["fill"].Refused429Requests; got == 0 {
		t.Errorf("fill had no call refused for requests; want some: 46 prompts at once where the bucket holds 30")
	}
	r := results["fill+requests"]
	oncePerPrompt(t, r)
	if r.APICalls != int64(r.DistinctPrompts) || r.Requests != 300 {
		t.Errorf("fill+requests: %d API calls for %d requests; want %d, one per prompt, for 300", r.APICalls, r.Requests, r.DistinctPrompts)
	}
}

// TestRunTokenLimit checks what a budget of requests alone cannot do: every
// prompt's completion uses 1000 tokens, and the distinct prompts need twice
// the TPM bucket. fill+requests lets them all go at once, as its limit of
// requests allows, and gets 429s for tokens, which pause the fleet and are
// loaded again: no request fails and no request limit is refused.
func TestRunTokenLimit(t *testing.T) {
	args := []string{"-servers", "4", "-requests", "200", "-concurrency", "64", "-prompts", "40", "-latency", "5ms",
		"-rpm", "1000000", "-minute", "1s", "-tokens-sigma", "0"}
	distinct, tokens := distinctCost(tokenModel{median: 1000, seed: 1, max: 1 << 40}, requestSequence(200, 40, 1.1, 1))
	args = append(args, "-tpm", strconv.FormatInt(tokens/2, 10), "-modes", "fill+requests")
	_, results := runDemo(t, args...)
	r := results["fill+requests"]
	if r.Refused429Requests != 0 || r.Refused429Tokens == 0 || r.Failed != 0 {
		t.Errorf("fill+requests: %d calls refused for requests, %d for tokens, %d requests failed; want 0, some, 0",
			r.Refused429Requests, r.Refused429Tokens, r.Failed)
	}
	if r.DistinctPrompts != distinct || r.TokensUsed != tokens || r.APICalls != int64(distinct)+r.Refused429Tokens {
		t.Errorf("fill+requests: %d API calls using %d tokens for %d prompts; want one served per prompt, %d tokens, and one per 429",
			r.APICalls, r.TokensUsed, r.DistinctPrompts, tokens)
	}
	// Each 429 pauses the fleet, or, taken for arrival jitter, spaces its
	// calls further apart (an overshoot).
	if r.TPMUsedPct <= 0 || r.TPMUsedPct > 100 || r.Budget == nil || r.Budget.Pauses+r.Budget.Overshoots == 0 {
		t.Errorf("fill+requests: TPM %g%% used, budget %+v; want above 0, at most 100%%, and pauses or overshoots", r.TPMUsedPct, r.Budget)
	}
}

// TestRunTokensMetered checks what the budget metering tokens is for, on
// the shape of TestRunTokenLimit (the distinct prompts need twice the TPM
// bucket) with a longer minute: fill+tokens books each call's estimated
// tokens (±50%) before it goes and settles the real count after, and the
// API refuses none of its calls. Its margin, half a minute's tokens, holds
// unless a call reaches the API a whole second after its slot.
func TestRunTokensMetered(t *testing.T) {
	args := []string{"-servers", "4", "-requests", "200", "-concurrency", "64", "-prompts", "40", "-latency", "5ms",
		"-rpm", "1000000", "-minute", "2s", "-tokens-sigma", "0"}
	distinct, tokens := distinctCost(tokenModel{median: 1000, seed: 1, max: 1 << 40}, requestSequence(200, 40, 1.1, 1))
	args = append(args, "-tpm", strconv.FormatInt(tokens/2, 10), "-modes", "fill+tokens")
	_, results := runDemo(t, args...)
	r := results["fill+tokens"]
	oncePerPrompt(t, r)
	if r.DistinctPrompts != distinct || r.TokensUsed != tokens || r.APICalls != int64(distinct) {
		t.Errorf("fill+tokens: %d API calls using %d tokens for %d prompts; want one per prompt, %d tokens", r.APICalls, r.TokensUsed, r.DistinctPrompts, tokens)
	}
	if r.TPMUsedPct <= 0 || r.TPMUsedPct > 100 || r.Budget == nil || r.Budget.Pauses+r.Budget.Overshoots != 0 || int64(r.Budget.Waits) != r.APICalls {
		t.Errorf("fill+tokens: TPM %g%% used, budget %+v; want above 0, at most 100%%, a wait per call and no pause", r.TPMUsedPct, r.Budget)
	}
}

// TestRunText checks the report without -json, with stderr a file as in
// "2>log": the table, the notes and the conclusion on stdout, and no
// progress line in the file.
func TestRunText(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	if err := run(t.Context(), small, &out, f); err != nil {
		t.Fatalf("run: %v", err)
	}
	if b, err := os.ReadFile(f.Name()); err != nil || len(b) > 0 {
		t.Errorf("stderr file = %q, %v; want it empty: no progress line in a file", b, err)
	}
	stdout := out.String()
	for _, want := range []string{"\nnaive ", "\nfill ", "\nfill+requests ", "\nfill+tokens ", "429 req", "429 tok", "TPM %", "RPM %",
		"\nDeadline of each request: 10s (computed: ", "\nfill+requests, budget of requests: ",
		"\nfill+tokens, budget of requests and tokens: ",
		"\nfill, token estimates (±50%): ", "naive's figures vary from run to run"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout has no %q:\n%s", want, stdout)
		}
	}
	lines := strings.Split(strings.TrimRight(stdout, "\n"), "\n")
	n := len(allModes) - 1
	for i, mode := range allModes[1:] {
		line := lines[len(lines)-n+i]
		if !regexp.MustCompile(`^` + regexp.QuoteMeta(mode) + ` made \d+ API calls? where naive made \d+ \(`).MatchString(line) {
			t.Errorf("line %d from the end = %q; want the conclusion on %s", n-i, line, mode)
		}
	}
}

// clock is a test's clock: it moves when the test says.
type clock struct {
	mu  sync.Mutex // guards now
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// call is what one call of the fake API answered.
type call struct {
	status                           int
	errType                          string // of a 429's body
	retryAfter                       string
	limitReq, remainingReq, resetReq string
	limitTok, remainingTok, resetTok string
	totalTokens                      int64 // of a 200's usage
}

func post(t *testing.T, api *fakeAPI, prompt string) call {
	t.Helper()
	body, _ := json.Marshal(CompletionRequest{Model: "m", Prompt: prompt})
	resp, err := http.Post(api.URL()+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	h := resp.Header
	c := call{status: resp.StatusCode, retryAfter: h.Get("Retry-After"),
		limitReq: h.Get("x-ratelimit-limit-requests"), remainingReq: h.Get("x-ratelimit-remaining-requests"),
		resetReq: h.Get("x-ratelimit-reset-requests"), limitTok: h.Get("x-ratelimit-limit-tokens"),
		remainingTok: h.Get("x-ratelimit-remaining-tokens"), resetTok: h.Get("x-ratelimit-reset-tokens")}
	var b struct {
		Usage Usage `json:"usage"`
		Error struct {
			Type string `json:"type"`
		} `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&b); err != nil {
		t.Fatalf("decoding the body of a %s: %v", resp.Status, err)
	}
	c.errType, c.totalTokens = b.Error.Type, b.Usage.TotalTokens
	return c
}

// flat is a token model whose every completion uses 1000 tokens.
var flat = tokenModel{median: 1000, sigma: 0, seed: 1}

// TestAPIRequestLimit checks the RPM limit: 3 requests a minute, then a 429
// for requests with Retry-After, which takes no tokens; the bucket refills
// a request every 20s. At 60000 tokens a minute, a token refills in 1ms.
func TestAPIRequestLimit(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	api := startAPI(3, 60000, time.Minute, flat, 0, clk.Now)
	defer api.Close()
	ok := func(remReq, resetReq, remTok, resetTok string) call {
		return call{status: 200, limitReq: "3", remainingReq: remReq, resetReq: resetReq,
			limitTok: "60000", remainingTok: remTok, resetTok: resetTok, totalTokens: 1000}
	}
	want := []call{
		ok("2", "20s", "59000", "1s"),
		ok("1", "40s", "58000", "2s"),
		ok("0", "1m0s", "57000", "3s"),
		{status: 429, errType: "requests", retryAfter: "20", limitReq: "3", remainingReq: "0", resetReq: "1m0s",
			limitTok: "60000", remainingTok: "57000", resetTok: "3s"},
	}
	for i, w := range want {
		if got := post(t, api, "p"+strconv.Itoa(i)); got != w {
			t.Errorf("call %d = %+v; want %+v", i+1, got, w)
		}
	}
	clk.advance(20 * time.Second) // a request back, the tokens full
	if got, w := post(t, api, "p"), ok("0", "1m0s", "59000", "1s"); got != w {
		t.Errorf("call 20s later = %+v; want %+v", got, w)
	}
	if c := api.counts(); c != (apiCounts{served: 4, refusedRequests: 1, tokensUsed: 4000}) {
		t.Errorf("counts = %+v; want 4 served, 1 refused for requests, 4000 tokens", c)
	}
}

// TestAPITokenLimit checks the TPM limit: 2500 tokens a minute, a token
// every 24ms, so that the third completion of 1000 tokens is refused for
// tokens, with the Retry-After of the 500 missing, and spends its request
// all the same.
func TestAPITokenLimit(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	api := startAPI(100, 2500, time.Minute, flat, 0, clk.Now)
	defer api.Close()
	ok := func(remReq, resetReq, remTok, resetTok string) call {
		return call{status: 200, limitReq: "100", remainingReq: remReq, resetReq: resetReq,
			limitTok: "2500", remainingTok: remTok, resetTok: resetTok, totalTokens: 1000}
	}
	want := []call{
		ok("99", "600ms", "1500", "24s"),
		ok("98", "1.2s", "500", "48s"),
		{status: 429, errType: "tokens", retryAfter: "12", limitReq: "100", remainingReq: "97", resetReq: "1.8s",
			limitTok: "2500", remainingTok: "500", resetTok: "48s"},
	}
	for i, w := range want {
		if got := post(t, api, "p"+strconv.Itoa(i)); got != w {
			t.Errorf("call %d = %+v; want %+v", i+1, got, w)
		}
	}

	// The client sees the 429 as a rate-limited error a fill.Cache with a
	// budget retries after Retry-After.
	c := &apiClient{hc: http.DefaultClient, base: api.URL()}
	_, err := c.complete(t.Context(), "x")
	var rle *budget.RateLimitedError
	var ours *rateLimitedError
	if !errors.Is(err, errRateLimited) || !errors.As(err, &rle) || rle.RetryAfter != 12*time.Second ||
		!errors.As(err, &ours) || ours.limit != limitTokens {
		t.Errorf("complete over the TPM limit = %v; want %v on tokens, wrapping a budget.RateLimitedError of 12s", err, errRateLimited)
	}

	clk.advance(12 * time.Second) // 500 tokens more: 1000
	usage := &usageLog{model: flat, e: 0.5}
	c.usage = usage
	cmpl, err := c.complete(t.Context(), "x")
	if err != nil || cmpl.Usage.TotalTokens != 1000 || len(cmpl.Choices) != 1 || cmpl.Choices[0].Text == "" {
		t.Fatalf("complete 12s later = %+v, %v; want a completion of 1000 tokens", cmpl, err)
	}
	if got := post(t, api, "y"); got.status != 429 || got.remainingTok != "0" || got.resetTok != "1m0s" {
		t.Errorf("call with the bucket empty = %+v; want a 429, 0 tokens left, full in 1m0s", got)
	}
	if s := usage.stats(); s.Used != 1000 || s.Estimated != flat.estimate("x", 0.5) {
		t.Errorf("usage = %+v; want 1000 used, estimated at %d", s, flat.estimate("x", 0.5))
	}
	if c := api.counts(); c != (apiCounts{served: 3, refusedTokens: 3, tokensUsed: 3000}) {
		t.Errorf("counts = %+v; want 3 served, 3 refused for tokens, 3000 tokens", c)
	}
}

// TestTokens checks the completions' token use: the same for the same
// prompt and seed, log-normal about the median, never above the TPM; and
// the estimates, within the error asked.
func TestTokens(t *testing.T) {
	m := tokenModel{median: 1000, sigma: 1, seed: 1, max: 200000}
	other := m
	other.seed = 2
	var all []int64
	differ := 0
	for i := range 2001 {
		p := promptText(i)
		n := m.tokens(p)
		if again := m.tokens(p); again != n || n < 1 || n > m.max {
			t.Fatalf("tokens(%q) = %d, then %d; want the same, from 1 to %d", p, n, again, m.max)
		}
		if other.tokens(p) != n {
			differ++
		}
		for _, e := range []float64{0, 0.5} {
			est := m.estimate(p, e)
			lo, hi := int64((1-e)*float64(n))-1, int64((1+e)*float64(n))+1
			if est != m.estimate(p, e) || est < max(lo, 1) || est > hi {
				t.Fatalf("estimate(%q, %g) = %d for %d tokens; want the same each time, from %d to %d", p, e, est, n, lo, hi)
			}
		}
		all = append(all, n)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	if med := all[len(all)/2]; med < 900 || med > 1100 {
		t.Errorf("median tokens of 2001 prompts = %d; want about 1000", med)
	}
	// sigma 1: a tenth of the prompts are above e^1.28 times the median.
	if p90 := all[len(all)*9/10]; p90 < 3000 || p90 > 4300 {
		t.Errorf("90th percentile = %d; want about 3600 (1000 e^1.28)", p90)
	}
	if differ < 1900 {
		t.Errorf("seeds 1 and 2 give the same tokens for %d prompts of 2001; want few", 2001-differ)
	}
	if got := (tokenModel{median: 1e9, seed: 1, max: 5000}).tokens("p"); got != 5000 {
		t.Errorf("tokens above the TPM = %d; want the TPM, 5000", got)
	}
}

func TestRequestDeadline(t *testing.T) {
	cfg := config{rpm: 500, tpm: 200000, minute: 6 * time.Second, latency: 100 * time.Millisecond}
	tests := []struct {
		distinct int
		tokens   int64
		want     time.Duration
	}{
		{10, 10000, 10 * time.Second},
		{296, 521854, 21 * time.Second}, // 2.61 minutes of tokens: 15.66s + 0.1s + 5s
		{5000, 1000, 66 * time.Second},  // 10 minutes of requests: 60s + 0.1s + 5s
	}
	for _, tt := range tests {
		if got := requestDeadline(cfg, tt.distinct, tt.tokens); got != tt.want {
			t.Errorf("requestDeadline(%d prompts, %d tokens) = %s; want %s", tt.distinct, tt.tokens, got, tt.want)
		}
	}
}

func TestFlagErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-servers", "0"}, "-servers must be at least 1 (got 0)"},
		{[]string{"-prompts", "0"}, "-prompts must be at least 1"},
		{[]string{"-zipf", "1"}, "-zipf must be a finite number above 1 (got 1)"},
		{[]string{"-rpm", "0"}, "-rpm must be at least 1"},
		{[]string{"-tpm", "0"}, "-tpm must be at least 1"},
		{[]string{"-minute", "0s"}, "-minute must be at least 1ms"},
		{[]string{"-rpm", "10000000", "-minute", "1s"}, "more than one request per microsecond"},
		{[]string{"-tokens-median", "0"}, "-tokens-median must be a finite number of at least 1"},
		{[]string{"-tokens-sigma", "NaN"}, "-tokens-sigma must be a finite number of at least 0"},
		{[]string{"-estimate-error", "1.5"}, "-estimate-error must lie from 0 to 1"},
		{[]string{"-prefix", ""}, "-prefix must not be empty"},
		{[]string{"-modes", "fill+points"}, `no mode "fill+points"; the modes are naive,fill,fill+requests,fill+tokens`},
		{[]string{"-modes", "fill,fill"}, `mode "fill" given twice`},
		{[]string{"extra"}, `unexpected arguments: ["extra"]`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(t.Context(), tt.args, &out, &errOut)
			var ue *demo.UsageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run = %v; want a usage error containing %q", err, tt.want)
			}
			if out.Len() > 0 {
				t.Errorf("stdout = %q; want nothing", out.String())
			}
		})
	}
}

func TestConclusion(t *testing.T) {
	naiveR := result{Mode: "naive", DistinctPrompts: 10, APICalls: 50, Refused429Requests: 5, Refused429Tokens: 20, Failed: 25}
	fillR := result{Mode: "fill", DistinctPrompts: 10, APICalls: 12, Refused429Tokens: 2}
	got := conclusion([]result{naiveR, fillR})
	want := []string{"fill made 12 API calls where naive made 50 (38 saved, 76%); the API refused naive 25 (5 for requests, 20 for tokens), " +
		"fill 2 (0 for requests, 2 for tokens); failed requests: naive 25, fill 0."}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("conclusion = %q; want %q", got, want)
	}
	got = conclusion([]result{fillR})
	want = []string{"fill made 12 API calls for 10 distinct prompts; the API refused 2 (0 for requests, 2 for tokens); 0 requests failed."}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("conclusion of fill alone = %q; want %q", got, want)
	}
}
