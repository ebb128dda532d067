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

// This file is fill's side of the Redis protocol: its keys, and typed
// wrappers around its scripts.

var (
	//go:embed claim.lua
	claimLua    string
	claimScript = redis.NewScript(claimLua)
	//go:embed settle.lua
	settleLua    string
	settleScript = redis.NewScript(settleLua)
	//go:embed delete.lua
	deleteLua    string
	deleteScript = redis.NewScript(deleteLua)
)

// keyset holds the Redis keys of one cached name.
type keyset struct {
	name                         string // the caller's key, for error messages
	lock, value, failed, backoff string
	keys                         []string // all four and the stamp key, in the scripts' order
}

func (c *Cache) keyset(name string) keyset {
	lock := lease.LockKey(c.opt.Prefix, name)
	ks := keyset{name: name, lock: lock, value: lease.ValueKey(lock), failed: lock + ":failed", backoff: lock + ":backoff"}
	ks.keys = []string{ks.lock, ks.value, ks.failed, ks.backoff, lock + ":stamp"}
	return ks
}

// The modes of the claim script.
const (
	modeRead  = "r" // read the value, or claim
	modeClaim = "c" // claim without reading: the value could not be decoded
	modeEarly = "e" // claim an early refresh, unless refreshes back off
)

// What the claim script found.
type claimState int

const (
	held     claimState = 0
	acquired claimState = 1
	found    claimState = 2
	stale    claimState = 3
	failed   claimState = 4
)

// The sub-states of a stale value.
const (
	staleHeld    = 0 // another server refreshes it
	staleClaimed = 1 // the caller refreshes it
	staleBackoff = 2 // refreshes fail and back off
)

// claimReply is the claim script's reply.
type claimReply struct {
	state  claimState
	value  string        // found, stale
	pttl   time.Duration // found, stale: the value key's; held: the lock's
	sub    int           // stale
	now    time.Time     // acquired, stale claimed: the entry's stamp (see claim.lua)
	holder string        // held, stale held
	msg    string        // failed: the holder's failure message
}

func (c *Cache) claim(ctx context.Context, ks keyset, token, mode, awaited string) (claimReply, error) {
	return redisx.Run(ctx, c.rdb, func(ctx context.Context) (claimReply, error) {
		v, err := claimScript.Run(ctx, c.rdb.Redis(), ks.keys, token, lease.Millis(c.opt.LockTTL), mode, awaited,
			c.swrArg, c.sieArg, c.pttlArg).Result()
		if err != nil {
			if redisx.MayHaveRun(err) {
				go lease.Cleanup(c.rdb, ks.lock, token)
			}
			return claimReply{}, err
		}
		return parseClaim(v)
	}, func(r claimReply, err error) {
		// The caller gave up on a call that claimed: give the lock back.
		if err == nil && (r.state == acquired || (r.state == stale && r.sub == staleClaimed)) {
			lease.Cleanup(c.rdb, ks.lock, token)
		}
	})
}

