package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/locksmith-go/locksmith/examples/internal/demo"
)

const (
	progressInterval = 100 * time.Millisecond
	cleanupTimeout   = 10 * time.Second // deleting the demo's keys at the end
)

func main() { demo.Main("twitter", run) }

// run runs the demo with the command-line arguments args (without the
// program name), writing the report to stdout and, when stderr is a
// terminal, a progress line to it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	env, err := demo.OpenRedis(ctx, cfg.redis.Addr, cfg.prefix)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		err = errors.Join(err, env.Close(cctx))
	}()

	var progressTo io.Writer // nil: no progress line
	if demo.IsTerminal(stderr) {
		progressTo = stderr
	}
	ids := requestSequence(cfg.requests, cfg.keys, cfg.zipf, cfg.seed)
	if cfg.timeout == 0 {
		cfg.timeout, cfg.timeoutComputed = requestDeadline(cfg, len(distinctIDs(ids))), true
	}
	if len(cfg.fleets) > 1 {
		return sweep(ctx, cfg, env, ids, progressTo, stdout)
	}
	results, err := runModes(ctx, cfg, env, ids, progressTo)
	if err != nil {
		return err
	}
	if cfg.json {
		return writeJSON(stdout, cfg, env, results)
	}
	return report(stdout, cfg, env, results)
}

// runModes sends ids through a fleet of each mode of cfg in turn.
func runModes(ctx context.Context, cfg config, env *demo.Redis, ids []uint64, progressTo io.Writer) ([]result, error) {
	var results []result
	for _, m := range cfg.modes {
		r, err := runMode(ctx, cfg, env, m, ids, progressTo)
		if err != nil {
			return nil, err
		}
		results = append(results, r)
	}
	return results, nil
}

// result is what one mode did.
type result struct {
	Mode         string     `json:"-"`
	Requests     int        `json:"requests"`
	DistinctKeys int        `json:"distinct_keys"`     // users requested
	APICalls     int64      `json:"api_calls"`         // answered or refused
	Refused      int64      `json:"api_calls_refused"` // with 429
	CallsPerKey  float64    `json:"api_calls_per_key"` // APICalls / DistinctKeys
	Failed       int        `json:"failed_requests"`
	P50ms        float64    `json:"p50_ms"`
	P99ms        float64    `json:"p99_ms"`
	WallMs       float64    `json:"wall_ms"`
	FirstError   string     `json:"first_error,omitempty"` // of the failed requests
	FillStats    *fillStats `json:"fill_stats,omitempty"`
	// Budget are the counters of the fleet's budget, of a mode that has
	// one.
	Budget *budgetStats `json:"budget,omitempty"`
	// ClientRequests are the requests sent through the servers' HTTP
	// clients, of a mode that caches under the client (httpfill); the
	// API got APICalls of them.
	ClientRequests int64 `json:"client_requests,omitempty"`
	// BusyMs is the time from the first API call's arrival to the last's,
	// and CallsPerSec the API calls after the first over it: the rate the
	// fleet called at (0 with fewer than two calls, or all at once).
	BusyMs      float64 `json:"api_busy_ms"`
	CallsPerSec float64 `json:"api_calls_per_s"`
	// UserIDs are the user ids the API calls asked for, a batch call
	// counting each of its ids, and DistinctUserIDs the distinct ones.
	UserIDs         int64 `json:"user_ids_asked"`
	DistinctUserIDs int64 `json:"distinct_user_ids_asked"`
	// MaxInFlight is the most calls the API had in flight at once, as it
	// counts them (a call refused past its cap included), and
	// RefusedInFlight the calls it refused past -api-concurrency (counted
	// in Refused too).
	MaxInFlight     int64   `json:"api_max_in_flight"`
	RefusedInFlight int64   `json:"api_refused_in_flight"`
	PerToken        []int64 `json:"api_calls_per_token,omitempty"` // with -tokens: the calls of each token
	// Trace is what the API served, tick by tick, against a hidden limit
	// (-hidden-limit), and the rate the budget learned.
	Trace []tracePoint `json:"trace,omitempty"`
}

