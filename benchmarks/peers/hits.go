package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/locksmith-go/locksmith/fill"
)

// errWarmKeyLoaded is the loader's error in the cache hit workload: its key
// is warm, so no call may load it.
var errWarmKeyLoaded = errors.New("loader called on a warm key")

// localLib is locksmith with its in-process tier (Options.Local), in the
// cache hit workload only: a hit served from memory, as rueidisaside's are.
var localLib = fillLib{
	Name: "locksmith-local",
	Settings: "fill.New(rdb, &fill.Options{Prefix: run prefix, TTL: 1m, Local: &fill.LocalOptions{}}): Size 10000, " +
		"MaxStaleness 1s (defaults); hits are served from process memory while the tier's heartbeat, published " +
		"through Redis every 200ms, comes back; stores and deletes anywhere evict copies by pub/sub",
	Follower: followerWoken,
	open: func(addr, prefix string) (filler, error) {
		c := newClient(addr)
		return &locksmithFill{client: c, c: fill.New(c.Client, &fill.Options{Prefix: prefix, TTL: valueTTL,
			Local: &fill.LocalOptions{}})}, nil
	},
}

// localWait bounds the wait for locksmith-local's first hit from memory:
// the tier serves copies once its first heartbeat has come back.
const localWait = 10 * time.Second

// benchHits measures a cache hit: one goroutine reading a warm key over and
// over, for each library whose callers wait across servers and for
// locksmith with its local tier, next to a plain GET on the same Redis, in
// interleaved blocks.
func benchHits(ctx context.Context, addr, prefix string, cfg Config, logf func(string, ...any)) ([]OpResult, error) {
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()

	gc := newClient(addr)
	closers = append(closers, func() { _ = gc.Close() })
	getKey := prefix + "hit:get"
	if err := gc.Set(ctx, getKey, "value of hit:get", time.Hour).Err(); err != nil {
		return nil, fmt.Errorf("GET baseline: %w", err)
	}
	ops := []*timedOp{{
		res:        OpResult{Library: baselineName, Settings: "rdb.Get on an existing key"},
		op:         func(ctx context.Context) error { return gc.Get(ctx, getKey).Err() },
		roundTrips: gc.roundTrips,
	}}
	var libs []fillLib
	for _, lib := range fillLibs() {
		if fleetWide(lib) {
			libs = append(libs, lib)
		}
	}
	for _, lib := range append(libs, localLib) {
		f, err := lib.open(addr, prefix)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", lib.Name, err)
		}
		closers = append(closers, f.close)
		key := "hit:" + slug(lib.Name)
		want := "value of " + key
		if _, err := f.get(ctx, key, func(context.Context) (string, error) { return want, nil }); err != nil {
			return nil, fmt.Errorf("%s: filling the key: %w", lib.Name, err)
		}
		miss := func(context.Context) (string, error) { return "", errWarmKeyLoaded }
		if lib.Name == localLib.Name {
			if err := waitLocalHit(ctx, f, key, miss); err != nil {
				return nil, fmt.Errorf("%s: %w", lib.Name, err)
			}
		}
		ops = append(ops, &timedOp{
			res: OpResult{Library: lib.Name, Settings: lib.Settings},
			op: func(ctx context.Context) error {
				v, err := f.get(ctx, key, miss)
				if err == nil && v != want {
					err = fmt.Errorf("got %q; want %q", v, want)
				}
				return err
			},
			roundTrips: f.roundTrips,
		})
	}

	out, err := interleave(ctx, ops, cfg.HitIterations, cfg.Blocks)
	if err != nil {
		return nil, fmt.Errorf("cache hit: %w", err)
	}
	for _, r := range out {
		logf("hit: %-16s %8.0f ns/op  %.2f round trips/op", r.Library, r.NsPerOp, r.RoundTripsPerOp)
	}
	return out, nil
}

// waitLocalHit reads key until a read is served from locksmith's local
// tier.
func waitLocalHit(ctx context.Context, f filler, key string, load func(context.Context) (string, error)) error {
	deadline := time.Now().Add(localWait)
	for f.stats()["local_hits"] == 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("no hit from the local tier within %v", localWait)
		}
		if _, err := f.get(ctx, key, load); err != nil {
			return err
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}
