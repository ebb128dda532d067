package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/examples/internal/demo"

	"go.uber.org/goleak"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// small is a run small enough for tests, with a budget nothing exhausts:
// whatever duplicates naive makes are served. 64 requests in flight over 40
// users, with 5 ms per API call, always miss together on the hot users.
var small = []string{"-servers", "4", "-requests", "300", "-keys", "40", "-latency", "5ms",
	"-concurrency", "64", "-rate", "1000000", "-burst", "1000000"}

// jsonOut is the output of -json.
type jsonOut struct {
	Settings   map[string]any        `json:"settings"`
	Results    map[string]modeResult `json:"results"`
	Conclusion []string              `json:"conclusion"`
	TimingNote string                `json:"timing_note"`
}

type modeResult struct {
	Requests     int     `json:"requests"`
	DistinctKeys int     `json:"distinct_keys"`
	APICalls     int     `json:"api_calls"`
	Refused      int     `json:"api_calls_refused"`
	CallsPerKey  float64 `json:"api_calls_per_key"`
	Failed       int     `json:"failed_requests"`
	// ClientRequests are those sent through an HTTP client that caches.
	ClientRequests int `json:"client_requests"`
	// UserIDs are the ids the API calls asked for, a batch call's each.
	UserIDs         int `json:"user_ids_asked"`
	DistinctUserIDs int `json:"distinct_user_ids_asked"`
	// MaxInFlight is the most calls the API had in flight at once;
	// RefusedInFlight the calls it refused past -api-concurrency.
	MaxInFlight     int `json:"api_max_in_flight"`
	RefusedInFlight int `json:"api_refused_in_flight"`
	// PerToken are the API calls that came with each token (-tokens).
	PerToken []int64 `json:"api_calls_per_token"`
	Budget   *struct {
		Waits      int `json:"waits"`
		Pauses     int `json:"pauses"`
		LocalWaits int `json:"local_waits"`
	} `json:"budget"`
}

// oncePerUser checks that mode r asked the API for each distinct user
// requested once, and that none of its calls was refused nor any request
// failed.
func oncePerUser(t *testing.T, mode string, r modeResult) {
	t.Helper()
	if r.UserIDs != r.DistinctKeys || r.DistinctUserIDs != r.DistinctKeys || r.DistinctKeys < 1 {
		t.Errorf("%s asked the API for %d user ids, %d distinct; want each of the %d users requested once",
			mode, r.UserIDs, r.DistinctUserIDs, r.DistinctKeys)
	}
	if r.Refused != 0 || r.Failed != 0 {
		t.Errorf("%s: %d calls refused, %d requests failed; want 0 and 0", mode, r.Refused, r.Failed)
	}
}

