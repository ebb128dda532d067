package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/bsm/redislock"
	"github.com/go-redsync/redsync/v4"
	"github.com/go-redsync/redsync/v4/redis/goredis/v9"

	"github.com/locksmith-go/locksmith/lock"
)

// lockLib is a distributed lock library under test.
type lockLib struct {
	Name     string
	Settings string
	// open returns a handle on the lock named name, for one client.
	open func(c client, prefix, name string) lockHandle
}

// lockHandle obtains one lock, waiting in the library's own way while it is
// held. A handle is used by one goroutine at a time.
type lockHandle interface {
	acquire(ctx context.Context) (release func(context.Context) error, err error)
	close()
}

const (
	redislockTTL     = 10 * time.Second
	redislockBackoff = 100 * time.Millisecond
)

func lockLibs() []lockLib {
	return []lockLib{
		{
			Name: "locksmith",
			Settings: "lock.New(rdb, &lock.Options{Prefix: run prefix}): TTL 120s, PollInterval 1s (defaults); " +
				"Locker.Obtain waits for the holder's release notification (pub/sub)",
			open: func(c client, prefix, name string) lockHandle {
				return &locksmithHandle{l: lock.New(c.Client, &lock.Options{Prefix: prefix}), name: name}
			},
		},
		{
			Name: "bsm/redislock",
			Settings: fmt.Sprintf("Client.Obtain(ctx, key, %s, &Options{RetryStrategy: LinearBackoff(%s)}) "+
				"(its default is NoRetry: fail at once); polls every %s until ctx ends",
				redislockTTL, redislockBackoff, redislockBackoff),
			open: func(c client, prefix, name string) lockHandle {
				return &redislockHandle{
					c:    redislock.New(c.Client),
					key:  prefix + name,
					opts: &redislock.Options{RetryStrategy: redislock.LinearBackoff(redislockBackoff)},
				}
			},
		},
		{
			Name: "redsync",
			Settings: "one goredis/v9 pool, NewMutex(key) defaults: expiry 8s, 32 tries, " +
				"retry delay uniform in [50ms, 250ms); Mutex.LockContext polls SET NX (plus a release script per failed try)",
			open: func(c client, prefix, name string) lockHandle {
				rs := redsync.New(goredis.NewPool(c.Client))
				return &redsyncHandle{m: rs.NewMutex(prefix + name)}
			},
		},
	}
}

type locksmithHandle struct {
	l    *lock.Locker
	name string
}

func (h *locksmithHandle) acquire(ctx context.Context) (func(context.Context) error, error) {
	lk, err := h.l.Obtain(ctx, h.name)
	if err != nil {
		return nil, err
	}
	return lk.Release, nil
}

func (h *locksmithHandle) close() { _ = h.l.Close() }

type redislockHandle struct {
	c    *redislock.Client
	key  string
	opts *redislock.Options
}

func (h *redislockHandle) acquire(ctx context.Context) (func(context.Context) error, error) {
	lk, err := h.c.Obtain(ctx, h.key, redislockTTL, h.opts)
	if err != nil {
		return nil, err
	}
	return lk.Release, nil
}

func (h *redislockHandle) close() {}

type redsyncHandle struct {
	m *redsync.Mutex
}

func (h *redsyncHandle) acquire(ctx context.Context) (func(context.Context) error, error) {
	if err := h.m.LockContext(ctx); err != nil {
		return nil, err
	}
	return h.unlock, nil
}

func (h *redsyncHandle) unlock(ctx context.Context) error {
	ok, err := h.m.UnlockContext(ctx)
	if err == nil && !ok {
		err = errors.New("redsync: unlock reported the lock not held")
	}
	return err
}

func (h *redsyncHandle) close() {}

const baselineName = "go-redis GET"

// benchLocks measures an uncontended acquire+release, one goroutine, n times
// per library, against a plain GET on the same Redis, in interleaved blocks.
func benchLocks(ctx context.Context, addr, prefix string, cfg Config, logf func(string, ...any)) ([]OpResult, error) {
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()

	gc := newClient(addr)
	closers = append(closers, func() { _ = gc.Close() })
	getKey := prefix + "get"
	if err := gc.Set(ctx, getKey, "value", time.Hour).Err(); err != nil {
		return nil, fmt.Errorf("GET baseline: %w", err)
	}
	ops := []*timedOp{{
		res:        OpResult{Library: baselineName, Settings: "rdb.Get on an existing key"},
		op:         func(ctx context.Context) error { return gc.Get(ctx, getKey).Err() },
		roundTrips: gc.roundTrips,
	}}
	for _, lib := range lockLibs() {
		c := newClient(addr)
		h := lib.open(c, prefix, "uncontended")
		closers = append(closers, func() { h.close(); _ = c.Close() })
		ops = append(ops, &timedOp{
			res: OpResult{Library: lib.Name, Settings: lib.Settings},
			op: func(ctx context.Context) error {
				release, err := h.acquire(ctx)
				if err != nil {
					return err
				}
				return release(ctx)
			},
			roundTrips: c.roundTrips,
		})
	}

	out, err := interleave(ctx, ops, cfg.LockIterations, cfg.Blocks)
	if err != nil {
		return nil, err
	}
	for _, r := range out {
		logf("lock: %-16s %8.0f ns/op  %.2f round trips/op", r.Library, r.NsPerOp, r.RoundTripsPerOp)
	}
	return out, nil
}

