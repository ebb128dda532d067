package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// WakeResult is how soon a caller on one server, waiting for a key another
// server is loading, returns once that load ends.
type WakeResult struct {
	Library  string `json:"library"`
	Settings string `json:"settings"`
	Samples  int    `json:"samples"`
	Latency
	// FollowerRoundTrips is the mean number of commands the follower's
	// client sent per sample, from its call to its return.
	FollowerRoundTrips float64 `json:"follower_round_trips"`
}

// wakeWarmup samples per library are taken and discarded first.
const wakeWarmup = 3

// wakeTimeout bounds one sample.
const wakeTimeout = 30 * time.Second

// errFollowerLoaded is the follower's loader's error: it must wait for the
// leader's load, never run its own.
var errFollowerLoaded = errors.New("the follower ran the loader while another server was loading the key")

// benchWake measures follower wake-up for each library whose callers wait
// for a load on another server.
func benchWake(ctx context.Context, addr, prefix string, cfg Config, logf func(string, ...any)) ([]WakeResult, error) {
	var out []WakeResult
	for _, lib := range fillLibs() {
		if !fleetWide(lib) {
			continue
		}
		r, err := wake(ctx, addr, prefix, lib, cfg)
		if err != nil {
			return nil, fmt.Errorf("follower wake-up %s: %w", lib.Name, err)
		}
		logf("wake: %-14s median %.3f ms  p99 %.3f ms  follower %.1f cmds/wake",
			lib.Name, r.MedianMs, r.P99Ms, r.FollowerRoundTrips)
		out = append(out, r)
	}
	return out, nil
}

// wake takes samples of one library: server A loads a fresh key; once its
// loader has started, a caller on server B asks for the key; A's loader
// returns cfg.WakeHold later. The latency runs from A's loader returning to
// B's call returning.
func wake(ctx context.Context, addr, prefix string, lib fillLib, cfg Config) (WakeResult, error) {
	res := WakeResult{Library: lib.Name, Settings: lib.Settings}
	leader, err := lib.open(addr, prefix)
	if err != nil {
		return res, err
	}
	defer leader.close()
	follower, err := lib.open(addr, prefix)
	if err != nil {
		return res, err
	}
	defer follower.close()

	var samples []time.Duration
	var sent int64
	for i := -wakeWarmup; i < cfg.WakeSamples; i++ {
		lat, cmds, err := wakeSample(ctx, leader, follower, fmt.Sprintf("wake:%s:%d", slug(lib.Name), i), cfg.WakeHold)
		if err != nil {
			return res, err
		}
		if i >= 0 {
			samples = append(samples, lat)
			sent += cmds
		}
	}
	res.Samples = len(samples)
	res.Latency = summarize(samples)
	res.FollowerRoundTrips = float64(sent) / float64(len(samples))
	return res, nil
}

// wakeSample takes one sample on key, returning the latency and the
// commands the follower's client sent.
func wakeSample(ctx context.Context, leader, follower filler, key string, hold time.Duration) (time.Duration, int64, error) {
	type returned struct {
		at  time.Time
		val string
		err error
	}
	ctx, cancel := context.WithTimeout(ctx, wakeTimeout)
	defer cancel()
	want := "value of " + key
	started, finish := make(chan struct{}), make(chan struct{})
	start := sync.OnceFunc(func() { close(started) })
	var loaded time.Time // set by the leader's loader; read after the leader returns
	lch, fch := make(chan returned, 1), make(chan returned, 1)
	go func() {
		v, err := leader.get(ctx, key, func(ctx context.Context) (string, error) {
			start()
			select {
			case <-finish:
			case <-ctx.Done():
				return "", ctx.Err()
			}
			loaded = time.Now()
			return want, nil
		})
		lch <- returned{at: time.Now(), val: v, err: err}
	}()
	select {
	case <-started:
	case l := <-lch:
		return 0, 0, fmt.Errorf("leader returned %q, %v without loading", l.val, l.err)
	}

	c0 := follower.roundTrips()
	go func() {
		v, err := follower.get(ctx, key, func(context.Context) (string, error) { return "", errFollowerLoaded })
		fch <- returned{at: time.Now(), val: v, err: err}
	}()
	if err := sleep(ctx, hold); err != nil {
		close(finish)
		<-lch
		<-fch
		return 0, 0, err
	}
	close(finish)
	l, f := <-lch, <-fch
	switch {
	case l.err != nil:
		return 0, 0, fmt.Errorf("leader: %w", l.err)
	case f.err != nil:
		return 0, 0, fmt.Errorf("follower: %w", f.err)
	case l.val != want || f.val != want:
		return 0, 0, fmt.Errorf("leader got %q, follower %q; want %q", l.val, f.val, want)
	case f.at.Before(loaded):
		return 0, 0, errors.New("the follower returned before the leader's load ended")
	}
	return f.at.Sub(loaded), follower.roundTrips() - c0, nil
}
