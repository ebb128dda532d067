package fill

import (
	"context"
	_ "embed"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/redisx"
)

// The last step of a fill: store its value or its failure, release the
// lock and tell the waiters (settle.lua), for one key or for a batch's
// keys in one pipeline; or give the lock back with nothing to say.

var (
	//go:embed settle.lua
	settleLua    string
	settleScript = redis.NewScript(settleLua)
)

// The modes of the settle script.
const (
	settleStore   = "s" // store a value or an absence
	settleFail    = "f" // record a failure
	settlePublish = "n" // give the waiters the value without storing it
)

// settleReq is one call of the settle script.
type settleReq struct {
	ks    keyset
	token string
	mode  string // settleStore, settleFail or settlePublish
	msg   string // for the key's channel

	entry []byte        // settleStore
	ttl   time.Duration // settleStore: the key's, stale window included
	inval string        // settleStore: the invalidation to publish
	bare  bool          // settleStore: the claim found no value, so no back-off to end

	backoff bool // settleFail: start or lengthen the refreshes' back-off
}

// settleArgs returns the settle script's arguments for r (see
// settle.lua); the script's only argument builder.
func (c *Cache) settleArgs(r *settleReq) []any {
	args := []any{r.token, c.rdb.PublishFlag(), r.mode, r.msg}
	switch r.mode {
	case settleStore:
		del := "1"
		if r.bare {
			del = "0"
		}
		return append(args, r.entry, lease.Millis(max(r.ttl, time.Millisecond)), c.invalTo(), r.inval, del)
	case settlePublish:
		return append(args, lease.Millis(failureMarkerTTL))
	}
	base := "0"
	if r.backoff {
		base = lease.Millis(backoffBase)
	}
	cap := lease.Millis(min(backoffCap, max(c.opt.window(), backoffBase)))
	return append(args, lease.Millis(failureMarkerTTL), base, cap)
}

// settled is the outcome of the settle script.
type settled struct {
	ours       bool   // the lock was the caller's: the script ran
	storeErr   string // Redis refused to store the value
	publishErr string // Redis refused to publish the message
}

func parseSettled(v any) (settled, error) {
	if n, ok := v.(int64); ok && n == 0 {
		return settled{}, nil
	}
	a, ok := v.([]any)
	if ok && len(a) == 3 {
		n, ok1 := a[0].(int64)
		s1, ok2 := a[1].(string)
		s2, ok3 := a[2].(string)
		if ok1 && ok2 && ok3 && n == 1 {
			return settled{ours: true, storeErr: s1, publishErr: s2}, nil
		}
	}
	return settled{}, fmt.Errorf("fill: unexpected settle reply %v (%T)", v, v)
}

// settleResult parses a settle script's reply to r. A lock no longer ours
// after a try whose outcome was unknown (retried) means that try most
// likely ran and settled it; a publish-only settle is taken at its word.
func settleResult(r *settleReq, v any, err error, retried bool) (settled, error) {
	if err != nil {
		return settled{}, err
	}
	s, err := parseSettled(v)
	if err == nil && retried && !s.ours && r.mode != settlePublish {
		s.ours = true
	}
	return s, err
}

// settle runs the settle script for r in one round trip, retried while it
// is unknown whether it ran, until ctx ends.
func (c *Cache) settle(ctx context.Context, r *settleReq) (settled, error) {
	return lease.Retry(ctx, func(ctx context.Context, retried bool) (settled, error) {
		v, err := settleScript.Run(ctx, c.rdb.Redis(), r.ks.keys, c.settleArgs(r)...).Result()
		return settleResult(r, v, err, retried)
	})
}

// failureMarkerTTL is how long a failed load's marker stays for its
// waiters to find when they look again after missing its message. Only the
// waiters of that very holder read it, so it may outlive any poll.
const failureMarkerTTL = 10 * time.Second

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

// invalidation is the message published on the invalidation channel when
// key's value is stored: 's', the entry's created-at in Unix ms, a space,
// the key. A delete publishes the same with 'd'.
func invalidation(key string, createdAt time.Time) string {
	return "s" + strconv.FormatInt(createdAt.UnixMilli(), 10) + " " + key
}

// published reports whether the waiters are given entry itself, in the
// message, rather than told to read it: when it is at most PublishLimit.
func (c *Cache) published(entry []byte) bool { return len(entry) <= c.opt.PublishLimit }

