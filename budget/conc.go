package budget

// Concurrency slots (Options.Concurrency): at most N reservations in flight
// across the fleet. A ZSET of holders scored by their lease's end, a FIFO
// line of waiters, both beside the budget's hash under its hash tag; the
// booking script takes a slot with the rate slot (conc.lua before wait.lua),
// Done and Cancel free it (conc.lua before giveback.lua) and wake the head of
// the line by pub/sub; one goroutine per Budget renews this server's leases.

import (
	"context"
	_ "embed"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/redisx"
)

// ErrSlotLost is the cause of a [Reservation.Context] that ended because the
// reservation's concurrency slot was lost: its lease ran out before this
// server could renew it (Redis unreachable for a whole SlotLease, a server
// paused), or the slot was freed by [Budget.Close]. [Reservation.Done] then
// returns an error wrapping it. The fleet may already have given the slot to
// another call: the call should stop.
var ErrSlotLost = errors.New("budget: concurrency slot lost")

// defaultSlotLease is Options.SlotLease's default.
const defaultSlotLease = 10 * time.Second

var (
	//go:embed conc.lua
	concLua string
	//go:embed conc_wait.lua
	concWaitLua string
	//go:embed conc_wait_end.lua
	concWaitEndLua string
	//go:embed slot.lua
	slotLua string

	//go:embed keys_conc.lua
	keysConcLua string
	//go:embed keys_conc_end.lua
	keysConcEndLua string

	// concOne and concPool set where conc.lua's keys start, and the pool's
	// index: without Options.Keys, and with it (the booking's KEYS, see
	// pool.concKeys).
	concOne  = "local cx, cz = 0, nil\n" + concLua
	concPool = "local cx, cz = 2, KEYS[2]\n" + concLua

	waitConcScript     = redis.NewScript(concOne + concWaitLua + waitLua + "\n" + concWaitEndLua)
	givebackConcScript = redis.NewScript(concOne + "local greply = (function()\n" + givebackLua +
		"\nend)()\nreturn {greply, conc_free({cid})}\n")
	slotScript = redis.NewScript(concOne + slotLua)

	// The same with a concurrency cap per key of a pool.
	keysConcWaitScript = redis.NewScript(concPool + keyfieldLua + keysConcLua + keysLua +
		"local kreply = (function()\n" + waitLua + "\nend)()\nif kreply[1] == 0 then ksum(kreply[3] - kreply[2]) end\n" +
		keysConcEndLua + "return {kreply, kidx, kgone, gen}\n")
	// The give-back's KEYS are those of a script of one key (see
	// keyfield.lua), then the concurrency keys: the index is KEYS[3].
	keyGivebackConcScript = redis.NewScript("local cx, cz = 2, KEYS[3]\n" + concLua + keyfieldLua +
		"kone()\nlocal kreply = (function()\nlocal redis = kredis\n" + givebackLua +
		"\nend)()\nksum()\nreturn {kreply, conc_free({cid})}\n")
	keysSlotScript = redis.NewScript(concPool + slotLua)
)

// queued is the wait script's kind for a caller placed in the line for a
// concurrency slot: {3, wait}.
const queued = 3

// conc is the concurrency state of a Budget with Options.Concurrency.
type conc struct {
	n     int
	lease time.Duration
	keys  []string // the budget, slots, queue, queued; with Keys, see newConc
	keyed bool     // a cap per key of the pool (Options.Keys)
	args  [3]any   // N, the lease (µs), the publish flag
	id    string   // this Budget's prefix of holder ids
	seq   atomic.Uint64
	out   atomic.Int64 // slots held (Redis or local): Stats.InFlight

	mu sync.Mutex // guards the maps and the local cap's use
	// The local cap while Redis is unreachable: localCap slots, localUsed
	// of them taken; localChanged, when not nil, is closed at the next
	// change of the cap's use (a local slot given back, a held one
	// dropped).
	localCap, localUsed int
	localChanged        chan struct{}

	waiting map[string]chan struct{} // holder ids in line, and their wake-ups
	held    map[string]*holder       // holder ids holding a slot in Redis
	// renewed has, for ids still waiting, when the lease a renewal gave
	// them ends: a booking that took a slot then sleeps to its rate slot
	// has its slot renewed meanwhile, before it holds it here.
	renewed map[string]time.Time
}

