package budget

// Booking on a pool of keys (Options.Keys): the arguments of the booking
// script (keys.lua) and its reply, what a booking tells this server of its
// key, and the moves of a key's schedule that the Waits sleeping on it
// follow.

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/locksmith-go/locksmith/internal/redisx"
)

// keyArgs returns the KEYS and ARGV of a booking of a pool (keys.lua), ARGV
// being wait.lua's args then the pool's block: the live keys, with what
// this server knows of each, and the removed ones; placeKey is the key of
// the caller's place in the background line (1 + its index), or 0. It also
// returns the index of each key sent, nil when none is live.
func (b *Budget) keyArgs(args []any, placeKey int) ([]string, []any, []int) {
	p := b.pool
	args = append(args, p.sum...)
	p.mu.Lock()
	live := p.live
	if live == nil {
		live = p.liveSet()
		p.live = live
	}
	// Only a tat still ahead of the Redis clock can stand in for one Redis
	// lost: a tat in the past books as a full bucket would (see wait.lua).
	// The estimate of the Redis clock errs by a round trip at most, as does
	// what a key left out may lose.
	past := time.Now().UnixMicro() + b.clock.Load()
	var mem []byte
	for j, i := range live.cand {
		k := p.keys[i]
		if k.mine <= past {
			continue
		}
		mem = append(mem, ',')
		mem = strconv.AppendInt(mem, int64(j+1), 10)
		mem = append(mem, ':')
		mem = strconv.AppendInt(mem, k.mine, 10)
		mem = append(mem, ':')
		mem = strconv.AppendInt(mem, max(k.respacedAt, 0), 10)
	}
	p.mu.Unlock()
	if len(live.cand) == 0 {
		return nil, nil, nil
	}
	place := 0
	for j, i := range live.cand {
		if i+1 == placeKey {
			place = j + 1
		}
	}
	return p.bookKeys, append(args, live.ids, live.removed, p.boxedKeep, mem, p.gen.Load(), place), live.cand
}

// liveKeys are what a booking sends of the keys live and removed, kept
// while the keys removed do not change.
type liveKeys struct {
	cand    []int // the live keys, by index
	ids     any   // their ids, each followed by a space (see keys.lua)
	removed any   // the same of the removed keys
}

// liveSet returns the pool's liveKeys. p.mu must be held.
func (p *pool) liveSet() *liveKeys {
	var ids, rms strings.Builder
	l := &liveKeys{}
	for i, k := range p.keys {
		if k.removed {
			rms.WriteString(p.ids[i] + " ")
			continue
		}
		l.cand = append(l.cand, i)
		ids.WriteString(p.ids[i] + " ")
	}
	l.ids, l.removed = ids.String(), rms.String()
	return l
}

// parseKeyed reads the booking script's reply {reply, key, gone,
// generation}, the keys being those of cand.
func (b *Budget) parseKeyed(v any, cand []int) (booking, error) {
	a, ok := v.([]any)
	if !ok || len(a) != 4 {
		return booking{}, fmt.Errorf("unexpected keys reply %v (%T)", v, v)
	}
	idx, ok1 := a[1].(int64)
	gone, ok2 := a[2].([]any)
	gen, ok3 := a[3].(int64)
	if !ok1 || !ok2 || !ok3 || idx < 0 || idx > int64(len(cand)) {
		return booking{}, fmt.Errorf("unexpected keys reply %v", v)
	}
	for _, g := range gone {
		if j, ok := g.(int64); ok && j >= 1 && j <= int64(len(cand)) {
			b.keyRemoved(cand[j-1])
		}
	}
	b.pool.gen.Store(gen)
	r, err := parseBooking(a[0])
	switch {
	case err == nil && r.kind == queued:
		// In line for a concurrency slot of a key: no key picked yet.
		return r, nil
	case idx == 0:
		return booking{kind: noKey}, nil
	}
	r.kidx = cand[idx-1] + 1
	return r, err
}

// keyLearn records what a booking on a key tells this server: the tat it
// set, unless the key's schedule was respaced after it was booked.
func (b *Budget) keyLearn(r booking) {
	p := b.pool
	if p.pending.CompareAndSwap(true, false) {
		// Redis answers again: the removals of other servers' keys kept
		// while it did not go to it now.
		b.later(b.writeBackRemovals)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	k := &p.keys[r.kidx-1]
	if r.slot-r.wait.Microseconds() >= k.respacedAt {
		k.mine = max(k.mine, r.tat)
	}
}

// keyMoved reports whether the slot of r, a booking on a key made at
// booked (µs of the Redis clock), must be booked again: its key was paused
// past it, respaced since, or removed.
func (b *Budget) keyMoved(r booking, booked int64) bool {
	if r.kidx == 0 {
		return false
	}
	p := b.pool
	p.mu.Lock()
	defer p.mu.Unlock()
	k := p.keys[r.kidx-1]
	return k.removed || k.pauseAt > r.slot || k.respacedAt > booked
}

// stretchOf is stretch for a booking on key k of the pool (1 + its index;
// 0 for the budget's own schedule): where the key's moves since booked
// moved slot.
func (b *Budget) stretchOf(k int, slot, booked int64) (moved, moves int64, ok bool) {
	if k == 0 {
		return b.stretch(slot, booked)
	}
	b.mu.Lock()
	moves = b.moves
	b.mu.Unlock()
	p := b.pool
	p.mu.Lock()
	defer p.mu.Unlock()
	key := p.keys[k-1]
	moved, ok = b.replay(key.shifts, key.forgot, slot, booked)
	return moved, moves, ok
}

// shiftKey moves the schedule of key k (1 + its index) d µs later after
// the slot from (see shift.lua), when a call on it left late; the Waits
// sleeping on the key book again.
func (b *Budget) shiftKey(ctx context.Context, k int, from, d int64) {
	script, keys, args := b.onKey(k, shiftScript, keyShiftScript, []any{from, d, b.tau,
		b.rdb.PublishFlag(), maxAhead.Microseconds()})
	at, err := redisx.Run(ctx, b.rdb, func(ctx context.Context) (int64, error) {
		return script.Run(ctx, b.rdb.Redis(), keys, args...).Int64()
	}, nil)
	if err == nil && at > 0 {
		b.keyShifted(k-1, respace{at: at, from: from, d: d})
	}
}

// keyShifted records m, a move of the schedule of key i past a call that
// left late, and wakes the sleeping Waits: those on the key move their
// slots (stretchOf).
func (b *Budget) keyShifted(i int, m respace) {
	p := b.pool
	p.mu.Lock()
	k := &p.keys[i]
	added := insertMove(&k.shifts, &k.forgot, m)
	p.mu.Unlock()
	if added {
		b.mu.Lock()
		b.moves++
		close(b.paused)
		b.paused = make(chan struct{})
		b.mu.Unlock()
	}
}