// valueMessage is the message that gives the waiters entry: the entry
// itself when published, else orElse.
func (c *Cache) valueMessage(entry []byte, orElse lease.Kind) string {
	if c.published(entry) {
		return lease.Message(lease.Value, string(entry))
	}
	return lease.Message(orElse, "")
}

// storeMessage is the message of a store of entry (see settle.lua): 'v'
// alone when entry is published, which the script appends (the entry goes
// to Redis once, not twice), else the message that tells the waiters to
// read it.
func (c *Cache) storeMessage(entry []byte) string {
	if c.published(entry) {
		return string(lease.Value)
	}
	return lease.Message(lease.Filled, "")
}

// storeCall is one key's store: its settle, and what the in-process tier
// keeps once it is done.
type storeCall struct {
	req      settleReq
	val      any
	absent   bool
	created  time.Time
	freshFor time.Duration
	sent     time.Time // no later than the store was first sent
}

// storeCall returns the store of entry (with the value v, or an absence)
// under ks, by claimed's holder, for ttl (the key's, stale window
// included); the in-process tier keeps v for freshFor. It registers the
// store's invalidation as this Cache's own.
func (c *Cache) storeCall(ks keyset, claimed *look, entry []byte, ttl, freshFor time.Duration, v any, absent bool) storeCall {
	created := c.createdAt(claimed)
	if c.local != nil {
		c.local.expect(ks.name, created)
	}
	return storeCall{
		req: settleReq{ks: ks, token: claimed.token, mode: settleStore, msg: c.storeMessage(entry),
			entry: entry, ttl: ttl, inval: invalidation(ks.name, created), bare: claimed.r.state == acquired && claimed.r.bare},
		val: v, absent: absent, created: created, freshFor: freshFor, sent: time.Now(),
	}
}

// stored counts and reports what a store did, and keeps its value in the
// in-process tier once it is stored.
func (c *Cache) stored(sc *storeCall, s settled, err error) {
	c.settled(sc.req.ks.name, s, err)
	if err == nil && s.ours && s.storeErr == "" && c.local != nil {
		c.local.set(sc.req.ks.name, sc.val, sc.absent, sc.created, sc.sent, time.Now().Add(sc.freshFor))
	}
}

// maxTTL is the longest a value is kept: ten years, "for ever" in a
// cache. A longer TTL (SetTTL or WithTTL of math.MaxInt64) is cut to it:
// with the stale window added it overflowed, and was kept a millisecond.
const maxTTL = 10 * 365 * 24 * time.Hour

// keyTTL is the life of a value's key: its TTL and its stale window.
func keyTTL(ttl, window time.Duration) time.Duration {
	return min(ttl, maxTTL) + min(window, maxTTL)
}

// store stores entry with the value v (or an absence), releases the lock
// and notifies, in one round trip.
func (c *Cache) store(ctx context.Context, ks keyset, entry []byte, ttl time.Duration, v any, absent bool, claimed *look) {
	window := time.Duration(0)
	if !absent {
		window = c.opt.window()
	}
	ttl = min(ttl, maxTTL)
	sc := c.storeCall(ks, claimed, entry, keyTTL(ttl, window), ttl, v, absent)
	s, err := c.settle(ctx, &sc.req)
	c.stored(&sc, s, err)
	c.refused(ctx, &sc.req, err)
}

// refused settles r as a failure when Redis refused the call that was to
// settle it, so that the script did not run (a value over Redis's
// proto-max-bulk-len, say): its lock would otherwise stay until its lease
// ran out, its waiters waiting.
func (c *Cache) refused(ctx context.Context, r *settleReq, err error) {
	if err == nil || r.mode == settleFail || redisx.Classify(err) != redisx.Reply {
		return
	}
	s, ferr := c.settleFailure(ctx, r.ks, r.token, lease.Message(lease.Failed, limitText("value not stored: "+err.Error())), false)
	c.settled(r.ks.name, s, ferr)
}

// settleFailure records the failure msg for the waiters of token, releases
// the lock and publishes msg. With backoff, it also starts or lengthens the
// fleet-wide back-off of refreshes of the value.
func (c *Cache) settleFailure(ctx context.Context, ks keyset, token, msg string, backoff bool) (settled, error) {
	return c.settle(ctx, &settleReq{ks: ks, token: token, mode: settleFail, msg: msg, backoff: backoff})
}