// parseClaim parses the claim script's reply; see claim.lua.
func parseClaim(v any) (claimReply, error) {
	if s, ok := v.(string); ok {
		// A fresh value without a stale window, its PTTL not wanted.
		return claimReply{state: found, value: s, pttl: -1}, nil
	}
	a, ok := v.([]any)
	if !ok || len(a) < 2 {
		return claimReply{}, fmt.Errorf("fill: unexpected claim reply %T", v)
	}
	st, ok := a[0].(int64)
	if !ok {
		return claimReply{}, fmt.Errorf("fill: unexpected claim state %T", a[0])
	}
	var r claimReply
	r.state = claimState(st)
	bad := func() (claimReply, error) { return claimReply{}, fmt.Errorf("fill: unexpected claim reply %v", a) }
	switch r.state {
	case acquired:
		n, ok := a[1].(int64)
		if !ok || len(a) != 2 {
			return bad()
		}
		r.now = time.UnixMilli(n)
	case held:
		n, ok1 := a[1].(int64)
		h, ok2 := "", len(a) == 3
		if ok2 {
			h, ok2 = a[2].(string)
		}
		if !ok1 || !ok2 {
			return bad()
		}
		r.pttl, r.holder = lease.PTTL(n), h
	case found, stale:
		s, ok1 := a[1].(string)
		var n int64
		ok2 := len(a) >= 3
		if ok2 {
			n, ok2 = a[2].(int64)
		}
		if !ok1 || !ok2 {
			return bad()
		}
		r.value, r.pttl = s, lease.PTTL(n)
		if r.state == found {
			if len(a) != 3 {
				return bad()
			}
			break
		}
		if len(a) < 4 {
			return bad()
		}
		sub, ok := a[3].(int64)
		if !ok {
			return bad()
		}
		r.sub = int(sub)
		switch {
		case r.sub == staleClaimed && len(a) == 5:
			n, ok := a[4].(int64)
			if !ok {
				return bad()
			}
			r.now = time.UnixMilli(n)
		case r.sub == staleHeld && len(a) == 5:
			h, ok := a[4].(string)
			if !ok {
				return bad()
			}
			r.holder = h
		case r.sub == staleBackoff && len(a) == 4:
		default:
			return bad()
		}
	case failed:
		s, ok := a[1].(string)
		if !ok || len(a) != 2 {
			return bad()
		}
		r.msg = s
	default:
		return bad()
	}
	return r, nil
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

// settleStore stores entry under ks with ttl, releases the lock held by
// token and publishes msg, and the invalidation inval, in one round trip.
// It is retried while it is unknown whether it ran, until ctx ends.
func (c *Cache) settleStore(ctx context.Context, ks keyset, token, msg string, entry []byte, ttl time.Duration, inval string) (settled, error) {
	return lease.Retry(ctx, func(ctx context.Context, retried bool) (settled, error) {
		v, err := settleScript.Run(ctx, c.rdb.Redis(), ks.keys, token, c.rdb.PublishFlag(), "s", msg,
			entry, lease.Millis(max(ttl, time.Millisecond)), c.invalChannel, inval).Result()
		if err != nil {
			return settled{}, err
		}
		s, err := parseSettled(v)
		if err == nil && retried && !s.ours {
			s.ours = true // an earlier try most likely ran
		}
		return s, err
	})
}

// settleFailure records the failure msg for the waiters of token, releases
// the lock and publishes msg. With backoff, it also starts or lengthens the
// fleet-wide back-off of refreshes of the value.
func (c *Cache) settleFailure(ctx context.Context, ks keyset, token, msg string, backoff bool) (settled, error) {
	base := "0"
	if backoff {
		base = lease.Millis(backoffBase)
	}
	cap := lease.Millis(min(backoffCap, max(c.opt.window(), backoffBase)))
	return lease.Retry(ctx, func(ctx context.Context, retried bool) (settled, error) {
		v, err := settleScript.Run(ctx, c.rdb.Redis(), ks.keys, token, c.rdb.PublishFlag(), "f", msg,
			lease.Millis(failureMarkerTTL), base, cap).Result()
		if err != nil {
			return settled{}, err
		}
		s, err := parseSettled(v)
		if err == nil && retried && !s.ours {
			s.ours = true
		}
		return s, err
	})
}

// failureMarkerTTL is how long a failed load's marker stays for its
// waiters to find when they look again after missing its message. Only the
// waiters of that very holder read it, so it may outlive any poll.
const failureMarkerTTL = 10 * time.Second

// Delete removes key's value, stale or fresh, and breaks any fill or
// refresh of it in progress: a load that started before Delete cannot store
// its value after it. Waiting servers look again (and one of them loads
// afresh); other servers' in-process copies are dropped.
func (c *Cache) Delete(ctx context.Context, key string) error {
	if err := c.check(); err != nil {
		return err
	}
	ks := c.keyset(key)
	if c.local != nil {
		c.local.delete(key)
	}
	type reply struct {
		now        time.Time
		publishErr string
	}
	r, err := redisx.Run(ctx, c.rdb, func(ctx context.Context) (reply, error) {
		v, err := deleteScript.Run(ctx, c.rdb.Redis(), ks.keys, c.rdb.PublishFlag(),
			lease.Message(lease.Deleted, ""), c.invalChannel, key).Result()
		if err != nil {
			return reply{}, err
		}
		a, ok := v.([]any)
		if ok && len(a) == 3 {
			n, ok1 := a[1].(int64)
			s, ok2 := a[2].(string)
			if ok1 && ok2 {
				return reply{time.UnixMilli(n), s}, nil
			}
		}
		return reply{}, fmt.Errorf("fill: unexpected delete reply %v", v)
	}, nil)
	if err != nil {
		c.stats.redisErrors.Add(1)
		return fmt.Errorf("fill: delete %s: %w", redisx.Quote(key), err)
	}
	if r.publishErr != "" {
		c.stats.notifyErrors.Add(1)
	}
	if c.local != nil {
		c.local.invalidate(key, r.now)
	}
	return nil
}

// invalidation is the message published on the invalidation channel when
// key's value is stored: 's', the entry's created-at in Unix ms, a space,
// the key. A delete publishes the same with 'd'.
func invalidation(key string, createdAt time.Time) string {
	return "s" + strconv.FormatInt(createdAt.UnixMilli(), 10) + " " + key
}
