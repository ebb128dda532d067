package fill

import (
	"cmp"
	"context"
	_ "embed"
	"errors"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/notify"
	"github.com/locksmith-go/locksmith/observe"
)

// local is the in-process tier: decoded values in front of Redis, dropped
// by push when any server of the fleet stores or deletes their key.
//
// Coherence rests on three rules:
//   - A copy never outlives its fresh life in Redis (its TTL; past it the
//     freshness rules apply, in Redis).
//   - Every store and delete publishes an invalidation carrying the key and
//     the entry's created-at, stamped by the Redis server's clock (see
//     Cache.createdAt), so one key's entries are ordered whatever the
//     servers' clocks. An invalidation drops a copy no newer than it, and is
//     remembered for a while (a tombstone), so a read that was under way
//     when it arrived cannot put an older value back.
//   - Copies are served only while the pub/sub connection is known to
//     deliver: a heartbeat published through Redis came back within
//     MaxStaleness (and all copies are dropped whenever the connection
//     breaks or is replaced). On a Cluster the invalidations and the
//     heartbeats use classic pub/sub, which every node forwards to every
//     other, on a connection of their own, and a heartbeat goes to every
//     master: the oldest path decides. On a Ring, whose shards forward
//     nothing and where the Hub sends no heartbeat, a copy lives at most
//     MaxStaleness after it was read instead.
//   - On a plain Redis (not a Cluster or a Ring), servers order entries by
//     stamps and publish invalidations only while the fleet's flag is in
//     place (local.lua): a fleet without a local tier spends nothing on
//     them. A local tier keeps the flag in place, keeps no copy read before
//     it found the flag in place (a store or delete before then may have
//     gone unpublished; stamps under the flag are later than any before
//     it), and serves copies only while a refresh that found the flag in
//     place was sent within MaxStaleness.
//     A flag found missing (expired, flushed, lost in a failover) drops
//     every copy.
//   - On a Cluster, whose scripts cannot read the flag, servers always
//     stamp, and publish invalidations unless a read of the flag sent
//     within flagTrust found it missing (a fleet without a local tier
//     sends every node none); a local tier keeps the flag as above, and
//     keeps no copy read within flagTrust after it put the flag back.
//
// So no read returns a copy more than MaxStaleness after a newer value was
// stored or the key deleted, whatever happens to the connection.
type local struct {
	c        *Cache
	maxStale time.Duration
	beats    bool // the Hub sends heartbeats: copies live their fresh life
	values   *otter.Cache[string, *localEntry]
	tombs    *otter.Cache[string, int64] // key -> newest invalidation's created-at (Unix ms)
	listener *notify.Listener

	clearedAt atomic.Int64 // Unix ns of the last clear; reads sent before it are not kept

	mu   sync.Mutex          // guards mine
	mine map[string]struct{} // invalidations this Cache published and has not yet received

	// The fleet's flag, on a plain Redis or a Cluster (flag is its key; ""
	// on a Ring).
	flag      string
	placedAt  atomic.Int64  // Unix ns when the flag was last found missing and put in place (reply received); reads sent before it are not kept; MaxInt64 until then
	confirmed atomic.Int64  // Unix ns when the last refresh that found the flag in place was sent
	stop      chan struct{} // closed by close: ends keepFlag
	done      chan struct{} // closed when keepFlag returned
}

var (
	//go:embed local.lua
	flagLua    string
	flagScript = redis.NewScript(flagLua)
)

type localEntry struct {
	val     any
	absent  bool
	created int64 // the entry's created-at, Unix ms
	sent    int64 // when the read (or store) that brought it was sent, Unix ns
	until   int64 // served until then, Unix ns
}

// maxMine bounds the invalidations of this Cache awaited back.
const maxMine = 1 << 14

// tombLife is how long an invalidation is remembered against reads that
// were under way when it arrived.
const tombLife = 30 * time.Second

func newLocal(c *Cache, o LocalOptions) *local {
	inline := func(fn func()) { fn() }
	l := &local{
		c:        c,
		maxStale: o.MaxStaleness,
		beats:    c.hub.Heartbeats(),
		values:   otter.Must(&otter.Options[string, *localEntry]{MaximumSize: o.Size, Executor: inline}),
		tombs: otter.Must(&otter.Options[string, int64]{MaximumSize: o.Size, Executor: inline,
			ExpiryCalculator: otter.ExpiryWriting[string, int64](tombLife)}),
		mine: make(map[string]struct{}),
	}
	// No listener on a Ring (no heartbeats): the invalidations, published
	// with PUBLISH from a script on the key's shard, reach no single
	// subscriber, and copies there live at most MaxStaleness instead.
	if l.beats {
		l.listener = c.hub.ListenAll(c.invalChannel, l.message)
	}
	if l.flag = cmp.Or(c.flagKey, c.clusterFlag); l.flag != "" {
		l.placedAt.Store(math.MaxInt64)
		l.stop, l.done = make(chan struct{}), make(chan struct{})
		go l.keepFlag(min(200*time.Millisecond, o.MaxStaleness/4))
	}
	return l
}

