package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/locksmith-go/locksmith/examples/internal/demo"
)

// config is the demo's settings, from its flags.
type config struct {
	servers, requests, concurrency, prompts int
	zipf                                    float64
	seed                                    uint64
	rpm, tpm                                int64
	minute                                  time.Duration
	tokensMedian, tokensSigma               float64
	estimateError                           float64
	latency, ttl, timeout                   time.Duration
	// timeoutComputed says that -timeout was not given: run computes the
	// deadline (see requestDeadline).
	timeoutComputed bool
	redis           demo.RedisFlag
	prefix          string
	json            bool
	modes           modesFlag
}

// tokenModel is the token use of the completions of cfg's API.
func (c config) tokenModel() tokenModel {
	return tokenModel{median: c.tokensMedian, sigma: c.tokensSigma, seed: c.seed, max: c.tpm}
}

// parseFlags parses and checks args; on -h it prints the usage to stderr and
// returns flag.ErrHelp.
func parseFlags(args []string, stderr io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("llm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: go run ./examples/llm [flags]\n\n"+
			"Compares ways (-modes) for a fleet of app servers to cache the answers\n"+
			"of a fake completion API limited in requests and tokens per minute.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.IntVar(&cfg.servers, "servers", 8, "app servers in the fleet, each with its own Redis client")
	fs.IntVar(&cfg.requests, "requests", 2000, "requests sent, spread over the servers in turn")
	fs.IntVar(&cfg.concurrency, "concurrency", 100, "requests in flight at once, over the whole fleet")
	fs.IntVar(&cfg.prompts, "prompts", 400, "distinct prompts that can be requested")
	fs.Float64Var(&cfg.zipf, "zipf", 1.1, "skew of the prompts' Zipf distribution; above 1")
	fs.Uint64Var(&cfg.seed, "seed", 1, "seed of the request sequence and of the completions' token use")
	fs.Int64Var(&cfg.rpm, "rpm", 500, "the API's limit in requests per minute, fleet-wide")
	fs.Int64Var(&cfg.tpm, "tpm", 200000, "the API's limit in tokens per minute, fleet-wide")
	fs.DurationVar(&cfg.minute, "minute", 6*time.Second, "how long the API's minute lasts: the limits are per -minute, so that a\nrun of minutes of traffic takes seconds")
	fs.Float64Var(&cfg.tokensMedian, "tokens-median", 1000, "median tokens of a completion (log-normal, drawn per prompt)")
	fs.Float64Var(&cfg.tokensSigma, "tokens-sigma", 1, "shape of the completions' log-normal token use: the sd of its log")
	fs.Float64Var(&cfg.estimateError, "estimate-error", 0.5, "the client's estimate of a completion's tokens is the true count times\na factor uniform in [1-e, 1+e]; from 0 to 1")
	fs.DurationVar(&cfg.latency, "latency", 100*time.Millisecond, "time the API takes per completion (a 429 comes at once)")
	fs.DurationVar(&cfg.ttl, "ttl", 10*time.Minute, "how long a completion stays cached")
	fs.DurationVar(&cfg.timeout, "timeout", 0, "the longest one request may take; 0 computes it:\n"+deadlineRule)
	fs.Var(&cfg.redis, "redis", "use the Redis at `host:port` instead of an embedded in-memory one;\n"+
		"an empty host or port means localhost or 6379")
	fs.StringVar(&cfg.prefix, "prefix", "llm-demo:", "prefix of every Redis key written; keys under it are deleted before\neach mode and at the end")
	fs.BoolVar(&cfg.json, "json", false, "print the settings and results as one JSON object, and nothing else,\non stdout")
	cfg.modes = slices.Clone(modes)
	fs.Var(&cfg.modes, "modes", "the modes to run, in that order: comma-separated `names` among"+modesHelp())
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cfg, err
		}
		return cfg, &demo.UsageError{Err: err, Printed: true}
	}
	err := cfg.validate()
	if fs.NArg() > 0 {
		err = errors.Join(err, fmt.Errorf("unexpected arguments: %q", fs.Args()))
	}
	if err != nil {
		return cfg, &demo.UsageError{Err: err}
	}
	return cfg, nil
}