// runMode sends ids through a fresh fleet of mode m, against a fresh API, on
// an emptied cache. With progressTo not nil, it shows its progress there.
func runMode(ctx context.Context, cfg config, env *demo.Redis, m mode, ids []uint64, progressTo io.Writer) (result, error) {
	if err := env.Flush(ctx); err != nil {
		return result{}, err
	}
	api := startAPI(cfg.rate, cfg.burst, cfg.latency, cfg.apiConcurrency, time.Now)
	defer api.Close()
	api.limitPerToken(appTokens(cfg.tokens))
	f := newFleet(cfg, env, m, api.URL())
	for _, e := range f.envs {
		if err := e.api.warm(ctx, warmConns); err != nil {
			return result{}, fmt.Errorf("opening connections to the API: %w", err)
		}
	}

	trace := func() []tracePoint { return nil }
	if len(cfg.hidden) > 0 {
		trace = hide(cfg, api, f.servers)
	}
	var done atomic.Int64
	stop := func() {}
	if progressTo != nil {
		stop = demo.Progress(progressTo, m.name, len(ids), &done, progressInterval)
	}
	start := time.Now()
	out := demo.Drive(ctx, len(ids), cfg.concurrency, cfg.timeout, func(ctx context.Context, i int) error {
		_, err := f.servers[i%len(f.servers)].timeline(ctx, ids[i])
		return err
	}, &done)
	wall := time.Since(start)
	stop()
	points := trace()

	stats := fillTotals(f.servers)
	bstats := budgetTotals(f.servers)
	clientRequests := clientTotal(f.servers)
	closeErr := f.close()
	if err := ctx.Err(); err != nil {
		return result{}, fmt.Errorf("%s: interrupted: %w", m.name, err)
	}
	if closeErr != nil {
		return result{}, fmt.Errorf("%s: closing the servers: %w", m.name, closeErr)
	}
	r := summarize(m.name, ids, api, out, wall, stats)
	r.ClientRequests = clientRequests
	r.Budget = bstats
	r.Trace = points
	return r, nil
}

func summarize(name string, ids []uint64, api *fakeAPI, out demo.Outcome, wall time.Duration, stats *fillStats) result {
	served, refused := api.calls()
	distinct := len(distinctIDs(ids))
	slices.Sort(out.Latencies)
	r := result{
		Mode:         name,
		Requests:     len(out.Latencies),
		DistinctKeys: distinct,
		APICalls:     served + refused,
		Refused:      refused,
		CallsPerKey:  round2(float64(served+refused) / float64(distinct)),
		Failed:       out.Failed,
		P50ms:        millis(percentile(out.Latencies, 0.50)),
		P99ms:        millis(percentile(out.Latencies, 0.99)),
		WallMs:       millis(wall),
		FillStats:    stats,
	}
	if out.FirstErr != nil {
		r.FirstError = out.FirstErr.Error()
	}
	first, last := api.span()
	if busy := last.Sub(first); busy > 0 {
		r.BusyMs = millis(busy)
		r.CallsPerSec = round2(float64(r.APICalls-1) / busy.Seconds())
	}
	r.UserIDs, r.DistinctUserIDs = api.users()
	r.MaxInFlight, r.RefusedInFlight = api.conc.peak.Load(), api.conc.refused.Load()
	r.PerToken = api.byToken()
	return r
}

// requestSequence draws n user ids among keys, Zipf-distributed with skew s:
// user 1 is the most requested.
func requestSequence(n, keys int, s float64, seed uint64) []uint64 {
	z := rand.NewZipf(rand.New(rand.NewPCG(seed, seed)), s, 1, uint64(keys-1))
	ids := make([]uint64, n)
	for i := range ids {
		ids[i] = 1 + z.Uint64()
	}
	return ids
}

func distinctIDs(ids []uint64) map[uint64]struct{} {
	set := make(map[uint64]struct{})
	for _, id := range ids {
		set[id] = struct{}{}
	}
	return set
}

// percentile returns the p-th percentile of sorted by nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

func millis(d time.Duration) float64 { return round2(float64(d) / float64(time.Millisecond)) }

func round2(x float64) float64 { return math.Round(x*100) / 100 }

// naiveVariation is how much naive's API calls and 429s vary from run to run
// with the default flags, as measured: see the package comment.
const naiveVariation = "30%"

