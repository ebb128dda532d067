package fill

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/envelope"
	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/redisx"
)

// The first step of a fill: read the value, or claim the key's lock
// (claim.lua), for one key or for a batch's keys in one pipeline.

var (
	//go:embed claim.lua
	claimLua    string
	claimScript = redis.NewScript(claimLua)
)

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
	bare   bool          // acquired: the read found no value, so no back-off either
	holder string        // held, stale held
	msg    string        // failed: the holder's failure message
}

func (c *Cache) claim(ctx context.Context, ks keyset, token, mode, awaited string) (claimReply, error) {
	return redisx.Run(ctx, c.rdb, func(ctx context.Context) (claimReply, error) {
		v, err := claimScript.Run(ctx, c.rdb.Redis(), ks.keys, token, c.lockTTLArg, mode, awaited,
			c.swrArg, c.sieArg, c.pttlArg).Result()
		if err != nil {
			if redisx.MayHaveRun(err) {
				c.rdb.Go(func() { lease.Cleanup(c.rdb, ks.lock, token) })
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

// parseStale parses the rest of a stale value's reply a into r; false
// when it is not one of claim.lua's.
func parseStale(r *claimReply, a []any) bool {
	if len(a) < 4 {
		return false
	}
	sub, ok := a[3].(int64)
	if !ok {
		return false
	}
	r.sub = int(sub)
	switch {
	case r.sub == staleClaimed && len(a) == 5:
		n, ok := a[4].(int64)
		r.now = time.UnixMilli(n)
		return ok
	case r.sub == staleHeld && len(a) == 5:
		h, ok := a[4].(string)
		r.holder = h
		return ok
	}
	return r.sub == staleBackoff && len(a) == 4
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
		n, ok1 := a[1].(int64)
		b, ok2 := int64(0), len(a) == 3
		if ok2 {
			b, ok2 = a[2].(int64)
		}
		if !ok1 || !ok2 {
			return bad()
		}
		r.now, r.bare = time.UnixMilli(n), b == 1
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
			// The server's clock, when the script read it (see
			// maybeEarlyRefresh).
			if len(a) == 4 {
				ms, ok := a[3].(int64)
				if !ok {
					return bad()
				}
				r.now = time.UnixMilli(ms)
			} else if len(a) != 3 {
				return bad()
			}
			break
		}
		if !parseStale(&r, a) {
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

// look is one read-or-claim round trip for a flight, and what it found.
type look struct {
	token    string
	sent     time.Time // when the request was sent: the lease runs from then
	r        claimReply
	err      error
	val      any            // the decoded value, when r.state is found or stale
	valErr   error          // ErrNotFound for a cached absence, or a type conflict
	entry    envelope.Entry // the decoded entry, payload aside
	replaced string         // the type of an entry that could not be read as ours
}

// look reads key's value or claims its lock. A value that cannot be decoded
// is never served: the lock is claimed regardless of it, and the load
// overwrites it.
func (c *Cache) look(ctx context.Context, ks keyset, token string, o ops, mode, awaited string) look {
	var replaced string
	read := mode == modeRead // a read counts once towards answered
	if read && c.readFirst() {
		read = false
		l := look{token: token, sent: time.Now()}
		v, err := redisx.Run(ctx, c.rdb, func(ctx context.Context) (string, error) {
			return c.rdb.Redis().Get(ctx, ks.value).Result()
		}, nil)
		c.answer(err == nil && envelope.Window(v) == 0)
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			l.err = err
			return l
		case envelope.Window(v) == 0 && !c.opt.EarlyRefresh:
			// A value without a stale window is fresh until it expires
			// (with EarlyRefresh, the script judges by its TTL whether to
			// refresh it now).
			l.r = claimReply{state: found, value: v, pttl: -1}
			c.decode(ks, v, o, &l)
			if !errors.Is(l.valErr, envelope.ErrCorrupt) {
				return l
			}
			replaced, l.valErr = l.replaced, nil
			mode = modeClaim
		}
	}
	for {
		l := look{token: token, sent: time.Now(), replaced: replaced}
		l.r, l.err = c.claim(ctx, ks, token, mode, awaited)
		if read && l.err == nil {
			read = false
			c.answer(l.r.state == found && envelope.Window(l.r.value) == 0)
		}
		if l.err == nil && (l.r.state == found || l.r.state == stale) {
			c.decode(ks, l.r.value, o, &l)
			if errors.Is(l.valErr, envelope.ErrCorrupt) {
				replaced, mode = l.replaced, modeClaim
				continue
			}
		}
		return l
	}
}

// Reads by GET first. A hit by the read-or-claim script costs Redis a Lua
// call, a fifth or so more than a GET; a miss found by a GET costs a whole
// round trip more. So a Cache whose reads find a fresh value nearly always
// (a hot set of keys) reads by GET first, and one whose reads miss more
// than now and then (or find values with a stale window, which a GET
// cannot judge) by the script: at readFirstAbove in millionths of the
// recent reads, a decaying average over about answeredSpan of them.
const (
	readFirstAbove = 900_000
	answeredSpan   = 16
)

// readFirst reports whether a read goes by GET first: always with
// Options.ReadFirst, else while nearly every read of late found a fresh
// value, unless a GET's answer would lose something: the value's
// remaining TTL, which EarlyRefresh decides by and a local copy is bounded
// by.
func (c *Cache) readFirst() bool {
	return c.opt.ReadFirst || c.answered.Load() >= readFirstAbove && !c.opt.EarlyRefresh && c.local == nil
}

// answer counts a read that a GET could (yes) or could not have served.
// Reads race: an update now and then lost changes no decision.
func (c *Cache) answer(yes bool) {
	var x int64
	if yes {
		x = 1_000_000
	}
	p := c.answered.Load()
	c.answered.Store(p + (x-p)/answeredSpan)
}

// relookMany looks at held keys again in one pipeline, each with its
// first look's token, passing the holder it found so that the holder's
// outcome, should it have failed meanwhile, is returned (see claim.lua).
func (c *Cache) relookMany(ctx context.Context, waiting []*batchLook, o ops) []look {
	reqs := make([]claimReq, len(waiting))
	for i, l := range waiting {
		reqs[i] = claimReq{ks: l.ks, token: l.token, awaited: l.r.holder}
	}
	return c.claimMany(ctx, reqs, o)
}

// lookMany reads or claims every item's key in one pipeline.
func (c *Cache) lookMany(ctx context.Context, items []batchItem, o ops) []batchLook {
	looks := make([]batchLook, len(items))
	reqs := make([]claimReq, len(items))
	for i, it := range items {
		looks[i] = batchLook{key: it.key, f: it.f, ks: c.keyset(it.key), at: it.at}
		reqs[i] = claimReq{ks: looks[i].ks, token: lease.NewToken()}
	}
	for i, l := range c.claimMany(ctx, reqs, o) {
		looks[i].look = l
	}
	return looks
}

// claimReq is one key's read-or-claim in a pipeline: its keys, the
// caller's token, and the holder the caller waited for ("" for none; see
// claim.lua).
type claimReq struct {
	ks             keyset
	token, awaited string
}

// claimMany runs the claim script, mode read, for every request in one
// pipeline (on a Cluster, go-redis sends one per node). Should Redis not
// know the script (a restart, a failover, a new replica), it is loaded and
// the pipeline sent again. A key whose value cannot be decoded is claimed
// alone, as look does.
func (c *Cache) claimMany(ctx context.Context, reqs []claimReq, o ops) []look {
	looks := make([]look, len(reqs))
	sent := time.Now()
	exec := func(idx []int) ([]*redis.Cmd, error) {
		return redisx.Run(ctx, c.rdb, func(ctx context.Context) ([]*redis.Cmd, error) {
			pipe := c.rdb.Redis().Pipeline()
			cmds := make([]*redis.Cmd, len(idx))
			for k, i := range idx {
				q := reqs[i]
				cmds[k] = claimScript.EvalSha(ctx, pipe, q.ks.keys, q.token, c.lockTTLArg, modeRead, q.awaited,
					c.swrArg, c.sieArg, c.pttlArg)
			}
			_, err := pipe.Exec(ctx)
			if err != nil && !redisx.MayHaveRun(err) && redisx.Classify(err) != redisx.Reply {
				return nil, err
			}
			return cmds, nil
		}, nil)
	}
	cmds, err := exec(upTo(len(reqs)))
	if err == nil {
		rerunFlushed(ctx, c.rdb.Redis(), claimScript, cmds, exec, 0)
	}
	for i, q := range reqs {
		l := &looks[i]
		l.token, l.sent = q.token, sent
		if err != nil {
			l.err = err
			continue
		}
		v, cerr := cmds[i].Result()
		if redisx.IsNoScript(cerr) {
			// Still unknown (the load failed): this one alone, with
			// EVAL's fallback.
			*l = c.look(ctx, q.ks, q.token, o, modeRead, q.awaited)
			continue
		}
		if cerr != nil {
			l.err = cerr
			if redisx.MayHaveRun(cerr) {
				c.rdb.Go(func() { lease.Cleanup(c.rdb, q.ks.lock, q.token) })
			}
			continue
		}
		l.r, l.err = parseClaim(v)
		if l.err == nil && (l.r.state == found || l.r.state == stale) {
			c.decode(q.ks, l.r.value, o, l)
			if errors.Is(l.valErr, envelope.ErrCorrupt) {
				// Never served: claim it alone, regardless of the value.
				replaced := l.replaced
				*l = c.look(ctx, q.ks, q.token, o, modeClaim, "")
				l.replaced = replaced
			}
		}
	}
	return looks
}
