package fill

import (
	"context"
	"fmt"
	"time"

	"github.com/locksmith-go/locksmith/internal/flight"
	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/redisx"
)

// A key handed off to the fleet's gatherer (see gather.go) waits in its
// queue, and then on its loading list, while its claimer keeps the claim's
// lease. Should its item leave both without the key being settled (a
// failover to a replica the hand-off had not reached, the queue evicted or
// deleted), nobody would load the key and its claimer would keep its
// lock: every server's callers would wait until their ctx or the flight's
// LoadTimeout ended. So a server asks, every auditEvery while keys it
// handed off wait, whether their items are still there. One that is not,
// and whose lock its claim still holds (it was not settled), is queued
// again, to go out with the fleet's next batch; one lost a second time is
// taken back: its lease is no longer kept and its lock released, and its
// waiters (this server's, which wait with a token of their own) claim and
// load it as any key whose holder released it.

// handedKey is a key this server handed off and still waits for.
type handedKey struct {
	f      *flight.Call
	ks     keyset
	token  string // the claim's, which holds the lock
	keeper *lease.Keeper
	again  bool // queued again once already
}

// auditEvery is how often the items of keys handed off are looked for:
// the gatherer's lease (2 s unless 3 Windows are longer), or PollInterval
// if longer. An audit asks for the keys that wait at that moment, in one
// call: under steady traffic, a call every auditEvery for the few keys
// handed off within the last Window or load; none once no key waits.
func (g *gatherer[T]) auditEvery() time.Duration {
	return max(g.lease(), g.b.c.opt.PollInterval)
}

// watch has the keys of claimed, handed off as items, looked for until
// their flights land. Each look's token is the claim's still, and its
// claimKeeper set.
func (g *gatherer[T]) watch(items []string, claimed []*batchLook) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.waiting == nil {
		g.waiting = make(map[string]handedKey, len(items))
	}
	for i, l := range claimed {
		g.waiting[items[i]] = handedKey{f: l.f, ks: l.ks, token: l.token, keeper: l.claimKeeper}
	}
	if !g.auditing && g.b.c.enter() {
		g.auditing = true
		go g.audit()
	}
}

// audit looks for the items of the keys this server handed off, every
// auditEvery, until none waits; those it does not find are queued again,
// or taken back (see takeBack).
func (g *gatherer[T]) audit() {
	c := g.b.c
	defer c.wg.Done()
	timer := time.NewTimer(g.auditEvery())
	defer timer.Stop()
	for {
		select {
		case <-c.base.Done():
			g.mu.Lock()
			g.auditing = false
			g.mu.Unlock()
			return
		case <-timer.C:
		}
		items := g.stillWaiting()
		if len(items) == 0 {
			return
		}
		g.takeBack(c.base, items)
		timer.Reset(g.auditEvery())
	}
}

// stillWaiting forgets the keys whose flights landed, and returns the
// items of the others; none ends the audit.
func (g *gatherer[T]) stillWaiting() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var items []string
	for s, h := range g.waiting {
		select {
		case <-h.f.Done():
			delete(g.waiting, s)
		default:
			items = append(items, s)
		}
	}
	if len(items) == 0 {
		g.auditing = false
	}
	return items
}

// takeBack asks whether items are queued or loading, and queues again
// those that are not, whose locks their claims still hold; a key not found
// a second time (or that could not be queued again) is taken back: its
// claim's lease is no longer kept, and its lock released, which wakes its
// waiters. A key whose lock its claim no longer holds was settled (its
// value is on its way) or lost with its lock: it is only forgotten.
func (g *gatherer[T]) takeBack(ctx context.Context, items []string) {
	c := g.b.c
	args := make([]any, len(items))
	for i, s := range items {
		args[i] = s
	}
	v, err := g.run(ctx, gatherAudit, args...)
	found, ok := v.([]any)
	if err != nil || !ok || len(found) != len(items) {
		if err == nil {
			err = fmt.Errorf("fill: unexpected audit reply %v (%T)", v, v)
		}
		if ctx.Err() != nil {
			return // closing
		}
		c.log("looking for the keys handed off to the fleet's gatherer failed", "err", err)
		return
	}
	var lost, missing []handedKey
	var names []string
	g.mu.Lock()
	for i, s := range items {
		h, ok := g.waiting[s]
		if n, _ := found[i].(int64); n != 0 || !ok {
			continue
		}
		if h.again {
			delete(g.waiting, s)
			lost = append(lost, h)
		} else {
			missing, names = append(missing, h), append(names, s)
		}
	}
	g.mu.Unlock()
	if len(missing) > 0 {
		lost = append(lost, g.queueAgain(ctx, missing, names)...)
	}
	if len(lost) == 0 {
		return
	}
	c.log("keys handed off to the fleet's gatherer left its queue unsettled again; taking them back", "keys", len(lost))
	for _, h := range lost {
		_ = h.keeper.Stop()
		c.release(ctx, h.ks, h.token)
	}
}

// queueAgain hands off again the keys of missing (their items, names) that
// their claims still hold, and returns those it could not.
func (g *gatherer[T]) queueAgain(ctx context.Context, missing []handedKey, names []string) []handedKey {
	c := g.b.c
	looks := make([]*batchLook, len(missing))
	for i, h := range missing {
		looks[i] = &batchLook{ks: h.ks, look: look{token: h.token}}
	}
	held, errs := g.claimsHeld(ctx, looks)
	var args []any
	var queued []int
	var unread error
	g.mu.Lock()
	for i := range looks {
		switch {
		case errs[i] != nil:
			unread = errs[i] // looked for again at the next audit
		case !held[i]:
			// Settled meanwhile, or its lock lost: its waiters see to it.
			delete(g.waiting, names[i])
		default:
			args, queued = append(args, names[i]), append(queued, i)
		}
	}
	g.mu.Unlock()
	if unread != nil && ctx.Err() == nil {
		c.log("reading the locks of keys lost from the fleet's queue failed", "err", unread)
	}
	if len(queued) == 0 {
		return nil
	}
	took, err := g.run(ctx, gatherHandOff, args...)
	if err != nil && redisx.MayHaveRun(err) {
		// Queued, perhaps: sent again, an item still queued stays
		// queued once; the next audit sees.
		g.mayHaveTaken(err)
		if ctx.Err() == nil {
			c.log("queueing again keys lost from the fleet's queue failed", "err", err)
		}
		return nil
	}
	if err != nil {
		if ctx.Err() == nil {
			c.log("queueing again keys lost from the fleet's queue failed; taking them back", "err", err)
		}
		var back []handedKey
		g.mu.Lock()
		for _, i := range queued {
			delete(g.waiting, names[i])
			back = append(back, missing[i])
		}
		g.mu.Unlock()
		return back
	}
	c.log("keys handed off to the fleet's gatherer left its queue unsettled; queued again", "keys", len(queued))
	g.mu.Lock()
	for _, i := range queued {
		if h, ok := g.waiting[names[i]]; ok {
			h.again = true
			g.waiting[names[i]] = h
		}
	}
	if n, _ := took.(int64); n == 1 {
		g.tookLease = true // see handOff
	}
	g.mu.Unlock()
	g.wake(time.Time{})
	return nil
}

// mayHaveTaken notes a hand-off that failed with err: if it may have run,
// it may have taken the lease, anew; the next pop counts as taking it so,
// and asks for the loading list a gatherer whose lease ran out left.
func (g *gatherer[T]) mayHaveTaken(err error) {
	if !redisx.MayHaveRun(err) {
		return
	}
	g.mu.Lock()
	g.tookLease = true
	g.mu.Unlock()
}