// runDemo runs the demo with args and -json, checks that stdout is one JSON
// object and nothing else and that stderr, not a terminal, got nothing, and
// returns the object.
func runDemo(t *testing.T, args ...string) jsonOut {
	t.Helper()
	var out, errOut bytes.Buffer
	if err := run(t.Context(), append(args, "-json"), &out, &errOut); err != nil {
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
	return res
}

// allModes are the modes a run without -modes runs, in order.
var allModes = []string{"naive", "fill", "fill+budget", "fill+batch", "httpfill"}

// checkFill checks the point of the demo: every mode but naive asks the API
// for each distinct user once and has no call refused; those that make one
// call per user (fill, fill+budget and httpfill) make exactly that many,
// fill+batch fewer; naive makes more than any. httpfill's HTTP clients got
// every request.
func checkFill(t *testing.T, requests int, res jsonOut) {
	t.Helper()
	if got, want := slices.Sorted(maps.Keys(res.Results)), slices.Sorted(slices.Values(allModes)); !reflect.DeepEqual(got, want) {
		t.Fatalf("results for %v; want %v", got, want)
	}
	naive := res.Results["naive"]
	if naive.Requests != requests {
		t.Errorf("naive requests: %d; want %d", naive.Requests, requests)
	}
	if len(res.Conclusion) != len(allModes)-1 {
		t.Errorf("conclusion = %q; want %d lines", res.Conclusion, len(allModes)-1)
	}
	for i, mode := range allModes[1:] {
		r := res.Results[mode]
		if r.Requests != requests {
			t.Errorf("%s requests: %d; want %d", mode, r.Requests, requests)
		}
		if naive.DistinctKeys != r.DistinctKeys {
			t.Errorf("distinct keys: naive %d, %s %d; want the same", naive.DistinctKeys, mode, r.DistinctKeys)
		}
		oncePerUser(t, mode, r)
		switch {
		case mode == batchMode && (r.APICalls > r.DistinctKeys || r.APICalls < 1):
			t.Errorf("%s API calls = %d; want from 1 to %d, the distinct keys", mode, r.APICalls, r.DistinctKeys)
		case mode != batchMode && (r.APICalls != r.DistinctKeys || r.CallsPerKey != 1):
			t.Errorf("%s API calls = %d (%g per key); want %d, one per distinct key", mode, r.APICalls, r.CallsPerKey, r.DistinctKeys)
		}
		if naive.APICalls <= r.APICalls {
			t.Errorf("naive API calls = %d; want more than %s's %d", naive.APICalls, mode, r.APICalls)
		}
		if want := fmt.Sprintf("%s made %s where naive made %d (", mode, plural(int64(r.APICalls), "API call"), naive.APICalls); i >= len(res.Conclusion) || !strings.HasPrefix(res.Conclusion[i], want) {
			t.Errorf("conclusion = %q; want line %d starting %q", res.Conclusion, i+1, want)
		}
		if budgeted := mode != "fill"; budgeted != (r.Budget != nil) {
			t.Errorf("%s budget counters = %+v; want them in the modes with a budget alone", mode, r.Budget)
		} else if r.Budget != nil && (r.Budget.Waits != r.APICalls || r.Budget.Pauses != 0 || r.Budget.LocalWaits != 0) {
			t.Errorf("%s budget counters = %+v; want %d waits, one per API call, no pause, none decided locally", mode, *r.Budget, r.APICalls)
		}
	}
	if got := res.Results["httpfill"].ClientRequests; got != requests {
		t.Errorf("httpfill requests sent through the HTTP clients = %d; want %d", got, requests)
	}
	for _, mode := range allModes[:len(allModes)-1] {
		if got := res.Results[mode].ClientRequests; got != 0 {
			t.Errorf("%s client_requests = %d; want none: its HTTP client does not cache", mode, got)
		}
	}
	if !strings.Contains(res.TimingNote, "naive's figures vary from run to run") {
		t.Errorf("timing note = %q; want it to say naive's figures vary", res.TimingNote)
	}
}

func TestRunEmbedded(t *testing.T) {
	defer goleak.VerifyNone(t)
	res := runDemo(t, small...)
	checkFill(t, 300, res)
	if naive := res.Results["naive"]; naive.Refused != 0 || naive.Failed != 0 {
		t.Errorf("naive: %d calls refused, %d requests failed; want 0 and 0 with this budget", naive.Refused, naive.Failed)
	}
	want := map[string]any{
		"modes": []any{"naive", "fill", "fill+budget", "fill+batch", "httpfill"}, "servers": 4.0, "requests": 300.0,
		"concurrency": 64.0, "keys": 40.0, "zipf": 1.1, "seed": 1.0, "api_rate_per_s": 1e6, "api_burst": 1e6, "api_concurrency": 0.0,
		"api_latency_ms": 5.0, "ttl_ms": 600000.0, "request_timeout_ms": 10000.0, "request_timeout_computed": true,
		"batch_window_ms": 50.0, "budget_rate_per_s": 1e6, "budget_burst": 1.0, "redis": "embedded", "prefix": "twitter-demo:",
	}
	if !reflect.DeepEqual(res.Settings, want) {
		t.Errorf("settings = %v; want %v", res.Settings, want)
	}
}

// TestRunText checks the report without -json, with stderr a file as in
// "2>log": the table, the timing note and the conclusion as the last line on
// stdout, and no progress line in the file.
func TestRunText(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if demo.IsTerminal(f) {
		t.Fatalf("demo.IsTerminal(%s) = true; want false", f.Name())
	}
	var out bytes.Buffer
	if err := run(t.Context(), small, &out, f); err != nil {
		t.Fatalf("run: %v", err)
	}
	if b, err := os.ReadFile(f.Name()); err != nil || len(b) > 0 {
		t.Errorf("stderr file = %q, %v; want it empty: no progress line in a file", b, err)
	}
	stdout := out.String()
	for _, want := range []string{"\nnaive ", "\nfill ", "\nfill+budget ", "\nfill+batch ", "\nhttpfill ",
		"calls/key", "calls/s", "naive's figures vary from run to run",
		"\nDeadline of each request: 10s (computed: ",
		"\nBudget of the fleet (fill+budget, fill+batch, httpfill): 1e+06 calls/s, burst 1; fill+batch window: 50ms\n",
		"\nfill+budget, budget: ", "\nfill+batch, API: ", "distinct (", ": each user requested once\n",
		"\nhttpfill, all servers: of 300 requests sent through the HTTP client, "} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout has no %q:\n%s", want, stdout)
		}
	}
	lines := strings.Split(strings.TrimRight(stdout, "\n"), "\n")
	for i, mode := range allModes[1:] {
		line := lines[len(lines)-len(allModes)+1+i]
		if !regexp.MustCompile(`^` + regexp.QuoteMeta(mode) + ` made \d+ API calls? where naive made \d+ \(`).MatchString(line) {
			t.Errorf("line %d from the end = %q; want the conclusion on %s", len(allModes)-1-i, line, mode)
		}
	}
}

