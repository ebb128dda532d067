package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/go-redis/cache/v9"
	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
)

// valueTTL is how long every library caches a stampede's value.
const valueTTL = time.Minute

// fillLib is a cache-aside implementation under test.
type fillLib struct {
	Name     string
	Settings string
	// Follower says what the follower figure of this library measures.
	Follower string
	// open connects one server's cache object, with a client of its own, to
	// the Redis at addr.
	open func(addr, prefix string) (filler, error)
}

// filler is one server's cache object.
type filler interface {
	get(ctx context.Context, key string, load func(context.Context) (string, error)) (string, error)
	// roundTrips returns the commands the server has sent to Redis so far.
	roundTrips() int64
	// stats returns the library's own counters, if it keeps any.
	stats() map[string]uint64
	// close closes the cache object and its client.
	close()
}

const (
	followerWoken = "time from the loader returning to a caller on another server returning; " +
		"it is woken by a push from Redis (locksmith: the loader's server publishes the value; " +
		"rueidisaside: the loader's server's SET invalidates the key in the caller's client-side cache)"
	followerLoaded = "time from the first load's end to a caller on another server returning; " +
		"those callers do not wait for another server, they load themselves"
)

// fleetWide tells whether lib's callers wait for a load on another server
// instead of loading themselves.
func fleetWide(lib fillLib) bool { return lib.Follower == followerWoken }

func fillLibs() []fillLib {
	return []fillLib{
		{
			Name: "locksmith",
			Settings: "fill.New(rdb, &fill.Options{Prefix: run prefix, TTL: 1m}), other options default; " +
				"fill.Get merges callers in-process, then across servers (lock + pub/sub)",
			Follower: followerWoken,
			open: func(addr, prefix string) (filler, error) {
				c := newClient(addr)
				return &locksmithFill{client: c, c: fill.New(c.Client, &fill.Options{Prefix: prefix, TTL: valueTTL})}, nil
			},
		},
		{
			Name:     "rueidisaside",
			Settings: asideSettings,
			Follower: followerWoken,
			open:     openAside,
		},
		{
			Name:     "go-redis/cache",
			Settings: "cache.New(&cache.Options{Redis: rdb}) (no local cache); Cache.Once with TTL 1m; merges callers in-process only",
			Follower: followerLoaded,
			open: func(addr, prefix string) (filler, error) {
				c := newClient(addr)
				return &goRedisCache{client: c, c: cache.New(&cache.Options{Redis: c.Client}), prefix: prefix}, nil
			},
		},
		{
			Name:     "naive",
			Settings: "GET; on a miss load, then SET with TTL 1m; no merging",
			Follower: followerLoaded,
			open: func(addr, prefix string) (filler, error) {
				return &naiveFill{client: newClient(addr), prefix: prefix}, nil
			},
		},
	}
}

type locksmithFill struct {
	client
	c *fill.Cache
}

func (f *locksmithFill) get(ctx context.Context, key string, load func(context.Context) (string, error)) (string, error) {
	return fill.Get(ctx, f.c, key, load)
}

func (f *locksmithFill) stats() map[string]uint64 {
	s := f.c.Stats()
	return map[string]uint64{
		"hits": s.Hits, "local_hits": s.LocalHits, "misses": s.Misses, "loads": s.Loads,
		"local_merges": s.LocalMerges, "remote_merges": s.RemoteMerges,
		"load_errors": s.LoadErrors, "corrupt": s.Corrupt, "redis_errors": s.RedisErrors,
		"stale_stores": s.StaleStores,
	}
}

func (f *locksmithFill) close() { _ = f.c.Close(); _ = f.client.Close() }

type goRedisCache struct {
	client
	c      *cache.Cache
	prefix string
}

func (f *goRedisCache) get(ctx context.Context, key string, load func(context.Context) (string, error)) (string, error) {
	var v string
	err := f.c.Once(&cache.Item{
		Ctx:   ctx,
		Key:   f.prefix + key,
		Value: &v,
		TTL:   valueTTL,
		Do:    func(it *cache.Item) (any, error) { return load(it.Context()) },
	})
	return v, err
}

func (f *goRedisCache) stats() map[string]uint64 { return nil }
func (f *goRedisCache) close()                   { _ = f.client.Close() }

type naiveFill struct {
	client
	prefix string
}

func (f *naiveFill) get(ctx context.Context, key string, load func(context.Context) (string, error)) (string, error) {
	v, err := f.Get(ctx, f.prefix+key).Result()
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, redis.Nil) {
		return "", err
	}
	if v, err = load(ctx); err != nil {
		return "", err
	}
	return v, f.Set(ctx, f.prefix+key, v, valueTTL).Err()
}

func (f *naiveFill) stats() map[string]uint64 { return nil }
func (f *naiveFill) close()                   { _ = f.client.Close() }

// StampedeResult is how often one library calls the loader when every caller
// on every server asks for the same cold keys at once.
type StampedeResult struct {
	Library    string `json:"library"`
	Settings   string `json:"settings"`
	Servers    int    `json:"servers"`
	Goroutines int    `json:"goroutines_per_server"`
	Keys       int    `json:"keys"`
	Rounds     int    `json:"rounds"`
	// CallersPerKey is how many calls ask for each key at once.
	CallersPerKey  int     `json:"callers_per_key"`
	LoadsPerKey    float64 `json:"loads_per_key_mean"`
	LoadsPerKeyMin int     `json:"loads_per_key_min"`
	LoadsPerKeyMax int     `json:"loads_per_key_max"`
	// Follower summarizes, over every caller on a server other than the one
	// whose load ended first, the time from that load's end to the call
	// returning; FollowerMeaning says what that is for this library.
	Follower        Latency           `json:"follower"`
	FollowerSamples int               `json:"follower_samples"`
	FollowerMeaning string            `json:"follower_meaning"`
	LibraryStats    map[string]uint64 `json:"library_stats,omitempty"`
}