// holder is a slot held in Redis: its lease ends at end unless renewed;
// lost ends its reservation's Context.
type holder struct {
	end  time.Time
	lost context.CancelCauseFunc
}

func newConc(b *Budget) *conc {
	c := &conc{
		n:        b.opt.Concurrency,
		lease:    b.opt.SlotLease,
		keys:     []string{b.key, b.key + ":slots", b.key + ":queue", b.key + ":queued"},
		id:       lease.NewToken()[:12] + ":",
		localCap: max(1, b.opt.Concurrency/b.opt.FleetSize),
		waiting:  make(map[string]chan struct{}),
		held:     make(map[string]*holder),
		renewed:  make(map[string]time.Time),
	}
	if b.pool != nil {
		// The booking's KEYS (keys.lua) then the concurrency block's: the
		// budget, the index, the keys removed, slots, queue, queued, kin,
		// kheld (see conc.lua).
		c.keyed = true
		c.keys = []string{b.key, b.pool.zset, b.pool.removed, b.key + ":slots", b.key + ":queue",
			b.key + ":queued", b.key + ":kin", b.key + ":kheld"}
	}
	c.args = [3]any{int64(c.n), c.lease.Microseconds(), b.rdb.PublishFlag()}
	return c
}

// slotsScript returns the script that frees and renews slots (slot.lua).
func (c *conc) slotsScript() *redis.Script {
	if c.keyed {
		return keysSlotScript
	}
	return slotScript
}

// newID returns a fresh holder id, and registers it as waiting, so that a
// wake-up naming it that comes before the booking's reply is kept.
func (c *conc) newID() string {
	id := c.id + strconv.FormatUint(c.seq.Add(1), 36)
	c.mu.Lock()
	c.waiting[id] = make(chan struct{}, 1)
	c.mu.Unlock()
	return id
}

// wake signals the waiters named in a wake-up message's body, or every
// waiter when all is true (messages may have been lost).
func (c *conc) wake(body string, all bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	signal := func(ch chan struct{}) {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	if all {
		for _, ch := range c.waiting {
			signal(ch)
		}
		return
	}
	for _, id := range strings.Fields(body) {
		if ch := c.waiting[id]; ch != nil {
			signal(ch)
		}
	}
}

// wakeup returns the channel that signals the waiter id.
func (c *conc) wakeup(id string) chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.waiting[id]
}

// took moves id from the line to the holders, its lease running from
// since, or from its latest renewal since, and returns the context of its
// reservation, derived from ctx.
func (c *conc) took(ctx context.Context, id string, since time.Time) context.Context {
	rctx, cancel := context.WithCancelCause(ctx)
	c.mu.Lock()
	delete(c.waiting, id)
	end := since.Add(c.lease)
	if e := c.renewed[id]; e.After(end) {
		end = e
	}
	delete(c.renewed, id)
	c.held[id] = &holder{end: end, lost: cancel}
	c.mu.Unlock()
	c.out.Add(1)
	return rctx
}

// drop forgets id, waiting or holding, ending its reservation's context
// with cause; it reports whether id held a slot.
func (c *conc) drop(id string, cause error) bool {
	c.mu.Lock()
	delete(c.waiting, id)
	delete(c.renewed, id)
	h := c.held[id]
	delete(c.held, id)
	if h != nil {
		c.localChange()
	}
	c.mu.Unlock()
	if h == nil {
		return false
	}
	c.out.Add(-1)
	h.lost(cause)
	return true
}

// free frees the slots and places in line of ids in Redis, within ctx.
func (b *Budget) free(ctx context.Context, ids ...string) error {
	_, err := b.freeCount(ctx, ids...)
	return err
}

