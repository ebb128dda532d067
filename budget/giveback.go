package budget

// Giving back: a call that gives up (its ctx ended, a Reservation
// cancelled) gives back what it booked, in the background, with one round
// trip (giveback.lua): its slot when no call booked after it, the units of
// its meters, its concurrency slot or place in line.

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/redisx"
)

var (
	//go:embed giveback.lua
	givebackLua    string
	givebackScript = redis.NewScript(givebackLua)
)

// abandon gives back, in the background, what a Wait that ends with err
// had booked: its slot, or its place in the background line, and its
// concurrency slot or place in line.
func (b *Budget) abandon(r booking, err error) {
	if errors.Is(err, ErrClosed) {
		return
	}
	b.stats.abandoned.Add(1)
	b.later(func() { b.giveBack(r) })
}

// later runs f in the background, unless the Budget is closed; Close waits
// for it.
func (b *Budget) later(f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		f()
	}()
}

// giveBackTimeout bounds the round trip that gives a slot back, and so
// Close, which waits for the give-backs under way.
const giveBackTimeout = time.Second

// giveBack runs the give-back script for r. Close does not cut it short:
// the slot goes back to the fleet even when this server shuts down.
func (b *Budget) giveBack(r booking) {
	ctx, cancel := context.WithTimeout(context.Background(), giveBackTimeout)
	defer cancel()
	_ = b.giveBackCtx(ctx, r)
}

// giveBackCtx gives back what r booked, within ctx, and reports the error
// of the round trip, an outage aside. A concurrency slot or place in line
// goes back in the same round trip.
func (b *Budget) giveBackCtx(ctx context.Context, r booking) error {
	args := b.giveBackArgs(r, false)
	var n int64
	var err error
	switch {
	case args == nil && r.w.cid == "":
		return nil
	case args == nil:
		b.conc.drop(r.w.cid, context.Canceled)
		err = b.free(ctx, r.w.cid)
	case r.w.cid != "":
		b.conc.drop(r.w.cid, context.Canceled)
		n, _, err = b.runGiveBackConc(ctx, r.kidx, args, r.w.cid)
	default:
		n, err = b.runGiveBack(ctx, r.kidx, args)
	}
	switch {
	case err != nil && redisx.Outage(err):
		return nil
	case err != nil:
		return b.fail(ctx, "give back", err)
	}
	if n == 1 {
		b.stats.givenBack.Add(1)
		if prev := r.prev; !r.place {
			if prev < 0 {
				prev = r.tat - b.t
			}
			b.mineTAT.CompareAndSwap(r.tat, prev)
		}
	}
	return nil
}

// giveBackNow runs the give-back script with args for key k, bounded by
// giveBackTimeout.
func (b *Budget) giveBackNow(k int, args []any) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), giveBackTimeout)
	defer cancel()
	return b.runGiveBack(ctx, k, args)
}

// runGiveBack runs the give-back script with args, on the fields of key k
// of the pool (1 + its index; 0 without Options.Keys).
func (b *Budget) runGiveBack(ctx context.Context, k int, args []any) (int64, error) {
	script, keys, args := b.onKey(k, givebackScript, keyGivebackScript, args)
	return redisx.Run(ctx, b.rdb, func(ctx context.Context) (int64, error) {
		return script.Run(ctx, b.rdb.Redis(), keys, args...).Int64()
	}, nil)
}

// runGiveBackConc runs the give-back script with args, on the fields of key
// k of the pool (1 + its index; 0 without Options.Keys), freeing the
// concurrency slot or place in line of holder id in the same round trip.
func (b *Budget) runGiveBackConc(ctx context.Context, k int, args []any, id string) (n, freed int64, err error) {
	c := b.conc
	script, keys := givebackConcScript, c.keys
	if k > 0 {
		var kk []string
		_, kk, args = b.onKey(k, givebackScript, keyGivebackScript, args)
		// A script of one key's KEYS, then the concurrency keys (see
		// newConc).
		script, keys = keyGivebackConcScript, append(kk, c.keys[3:]...)
	}
	args = append(args, c.args[0], c.args[1], c.args[2], id)
	v, err := redisx.Run(ctx, b.rdb, func(ctx context.Context) ([]int64, error) {
		return script.Run(ctx, b.rdb.Redis(), keys, args...).Int64Slice()
	}, nil)
	if err == nil && len(v) != 2 {
		err = fmt.Errorf("unexpected give-back reply %v", v)
	}
	if err != nil {
		return 0, 0, err
	}
	return v[0], v[1], nil
}

// giveBackArgs returns the give-back script's ARGV for what r booked: its
// place in line, or its slot and the units of every dimension; with
// metersOnly, the meters' units alone. It is nil when there is nothing to
// give back.
func (b *Budget) giveBackArgs(r booking, metersOnly bool) []any {
	switch {
	case r.kind == queued, r.kind == noKey:
		return nil // in line for a concurrency slot, or no key: no rate slot booked
	case r.kind == comeBack && !r.place:
		return nil // standing by: nothing booked
	case r.kind == comeBack:
		return []any{"place", r.slot, b.t}
	}
	var tb int64
	if r.bg {
		tb = b.tb
	}
	args := []any{"slot", r.slot, tb}
	if !metersOnly {
		args = append(args, "l", "tat", b.t, r.w.calls, r.tat, r.prev, "cap")
	}
	for i, d := range b.dims {
		switch {
		case r.w.units[i] == 0:
		case d.meter != "":
			args = append(args, "u", d.field, d.t, -r.w.units[i], r.tats[i], r.prevs[i], d.cap)
		case !metersOnly:
			args = append(args, "l", d.field, d.t, r.w.units[i], r.tats[i], r.prevs[i], "")
		}
	}
	if len(args) == 3 {
		return nil
	}
	return args
}
