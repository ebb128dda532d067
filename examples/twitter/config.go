package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/locksmith-go/locksmith/examples/internal/demo"
)

// config is the demo's settings, from its flags.
type config struct {
	// servers is the size of the fleet a run builds; fleets are the sizes
	// -servers lists, each run in turn (a sweep) when there are several.
	servers                     int
	fleets                      fleetsFlag
	requests, concurrency, keys int
	zipf                        float64
	seed                        uint64
	rate                        float64
	burst                       int
	// tokens is the number of app tokens (-tokens), each limited by the
	// API on its own; 0 for one limit shared by every call.
	tokens int
	// apiConcurrency is the API's cap on calls in flight; 0 for none.
	apiConcurrency                int
	latency, ttl, timeout, window time.Duration
	// timeoutComputed says that -timeout was not given: run computes the
	// deadline (see requestDeadline).
	timeoutComputed bool
	redis           demo.RedisFlag
	prefix          string
	json            bool
	modes           modesFlag
	// hidden is the API's hidden limit, if any (-hidden-limit): it then
	// states none, and -rate is only what the fleet is told.
	hidden hiddenFlag
}

// parseFlags parses and checks args; on -h it prints the usage to stderr and
// returns flag.ErrHelp.
func parseFlags(args []string, stderr io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("twitter", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: go run ./examples/twitter [flags]\n\n"+
			"Compares ways (-modes) for a fleet of app servers to cache the\n"+
			"timelines of a rate-limited fake Twitter API.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	cfg.fleets = fleetsFlag{8}
	fs.Var(&cfg.fleets, "servers", "app servers in the fleet, each with its own Redis client; a comma-separated\n"+
		"list (8,32,64) runs the modes once per fleet size and prints calls and latencies\nagainst the size")
	fs.IntVar(&cfg.requests, "requests", 2000, "requests sent, spread over the servers in turn")
	fs.IntVar(&cfg.concurrency, "concurrency", 200, "requests in flight at once, over the whole fleet")
	fs.IntVar(&cfg.keys, "keys", 10, "distinct user ids that can be requested; while it is at most -burst,\nfill stays within the rate limit whatever the timing")
	fs.Float64Var(&cfg.zipf, "zipf", 1.1, "skew of the user ids' Zipf distribution; above 1")
	fs.Uint64Var(&cfg.seed, "seed", 1, "seed of the request sequence")
	fs.Float64Var(&cfg.rate, "rate", 50, "API calls allowed per second, fleet-wide")
	fs.IntVar(&cfg.burst, "burst", 10, "API calls allowed at once after a quiet time")
	fs.IntVar(&cfg.tokens, "tokens", 0, "app tokens the fleet holds, the API limiting each on its own at -rate and\n"+
		"-burst; the modes with a budget spread their calls over them as a pool;\n0: one limit for every call, no token")
	fs.IntVar(&cfg.apiConcurrency, "api-concurrency", 0, "the API refuses (429, Retry-After 1) a call that arrives while this many are\n"+
		"in flight (of its token, with -tokens), as GitHub's secondary limit does past\n100; 0 for no such cap. Mode "+concMode+" caps the fleet's calls in flight at it")
	fs.DurationVar(&cfg.latency, "latency", 80*time.Millisecond, "time the API takes per call")
	fs.DurationVar(&cfg.ttl, "ttl", 10*time.Minute, "how long a timeline stays cached")
	fs.DurationVar(&cfg.timeout, "timeout", 0, "the longest one request may take; 0 computes it from the distinct users\n"+
		"requested and -rate: "+deadlineRule)
	fs.DurationVar(&cfg.window, "batch-window", 50*time.Millisecond, "how long the fleet's gatherer of mode fill+batch collects the users\nmissed before its API call; every miss of the mode waits that long")
	fs.Var(&cfg.redis, "redis", "use the Redis at `host:port` instead of an embedded in-memory one;\n"+
		"an empty host or port means localhost or 6379 (the original locksmith\n"+
		"defaults): -redis '' is localhost:6379, -redis :6380 localhost:6380")
	fs.StringVar(&cfg.prefix, "prefix", "twitter-demo:", "prefix of every Redis key written; keys under it are deleted before\neach mode and at the end")
	fs.BoolVar(&cfg.json, "json", false, "print the settings and results as one JSON object, and nothing else,\non stdout")
	fs.Var(&cfg.hidden, "hidden-limit", "the API's real limit, hidden: `steps` of calls/s and how long each lasts,\n"+
		"the last holding (40/10s,60/10s,20/10s). The API then states no limit and\n"+
		"refuses a call over it with a bare 429; -rate is only what the fleet is told.\n"+
		"Without -modes, runs "+hiddenModes.String())
	cfg.modes = defaultModes(false)
	fs.Var(&cfg.modes, "modes", "the modes to run, in that order: comma-separated `names` among"+modesHelp())
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cfg, err
		}
		return cfg, &demo.UsageError{Err: err, Printed: true}
	}
	picked := false
	fs.Visit(func(f *flag.Flag) { picked = picked || f.Name == "modes" })
	if !picked && len(cfg.hidden) > 0 {
		cfg.modes = defaultModes(true)
	}
	cfg.servers = cfg.fleets[0]
	err := cfg.validate()
	if fs.NArg() > 0 {
		err = errors.Join(err, fmt.Errorf("unexpected arguments: %q", fs.Args()))
	}
	if err != nil {
		return cfg, &demo.UsageError{Err: err}
	}
	return cfg, nil
}