// TestRunDefaults checks what the demo shows with its defaults: naive runs
// out of budget, fill does not.
func TestRunDefaults(t *testing.T) {
	if testing.Short() {
		t.Skip("a full-size run")
	}
	res := runDemo(t)
	checkFill(t, 2000, res)
	if res.Results["naive"].Refused == 0 {
		t.Errorf("naive got no 429; want some")
	}
}

func TestRunModes(t *testing.T) {
	res := runDemo(t, append(small, "-modes", " fill ")...)
	if got := res.Settings["modes"]; !reflect.DeepEqual(got, []any{"fill"}) {
		t.Errorf("settings.modes = %v; want [fill]", got)
	}
	fill, ok := res.Results["fill"]
	if !ok || len(res.Results) != 1 {
		t.Fatalf("results for %v; want fill alone", slices.Sorted(maps.Keys(res.Results)))
	}
	want := fmt.Sprintf("fill made %d API calls for %d distinct users; the API refused 0 (429).", fill.APICalls, fill.DistinctKeys)
	if !reflect.DeepEqual(res.Conclusion, []string{want}) {
		t.Errorf("conclusion = %q; want %q", res.Conclusion, want)
	}
	if res.TimingNote != "" {
		t.Errorf("timing note = %q without naive; want none", res.TimingNote)
	}
}

// overBurst is a run with more distinct users than the API's burst: the
// first 100 requests, in flight at once, ask for 46 users where the bucket
// holds 20, and the run asks for 91 in all, at 100 calls/s.
var overBurst = []string{"-servers", "4", "-requests", "300", "-concurrency", "100", "-keys", "200",
	"-rate", "100", "-burst", "20", "-latency", "5ms"}

// TestBudgetOverBurst checks what the budget is for: where plain fill runs
// into the API's limit, fill+budget and httpfill wait for it instead, and
// ask the API for each user once with no call refused and no request
// failed.
func TestBudgetOverBurst(t *testing.T) {
	res := runDemo(t, append(overBurst, "-modes", "fill,fill+budget,httpfill")...)
	if got := res.Results["fill"].Refused; got == 0 {
		t.Errorf("fill had no call refused; want some: 46 users at once where the bucket holds 20")
	}
	for _, mode := range []string{"fill+budget", "httpfill"} {
		r := res.Results[mode]
		oncePerUser(t, mode, r)
		if r.APICalls != r.DistinctKeys || r.Requests != 300 {
			t.Errorf("%s: %d API calls for %d requests; want %d, one per distinct key, for 300", mode, r.APICalls, r.Requests, r.DistinctKeys)
		}
	}
}

// TestBatchOverBurst checks fill+batch: with every request in flight at
// once and a window long enough to gather them, the fleet's batches carry
// every server's users: one API call for the 46 users (two for a
// straggler), not one a server, and each user is asked for once fleet-wide.
func TestBatchOverBurst(t *testing.T) {
	args := append(slices.Clone(overBurst), "-modes", "fill+batch", "-requests", "100", "-batch-window", "100ms")
	r := runDemo(t, args...).Results[batchMode]
	oncePerUser(t, batchMode, r)
	if want := 2 * ((r.DistinctKeys + maxBatch - 1) / maxBatch); r.APICalls < 1 || r.APICalls > want {
		t.Errorf("%s made %d API calls for %d users; want 1 to %d: the fleet's batches, a straggler's more",
			batchMode, r.APICalls, r.DistinctKeys, want)
	}
}

// TestInFlightCap: with -api-concurrency, the API refuses the calls that
// arrive while that many are in flight, as GitHub's secondary limit does.
// naive and fill, which send every miss at once, have calls refused;
// fill+conc, whose budget caps the fleet's calls in flight at the API's cap
// (budget.Options.Concurrency), never has more in flight as the API counts
// them, asks for each user once and has none refused.
func TestInFlightCap(t *testing.T) {
	const limit = 5
	res := runDemo(t, "-servers", "4", "-requests", "300", "-keys", "200", "-concurrency", "100", "-latency", "5ms",
		"-rate", "1000000", "-burst", "1000000", "-api-concurrency", fmt.Sprint(limit), "-modes", "naive,fill,fill+conc")
	if got := res.Settings["api_concurrency"]; got != float64(limit) {
		t.Errorf("settings.api_concurrency = %v; want %d", got, limit)
	}
	for _, mode := range []string{"naive", "fill"} {
		r := res.Results[mode]
		if r.RefusedInFlight == 0 || r.Refused < r.RefusedInFlight || r.MaxInFlight <= limit {
			t.Errorf("%s: %d calls refused past the cap (%d in all), at most %d in flight; want some refused: its misses go at once",
				mode, r.RefusedInFlight, r.Refused, r.MaxInFlight)
		}
	}
	r := res.Results[concMode]
	oncePerUser(t, concMode, r)
	if r.MaxInFlight < 1 || r.MaxInFlight > limit || r.RefusedInFlight != 0 {
		t.Errorf("%s: at most %d calls in flight, %d refused past the cap; want 1 to %d, none refused",
			concMode, r.MaxInFlight, r.RefusedInFlight, limit)
	}
	if r.APICalls != r.DistinctKeys {
		t.Errorf("%s: %d API calls; want %d, one per distinct user", concMode, r.APICalls, r.DistinctKeys)
	}
}

