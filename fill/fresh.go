package fill

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/redisx"
	"github.com/locksmith-go/locksmith/observe"
)

// Freshness: serving stale values, and refreshing them in the background.

// servable reports whether l found a stale value that may be served at
// once: refreshes back off, or it is within the revalidate window.
func (c *Cache) servable(l *look) bool {
	return l.err == nil && l.r.state == stale && l.valErr == nil &&
		(l.r.sub == staleBackoff || l.entry.StaleWindow-l.r.pttl <= c.opt.StaleWhileRevalidate)
}

// fallbackLive reports whether l holds a value that may still be served as
// a fallback should a load fail (StaleIfError), unlike servable, which
// tells whether a stale value is served at once: one read, and still in
// Redis, within its stale window (its key's life, read as its PTTL,
// counted from when the read was sent: early rather than late).
func (l *look) fallbackLive(now time.Time) bool {
	return l != nil && l.valErr == nil && l.r.pttl > 0 && now.Before(l.sent.Add(l.r.pttl))
}

// staleHit counts and reports a value served past its TTL.
func (c *Cache) staleHit(ctx context.Context, key string) {
	c.stats.staleHits.Add(1)
	c.event(ctx, observe.Event{Kind: observe.StaleHit, Key: key})
}

// serveStale serves the stale value l found, and refreshes it in the
// background when l claimed its refresh.
func (c *Cache) serveStale(ctx context.Context, j *job, l *look) {
	c.staleHit(ctx, j.ks.name)
	if l.r.sub == staleClaimed {
		c.refresh(ctx, j, l)
	}
}

// remoteFailure is the outcome of a flight whose awaited load failed on
// another server: the stale value, when there is one to fall back on, else
// an error wrapping ErrLoadFailed.
func (c *Cache) remoteFailure(ctx context.Context, key, msg string, fallback *look) (any, error) {
	if fallback.fallbackLive(time.Now()) {
		c.staleHit(ctx, key)
		return fallback.val, nil
	}
	_, text := lease.ParseMessage(msg)
	return nil, fmt.Errorf("%w: %s: %s", ErrLoadFailed, redisx.Quote(key), text)
}

// refresh refreshes a stale value in the background, as the holder of its
// lock (claimed). The callers already have the stale value.
func (c *Cache) refresh(caller context.Context, j *job, claimed *look) {
	if !c.enter() {
		lease.Cleanup(c.rdb, j.ks.lock, claimed.token)
		return
	}
	c.stats.refreshes.Add(1)
	go func() {
		defer c.wg.Done()
		ctx, cancel := c.flightContext(caller)
		defer cancel()
		out := c.lead(ctx, ctx, j, claimed, claimed, true)
		c.refreshPanicked(j.ks.name, out.panicked)
	}()
}

// maybeEarlyRefresh decides, by XFetch, whether to refresh a fresh value
// before its TTL, and if so tries to claim the refresh in the background.
func (c *Cache) maybeEarlyRefresh(caller context.Context, j *job, l *look) {
	if !c.opt.EarlyRefresh || l.valErr != nil || l.r.pttl <= 0 {
		return
	}
	left := l.r.pttl - l.entry.StaleWindow // fresh time left
	if left > storedTTL(l, j.cl.ttl)/2 {
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
	// The PTTL read tells the claim whether the value was stored again
	// since (another server's refresh), or deleted: then it refuses.
	seen, entry := strconv.FormatInt(l.r.pttl.Milliseconds(), 10), l.entry
	go func() {
		defer c.wg.Done()
		ctx, cancel := c.flightContext(caller)
		defer cancel()
		claimed := look{token: lease.NewToken(), sent: time.Now(), entry: entry}
		claimed.r, claimed.err = c.claim(ctx, j.ks, claimed.token, modeEarly, seen)
		if claimed.err != nil || claimed.r.state != acquired {
			return
		}
		c.stats.refreshes.Add(1)
		out := c.lead(ctx, ctx, j, &claimed, nil, true)
		c.refreshPanicked(j.ks.name, out.panicked)
	}()
}

// storedTTL returns the TTL the value l read was stored with: the time
// from its claim to the read, both on the Redis clock, less the time from
// the claim to the value (its LoadDuration, see sinceClaim), plus the fresh
// time it had left; or ttl, the caller's, when that is unknown.
// A loader's SetTTL, or another caller's WithTTL, may have stored it with
// a TTL far shorter than the caller's: half the caller's TTL then lay
// before its store, and every read refreshed it.
func storedTTL(l *look, ttl time.Duration) time.Duration {
	if l.r.now.IsZero() || l.entry.CreatedAt.IsZero() {
		return ttl
	}
	if d := l.r.now.Sub(l.entry.CreatedAt) - l.entry.LoadDuration + (l.r.pttl - l.entry.StaleWindow); d > 0 {
		return d
	}
	return ttl
}

// refreshPanicked logs, with its stack, the panic of a background refresh's
// loader, if p is not nil. Nobody waits for a refresh, and its goroutine
// belongs to the Cache: re-raised there, the panic would end the process.
// lead has already treated it as a failed refresh: counted in LoadErrors
// and RefreshErrors, reported to the events handler (Options.Events) (a Load event whose Err is
// the *PanicError), backed off and the lock released.
func (c *Cache) refreshPanicked(key string, p *PanicError) {
	if p != nil {
		c.log("a background refresh's loader panicked; the refresh failed", "key", key, "panic", p.Value,
			"stack", string(p.Stack))
	}
}
