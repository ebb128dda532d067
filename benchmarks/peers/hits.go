package main

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// errWarmKeyLoaded is the loader's error in the cache hit workload: its key
// is warm, so no call may load it.
var errWarmKeyLoaded = errors.New("loader called on a warm key")

// benchHits measures a cache hit: one goroutine reading a warm key over and
// over, for each library whose callers wait across servers, next to a plain
// GET on the same Redis, in interleaved blocks.
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
	for _, lib := range fillLibs() {
		if !fleetWide(lib) {
			continue
		}
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