// freeCount is free, and returns how many of ids held a slot in Redis.
func (b *Budget) freeCount(ctx context.Context, ids ...string) (int64, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	c := b.conc
	args := make([]any, 0, len(ids)+5)
	args = append(args, "free")
	for _, id := range ids {
		args = append(args, id)
	}
	args = append(args, c.args[0], c.args[1], c.args[2], "")
	return redisx.Run(ctx, b.rdb, func(ctx context.Context) (int64, error) {
		return c.slotsScript().Run(ctx, b.rdb.Redis(), c.keys, args...).Int64()
	}, nil)
}

// freeAbandoned frees id's slot or place in line, taken by a booking whose
// reply came after its caller gave up, within giveBackTimeout.
func (b *Budget) freeAbandoned(id string) {
	b.conc.drop(id, context.Canceled)
	ctx, cancel := context.WithTimeout(context.Background(), giveBackTimeout)
	defer cancel()
	_ = b.free(ctx, id)
}

// renewLoop renews this server's slots and places in line every third of
// a lease, in one round trip, until the Budget is closed. A holder whose
// slot Redis no longer holds, or whose lease ran out while renewals
// failed, loses it (ErrSlotLost); a waiter whose place is gone looks
// again.
func (b *Budget) renewLoop() {
	defer b.wg.Done()
	c := b.conc
	every := c.lease / 3
	timer := time.NewTimer(every)
	defer timer.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-timer.C:
		}
		next := every
		if !b.renew() {
			next = max(c.lease/12, time.Millisecond)
		}
		timer.Reset(next)
	}
}

// renew renews every slot and place in line of this server once, and
// reports whether Redis answered.
func (b *Budget) renew() bool {
	c := b.conc
	// The holders as of now: a booking that takes a slot while the renewal
	// is under way may run after it, and must not count as lost.
	c.mu.Lock()
	args := make([]any, 0, len(c.held)+len(c.waiting)+5)
	args = append(args, "renew")
	held := make(map[string]*holder, len(c.held))
	for id, h := range c.held {
		args = append(args, id)
		held[id] = h
	}
	waiting := make([]string, 0, len(c.waiting))
	for id := range c.waiting {
		args = append(args, id)
		waiting = append(waiting, id)
	}
	c.mu.Unlock()
	if len(args) == 1 {
		return true
	}
	args = append(args, c.args[0], c.args[1], c.args[2], "")
	sent := time.Now()
	ctx, cancel := context.WithTimeout(b.base, c.lease/3)
	defer cancel()
	lost, err := redisx.Run(ctx, b.rdb, func(ctx context.Context) ([]string, error) {
		return c.slotsScript().Run(ctx, b.rdb.Redis(), c.keys, args...).StringSlice()
	}, nil)
	if testHookRenewed != nil {
		testHookRenewed(b)
	}
	if err != nil {
		if !redisx.Outage(err) && b.check() == nil {
			b.stats.redisErrs.Add(1)
		}
		// The leases that surely ran out are lost.
		var gone []string
		c.mu.Lock()
		for id, h := range held {
			if !sent.Before(h.end) {
				gone = append(gone, id)
			}
		}
		c.mu.Unlock()
		for _, id := range gone {
			c.drop(id, ErrSlotLost)
		}
		return false
	}
	gone := make(map[string]bool, len(lost))
	for _, id := range lost {
		gone[id] = true
	}
	c.mu.Lock()
	var dropped []string
	for id, h := range held {
		if gone[id] {
			dropped = append(dropped, id)
		} else if e := sent.Add(c.lease); e.After(h.end) {
			h.end = e
		}
	}
	for _, id := range waiting {
		// Still in line, or holding since the renewal was sent (took
		// came first: then the holder's end is raised here).
		switch h := c.held[id]; {
		case gone[id]:
		case h != nil:
			if e := sent.Add(c.lease); e.After(h.end) {
				h.end = e
			}
		case c.waiting[id] != nil:
			c.renewed[id] = sent.Add(c.lease)
		}
	}
	c.mu.Unlock()
	for _, id := range dropped {
		c.drop(id, ErrSlotLost)
	}
	for _, id := range lost {
		if held[id] == nil {
			// A place in line that ran out: its waiter books again.
			c.wake(id, false)
		}
	}
	return true
}