// TestInFlightCapPerToken: with -tokens, the API caps each token's calls in
// flight, and fill+conc's budget caps each key of its pool the same: no
// call is refused, each user is asked for once, the calls spread over the
// tokens.
func TestInFlightCapPerToken(t *testing.T) {
	const limit = 3
	// Calls of 20ms: fill's misses overlap past the cap even on a machine
	// whose cores are busy with other tests (at 5ms, once in a while they
	// did not).
	res := runDemo(t, "-servers", "4", "-requests", "300", "-keys", "200", "-concurrency", "100", "-latency", "20ms",
		"-rate", "1000000", "-burst", "1000000", "-tokens", "3", "-api-concurrency", fmt.Sprint(limit), "-modes", "fill,fill+conc")
	if r := res.Results["fill"]; r.RefusedInFlight == 0 {
		t.Errorf("fill: no call refused past a cap of %d per token; want some: its misses go at once", limit)
	}
	r := res.Results[concMode]
	oncePerUser(t, concMode, r)
	if r.MaxInFlight < 1 || r.MaxInFlight > limit || r.RefusedInFlight != 0 {
		t.Errorf("%s: at most %d calls of a token in flight, %d refused past the cap; want 1 to %d, none refused",
			concMode, r.MaxInFlight, r.RefusedInFlight, limit)
	}
	if len(r.PerToken) != 3 || slices.Min(r.PerToken) == 0 {
		t.Errorf("%s: calls per token %v; want every one of 3 used", concMode, r.PerToken)
	}
}

// TestSweep: -servers with several sizes runs the modes once per size, and
// -json gives one run per size.
func TestSweep(t *testing.T) {
	args := append(slices.Clone(overBurst), "-modes", "fill+batch", "-requests", "100", "-batch-window", "20ms",
		"-servers", "2,6")
	var out, errOut bytes.Buffer
	if err := run(t.Context(), append(args, "-json"), &out, &errOut); err != nil {
		t.Fatalf("run: %v\nstderr: %s", err, errOut.String())
	}
	var res struct {
		Settings map[string]any `json:"settings"`
		Sweep    []struct {
			Servers int                   `json:"servers"`
			Results map[string]modeResult `json:"results"`
		} `json:"sweep"`
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("stdout is not a JSON object: %v\n%s", err, out.String())
	}
	if got := fmt.Sprint(res.Settings["servers_swept"]); got != "[2 6]" {
		t.Errorf("servers_swept = %s; want [2 6]", got)
	}
	if len(res.Sweep) != 2 || res.Sweep[0].Servers != 2 || res.Sweep[1].Servers != 6 {
		t.Fatalf("sweep = %+v; want runs of 2 and 6 servers", res.Sweep)
	}
	for _, r := range res.Sweep {
		oncePerUser(t, fmt.Sprint(batchMode, " on ", r.Servers), r.Results[batchMode])
	}
	out.Reset()
	if err := run(t.Context(), args, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Fleet sizes 2,6:", "mode        servers  API calls", "\nfill+batch        2  ", "\nfill+batch        6  ",
		"The fewest calls"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the sweep's table lacks %q:\n%s", want, out.String())
		}
	}
}

