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

func main() { demo.Main("llm", run) }

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
	prompts := requestSequence(cfg.requests, cfg.prompts, cfg.zipf, cfg.seed)
	if cfg.timeout == 0 {
		distinct, tokens := distinctCost(cfg.tokenModel(), prompts)
		cfg.timeout, cfg.timeoutComputed = requestDeadline(cfg, distinct, tokens), true
	}
	var results []result
	for _, m := range cfg.modes {
		r, err := runMode(ctx, cfg, env, m, prompts, progressTo)
		if err != nil {
			return err
		}
		results = append(results, r)
	}
	if cfg.json {
		return writeJSON(stdout, cfg, env, results)
	}
	return report(stdout, cfg, env, results)
}

// result is what one mode did.
type result struct {
	Mode            string `json:"-"`
	Requests        int    `json:"requests"`
	DistinctPrompts int    `json:"distinct_prompts"` // requested
	APICalls        int64  `json:"api_calls"`        // answered or refused
	// Refused429Requests and Refused429Tokens are the calls the API
	// refused (429) for its RPM limit, and for its TPM limit.
	Refused429Requests int64   `json:"refused_requests_429"`
	Refused429Tokens   int64   `json:"refused_tokens_429"`
	Failed             int     `json:"failed_requests"`
	CallsPerPrompt     float64 `json:"api_calls_per_prompt"` // APICalls / DistinctPrompts
	// PromptsAsked are the distinct prompts the API calls asked for.
	PromptsAsked int   `json:"prompts_asked"`
	TokensUsed   int64 `json:"tokens_used"` // by the calls answered
	// TPMUsedPct and RPMUsedPct are the tokens used, and the requests
	// spent (the calls answered, and those refused for tokens), as a
	// percentage of what the API allowed over the run: a full bucket, a
	// minute's worth, and its refill over the wall time.
	TPMUsedPct float64 `json:"tpm_used_pct"`
	RPMUsedPct float64 `json:"rpm_used_pct"`
	P50ms      float64 `json:"p50_ms"`
	P99ms      float64 `json:"p99_ms"`
	WallMs     float64 `json:"wall_ms"`
	FirstError string  `json:"first_error,omitempty"` // of the failed requests
	// Estimate compares the client's estimates of the tokens of the
	// completions received with their usage (see -estimate-error): what
	// a budget metering tokens would have booked, and the truth.
	Estimate  estimateStats `json:"estimate"`
	FillStats *fillStats    `json:"fill_stats,omitempty"`
	// Budget are the counters of the fleet's budget, of a mode that has
	// one.
	Budget *budgetStats `json:"budget,omitempty"`
}

// runMode sends prompts through a fresh fleet of mode m, against a fresh
// API, on an emptied cache. With progressTo not nil, it shows its progress
// there.
func runMode(ctx context.Context, cfg config, env *demo.Redis, m mode, prompts []string, progressTo io.Writer) (result, error) {
	if err := env.Flush(ctx); err != nil {
		return result{}, err
	}
	api := startAPI(cfg.rpm, cfg.tpm, cfg.minute, cfg.tokenModel(), cfg.latency, time.Now)
	defer api.Close()
	usage := &usageLog{model: cfg.tokenModel(), e: cfg.estimateError}
	f := newFleet(cfg, env, m, api.URL(), usage)

	var done atomic.Int64
	stop := func() {}
	if progressTo != nil {
		stop = demo.Progress(progressTo, m.name, len(prompts), &done, progressInterval)
	}
	start := time.Now()
	out := demo.Drive(ctx, len(prompts), cfg.concurrency, cfg.timeout, func(ctx context.Context, i int) error {
		_, err := f.servers[i%len(f.servers)].complete(ctx, prompts[i])
		return err
	}, &done)
	wall := time.Since(start)
	stop()

	stats := fillTotals(f.servers)
	bstats := budgetTotals(f.servers)
	closeErr := f.close()
	if err := ctx.Err(); err != nil {
		return result{}, fmt.Errorf("%s: interrupted: %w", m.name, err)
	}
	if closeErr != nil {
		return result{}, fmt.Errorf("%s: closing the servers: %w", m.name, closeErr)
	}
	r := summarize(cfg, m.name, prompts, api, out, wall)
	r.FillStats, r.Budget, r.Estimate = stats, bstats, usage.stats()
	return r, nil
}

