package fill

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/redisx"
	"github.com/locksmith-go/locksmith/observe"
)

// Freshness: serving stale values, and refreshing them in the background.

func (c *Cache) serveStale(ctx context.Context, key string, l *look) {
	c.stats.staleHits.Add(1)
	c.event(ctx, observe.Event{Kind: observe.StaleHit, Key: key})
}

// remoteFailure is the outcome of a flight whose awaited load failed on
// another server: the stale value, when there is one to fall back on, else
// an error wrapping ErrLoadFailed.
func (c *Cache) remoteFailure(ctx context.Context, key, msg string, fallback *look) (any, error) {
	if fallback != nil && fallback.valErr == nil {
		c.serveStale(ctx, key, fallback)
		return fallback.val, nil
	}
	_, text := lease.ParseMessage(msg)
	return nil, fmt.Errorf("%w: %s: %s", ErrLoadFailed, redisx.Quote(key), text)
}

// refresh refreshes a stale value in the background, as the holder of its
// lock (claimed). The callers already have the stale value.
func (c *Cache) refresh(caller context.Context, key string, cl callOptions, o ops, claimed *look) {
	ks := c.keyset(key)
	if !c.enter() {
		lease.Cleanup(c.rdb, ks.lock, claimed.token)
		return
	}
	c.stats.refreshes.Add(1)
	go func() {
		defer c.wg.Done()
		ctx, cancel := c.flightContext(caller)
		defer cancel()
		out := c.lead(ctx, ctx, ks, key, cl, o, claimed, claimed, true)
		c.refreshPanicked(key, out.panicked)
	}()
}

// maybeEarlyRefresh decides, by XFetch, whether to refresh a fresh value
// before its TTL, and if so tries to claim the refresh in the background.
func (c *Cache) maybeEarlyRefresh(caller context.Context, key string, cl callOptions, o ops, l *look) {
	if !c.opt.EarlyRefresh || l.valErr != nil || l.r.pttl <= 0 {
		return
	}
	left := l.r.pttl - l.entry.StaleWindow // fresh time left
	if left > cl.ttl/2 {
		// XFetch's chance per read does not count the reads: a key read
		// far more often than it loads would refresh right after each
		// store. Never before half its TTL: at most two loads per TTL.
		return
	}
	// Refresh when delta·β·(−ln U) ≥ time left, with β = 1.
	if float64(l.entry.LoadDuration)*-math.Log(1-rand.Float64()) < float64(left) {
		return
	}
	if !c.enter() {
		return
	}
	go func() {
		defer c.wg.Done()
		ctx, cancel := c.flightContext(caller)
		defer cancel()
		ks := c.keyset(key)
		claimed := look{token: lease.NewToken(), sent: time.Now(), entry: l.entry}
		claimed.r, claimed.err = c.claim(ctx, ks, claimed.token, modeEarly, "")
		if claimed.err != nil || claimed.r.state != acquired {
			return
		}
		c.stats.refreshes.Add(1)
		out := c.lead(ctx, ctx, ks, key, cl, o, &claimed, nil, true)
		c.refreshPanicked(key, out.panicked)
	}()
}

// refreshPanicked logs, with its stack, the panic of a background refresh's
// loader, if p is not nil. Nobody waits for a refresh, and its goroutine
// belongs to the Cache: re-raised there, the panic would end the process.
// lead has already treated it as a failed refresh: counted in LoadErrors
// and RefreshErrors, reported to the Observer (a Load event whose Err is
// the *PanicError), backed off and the lock released.
func (c *Cache) refreshPanicked(key string, p *PanicError) {
	if p != nil {
		c.log("a background refresh's loader panicked; the refresh failed", "key", key, "panic", p.Value,
			"stack", string(p.Stack))
	}
}