func TestRequestDeadline(t *testing.T) {
	tests := []struct {
		rate     float64
		latency  time.Duration
		conc     int // -api-concurrency
		distinct int
		want     time.Duration
	}{
		{50, 80 * time.Millisecond, 0, 10, 10 * time.Second},
		{50, 80 * time.Millisecond, 0, 514, 16 * time.Second}, // 10.28s + 80ms + 5s
		{50, 80 * time.Millisecond, 0, 500, 16 * time.Second}, // 10s + 80ms + 5s
		{100, 0, 0, 1000, 15 * time.Second},                   // exact
		{1e-300, 0, 0, 10, 24 * time.Hour},
		{1000, 100 * time.Millisecond, 5, 514, 16 * time.Second}, // 514 × 100ms ÷ 5 + 100ms + 5s
		{1000, 100 * time.Millisecond, 50, 514, 10 * time.Second},
	}
	for _, tt := range tests {
		cfg := config{rate: tt.rate, latency: tt.latency, apiConcurrency: tt.conc}
		if got := requestDeadline(cfg, tt.distinct); got != tt.want {
			t.Errorf("requestDeadline(rate %g, latency %s, %d users) = %s; want %s", tt.rate, tt.latency, tt.distinct, got, tt.want)
		}
	}
}

func TestBudgetLimit(t *testing.T) {
	tests := []struct {
		rate float64
		want budget.Limit
	}{
		{50, budget.Limit{Rate: 50, Per: time.Second, Burst: 1}},
		{2.5, budget.Limit{Rate: 3, Per: 1200 * time.Millisecond, Burst: 1}},
		{0.1, budget.Limit{Rate: 1, Per: 10 * time.Second, Burst: 1}},
		{3, budget.Limit{Rate: 3, Per: time.Second, Burst: 1}},
	}
	for _, tt := range tests {
		if got := budgetLimit(config{rate: tt.rate, burst: 10}); got != tt.want {
			t.Errorf("budgetLimit(rate %g) = %+v; want %+v", tt.rate, got, tt.want)
		}
		if err := tt.want.Validate(); err != nil {
			t.Errorf("budgetLimit(rate %g) is not a valid limit: %v", tt.rate, err)
		}
	}
}

func TestIsTerminal(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for name, w := range map[string]io.Writer{"a buffer": &bytes.Buffer{}, "a pipe": w} {
		if demo.IsTerminal(w) {
			t.Errorf("demo.IsTerminal(%s) = true; want false", name)
		}
	}
}

func TestProgress(t *testing.T) {
	var buf bytes.Buffer
	var done atomic.Int64
	done.Store(7)
	stop := demo.Progress(&buf, "fill", 300, &done, time.Hour)
	stop()
	if got, want := buf.String(), "\rfill   7/300 requests\r"+strings.Repeat(" ", 21)+"\r"; got != want {
		t.Errorf("progress wrote %q; want %q", got, want)
	}
}

func TestConclusion(t *testing.T) {
	naive := result{Mode: "naive", DistinctKeys: 10, APICalls: 527, Refused: 505}
	fill := result{Mode: "fill", DistinctKeys: 10, APICalls: 10}
	tests := []struct {
		name    string
		results []result
		want    []string
	}{
		{"naive and fill", []result{naive, fill},
			[]string{"fill made 10 API calls where naive made 527 (517 saved, 98%); naive had 505 calls refused (429), fill 0."}},
		{"fill first", []result{fill, naive},
			[]string{"fill made 10 API calls where naive made 527 (517 saved, 98%); naive had 505 calls refused (429), fill 0."}},
		{"as many", []result{naive, {Mode: "x", APICalls: 527, Refused: 1}},
			[]string{"x made 527 API calls where naive made 527 (none saved); naive had 505 calls refused (429), x 1."}},
		{"more", []result{naive, {Mode: "x", APICalls: 530}},
			[]string{"x made 530 API calls where naive made 527 (3 more); naive had 505 calls refused (429), x 0."}},
		{"two to compare", []result{naive, fill, {Mode: "x", APICalls: 1}}, []string{
			"fill made 10 API calls where naive made 527 (517 saved, 98%); naive had 505 calls refused (429), fill 0.",
			"x made 1 API call where naive made 527 (526 saved, 99%); naive had 505 calls refused (429), x 0."}},
		{"fill alone", []result{fill},
			[]string{"fill made 10 API calls for 10 distinct users; the API refused 0 (429)."}},
		{"naive alone", []result{naive},
			[]string{"naive made 527 API calls for 10 distinct users; the API refused 505 (429)."}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := conclusion(tt.results); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("conclusion = %q; want %q", got, tt.want)
			}
		})
	}
}

func TestRunRealRedis(t *testing.T) {
	srv := redistest.Start(t, nil)
	rdb := srv.Client(t, nil)
	ctx := t.Context()
	const prefix = "demo-test:"
	seed := map[string]string{"other": "keep", "demo-test": "keep", prefix + "stale": "delete"}
	for k, v := range seed {
		if err := rdb.Set(ctx, k, v, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}

	res := runDemo(t, append(small, "-redis", srv.Addr(), "-prefix", prefix)...)
	checkFill(t, 300, res)
	if got := res.Settings["redis"]; got != srv.Addr() {
		t.Errorf("settings.redis = %v; want %s", got, srv.Addr())
	}

	left, err := rdb.Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Errorf("keys left under %q: %q; want none", prefix, left)
	}
	for _, k := range []string{"other", "demo-test"} {
		if v, err := rdb.Get(ctx, k).Result(); v != "keep" {
			t.Errorf("GET %s = %q, %v; want the demo to leave it alone", k, v, err)
		}
	}
}