func summarize(cfg config, name string, prompts []string, api *fakeAPI, out demo.Outcome, wall time.Duration) result {
	c := api.counts()
	distinct := len(distinctPrompts(prompts))
	calls := c.served + c.refusedRequests + c.refusedTokens
	slices.Sort(out.Latencies)
	minutes := 1 + wall.Seconds()/cfg.minute.Seconds() // a full bucket, and its refill
	r := result{
		Mode:               name,
		Requests:           len(out.Latencies),
		DistinctPrompts:    distinct,
		APICalls:           calls,
		Refused429Requests: c.refusedRequests,
		Refused429Tokens:   c.refusedTokens,
		Failed:             out.Failed,
		CallsPerPrompt:     round2(float64(calls) / float64(distinct)),
		PromptsAsked:       api.prompts(),
		TokensUsed:         c.tokensUsed,
		TPMUsedPct:         round2(100 * float64(c.tokensUsed) / (float64(cfg.tpm) * minutes)),
		RPMUsedPct:         round2(100 * float64(c.served+c.refusedTokens) / (float64(cfg.rpm) * minutes)),
		P50ms:              millis(percentile(out.Latencies, 0.50)),
		P99ms:              millis(percentile(out.Latencies, 0.99)),
		WallMs:             millis(wall),
	}
	if out.FirstErr != nil {
		r.FirstError = out.FirstErr.Error()
	}
	return r
}

// requestSequence draws n prompts among the first prompts ones,
// Zipf-distributed with skew s: prompt 1 is the most requested.
func requestSequence(n, prompts int, s float64, seed uint64) []string {
	z := rand.NewZipf(rand.New(rand.NewPCG(seed, seed)), s, 1, uint64(prompts-1))
	seq := make([]string, n)
	for i := range seq {
		seq[i] = promptText(1 + int(z.Uint64()))
	}
	return seq
}

func distinctPrompts(prompts []string) map[string]struct{} {
	set := make(map[string]struct{})
	for _, p := range prompts {
		set[p] = struct{}{}
	}
	return set
}