// HandoffResult is how long a waiter on another client takes to obtain a
// lock once its holder releases it.
type HandoffResult struct {
	Library  string `json:"library"`
	Settings string `json:"settings"`
	Samples  int    `json:"samples"`
	Latency
	// WaiterCmdsPerHandoff is the mean number of commands the waiting
	// client sent per handoff, from its first attempt to obtaining the lock.
	WaiterCmdsPerHandoff float64 `json:"waiter_cmds_per_handoff"`
}

// handoffWarmup samples per library are taken and discarded first.
const handoffWarmup = 3

// handoffTimeout bounds one waiter's wait.
const handoffTimeout = 30 * time.Second

// benchHandoff measures, per library: client A holds the lock, client B
// waits for it, A releases after a random hold; the latency is from just
// before A's release call to B's obtain returning.
func benchHandoff(ctx context.Context, addr, prefix string, cfg Config, logf func(string, ...any)) ([]HandoffResult, error) {
	var out []HandoffResult
	for _, lib := range lockLibs() {
		r, err := handoff(ctx, addr, prefix, lib, cfg)
		if err != nil {
			return nil, fmt.Errorf("handoff %s: %w", lib.Name, err)
		}
		logf("handoff: %-14s median %.3f ms  p99 %.3f ms  waiter %.1f cmds/handoff",
			lib.Name, r.MedianMs, r.P99Ms, r.WaiterCmdsPerHandoff)
		out = append(out, r)
	}
	return out, nil
}

func handoff(ctx context.Context, addr, prefix string, lib lockLib, cfg Config) (HandoffResult, error) {
	res := HandoffResult{Library: lib.Name, Settings: lib.Settings}
	a, b := newClient(addr), newClient(addr)
	defer func() { _ = a.Close(); _ = b.Close() }()
	ha, hb := lib.open(a, prefix, "handoff"), lib.open(b, prefix, "handoff")
	defer ha.close()
	defer hb.close()

	type obtained struct {
		at      time.Time
		release func(context.Context) error
		err     error
	}
	var samples []time.Duration
	var waiterCmds int64
	for i := -handoffWarmup; i < cfg.HandoffSamples; i++ {
		releaseA, err := ha.acquire(ctx)
		if err != nil {
			return res, fmt.Errorf("holder: obtain: %w", err)
		}
		bctx, cancel := context.WithTimeout(ctx, handoffTimeout)
		ch := make(chan obtained, 1)
		c0 := b.cmds.Load()
		go func() {
			release, err := hb.acquire(bctx)
			ch <- obtained{at: time.Now(), release: release, err: err}
		}()
		hold := cfg.HandoffHoldMin
		if cfg.HandoffHoldSpread > 0 {
			hold += rand.N(cfg.HandoffHoldSpread)
		}
		if err := sleep(ctx, hold); err != nil {
			cancel()
			return res, err
		}
		select {
		case o := <-ch:
			cancel()
			if o.err != nil {
				return res, fmt.Errorf("waiter failed while the lock was held: %w", o.err)
			}
			return res, errors.New("waiter obtained the lock while the holder still held it")
		default:
		}
		t0 := time.Now()
		if err := releaseA(ctx); err != nil {
			cancel()
			return res, fmt.Errorf("holder: release: %w", err)
		}
		o := <-ch
		cancel()
		if o.err != nil {
			return res, fmt.Errorf("waiter: obtain: %w", o.err)
		}
		lat := o.at.Sub(t0)
		cmds := b.cmds.Load() - c0
		if err := o.release(ctx); err != nil {
			return res, fmt.Errorf("waiter: release: %w", err)
		}
		if i >= 0 {
			samples = append(samples, lat)
			waiterCmds += cmds
		}
	}
	res.Samples = len(samples)
	res.Latency = summarize(samples)
	res.WaiterCmdsPerHandoff = float64(waiterCmds) / float64(len(samples))
	return res, nil
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
