// Command peers runs the same workloads on locksmith and on peer Go
// libraries against one Redis, in one process and one run, and prints them
// side by side:
//
//  1. an uncontended lock acquire+release: mean time and Redis round trips
//     per operation, for locksmith's lock, bsm/redislock and redsync, next to
//     a plain GET;
//  2. lock handoff: how soon a waiter on another client obtains a lock once
//     its holder releases it, each library waiting in its own way;
//  3. a cache stampede: servers × goroutines asking for the same cold keys at
//     once, and how many times each library calls the loader per key, for
//     locksmith's fill, rueidisaside, go-redis/cache and a naive
//     GET → load → SET;
//  4. follower wake-up: how soon a caller on another server, waiting for a
//     key being loaded, returns once the load ends, for the two libraries
//     that wait across servers (locksmith's fill and rueidisaside);
//  5. a cache hit on a warm key, for the same two, next to a plain GET.
//
// It is a module of its own, so its dependencies stay out of the library's:
//
//	cd benchmarks/peers && go run .
//
// It starts its own redis-server on a free loopback port (or uses -redis
// host:port), prints the table on stdout, and writes chart.svg (-svg) and,
// with -json, every figure as JSON.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Config sizes the workloads.
type Config struct {
	// Lock acquire+release and cache hit: iterations per library, split
	// into Blocks interleaved blocks.
	LockIterations int `json:"lock_iterations"`
	HitIterations  int `json:"hit_iterations"`
	Blocks         int `json:"blocks"`

	// Handoff: the holder releases after HandoffHoldMin plus a uniform
	// random part of HandoffHoldSpread, so releases fall at random points
	// of pollers' retry intervals.
	HandoffSamples    int           `json:"handoff_samples"`
	HandoffHoldMin    time.Duration `json:"handoff_hold_min_ns"`
	HandoffHoldSpread time.Duration `json:"handoff_hold_spread_ns"`

	// Stampede.
	Servers    int           `json:"servers"`
	Goroutines int           `json:"goroutines_per_server"`
	Keys       []int         `json:"keys"`
	Rounds     int           `json:"rounds"`
	LoadDelay  time.Duration `json:"load_delay_ns"`

	// Follower wake-up: the leader's loader returns WakeHold after the
	// follower's call started.
	WakeSamples int           `json:"wake_samples"`
	WakeHold    time.Duration `json:"wake_hold_ns"`
}

// defaultConfig is the full run.
func defaultConfig() Config {
	return Config{
		LockIterations:    2000,
		HitIterations:     5000,
		Blocks:            20,
		HandoffSamples:    200,
		HandoffHoldMin:    20 * time.Millisecond,
		HandoffHoldSpread: 250 * time.Millisecond,
		Servers:           10,
		Goroutines:        20,
		Keys:              []int{1, 10},
		Rounds:            5,
		LoadDelay:         20 * time.Millisecond,
		WakeSamples:       200,
		WakeHold:          20 * time.Millisecond,
	}
}

func (c Config) validate() error {
	switch {
	case c.LockIterations < 1, c.HitIterations < 1, c.HandoffSamples < 1, c.Servers < 1, c.Goroutines < 1,
		c.Rounds < 1, c.WakeSamples < 1:
		return errors.New("-n, -hits, -handoff, -servers, -goroutines, -rounds and -wake must be at least 1")
	case len(c.Keys) == 0:
		return errors.New("-keys needs at least one key count")
	case c.LoadDelay <= 0, c.WakeHold <= 0:
		return errors.New("-load and -wake-hold must be positive")
	}
	for _, k := range c.Keys {
		if k < 1 {
			return fmt.Errorf("-keys: %d is not a positive key count", k)
		}
	}
	return nil
}

// Results are every figure of one run.
type Results struct {
	Environment Environment      `json:"environment"`
	Config      Config           `json:"config"`
	Lock        []OpResult       `json:"lock_acquire_release"`
	Handoff     []HandoffResult  `json:"handoff"`
	Stampede    []StampedeResult `json:"stampede"`
	Wake        []WakeResult     `json:"follower_wake"`
	Hit         []OpResult       `json:"cache_hit"`
}

// Environment describes where and with what the run happened.
type Environment struct {
	Time         string            `json:"time"`
	GoVersion    string            `json:"go_version"`
	OS           string            `json:"os"`
	Arch         string            `json:"arch"`
	NumCPU       int               `json:"num_cpu"`
	GOMAXPROCS   int               `json:"gomaxprocs"`
	RedisVersion string            `json:"redis_version"`
	RedisAddr    string            `json:"redis_addr"`
	RedisOwned   bool              `json:"redis_started_by_benchmark"`
	Modules      map[string]string `json:"modules"`
}

func main() {
	if err := mainErr(); err != nil {
		fmt.Fprintln(os.Stderr, "peers:", err)
		os.Exit(1)
	}
}