// publishOnly releases the lock and gives the waiters the value without
// storing it (a loader asked so with SetTTL). The value is also left, for a
// short while, where the holder's waiters that miss the message find it
// when they look again (the failure marker's place). A value too large to
// publish is not given: the waiters look again, and one of them loads.
func (c *Cache) publishOnly(ctx context.Context, ks keyset, token string, entry []byte) {
	r := &settleReq{ks: ks, token: token, mode: settlePublish, msg: c.valueMessage(entry, lease.Released)}
	s, err := c.settle(ctx, r)
	c.settled(ks.name, s, err)
	c.refused(ctx, r, err)
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

// settleTimeout bounds a load's settle, counted from the load's end.
var settleTimeout = lease.CleanupTimeout

// settleContext returns the ctx a load's outcome is settled on: the values
// of ctx without its end (every caller may have gone), bounded by
// settleTimeout from now, that is from the load's end, however long the
// load took.
func settleContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
}

// settleMany runs the settle script for every store and failure of a
// batch in one pipeline (on a Cluster, one per node), retried as settle
// is; should Redis not know the script, it is loaded and the calls that
// met NOSCRIPT sent again.
func (c *Cache) settleMany(ctx context.Context, stores []storeCall, fails []settleReq) {
	reqs := make([]*settleReq, 0, len(stores)+len(fails))
	for i := range stores {
		reqs = append(reqs, &stores[i].req)
	}
	for i := range fails {
		reqs = append(reqs, &fails[i])
	}
	if len(reqs) == 0 {
		return
	}
	// retried[i]: reqs[i] was sent again after a try whose outcome is
	// unknown (see settleResult).
	retried := make([]bool, len(reqs))
	// send sends reqs[idx] by EVALSHA, or by EVAL (the script's body with
	// each: Redis caches it).
	send := func(idx []int, eval bool) ([]*redis.Cmd, error) {
		return lease.Retry(ctx, func(ctx context.Context, again bool) ([]*redis.Cmd, error) {
			pipe := c.rdb.Redis().Pipeline()
			cmds := make([]*redis.Cmd, len(idx))
			for k, i := range idx {
				if eval {
					cmds[k] = settleScript.Eval(ctx, pipe, reqs[i].ks.keys, c.settleArgs(reqs[i])...)
				} else {
					cmds[k] = settleScript.EvalSha(ctx, pipe, reqs[i].ks.keys, c.settleArgs(reqs[i])...)
				}
				retried[i] = retried[i] || again
			}
			_, err := pipe.Exec(ctx)
			if err != nil && redisx.Classify(err) != redisx.Reply {
				return nil, err
			}
			return cmds, nil
		})
	}
	exec := func(idx []int) ([]*redis.Cmd, error) { return send(idx, false) }
	replies, err := exec(upTo(len(reqs)))
	if err == nil {
		retryFor := settleTimeout / 2
		if dl, ok := ctx.Deadline(); ok {
			retryFor = time.Until(dl) / 2 // the rest for the values left
		}
		rerunFlushed(ctx, c.rdb.Redis(), settleScript, replies, exec, retryFor)
		// Still NOSCRIPT (the script could not be loaded: a busy pool, a
		// Cluster node away, which fails a load on every node): by EVAL,
		// in one more pipeline. NOSCRIPT is no refusal of a value: taken
		// for one, it failed the key's waiters.
		var left []int
		for i, r := range replies {
			if redisx.IsNoScript(r.Err()) {
				left = append(left, i)
			}
		}
		if len(left) > 0 {
			more, eerr := send(left, true)
			for k, i := range left {
				if eerr != nil {
					replies[i].SetErr(eerr)
				} else {
					replies[i] = more[k]
				}
			}
		}
	}
	for i, r := range reqs {
		var s settled
		serr := err
		if serr == nil {
			v, rerr := replies[i].Result()
			s, serr = settleResult(r, v, rerr, retried[i])
		}
		if i < len(stores) {
			c.stored(&stores[i], s, serr)
		} else {
			c.settled(r.ks.name, s, serr)
		}
		c.refused(ctx, r, serr)
	}
}
