// Twitter shows the problem locksmith solves, and its solution, on the case
// that started it: a fleet of app servers caches user timelines from the
// rate-limited Twitter API in one Redis, and every request that misses before
// the cache is filled calls the API for the same data.
//
// It starts a fake Twitter API on a loopback listener, GET
// /users/{id}/timeline, limited by one token bucket for the whole fleet. Like
// the X API it states the limit on every response (x-rate-limit-limit, the
// bucket's size; x-rate-limit-remaining, its whole tokens left;
// x-rate-limit-reset, the epoch second it is full again) and refuses a call
// over it with 429 and Retry-After. It starts a fleet of app servers, each
// with its own Redis client and cache as separate processes would have, and
// sends one sequence of requests, for user ids drawn from a Zipf distribution
// (a few hot users, the rest cold), through the fleet once per mode, each
// time on an empty cache and a full budget. The modes:
//
//   - naive: cache-aside by hand. GET; on a miss, call the API and SET the
//     result. A 429 fails the request.
//   - fill: [github.com/locksmith-go/locksmith/fill.Get], whose loader calls
//     the API. A 429 fails the load.
//
// It prints for each mode the API calls, the 429s, the dedup ratio (API
// calls per distinct user requested) and the request latencies. Naive makes
// many calls per user and runs out of budget; fill makes one call per user.
//
// Usage:
//
//	go run ./examples/twitter [flags]
//
// The flags:
//
//	-servers 8         app servers in the fleet
//	-requests 2000     requests sent, spread over the servers in turn
//	-concurrency 200   requests in flight at once, over the whole fleet
//	-keys 10           distinct user ids that can be requested (see below)
//	-zipf 1.1          skew of the user ids' Zipf distribution; above 1
//	-seed 1            seed of the request sequence
//	-rate 50           API calls allowed per second, fleet-wide
//	-burst 10          API calls allowed at once after a quiet time
//	-latency 80ms      time the API takes per call
//	-ttl 10m           how long a timeline stays cached
//	-timeout 10s       the longest one request may take
//	-redis ADDR        use the Redis at ADDR (host:port) instead of an
//	                   embedded in-memory one. An empty host or port takes
//	                   the original locksmith defaults, localhost and 6379:
//	                   -redis '' and -redis : mean localhost:6379,
//	                   -redis :6380 is localhost:6380, -redis db1 is db1:6379.
//	-prefix twitter-demo:
//	                   prefix of every Redis key the demo writes. Keys under
//	                   it are deleted before each mode and at the end; no
//	                   other key is read or written.
//	-modes naive,fill  the modes to run, comma-separated, in that order
//	-json              also print the results as one JSON object, the last
//	                   line of stdout
//
// While a mode runs, a progress line is kept on stderr if stderr is a
// terminal; a file or a pipe gets none.
//
// A fleet that makes one API call per distinct user still makes that many
// calls, and with 200 requests in flight every distinct user among the first
// of them is a call at the same instant. Only as many fit in the budget as
// the bucket's burst, hence -keys 10, equal to -burst: fill then gets no 429
// whatever the timing. Raise -keys above -burst to see that deduplication
// does not create budget: fill gets 429s too, but only from distinct users,
// while naive spends the budget on duplicates.
//
// A mode is one entry of the table modes: a name, a line of help, and a
// function that builds one app server of the fleet from a serverEnv (its
// Redis client, its API client, the mode's key prefix).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	progressInterval = 100 * time.Millisecond
	cleanupTimeout   = 10 * time.Second // deleting the demo's keys at the end
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// A second Ctrl-C kills the process at once.
	context.AfterFunc(ctx, stop)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err == nil {
		return
	}
	var ue *usageError
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.As(err, &ue):
		if !ue.printed {
			fmt.Fprintln(os.Stderr, "twitter:", err)
		}
		os.Exit(2)
	}
	fmt.Fprintln(os.Stderr, "twitter:", err)
	os.Exit(1)
}

// run runs the demo with the command-line arguments args (without the
// program name), writing the report to stdout and, when stderr is a
// terminal, a progress line to it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	env, err := openRedis(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		err = errors.Join(err, env.close(cctx))
	}()

	var progressTo io.Writer // nil: no progress line
	if isTerminal(stderr) {
		progressTo = stderr
	}
	ids := requestSequence(cfg.requests, cfg.keys, cfg.zipf, cfg.seed)
	var results []result
	for _, m := range cfg.modes {
		r, err := runMode(ctx, cfg, env, m, ids, progressTo)
		if err != nil {
			return err
		}
		results = append(results, r)
	}
	return report(stdout, cfg, env, results)
}