func mainErr() error {
	cfg := defaultConfig()
	redisAddr := flag.String("redis", "", "use the Redis at `host:port` instead of starting a redis-server (only this run's keys are touched, and deleted at the end)")
	jsonOut := flag.String("json", "", "write every figure to this JSON `file`")
	svgOut := flag.String("svg", "chart.svg", "write the chart to this SVG `file` (empty: no chart)")
	flag.IntVar(&cfg.LockIterations, "n", cfg.LockIterations, "uncontended acquire+release iterations per library")
	flag.IntVar(&cfg.HandoffSamples, "handoff", cfg.HandoffSamples, "handoff samples per library")
	flag.IntVar(&cfg.Servers, "servers", cfg.Servers, "stampede: servers (clients, each with its own cache object)")
	flag.IntVar(&cfg.Goroutines, "goroutines", cfg.Goroutines, "stampede: goroutines per server")
	keys := flag.String("keys", "1,10", "stampede: comma-separated key counts, one stampede each")
	flag.IntVar(&cfg.Rounds, "rounds", cfg.Rounds, "stampede: rounds per key count, each on fresh keys")
	flag.DurationVar(&cfg.LoadDelay, "load", cfg.LoadDelay, "stampede: how long the loader takes")
	flag.IntVar(&cfg.WakeSamples, "wake", cfg.WakeSamples, "follower wake-up samples per library")
	flag.DurationVar(&cfg.WakeHold, "wake-hold", cfg.WakeHold, "follower wake-up: how long the load goes on after the follower's call")
	flag.IntVar(&cfg.HitIterations, "hits", cfg.HitIterations, "cache hit iterations per library")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: go run . [flags]  (from benchmarks/peers)\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	var err error
	if cfg.Keys, err = parseInts(*keys); err != nil {
		return fmt.Errorf("-keys: %w", err)
	}
	if err := cfg.validate(); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

	addr, owned := *redisAddr, false
	if addr == "" {
		srv, err := startRedis(ctx)
		if err != nil {
			return err
		}
		defer srv.Stop()
		addr, owned = srv.Addr, true
		logf("started redis-server on %s", addr)
	}
	res, err := run(ctx, addr, cfg, logf)
	if err != nil {
		return err
	}
	res.Environment.RedisOwned = owned

	printTable(os.Stdout, res)
	if *jsonOut != "" {
		if err := writeJSON(*jsonOut, res); err != nil {
			return err
		}
		logf("wrote %s", *jsonOut)
	}
	if *svgOut != "" {
		if err := writeSVG(*svgOut, res); err != nil {
			return err
		}
		logf("wrote %s", *svgOut)
	}
	return nil
}

// run runs every workload against the Redis at addr. Its keys all start
// with a prefix unique to the run, and are deleted at the end.
func run(ctx context.Context, addr string, cfg Config, logf func(string, ...any)) (*Results, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var id [6]byte
	_, _ = rand.Read(id[:])
	prefix := "locksmith-peers:" + hex.EncodeToString(id[:]) + ":"

	res := &Results{Config: cfg, Environment: environment()}
	res.Environment.RedisAddr = addr
	c := newClient(addr)
	defer func() { _ = c.Close() }()
	v, err := redisVersion(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("redis at %s: %w", addr, err)
	}
	res.Environment.RedisVersion = v
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := deleteKeys(cctx, c, prefix); err != nil {
			logf("deleting this run's keys (%s*): %v", prefix, err)
		}
	}()

	if res.Lock, err = benchLocks(ctx, addr, prefix, cfg, logf); err != nil {
		return nil, err
	}
	if res.Handoff, err = benchHandoff(ctx, addr, prefix, cfg, logf); err != nil {
		return nil, err
	}
	if res.Stampede, err = benchStampede(ctx, addr, prefix, cfg, logf); err != nil {
		return nil, err
	}
	if res.Wake, err = benchWake(ctx, addr, prefix, cfg, logf); err != nil {
		return nil, err
	}
	if res.Hit, err = benchHits(ctx, addr, prefix, cfg, logf); err != nil {
		return nil, err
	}
	return res, nil
}

func redisVersion(ctx context.Context, c client) (string, error) {
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			return v, nil
		}
	}
	return "unknown", nil
}

// deleteKeys deletes every key starting with prefix.
func deleteKeys(ctx context.Context, c client, prefix string) error {
	iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := c.Unlink(ctx, batch...).Err()
		batch = batch[:0]
		return err
	}
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 500 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := iter.Err(); err != nil {
		return err
	}
	return flush()
}

func environment() Environment {
	env := Environment{
		Time:       time.Now().UTC().Format(time.RFC3339),
		GoVersion:  runtime.Version(),
		OS:         runtime.GOOS,
		Arch:       runtime.GOARCH,
		NumCPU:     runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		Modules:    map[string]string{},
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			v := d.Version
			if d.Replace != nil {
				v = "replaced by " + d.Replace.Path
				if d.Replace.Version != "" {
					v += " " + d.Replace.Version
				}
			}
			env.Modules[d.Path] = v
		}
	}
	return env
}

func parseInts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

// slug turns a library name into a key fragment.
func slug(s string) string { return strings.NewReplacer("/", "-", " ", "-").Replace(s) }