// testHookRenewed, set by tests only, runs when a renewal's reply came,
// before it is applied.
var testHookRenewed func(*Budget)

// closeConc frees every slot and place of this server at once, when the
// Budget closes; the reservations' contexts end with ErrSlotLost.
func (b *Budget) closeConc() {
	c := b.conc
	c.mu.Lock()
	ids := make([]string, 0, len(c.held)+len(c.waiting))
	for id := range c.held {
		ids = append(ids, id)
	}
	for id := range c.waiting {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), giveBackTimeout)
	defer cancel()
	_ = b.free(ctx, ids...)
	for _, id := range ids {
		c.drop(id, ErrSlotLost)
	}
}

// slotWatch is what a caller in line for a concurrency slot watches
// besides its wake-up, taken before its booking is sent (see watchSlot).
type slotWatch struct {
	ready <-chan struct{} // closed once the budget's subscription is confirmed; nil when it was
	gone  <-chan struct{} // closed once a key of the pool is removed; nil without Keys
}

// watchSlot returns what a booking about to be sent watches should it be
// put in line: taken after the booking, a removal of the last key or a
// subscription confirmed (a wake-up published before it lost) while the
// booking was on its way went unseen, and the caller waited for a wake-up
// that never came.
func (b *Budget) watchSlot() slotWatch {
	var sw slotWatch
	if !b.listening() {
		sw.ready = b.listener.Ready()
	}
	if b.pool != nil {
		// A key removed may leave the caller no key to wait for: it
		// looks again, and fails with ErrNoKeys then.
		b.mu.Lock()
		sw.gone = b.keysGone
		b.mu.Unlock()
	}
	return sw
}

// awaitSlot sleeps while the caller id is in line for a concurrency slot:
// until a wake-up names it, for at most d when d >= 0 (the head of the line:
// the earliest lease's end, when a slot may come back without a word), or
// until ctx ends or the Budget closes. While the budget's subscription is
// not confirmed, a wake-up may be missed: the caller looks again once it is;
// it looks again too once a key of the pool is removed (sw, taken before
// the booking that put it in line).
func (b *Budget) awaitSlot(ctx context.Context, id string, d time.Duration, sw slotWatch) error {
	ch := b.conc.wakeup(id)
	var tick <-chan time.Time
	if d >= 0 {
		timer := time.NewTimer(d)
		defer timer.Stop()
		tick = timer.C
	}
	select {
	case <-ch:
		return nil
	case <-sw.ready:
		return nil
	case <-sw.gone:
		return nil
	case <-tick:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-b.done:
		return ErrClosed
	}
}

// waitLocalSlot is waitLocal for a reservation w, which takes a slot of
// the local cap first when the budget has Options.Concurrency.
func (b *Budget) waitLocalSlot(ctx context.Context, op string, p Priority, w want) error {
	if w.cid == "" {
		return b.waitLocal(ctx, op, p, w)
	}
	if err := b.acquireLocal(ctx); err != nil {
		return err
	}
	err := b.waitLocal(ctx, op, p, w)
	if err != nil {
		b.releaseLocal()
	}
	return err
}

// waitLocalKeySlot is waitLocalKey for a reservation w, which takes a slot
// of the local cap first when the budget has Options.Concurrency: while
// Redis is unreachable the cap is this server's share of one key's, shared
// by the pool's keys.
func (b *Budget) waitLocalKeySlot(ctx context.Context, op string, p Priority, w want) (int, error) {
	if w.cid == "" {
		return b.waitLocalKey(ctx, op, p, w)
	}
	if err := b.acquireLocal(ctx); err != nil {
		return 0, err
	}
	k, err := b.waitLocalKey(ctx, op, p, w)
	if err != nil {
		b.releaseLocal()
	}
	return k, err
}