// result is what one mode did.
type result struct {
	Mode         string     `json:"-"`
	Requests     int        `json:"requests"`
	DistinctKeys int        `json:"distinct_keys"`
	APICalls     int64      `json:"api_calls"`    // answered or refused
	RateLimited  int64      `json:"rate_limited"` // refused with 429
	Errors       int        `json:"errors"`       // requests that failed
	DedupRatio   float64    `json:"dedup_ratio"`  // API calls per distinct key
	P50ms        float64    `json:"p50_ms"`
	P99ms        float64    `json:"p99_ms"`
	WallMs       float64    `json:"wall_ms"`
	FirstError   string     `json:"first_error,omitempty"`
	FillStats    *fillStats `json:"fill_stats,omitempty"`
}

// runMode sends ids through a fresh fleet of mode m, against a fresh API, on
// an emptied cache. With progressTo not nil, it shows its progress there.
func runMode(ctx context.Context, cfg config, env *redisEnv, m mode, ids []uint64, progressTo io.Writer) (result, error) {
	if err := env.flush(ctx); err != nil {
		return result{}, err
	}
	api := startAPI(cfg.rate, cfg.burst, cfg.latency, time.Now)
	defer api.Close()
	f := newFleet(cfg, env, m, api.URL())

	var done atomic.Int64
	stop := func() {}
	if progressTo != nil {
		stop = progress(progressTo, m.name, len(ids), &done, progressInterval)
	}
	start := time.Now()
	out := drive(ctx, f.servers, ids, cfg.concurrency, cfg.timeout, &done)
	wall := time.Since(start)
	stop()

	stats := fillTotals(f.servers)
	closeErr := f.close()
	if err := ctx.Err(); err != nil {
		return result{}, fmt.Errorf("%s: interrupted: %w", m.name, err)
	}
	if closeErr != nil {
		return result{}, fmt.Errorf("%s: closing the servers: %w", m.name, closeErr)
	}
	return summarize(m.name, ids, api, out, wall, stats), nil
}

func summarize(name string, ids []uint64, api *fakeAPI, out outcome, wall time.Duration, stats *fillStats) result {
	served, refused := api.calls()
	distinct := len(distinctIDs(ids))
	slices.Sort(out.latencies)
	r := result{
		Mode:         name,
		Requests:     len(out.latencies),
		DistinctKeys: distinct,
		APICalls:     served + refused,
		RateLimited:  refused,
		Errors:       out.failed,
		DedupRatio:   round2(float64(served+refused) / float64(distinct)),
		P50ms:        millis(percentile(out.latencies, 0.50)),
		P99ms:        millis(percentile(out.latencies, 0.99)),
		WallMs:       millis(wall),
		FillStats:    stats,
	}
	if out.firstErr != nil {
		r.FirstError = out.firstErr.Error()
	}
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

// report writes the table, notes on the fill counters and on failures, and
// with -json the results as the last line.
func report(w io.Writer, cfg config, env *redisEnv, results []result) error {
	fmt.Fprintf(w, "%d servers, %d requests (%d in flight) for %d possible users (Zipf s=%g, seed %d)\n",
		cfg.servers, cfg.requests, cfg.concurrency, cfg.keys, cfg.zipf, cfg.seed)
	fmt.Fprintf(w, "API: %g calls/s, burst %d, %s per call; Redis: %s\n\n",
		cfg.rate, cfg.burst, cfg.latency, env.desc)
	rows := [][]string{{"mode", "requests", "distinct keys", "API calls", "429s", "failed",
		"dedup ratio", "p50 ms", "p99 ms", "wall ms"}}
	for _, r := range results {
		rows = append(rows, []string{r.Mode, fmt.Sprint(r.Requests), fmt.Sprint(r.DistinctKeys),
			fmt.Sprint(r.APICalls), fmt.Sprint(r.RateLimited), fmt.Sprint(r.Errors),
			fmt.Sprintf("%.2f", r.DedupRatio), fmt.Sprintf("%.1f", r.P50ms),
			fmt.Sprintf("%.1f", r.P99ms), fmt.Sprintf("%.0f", r.WallMs)})
	}
	writeTable(w, rows)
	fmt.Fprintln(w)
	for _, r := range results {
		if s := r.FillStats; s != nil {
			fmt.Fprintf(w, "%s, all servers: %d loads, %d hits, %d misses, %d merged in-process, %d merged from another server\n",
				r.Mode, s.Loads, s.Hits, s.Misses, s.LocalMerges, s.RemoteMerges)
		}
		if r.Errors > 0 {
			fmt.Fprintf(w, "%s: %d of %d requests failed; the first: %s\n", r.Mode, r.Errors, r.Requests, r.FirstError)
		}
	}
	if !cfg.json {
		return nil
	}
	b, err := resultsJSON(results)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// resultsJSON encodes results as one object keyed by mode, in run order.
func resultsJSON(results []result) ([]byte, error) {
	b := []byte{'{'}
	for i, r := range results {
		if i > 0 {
			b = append(b, ',')
		}
		v, err := json.Marshal(r)
		if err != nil {
			return nil, err
		}
		b = strconv.AppendQuote(b, r.Mode)
		b = append(append(b, ':'), v...)
	}
	return append(b, '}'), nil
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