func TestRunUnreachableRedis(t *testing.T) {
	// A listener that hangs up on every connection: no Redis answers there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	defer func() { ln.Close(); <-done }()

	addr := ln.Addr().String()
	var out, errOut bytes.Buffer
	err = run(t.Context(), []string{"-redis", addr}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "redis at "+addr) {
		t.Errorf("run = %v; want an error naming redis at %s", err, addr)
	}
}

func TestFlagErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-servers", "0"}, "-servers must be at least 1 (got 0)"},
		{[]string{"-servers", "8,0"}, "-servers must be at least 1 (got 0)"},
		{[]string{"-servers", "8,x"}, `"x" is not a number of servers`},
		{[]string{"-requests", "-1"}, "-requests must be at least 1"},
		{[]string{"-concurrency", "0"}, "-concurrency must be at least 1"},
		{[]string{"-keys", "0"}, "-keys must be at least 1"},
		{[]string{"-zipf", "1"}, "-zipf must be a finite number above 1 (got 1)"},
		{[]string{"-rate", "0"}, "-rate must be a finite number above 0"},
		{[]string{"-burst", "0"}, "-burst must be at least 1"},
		{[]string{"-api-concurrency", "-1"}, "-api-concurrency must not be negative (got -1)"},
		{[]string{"-modes", "fill+conc"}, "mode fill+conc needs -api-concurrency"},
		{[]string{"-tokens", "-1"}, "-tokens must be between 0 and 1000 (got -1)"},
		{[]string{"-latency", "-1s"}, "-latency must not be negative"},
		{[]string{"-ttl", "10ms"}, "-ttl must be at least 1s"},
		{[]string{"-timeout", "-1s"}, "-timeout must not be negative"},
		{[]string{"-batch-window", "0s"}, "-batch-window must be above 0"},
		{[]string{"-prefix", ""}, "-prefix must not be empty"},
		{[]string{"-prefix", "a{b}"}, "-prefix must not contain '{' or '}'"},
		{[]string{"-redis", "::1"}, "an IPv6 host in brackets"},
		{[]string{"-redis", "host:http"}, `port "http" is not a number`},
		{[]string{"-modes", "nope"}, `no mode "nope"; the modes are naive,fill,fill+budget,fill+batch,httpfill,fill+conc`},
		{[]string{"-modes", ""}, `no mode ""`},
		{[]string{"-modes", "fill,naive,fill"}, `mode "fill" given twice`},
		{[]string{"extra"}, `unexpected arguments: ["extra"]`},
		{[]string{"-nope"}, "flag provided but not defined: -nope"},
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

func TestFlagErrorsAllReported(t *testing.T) {
	_, err := parseFlags([]string{"-servers", "0", "-keys", "0", "x"}, &bytes.Buffer{})
	for _, want := range []string{"-servers", "-keys", "unexpected arguments"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseFlags = %v; want it to mention %s", err, want)
		}
	}
}

func TestModesFlag(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{nil, "naive,fill,fill+budget,fill+batch,httpfill"},
		{[]string{"-modes", "fill"}, "fill"},
		{[]string{"-modes", " fill , naive"}, "fill,naive"},
	}
	for _, tt := range tests {
		cfg, err := parseFlags(tt.args, &bytes.Buffer{})
		if got := cfg.modes.String(); err != nil || got != tt.want {
			t.Errorf("parseFlags(%q) gives modes %q, %v; want %q", tt.args, got, err, tt.want)
		}
	}
}

