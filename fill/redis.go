package fill

import (
	"context"
	_ "embed"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/redisx"
)

// fill's Redis keys, Delete (delete.lua), and what the pipelined claims
// and settles (claim.go, settle.go) share: resending the calls of a script
// Redis had forgotten.

var (
	//go:embed delete.lua
	deleteLua    string
	deleteScript = redis.NewScript(deleteLua)
)

// keyset holds the Redis keys of one cached name.
type keyset struct {
	name                         string // the caller's key, for error messages
	lock, value, failed, backoff string
	keys                         []string // all four, the stamp key and the fleet's flag if any, in the scripts' order
}

func (c *Cache) keyset(name string) keyset {
	lock := lease.LockKey(c.opt.Prefix, name)
	// One allocation for every key: each is a part of all, the lock a
	// prefix of the value's key.
	value := lease.ValueKey(lock)
	all := value + lock + ":failed" + lock + ":backoff" + lock + ":stamp"
	n, v := len(lock), len(value)
	ks := keyset{name: name, lock: all[:n], value: all[:v], failed: all[v : v+n+7], backoff: all[v+n+7 : v+2*n+15]}
	ks.keys = append(make([]string, 0, 6), ks.lock, ks.value, ks.failed, ks.backoff, all[v+2*n+15:])
	if c.flagKey != "" {
		ks.keys = append(ks.keys, c.flagKey)
	}
	return ks
}

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
			lease.Message(lease.Deleted, ""), c.invalTo(), key).Result()
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

// upTo returns 0, 1, ..., n-1.
func upTo(n int) []int {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	return idx
}

// rerunFlushed loads script and sends again, in one pipeline, the commands
// of replies that failed with NOSCRIPT, putting their new replies in their
// place; exec sends the commands of the given indexes of replies. A
// pipelined EVALSHA has no EVAL fallback: without this, each such key
// would cost a round trip of its own.
//
// The load is tried again for up to retryFor (a busy pool, a lost
// connection: a batch's worth of calls is worth a few tries); a reply left
// with NOSCRIPT (the load or the second send failed) is the caller's to
// send by EVAL (a Cluster node away fails every load, which goes to every
// node, but no EVAL on another).
func rerunFlushed(ctx context.Context, rdb redis.Scripter, script *redis.Script, replies []*redis.Cmd,
	exec func(idx []int) ([]*redis.Cmd, error), retryFor time.Duration) {
	var again []int
	for i, cmd := range replies {
		if redisx.IsNoScript(cmd.Err()) {
			again = append(again, i)
		}
	}
	if len(again) == 0 {
		return
	}
	err := script.Load(ctx, rdb).Err()
	if err != nil && retryFor > 0 {
		lctx, cancel := context.WithTimeout(ctx, retryFor)
		_, err = lease.Retry(lctx, func(ctx context.Context, _ bool) (string, error) {
			return script.Load(ctx, rdb).Result()
		})
		cancel()
	}
	if err != nil {
		return
	}
	more, err := exec(again)
	if err != nil {
		return
	}
	for k, i := range again {
		replies[i] = more[k]
	}
}