func (l *local) close() {
	if l.stop != nil {
		close(l.stop)
		<-l.done
	}
	if l.listener != nil {
		l.listener.Close()
	}
	l.values.InvalidateAll()
	l.tombs.StopAllGoroutines()
}

// keepFlag keeps the fleet's flag in place, every every, until close.
func (l *local) keepFlag(every time.Duration) {
	defer close(l.done)
	gen := ""
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		gen = l.refreshFlag(gen)
		t.Reset(every)
	}
}

// refreshFlag puts the fleet's flag back in place for a while and returns
// its value; gen is the one last seen. A new value means that the flag was
// missing, so stores and deletes may have gone unpublished until it was
// put back: every copy is dropped, and so is every read sent before the
// reply. A read sent after it ran once the flag was in place: every later
// store and delete of its key is published, stamped later than its entry
// (see local.lua).
func (l *local) refreshFlag(gen string) string {
	// The flag outlives every copy served under this refresh.
	ttl := 2*l.maxStale + time.Second
	ctx, cancel := context.WithTimeout(l.c.base, l.maxStale)
	defer cancel()
	sent := time.Now()
	g, err := flagScript.Run(ctx, l.c.rdb.Redis(), []string{l.flag}, lease.NewToken(), lease.Millis(ttl)).Text()
	if err != nil {
		return gen
	}
	if g != gen {
		placed := time.Now()
		if l.c.clusterFlag != "" {
			// Servers that found the flag missing before it was put
			// back publish nothing for flagTrust after their read.
			placed = placed.Add(flagTrust)
		}
		l.placedAt.Store(placed.UnixNano())
		l.values.InvalidateAll()
	}
	l.confirmed.Store(sent.UnixNano())
	return g
}

// flagTrust is how long a read that found the fleet's flag missing on a
// Cluster stands: stores and deletes publish no invalidation until then,
// and a local tier that puts the flag back keeps no copy read before as
// long after. A read older than half of it is sent again, in the
// background, at the next store or delete.
const flagTrust = 600 * time.Millisecond

// invalTo returns the channel a store or delete publishes its invalidation
// on, or "" for none: on a Cluster, whose scripts cannot read the fleet's
// flag, none while a read of the flag sent within flagTrust found it
// missing. Without such a read (at start, after an error, once it is
// old) it publishes, and has the flag read again.
func (c *Cache) invalTo() string {
	if c.clusterFlag == "" || c.local != nil {
		return c.invalChannel
	}
	now := time.Now().UnixNano()
	missing := c.flagMissingAt.Load()
	if now-missing >= int64(flagTrust/2) && c.flagReading.CompareAndSwap(false, true) && c.enter() {
		go c.readFlag()
	}
	if missing != 0 && now-missing < int64(flagTrust) {
		return ""
	}
	return c.invalChannel
}

// readFlag reads whether the fleet's flag is in place on a Cluster (see
// invalTo).
func (c *Cache) readFlag() {
	defer c.wg.Done()
	defer c.flagReading.Store(false)
	ctx, cancel := context.WithTimeout(c.base, flagTrust/2)
	defer cancel()
	sent := time.Now()
	n, err := c.rdb.Redis().Exists(ctx, c.clusterFlag).Result()
	switch {
	case err != nil:
		// Unknown: the old read ages out, and stores publish.
	case n == 0:
		c.flagMissingAt.Store(sent.UnixNano())
	default:
		c.flagMissingAt.Store(0)
	}
}

// live reports whether copies may be served at now (Unix ns).
func (l *local) live(now int64) bool {
	if l.flag != "" && now-l.confirmed.Load() >= int64(l.maxStale) {
		return false
	}
	if !l.beats {
		return true
	}
	heard := l.c.hub.Heard()
	return heard != 0 && now-heard < int64(l.maxStale)
}

// get returns key's copy, if one may be served.
func (l *local) get(key string) (v any, absent, ok bool) {
	e, ok := l.values.GetIfPresent(key)
	if !ok {
		return nil, false, false
	}
	now := time.Now().UnixNano()
	if now >= e.until || !l.live(now) || e.sent < l.placedAt.Load() {
		return nil, false, false
	}
	return e.val, e.absent, true
}

// keep stores a copy of key's entry created at created (server clock),
// read or written by a request sent at sent, to be served until until.
func (l *local) keep(key string, v any, absent bool, created time.Time, sent, until time.Time) {
	ms := created.UnixMilli()
	if l.outdated(key, ms, sent) {
		return
	}
	if !l.beats {
		until = minTime(until, sent.Add(l.maxStale))
	}
	l.values.Set(key, &localEntry{val: v, absent: absent, created: ms, sent: sent.UnixNano(), until: until.UnixNano()})
	// An invalidation, a Wake or the flag placed anew that came between
	// the check and the Set found no copy to drop: look again now that it
	// is in place (each writes its mark before it looks for copies). A
	// copy dropped here is only a read more.
	if l.outdated(key, ms, sent) {
		l.values.Invalidate(key)
	}
}