// validate reports every flag out of range, one per line.
func (c *config) validate() error {
	checks := []struct {
		bad bool
		msg string
	}{
		{slices.Min(c.fleets) < 1, fmt.Sprintf("-servers must be at least 1 (got %d)", slices.Min(c.fleets))},
		{c.requests < 1, fmt.Sprintf("-requests must be at least 1 (got %d)", c.requests)},
		{c.concurrency < 1, fmt.Sprintf("-concurrency must be at least 1 (got %d)", c.concurrency)},
		{c.keys < 1, fmt.Sprintf("-keys must be at least 1 (got %d)", c.keys)},
		{!(c.zipf > 1) || math.IsInf(c.zipf, 0), fmt.Sprintf("-zipf must be a finite number above 1 (got %g)", c.zipf)},
		{!(c.rate > 0) || math.IsInf(c.rate, 0), fmt.Sprintf("-rate must be a finite number above 0 (got %g)", c.rate)},
		{c.burst < 1, fmt.Sprintf("-burst must be at least 1 (got %d)", c.burst)},
		{c.tokens < 0 || c.tokens > maxTokens, fmt.Sprintf("-tokens must be between 0 and %d (got %d)", maxTokens, c.tokens)},
		{c.apiConcurrency < 0, fmt.Sprintf("-api-concurrency must not be negative (got %d)", c.apiConcurrency)},
		{c.apiConcurrency == 0 && slices.ContainsFunc(c.modes, func(m mode) bool { return m.name == concMode }),
			"mode " + concMode + " needs -api-concurrency: the cap it keeps the fleet under"},
		{c.latency < 0, fmt.Sprintf("-latency must not be negative (got %s)", c.latency)},
		{c.ttl < time.Second, fmt.Sprintf("-ttl must be at least 1s (got %s)", c.ttl)},
		{c.timeout < 0, fmt.Sprintf("-timeout must not be negative (got %s)", c.timeout)},
		{c.window <= 0, fmt.Sprintf("-batch-window must be above 0 (got %s)", c.window)},
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

// Without -timeout, each request's deadline is what the API's rate needs
// for one call per distinct user, plus slack.
const (
	maxTokens     = 1000 // the most -tokens
	minDeadline   = 10 * time.Second
	maxDeadline   = 24 * time.Hour
	deadlineSlack = 5 * time.Second
	deadlineRule  = "distinct users ÷ rate (× -tokens, if any; with -api-concurrency, × latency ÷ it\nif longer) + latency + 5s, in whole seconds, at least 10s"
)

// requestDeadline is the deadline of each request when -timeout is not
// given: long enough for a fleet that makes one call per distinct user, at
// the API's rate, to answer every request, whichever mode it runs.
func requestDeadline(cfg config, distinct int) time.Duration {
	secs := float64(distinct) / (cfg.rate * float64(max(cfg.tokens, 1)))
	if cfg.apiConcurrency > 0 {
		// No more than apiConcurrency calls of latency each at once (per
		// token, with -tokens).
		secs = max(secs, float64(distinct)*cfg.latency.Seconds()/float64(cfg.apiConcurrency*max(cfg.tokens, 1)))
	}
	secs = min(secs, maxDeadline.Seconds())
	d := time.Duration(secs*float64(time.Second)) + cfg.latency + deadlineSlack
	d = (d + time.Second - 1).Truncate(time.Second)
	return min(max(minDeadline, d), maxDeadline)
}

// hiddenModes are the modes a run against a hidden limit runs without
// -modes.
var hiddenModes = defaultModes(true)

// defaultModes are the modes a run without -modes runs: every mode but the
// extra ones (fill+conc, fill+adaptive); against a hidden limit, fill+budget
// and fill+adaptive.
func defaultModes(hidden bool) modesFlag {
	var picked modesFlag
	for _, m := range modes {
		if hidden && (m.name == "fill+budget" || m.name == adaptiveMode) || !hidden && !m.extra {
			picked = append(picked, m)
		}
	}
	return picked
}

// fleetsFlag is the -servers flag: one fleet size, or several to sweep.
type fleetsFlag []int

func (f *fleetsFlag) String() string {
	sizes := make([]string, len(*f))
	for i, n := range *f {
		sizes[i] = strconv.Itoa(n)
	}
	return strings.Join(sizes, ",")
}

func (f *fleetsFlag) Set(s string) error {
	var sizes fleetsFlag
	for size := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(size))
		if err != nil {
			return fmt.Errorf("%q is not a number of servers", size)
		}
		sizes = append(sizes, n)
	}
	*f = sizes
	return nil
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
		if m.extra {
			b.WriteString(" (runs only when named)")
		}
	}
	return b.String()
}