// benchStampede runs the stampede for every library and every key count.
func benchStampede(ctx context.Context, addr, prefix string, cfg Config, logf func(string, ...any)) ([]StampedeResult, error) {
	var out []StampedeResult
	for _, k := range cfg.Keys {
		for _, lib := range fillLibs() {
			r, err := stampede(ctx, addr, prefix, lib, k, cfg)
			if err != nil {
				return nil, fmt.Errorf("stampede %s K=%d: %w", lib.Name, k, err)
			}
			logf("stampede K=%-2d %-14s %6.2f loads/key  follower median %.3f ms  p99 %.3f ms",
				k, lib.Name, r.LoadsPerKey, r.Follower.MedianMs, r.Follower.P99Ms)
			out = append(out, r)
		}
	}
	return out, nil
}

// stampede runs one warm-up round (connections dialled, pub/sub connected),
// then cfg.Rounds counted rounds, each on fresh keys.
func stampede(ctx context.Context, addr, prefix string, lib fillLib, keys int, cfg Config) (StampedeResult, error) {
	res := StampedeResult{
		Library: lib.Name, Settings: lib.Settings,
		Servers: cfg.Servers, Goroutines: cfg.Goroutines, Keys: keys, Rounds: cfg.Rounds,
		CallersPerKey:   cfg.Servers * cfg.Goroutines,
		FollowerMeaning: lib.Follower,
	}
	servers := make([]filler, cfg.Servers)
	for s := range servers {
		f, err := lib.open(addr, prefix)
		if err != nil {
			return res, err
		}
		defer f.close()
		servers[s] = f
	}
	base := sumStats(servers)
	var followers []time.Duration
	var loads []int
	for round := -1; round < cfg.Rounds; round++ {
		names := make([]string, keys)
		for i := range names {
			names[i] = fmt.Sprintf("stampede:%s:K%d:r%d:%d", slug(lib.Name), keys, round, i)
		}
		rr, err := stampedeRound(ctx, servers, names, cfg)
		if err != nil {
			return res, err
		}
		if round < 0 {
			base = sumStats(servers)
			continue
		}
		followers = append(followers, rr.followers...)
		loads = append(loads, rr.loads...)
	}
	total := 0
	for _, n := range loads {
		total += n
	}
	res.LoadsPerKey = float64(total) / float64(len(loads))
	res.LoadsPerKeyMin, res.LoadsPerKeyMax = slices.Min(loads), slices.Max(loads)
	res.Follower = summarize(followers)
	res.FollowerSamples = len(followers)
	if after := sumStats(servers); after != nil {
		res.LibraryStats = make(map[string]uint64, len(after))
		for k, v := range after {
			res.LibraryStats[k] = v - base[k]
		}
	}
	return res, nil
}

func sumStats(servers []filler) map[string]uint64 {
	var sum map[string]uint64
	for _, f := range servers {
		st := f.stats()
		if st == nil {
			continue
		}
		if sum == nil {
			sum = make(map[string]uint64, len(st))
		}
		for k, v := range st {
			sum[k] += v
		}
	}
	return sum
}

type roundResult struct {
	loads     []int           // per key
	followers []time.Duration // callers on other servers than the first load's
}

// stampedeRound has every goroutine of every server ask for every key at
// once, and records each load's end and each call's return.
func stampedeRound(ctx context.Context, servers []filler, keys []string, cfg Config) (roundResult, error) {
	type loadEnd struct {
		server int
		at     time.Time
	}
	type callEnd struct {
		server int
		key    int
		at     time.Time
		val    string
		err    error
	}
	var mu sync.Mutex
	ends := make([][]loadEnd, len(keys))
	calls := make([]callEnd, len(servers)*cfg.Goroutines*len(keys))
	start := make(chan struct{})
	var wg sync.WaitGroup
	i := 0
	for s, f := range servers {
		for range cfg.Goroutines {
			for k, key := range keys {
				load := func(ctx context.Context) (string, error) {
					if err := sleep(ctx, cfg.LoadDelay); err != nil {
						return "", err
					}
					end := time.Now()
					mu.Lock()
					ends[k] = append(ends[k], loadEnd{server: s, at: end})
					mu.Unlock()
					return "value of " + key, nil
				}
				slot := &calls[i]
				i++
				wg.Go(func() {
					<-start
					v, err := f.get(ctx, key, load)
					*slot = callEnd{server: s, key: k, at: time.Now(), val: v, err: err}
				})
			}
		}
	}
	close(start)
	wg.Wait()

	var rr roundResult
	for _, c := range calls {
		if c.err != nil {
			return rr, fmt.Errorf("server %d, key %q: %w", c.server, keys[c.key], c.err)
		}
		if want := "value of " + keys[c.key]; c.val != want {
			return rr, fmt.Errorf("server %d, key %q: got %q, want %q", c.server, keys[c.key], c.val, want)
		}
	}
	first := make([]loadEnd, len(keys))
	for k, e := range ends {
		if len(e) == 0 {
			return rr, fmt.Errorf("key %q: nobody loaded it", keys[k])
		}
		first[k] = slices.MinFunc(e, func(a, b loadEnd) int { return a.at.Compare(b.at) })
		rr.loads = append(rr.loads, len(e))
	}
	for _, c := range calls {
		if f := first[c.key]; c.server != f.server {
			rr.followers = append(rr.followers, c.at.Sub(f.at))
		}
	}
	return rr, nil
}