// report writes the settings, the table, notes on failures, on the fill
// counters and on timing, and the conclusion.
func report(w io.Writer, cfg config, env *demo.Redis, results []result) error {
	distinct := 0
	if len(results) > 0 {
		distinct = results[0].DistinctKeys
	}
	fmt.Fprintf(w, "%d servers, %d requests (%d in flight) for %d possible users, %d requested (Zipf s=%g, seed %d)\n",
		cfg.servers, cfg.requests, cfg.concurrency, cfg.keys, distinct, cfg.zipf, cfg.seed)
	fmt.Fprintf(w, "API: %s, burst %d, %s per call", apiLimit(cfg), cfg.burst, cfg.latency)
	fmt.Fprint(w, tokensNote(cfg, ", each of %d tokens"))
	if cfg.apiConcurrency > 0 {
		fmt.Fprintf(w, ", at most %d in flight", cfg.apiConcurrency)
		if cfg.tokens > 0 {
			fmt.Fprint(w, " per token")
		}
	}
	fmt.Fprintf(w, "; Redis: %s\n", env.Desc)
	how := "-timeout"
	if cfg.timeoutComputed {
		how = "computed: " + strings.ReplaceAll(deadlineRule, "\n", " ")
	}
	fmt.Fprintf(w, "Deadline of each request: %s (%s)\n", cfg.timeout, how)
	var budgeted []string
	for _, r := range results {
		if r.Budget != nil {
			budgeted = append(budgeted, r.Mode)
		}
	}
	if len(budgeted) > 0 {
		l := budgetLimit(cfg)
		fmt.Fprintf(w, "Budget of the fleet (%s): %g calls/s, burst %d",
			strings.Join(budgeted, ", "), float64(l.Rate)/l.Per.Seconds(), l.Burst)
		fmt.Fprint(w, tokensNote(cfg, " per token, the %d tokens a pool"))
		if slices.ContainsFunc(results, func(r result) bool { return r.Mode == batchMode }) {
			fmt.Fprintf(w, "; %s window: %s", batchMode, cfg.window)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
	rows := [][]string{{"mode", "requests", "distinct keys", "API calls", "429s", "failed",
		"calls/key", "calls/s", "p50 ms", "p99 ms", "wall ms"}}
	for _, r := range results {
		perSec := "-"
		if r.BusyMs > 0 {
			perSec = fmt.Sprintf("%.1f", r.CallsPerSec)
		}
		rows = append(rows, []string{r.Mode, fmt.Sprint(r.Requests), fmt.Sprint(r.DistinctKeys),
			fmt.Sprint(r.APICalls), fmt.Sprint(r.Refused), fmt.Sprint(r.Failed),
			fmt.Sprintf("%.2f", r.CallsPerKey), perSec, fmt.Sprintf("%.1f", r.P50ms),
			fmt.Sprintf("%.1f", r.P99ms), fmt.Sprintf("%.0f", r.WallMs)})
	}
	writeTable(w, rows)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "calls/key: API calls per distinct user requested; 1.00 is one call per user.")
	fmt.Fprintf(w, "calls/s: API calls per second, from the first call's arrival to the last's; the API allows %s after a burst of %d.\n",
		apiLimit(cfg), cfg.burst)
	for _, r := range results {
		if s := r.FillStats; s != nil {
			fmt.Fprintf(w, "%s, all servers: %d loads, %d hits, %d misses, %d merged in-process, %d merged from another server\n",
				r.Mode, s.Loads, s.Hits, s.Misses, s.LocalMerges, s.RemoteMerges)
		}
		if b := r.Budget; b != nil {
			fmt.Fprintf(w, "%s, budget: %s let through (the longest wait %s), %s, %s by the API's headers%s\n",
				r.Mode, plural(int64(b.Waits), "call"), time.Duration(b.WaitMaxMs*float64(time.Millisecond)).Round(time.Millisecond),
				plural(int64(b.Pauses), "pause"), plural(int64(b.PullDowns), "pull-down"), cutsOf(r))
		}
		if r.Mode == batchMode {
			fmt.Fprintf(w, "%s, API: %s asked for %d user ids, %d distinct (%.1f per call)%s\n",
				r.Mode, plural(r.APICalls, "call"), r.UserIDs, r.DistinctUserIDs,
				float64(r.UserIDs)/float64(max(r.APICalls, 1)), eachOnce(r))
		}
		reportTokens(w, r)
		if n := r.ClientRequests; n > 0 {
			fmt.Fprintf(w, "%s, all servers: of %s sent through the HTTP client, %d reached the API (%s)\n",
				r.Mode, plural(n, "request"), r.APICalls, saving(n, r.APICalls))
		}
		if r.Failed > 0 {
			fmt.Fprintf(w, "%s: %d of %d requests failed; the first: %s\n", r.Mode, r.Failed, r.Requests, r.FirstError)
		}
	}
	if cfg.apiConcurrency > 0 {
		inFlightLines(w, cfg.apiConcurrency, cfg.tokens > 0, results)
	}
	if note := timingNote(cfg, results); note != "" {
		fmt.Fprintln(w, note)
	}
	writeTrace(w, cfg, results)
	fmt.Fprintln(w)
	for _, line := range conclusion(results) {
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	return nil
}

// eachOnce says whether the API was asked for each user requested once.
func eachOnce(r result) string {
	if r.UserIDs == r.DistinctUserIDs && r.DistinctUserIDs == int64(r.DistinctKeys) {
		return ": each user requested once"
	}
	return ""
}

// timingNote says which figures of the modes run depend on timing.
func timingNote(cfg config, results []result) string {
	var note []string
	for _, r := range results {
		switch {
		case r.Mode == naive:
			note = append(note, "naive's figures vary from run to run, by about "+naiveVariation+
				" with the default flags: they depend on timing (which requests miss together,"+
				" and which of their calls the API serves).")
		case r.Mode == batchMode:
			note = append(note, fmt.Sprintf("%s's API calls depend on timing: which users the fleet misses while a batch call is under way.", r.Mode))
		case r.Budget == nil && cfg.keys > cfg.burst:
			note = append(note, fmt.Sprintf("With -keys above -burst, %s's figures depend on timing too.", r.Mode))
		}
	}
	return strings.Join(note, " ")
}

// conclusion compares every mode with naive, one sentence each. Without
// naive to compare with, it states each mode's calls.
func conclusion(results []result) []string {
	base := slices.IndexFunc(results, func(r result) bool { return r.Mode == naive })
	var lines []string
	for i, r := range results {
		switch {
		case base < 0 || len(results) == 1:
			lines = append(lines, fmt.Sprintf("%s made %s for %s; the API refused %d (429).",
				r.Mode, plural(r.APICalls, "API call"), plural(int64(r.DistinctKeys), "distinct user"), r.Refused))
		case i != base:
			n := results[base]
			lines = append(lines, fmt.Sprintf("%s made %s where naive made %d (%s); naive had %s refused (429), %s %d.",
				r.Mode, plural(r.APICalls, "API call"), n.APICalls, saving(n.APICalls, r.APICalls),
				plural(n.Refused, "call"), r.Mode, r.Refused))
		}
	}
	return lines
}

// saving compares a mode's API calls with base, naive's.
func saving(base, calls int64) string {
	switch {
	case calls < base:
		pct := math.Floor(100 * float64(base-calls) / float64(base))
		return fmt.Sprintf("%d saved, %.0f%%", base-calls, pct)
	case calls == base:
		return "none saved"
	default:
		return fmt.Sprintf("%d more", calls-base)
	}
}

// plural is n things, with one thing singular.
func plural(n int64, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}

// writeTable writes rows as aligned columns: the first left-aligned, the
// others right-aligned.
func writeTable(w io.Writer, rows [][]string) {
	var widths []int
	for _, row := range rows {
		for j, cell := range row {
			if j == len(widths) {
				widths = append(widths, 0)
			}
			widths[j] = max(widths[j], len([]rune(cell)))
		}
	}
	for _, row := range rows {
		cells := make([]string, len(row))
		for j, cell := range row {
			pad := strings.Repeat(" ", widths[j]-len([]rune(cell)))
			if j == 0 {
				cells[j] = cell + pad
			} else {
				cells[j] = pad + cell
			}
		}
		fmt.Fprintln(w, strings.Join(cells, "  "))
	}
}