// outdated reports whether a copy of key's entry stamped ms, read by a
// request sent at sent, may be outdated: messages may have been lost since
// the read was sent (a Wake), a store or delete may have gone unpublished
// (see refreshFlag), or a newer value was stored, or the key deleted,
// meanwhile (a tomb).
func (l *local) outdated(key string, ms int64, sent time.Time) bool {
	if sent.UnixNano() < l.clearedAt.Load() || sent.UnixNano() < l.placedAt.Load() {
		return true
	}
	t, ok := l.tombs.GetIfPresent(key)
	return ok && ms < t
}

// expect registers the invalidation this Cache's own store of key,
// stamped created, is about to publish, so that the message, which may
// arrive before the store's reply, is known for its own and drops no copy.
func (l *local) expect(key string, created time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.mine) >= maxMine {
		// Our own invalidations are not coming back (pub/sub refused?):
		// forget them rather than grow.
		clear(l.mine)
	}
	l.mine[invalidation(key, created)] = struct{}{}
}

// set keeps a value this Cache stored itself (created is its stamp, which
// expect registered before the store was sent at sent): as a read sent
// then would be, so that messages lost since (a reconnect, the flag
// placed anew) drop it, as they drop such a read.
func (l *local) set(key string, v any, absent bool, created, sent, until time.Time) {
	// Its own invalidation drops nothing (see message): the store's
	// stamp is remembered here instead, so that a read of an older entry
	// of the key finishing later (another flight of it) is not kept over it.
	l.raiseTomb(key, created.UnixMilli())
	l.keep(key, v, absent, created, sent, until)
}

// raiseTomb remembers that key's entries stamped before ms are outdated.
// One step: a store's and an invalidation's, on two goroutines, never
// lower the mark.
func (l *local) raiseTomb(key string, ms int64) {
	l.tombs.Compute(key, func(t int64, found bool) (int64, otter.ComputeOp) {
		if found && t >= ms {
			return t, otter.CancelOp
		}
		return ms, otter.WriteOp
	})
}

// delete drops this Cache's own copy at once (its own Delete).
func (l *local) delete(key string) {
	l.values.Invalidate(key)
}

// invalidate drops key's copy if it is no newer than created, and
// remembers created against reads under way.
func (l *local) invalidate(key string, created time.Time) {
	ms := created.UnixMilli()
	l.raiseTomb(key, ms)
	if e, ok := l.values.GetIfPresent(key); ok && e.created <= ms {
		if _, dropped := l.values.Invalidate(key); dropped {
			l.c.stats.invalidations.Add(1)
			l.c.event(l.c.base, observe.Event{Kind: observe.Invalidation, Key: key})
		}
	}
}

// message handles a message on the invalidation channel; it runs on the
// Hub's reader goroutine, in order.
func (l *local) message(p string) {
	if p == notify.Wake {
		// Messages may have been lost: drop every copy, and every read
		// under way.
		l.clearedAt.Store(time.Now().UnixNano())
		l.values.InvalidateAll()
		l.c.stats.localClears.Add(1)
		l.mu.Lock()
		clear(l.mine)
		l.mu.Unlock()
		return
	}
	l.mu.Lock()
	_, mine := l.mine[p]
	delete(l.mine, p)
	l.mu.Unlock()
	if mine {
		return // this Cache's own store: its copy is that value
	}
	if len(p) < 2 || (p[0] != 's' && p[0] != 'd') {
		return
	}
	msStr, key, ok := strings.Cut(p[1:], " ")
	if !ok {
		return
	}
	ms, err := strconv.ParseInt(msStr, 10, 64)
	if err != nil {
		return
	}
	l.invalidate(key, time.UnixMilli(ms))
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func (c *Cache) localHit(ctx context.Context, key string) {
	c.stats.localHits.Add(1)
	if c.opt.Events != nil {
		c.event(ctx, observe.Event{Kind: observe.LocalHit, Key: key})
	}
}

// keepLocal copies a value read from Redis into the in-process tier.
func (c *Cache) keepLocal(key string, l *look) {
	if c.local == nil || l.r.pttl <= 0 || errors.Is(l.valErr, ErrTypeConflict) {
		return
	}
	fresh := l.r.pttl - l.entry.StaleWindow
	if fresh <= 0 {
		return
	}
	c.local.keep(key, l.val, l.valErr != nil, l.entry.CreatedAt, l.sent, l.sent.Add(fresh))
}

// fromLocal answers a Get from the in-process tier: the copy of key as a T,
// or its cached absence; ok is false when there is no copy of that type to
// serve.
func fromLocal[T any](ctx context.Context, c *Cache, key string) (t T, err error, ok bool) {
	v, absent, ok := c.local.get(key)
	if !ok {
		return t, nil, false
	}
	if absent {
		c.localHit(ctx, key)
		return t, notFound(key), true
	}
	if t, ok = v.(T); ok {
		c.localHit(ctx, key)
	}
	return t, nil, ok
}
