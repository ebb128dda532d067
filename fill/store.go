package fill

import (
	"context"
	"time"

	"github.com/locksmith-go/locksmith/internal/lease"
)

// Ending a fill: storing its value, or releasing its lock, and telling the
// waiters.

// createdAt stamps an entry with its claim's stamp: the Redis server's
// clock, made later than every earlier stamp of the key (claim.lua,
// delete.lua). One lock holder follows another, and a Delete runs after
// the store it undoes, so one key's entries and deletes are stamped in the
// order they happened, exactly, even within one millisecond, whatever the
// servers' clocks: an invalidation can say which copy is older. The time since the
// claim is left out on purpose: measured by this server, it could put the
// stamp ahead of a Delete that Redis ran later.
func (c *Cache) createdAt(claimed *look) time.Time {
	if claimed.r.now.IsZero() {
		return time.Now()
	}
	return claimed.r.now
}

// store stores entry with the value v (or an absence), releases the lock
// and notifies, in one round trip.
func (c *Cache) store(ctx context.Context, ks keyset, key, token string, entry []byte, ttl time.Duration, v any, absent bool, claimed *look) {
	msg := lease.Message(lease.Filled, "")
	if len(entry) <= c.opt.PublishLimit {
		msg = lease.Message(lease.Value, string(entry))
	}
	window := time.Duration(0)
	if !absent {
		window = c.opt.window()
	}
	createdAt := c.createdAt(claimed)
	if c.local != nil {
		c.local.expect(key, createdAt)
	}
	s, err := c.settleStore(ctx, ks, token, msg, entry, ttl+window, invalidation(key, createdAt))
	c.settled(key, s, err)
	if err == nil && s.ours && s.storeErr == "" && c.local != nil {
		c.local.set(key, v, absent, createdAt, time.Now().Add(ttl))
	}
}

// publishOnly releases the lock and gives the waiters the value without
// storing it (a loader asked so with SetTTL). The value is also left, for a
// short while, where the holder's waiters that miss the message find it
// when they look again (the failure marker's place). A value too large to
// publish is not given: the waiters look again, and one of them loads.
func (c *Cache) publishOnly(ctx context.Context, ks keyset, key, token string, entry []byte) {
	msg := lease.Message(lease.Released, "")
	if len(entry) <= c.opt.PublishLimit {
		msg = lease.Message(lease.Value, string(entry))
	}
	s, err := lease.Retry(ctx, func(ctx context.Context, retried bool) (settled, error) {
		v, err := settleScript.Run(ctx, c.rdb.Redis(), ks.keys, token, c.rdb.PublishFlag(), "n", msg,
			lease.Millis(failureMarkerTTL)).Result()
		if err != nil {
			return settled{}, err
		}
		return parseSettled(v)
	})
	c.settled(key, s, err)
}

// settled counts and reports what a settle script did.
func (c *Cache) settled(key string, s settled, err error) {
	switch {
	case err != nil:
		c.stats.redisErrors.Add(1)
		c.log("storing a load's outcome failed; waiters will look again", "key", key, "err", err)
	case !s.ours:
		c.stats.staleStores.Add(1)
	case s.storeErr != "":
		c.stats.storeErrors.Add(1)
		c.log("redis refused to store a value; waiters were told", "key", key, "err", s.storeErr)
	}
	if s.publishErr != "" {
		c.stats.notifyErrors.Add(1)
	}
}

// release gives the lock back with nothing to say: waiters look again.
func (c *Cache) release(ctx context.Context, ks keyset, token string) {
	r, err := lease.ReleaseRetrying(ctx, c.rdb, ks.lock, token, lease.Message(lease.Released, ""))
	switch {
	case err != nil:
		c.stats.redisErrors.Add(1)
	case r.NotifyErr != nil:
		c.stats.notifyErrors.Add(1)
	}
}