func TestRedisAddr(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "localhost:6379"},
		{":", "localhost:6379"},
		{":6380", "localhost:6380"},
		{"db1", "db1:6379"},
		{"db1:", "db1:6379"},
		{"db1:7000", "db1:7000"},
		{"10.0.0.5:6400", "10.0.0.5:6400"},
		{"[::1]:6379", "[::1]:6379"},
		{"[::1]:", "[::1]:6379"},
	}
	for _, tt := range tests {
		var f demo.RedisFlag
		err := f.Set(tt.in)
		if got := f.Addr; err != nil || got != tt.want {
			t.Errorf("-redis %q = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestRedisFlagDefaultsWhenGiven(t *testing.T) {
	cfg, err := parseFlags([]string{"-redis", ""}, &bytes.Buffer{})
	if err != nil || cfg.redis.Addr != "localhost:6379" {
		t.Errorf("-redis '' gives %q, %v; want localhost:6379", cfg.redis.Addr, err)
	}
	cfg, err = parseFlags(nil, &bytes.Buffer{})
	if err != nil || cfg.redis.Addr != "" {
		t.Errorf("no -redis gives %q, %v; want the embedded Redis", cfg.redis.Addr, err)
	}
}

func TestTokenBucket(t *testing.T) {
	b := newTokenBucket(50, 3)
	now := time.Unix(0, 0)
	for i := range 3 {
		if q := b.take(now); !q.ok || q.tokens != float64(2-i) {
			t.Fatalf("take %d of the burst = %+v; want ok, %d tokens left", i+1, q, 2-i)
		}
	}
	q := b.take(now)
	if want := (quota{wait: 20 * time.Millisecond}); q != want {
		t.Errorf("take past the burst = %+v; want %+v", q, want)
	}
	if q := b.take(now.Add(20 * time.Millisecond)); !q.ok {
		t.Errorf("take after 20ms at 50/s refused")
	}
	if got := retryAfterSeconds(q.wait); got != 1 {
		t.Errorf("retryAfterSeconds(%s) = %d; want 1", q.wait, got)
	}
}

// TestRateLimitHeaders checks that the API states its limit as the X API
// does on every response, 200, 404 or 429, in windows of one second, and
// refuses with Retry-After.
func TestRateLimitHeaders(t *testing.T) {
	// Half-way through a second, and the bucket gains no token: the clock
	// stands still. At 4 calls/s the half second left gains 2 before the
	// reset.
	now := time.Unix(1_700_000_000, 500_000_000)
	api := startAPI(4, 2, 0, 0, func() time.Time { return now })
	defer api.Close()
	tests := []struct {
		path             string
		status           int
		remaining, retry string
	}{
		{"/users/1/timeline", http.StatusOK, "3", ""},
		{"/users/x/timeline", http.StatusNotFound, "2", ""},
		{"/users/timelines?ids=1,2", http.StatusTooManyRequests, "2", "1"},
	}
	for i, tt := range tests {
		resp, err := http.Get(api.URL() + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		got := []string{resp.Status, resp.Header.Get("X-Rate-Limit-Limit"), resp.Header.Get("X-Rate-Limit-Remaining"),
			resp.Header.Get("X-Rate-Limit-Reset"), resp.Header.Get("Retry-After")}
		want := []string{fmt.Sprintf("%d %s", tt.status, http.StatusText(tt.status)), "6", tt.remaining, "1700000001", tt.retry}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("call %d, GET %s: status, limit, remaining, reset, Retry-After = %q; want %q", i+1, tt.path, got, want)
		}
	}
	if served, refused := api.calls(); served != 1 || refused != 1 {
		t.Errorf("calls served, refused = %d, %d; want 1, 1", served, refused)
	}
	c := &apiClient{hc: http.DefaultClient, base: api.URL()}
	_, err := c.timeline(t.Context(), 1)
	var rle *budget.RateLimitedError
	if !errors.Is(err, errRateLimited) || !errors.As(err, &rle) || rle.RetryAfter != time.Second {
		t.Errorf("apiClient.timeline over the limit = %v; want %v, wrapping a budget.RateLimitedError of 1s", err, errRateLimited)
	}
}

// TestBatchEndpoint checks GET /users/timelines: up to maxBatch users for
// one call of the rate limit, in the order asked, with the same headers and
// 429 as a single timeline.
func TestBatchEndpoint(t *testing.T) {
	// At a second's start, and the clock stands still: the second left
	// gains one token before the reset.
	now := time.Unix(1_700_000_000, 0)
	api := startAPI(1, 4, 0, 0, func() time.Time { return now })
	defer api.Close()
	c := &apiClient{hc: http.DefaultClient, base: api.URL()}

	ids := make([]uint64, maxBatch)
	for i := range ids {
		ids[i] = uint64(1000 + i)
	}
	tls, err := c.timelines(t.Context(), ids)
	if err != nil {
		t.Fatalf("timelines of %d users: %v", len(ids), err)
	}
	if len(tls) != len(ids) {
		t.Fatalf("got %d timelines; want %d", len(tls), len(ids))
	}
	for i, tl := range tls {
		if want := timelineFor(ids[i]); !reflect.DeepEqual(tl, want) {
			t.Fatalf("timeline %d = %+v; want %+v", i, tl, want)
		}
	}

	// The 100 users took one token of 4: 3 left, and 1 more by the reset.
	tests := []struct {
		query     string
		status    int
		msg       string
		remaining string
	}{
		{"ids=" + strings.Repeat("1,", maxBatch) + "1", http.StatusBadRequest, "101 ids: at most 100 per call", "3"},
		{"", http.StatusBadRequest, "the ids parameter is missing", "2"},
		{"ids=1,x", http.StatusBadRequest, `\"x\" is not a user id`, "1"},
		{"ids=2", http.StatusTooManyRequests, "Rate limit exceeded", "1"},
	}
	for _, tt := range tests {
		resp, err := http.Get(api.URL() + "/users/timelines?" + tt.query)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.status || !strings.Contains(string(body), tt.msg) {
			t.Errorf("GET /users/timelines?%.20s: %s %s; want %d and %q", tt.query, resp.Status, body, tt.status, tt.msg)
		}
		got := []string{resp.Header.Get("X-Rate-Limit-Limit"), resp.Header.Get("X-Rate-Limit-Remaining"), resp.Header.Get("X-Rate-Limit-Reset")}
		if want := []string{"5", tt.remaining, "1700000001"}; !reflect.DeepEqual(got, want) {
			t.Errorf("GET /users/timelines?%.20s: limit, remaining, reset = %q; want %q", tt.query, got, want)
		}
	}
	if served, refused := api.calls(); served != 1 || refused != 1 {
		t.Errorf("calls served, refused = %d, %d; want 1, 1", served, refused)
	}
	// The users asked for: the 100, then user 2 in the refused call. A
	// malformed list asks for nobody.
	if n, distinct := api.users(); n != maxBatch+1 || distinct != maxBatch+1 {
		t.Errorf("user ids asked for = %d, %d distinct; want %d, %d", n, distinct, maxBatch+1, maxBatch+1)
	}
}

func TestTimelineDeterministic(t *testing.T) {
	a, b := timelineFor(42), timelineFor(42)
	if !reflect.DeepEqual(a, b) || len(a.Tweets) < 3 || a.UserID != 42 {
		t.Errorf("timelineFor(42) = %+v, then %+v; want the same timeline of 3 or more tweets", a, b)
	}
	if reflect.DeepEqual(a.Tweets, timelineFor(43).Tweets) {
		t.Errorf("users 42 and 43 have the same tweets")
	}
}

func TestGlobEscape(t *testing.T) {
	if got, want := demo.GlobEscape(`a*b?[c]\`), `a\*b\?\[c\]\\`; got != want {
		t.Errorf("globEscape = %q; want %q", got, want)
	}
}

// TestTokens: with -tokens 3, the API limits each token on its own; the
// modes with a budget spread their calls over the three as a pool, each
// user asked for once and no call refused, though the users requested at
// once are many times one token's burst.
func TestTokens(t *testing.T) {
	args := append(slices.Clone(overBurst), "-tokens", "3", "-burst", "5", "-modes", "fill+budget,fill+batch,httpfill")
	res := runDemo(t, args...)
	if got := res.Settings["tokens"]; got != 3.0 {
		t.Errorf("settings: tokens = %v; want 3", got)
	}
	for _, mode := range []string{"fill+budget", "httpfill"} {
		r := res.Results[mode]
		oncePerUser(t, mode, r)
		if len(r.PerToken) != 3 {
			t.Fatalf("%s: calls per token %v; want 3 tokens", mode, r.PerToken)
		}
		least, most := slices.Min(r.PerToken), slices.Max(r.PerToken)
		if least == 0 || most-least > (most+2)/3 {
			t.Errorf("%s: calls per token %v; want them spread over the three", mode, r.PerToken)
		}
	}
	if r := res.Results[batchMode]; r.Refused != 0 || r.Failed != 0 {
		t.Errorf("%s: %d calls refused, %d requests failed; want 0 and 0", batchMode, r.Refused, r.Failed)
	}
}

// TestAPITokens: with tokens, the API limits each on its own, and answers
// 401 to a call without one or with one it does not know.
func TestAPITokens(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	api := startAPI(1, 1, 0, 0, func() time.Time { return now })
	defer api.Close()
	api.limitPerToken(appTokens(2))
	call := func(token string) int {
		req, err := http.NewRequest(http.MethodGet, api.URL()+"/users/1/timeline", nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		token string
		want  int
	}{
		{"app-token-1", http.StatusOK}, {"app-token-2", http.StatusOK}, // a burst of 1 each
		{"app-token-1", http.StatusTooManyRequests}, {"", http.StatusUnauthorized}, {"app-token-3", http.StatusUnauthorized},
	} {
		if got := call(tc.token); got != tc.want {
			t.Errorf("a call with token %q: %d; want %d", tc.token, got, tc.want)
		}
	}
	if got, want := api.byToken(), []int64{2, 1}; !slices.Equal(got, want) {
		t.Errorf("calls per token = %v; want %v", got, want)
	}
	if n := api.denied.Load(); n != 2 {
		t.Errorf("calls denied = %d; want 2", n)
	}
}