// finite reports whether x is a number and not infinite.
func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// validate reports every flag out of range, one per line.
func (c *config) validate() error {
	checks := []struct {
		bad bool
		msg string
	}{
		{c.servers < 1, fmt.Sprintf("-servers must be at least 1 (got %d)", c.servers)},
		{c.requests < 1, fmt.Sprintf("-requests must be at least 1 (got %d)", c.requests)},
		{c.concurrency < 1, fmt.Sprintf("-concurrency must be at least 1 (got %d)", c.concurrency)},
		{c.prompts < 1, fmt.Sprintf("-prompts must be at least 1 (got %d)", c.prompts)},
		{!(c.zipf > 1) || !finite(c.zipf), fmt.Sprintf("-zipf must be a finite number above 1 (got %g)", c.zipf)},
		{c.rpm < 1, fmt.Sprintf("-rpm must be at least 1 (got %d)", c.rpm)},
		{c.tpm < 1, fmt.Sprintf("-tpm must be at least 1 (got %d)", c.tpm)},
		{c.minute < time.Millisecond, fmt.Sprintf("-minute must be at least 1ms (got %s)", c.minute)},
		{c.rpm >= 1 && c.minute/time.Duration(c.rpm) < time.Microsecond,
			fmt.Sprintf("-rpm %d per -minute %s is more than one request per microsecond", c.rpm, c.minute)},
		{!(c.tokensMedian >= 1) || !finite(c.tokensMedian), fmt.Sprintf("-tokens-median must be a finite number of at least 1 (got %g)", c.tokensMedian)},
		{!(c.tokensSigma >= 0) || !finite(c.tokensSigma), fmt.Sprintf("-tokens-sigma must be a finite number of at least 0 (got %g)", c.tokensSigma)},
		{!(c.estimateError >= 0 && c.estimateError <= 1), fmt.Sprintf("-estimate-error must lie from 0 to 1 (got %g)", c.estimateError)},
		{c.latency < 0, fmt.Sprintf("-latency must not be negative (got %s)", c.latency)},
		{c.ttl < time.Second, fmt.Sprintf("-ttl must be at least 1s (got %s)", c.ttl)},
		{c.timeout < 0, fmt.Sprintf("-timeout must not be negative (got %s)", c.timeout)},
		{c.prefix == "", "-prefix must not be empty: the demo deletes every key under it"},
		{strings.ContainsAny(c.prefix, "{}"), fmt.Sprintf("-prefix must not contain '{' or '}' (got %q)", c.prefix)},
	}
	var errs []error
	for _, ch := range checks {
		if ch.bad {
			errs = append(errs, errors.New(ch.msg))
		}
	}
	return errors.Join(errs...)
}

// Without -timeout, each request's deadline is what the API's limits need
// for one call per distinct prompt, plus slack.
const (
	minDeadline   = 10 * time.Second
	maxDeadline   = 24 * time.Hour
	deadlineSlack = 5 * time.Second
	deadlineRule  = "the -minutes the API's limits need for one call per distinct\n" +
		"prompt requested (the larger of its calls ÷ -rpm and its tokens ÷ -tpm)\n" +
		"+ -latency + 5s, in whole seconds, at least 10s"
)

// requestDeadline is the deadline of each request when -timeout is not
// given: long enough for a fleet that makes one call per distinct prompt
// (distinct calls, tokens in all), within both of the API's limits, to
// answer every request, whichever mode it runs.
func requestDeadline(cfg config, distinct int, tokens int64) time.Duration {
	minutes := max(float64(distinct)/float64(cfg.rpm), float64(tokens)/float64(cfg.tpm))
	secs := min(minutes*cfg.minute.Seconds(), maxDeadline.Seconds())
	d := time.Duration(secs*float64(time.Second)) + cfg.latency + deadlineSlack
	d = (d + time.Second - 1).Truncate(time.Second)
	return min(max(minDeadline, d), maxDeadline)
}

// modesFlag is the -modes flag: the modes to run, in order.
type modesFlag []mode

func (f *modesFlag) String() string {
	names := make([]string, len(*f))
	for i, m := range *f {
		names[i] = m.name
	}
	return strings.Join(names, ",")
}

func (f *modesFlag) Set(s string) error {
	var picked modesFlag
	for name := range strings.SplitSeq(s, ",") {
		name = strings.TrimSpace(name)
		i := slices.IndexFunc(modes, func(m mode) bool { return m.name == name })
		if i < 0 {
			all := modesFlag(modes)
			return fmt.Errorf("no mode %q; the modes are %s", name, all.String())
		}
		if slices.ContainsFunc(picked, func(m mode) bool { return m.name == name }) {
			return fmt.Errorf("mode %q given twice", name)
		}
		picked = append(picked, modes[i])
	}
	*f = picked
	return nil
}

// modesHelp lists the modes, one a line, for -h.
func modesHelp() string {
	width := 0
	for _, m := range modes {
		width = max(width, len(m.name))
	}
	var b strings.Builder
	for _, m := range modes {
		fmt.Fprintf(&b, "\n  %-*s  %s", width, m.name, m.doc)
	}
	return b.String()
}