// distinctCost returns how many distinct prompts there are, and the tokens
// of one completion of each.
func distinctCost(m tokenModel, prompts []string) (int, int64) {
	set := distinctPrompts(prompts)
	var tokens int64
	for p := range set {
		tokens += m.tokens(p)
	}
	return len(set), tokens
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

// report writes the settings, the table, notes, and the conclusion.
func report(w io.Writer, cfg config, env *demo.Redis, results []result) error {
	distinct := 0
	if len(results) > 0 {
		distinct = results[0].DistinctPrompts
	}
	fmt.Fprintf(w, "%d servers, %d requests (%d in flight) for %d possible prompts, %d requested (Zipf s=%g, seed %d)\n",
		cfg.servers, cfg.requests, cfg.concurrency, cfg.prompts, distinct, cfg.zipf, cfg.seed)
	fmt.Fprintf(w, "API: %d requests and %d tokens per minute, a minute lasting %s; completions of %g tokens median (log-normal, sigma %g), %s each; Redis: %s\n",
		cfg.rpm, cfg.tpm, cfg.minute, cfg.tokensMedian, cfg.tokensSigma, cfg.latency, env.Desc)
	how := "-timeout"
	if cfg.timeoutComputed {
		how = "computed: " + strings.ReplaceAll(deadlineRule, "\n", " ")
	}
	fmt.Fprintf(w, "Deadline of each request: %s (%s)\n", cfg.timeout, how)
	fmt.Fprintln(w)
	rows := [][]string{{"mode", "requests", "prompts", "API calls", "429 req", "429 tok", "failed",
		"calls/prompt", "tokens", "TPM %", "RPM %", "p50 ms", "p99 ms", "wall ms"}}
	for _, r := range results {
		rows = append(rows, []string{r.Mode, fmt.Sprint(r.Requests), fmt.Sprint(r.DistinctPrompts),
			fmt.Sprint(r.APICalls), fmt.Sprint(r.Refused429Requests), fmt.Sprint(r.Refused429Tokens),
			fmt.Sprint(r.Failed), fmt.Sprintf("%.2f", r.CallsPerPrompt), fmt.Sprint(r.TokensUsed),
			fmt.Sprintf("%.1f", r.TPMUsedPct), fmt.Sprintf("%.1f", r.RPMUsedPct),
			fmt.Sprintf("%.1f", r.P50ms), fmt.Sprintf("%.1f", r.P99ms), fmt.Sprintf("%.0f", r.WallMs)})
	}
	writeTable(w, rows)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "prompts: distinct prompts requested; calls/prompt: API calls per distinct prompt, 1.00 is one call each.")
	fmt.Fprintln(w, "429 req, 429 tok: calls the API refused for its RPM limit, and for its TPM limit.")
	fmt.Fprintln(w, "TPM %, RPM %: the tokens used, and the requests spent, as a share of what the API allowed over the run (a minute's worth at the start, and the refill over the wall time).")
	for _, r := range results {
		if s := r.FillStats; s != nil {
			fmt.Fprintf(w, "%s, all servers: %d loads, %d hits, %d misses, %d merged in-process, %d merged from another server\n",
				r.Mode, s.Loads, s.Hits, s.Misses, s.LocalMerges, s.RemoteMerges)
		}
		if b := r.Budget; b != nil {
			of := "requests"
			if r.Mode == "fill+tokens" {
				of = "requests and tokens"
			}
			fmt.Fprintf(w, "%s, budget of %s: %s let through (the longest wait %s), %s\n",
				r.Mode, of, plural(int64(b.Waits), "call"), time.Duration(b.WaitMaxMs*float64(time.Millisecond)).Round(time.Millisecond),
				plural(int64(b.Pauses), "pause"))
		}
		if e := r.Estimate; e.Used > 0 {
			fmt.Fprintf(w, "%s, token estimates (±%g%%): %d estimated for %d used (mean error %.1f%%, largest %.1f%%)\n",
				r.Mode, 100*cfg.estimateError, e.Estimated, e.Used, e.MeanAbsErrPct, e.MaxAbsErrPct)
		}
		if r.Failed > 0 {
			fmt.Fprintf(w, "%s: %d of %d requests failed; the first: %s\n", r.Mode, r.Failed, r.Requests, r.FirstError)
		}
	}
	if note := timingNote(results); note != "" {
		fmt.Fprintln(w, note)
	}
	fmt.Fprintln(w)
	for _, line := range conclusion(results) {
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	return nil
}

// timingNote says which figures of the modes run depend on timing, and what
// a budget of requests alone cannot do.
func timingNote(results []result) string {
	var note []string
	for _, r := range results {
		switch {
		case r.Mode == naive:
			note = append(note, "naive's figures vary from run to run: they depend on which requests miss together.")
		case r.Budget != nil && r.Refused429Tokens > 0:
			note = append(note, fmt.Sprintf("In %s the budget meters requests alone: the API refused %s for tokens, each pausing the fleet for its Retry-After; a budget metering tokens too (fill+tokens) books a call's estimated tokens before it goes.",
				r.Mode, plural(r.Refused429Tokens, "call")))
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
			lines = append(lines, fmt.Sprintf("%s made %s for %s; the API refused %s; %s failed.",
				r.Mode, plural(r.APICalls, "API call"), plural(int64(r.DistinctPrompts), "distinct prompt"),
				refusals(r), plural(int64(r.Failed), "request")))
		case i != base:
			n := results[base]
			lines = append(lines, fmt.Sprintf("%s made %s where naive made %d (%s); the API refused naive %s, %s %s; failed requests: naive %d, %s %d.",
				r.Mode, plural(r.APICalls, "API call"), n.APICalls, saving(n.APICalls, r.APICalls),
				refusals(n), r.Mode, refusals(r), n.Failed, r.Mode, r.Failed))
		}
	}
	return lines
}

// refusals are r's 429s, by limit.
func refusals(r result) string {
	return fmt.Sprintf("%d (%d for requests, %d for tokens)", r.Refused429Requests+r.Refused429Tokens,
		r.Refused429Requests, r.Refused429Tokens)
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
