package budget

import (
	"cmp"
	"context"
	_ "embed"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/redisx"
)

// Calls that leave late. An upstream that allows no burst counts each call
// from its arrival: the next must come a whole interval after it, not
// after its slot. A call that leaves its slot late (a busy CPU, a
// collector's pause, a loaded host) brings the next call, which leaves on
// time, closer to it than the limit, and the upstream refuses it. The
// slack learned from 429s absorbs lateness only by spacing every call
// further apart. Where lateness can be seen, at the server that woke late,
// it is cheaper to move the schedule on past it, as the upstream's own
// count does: the server tells the fleet, and every slot booked after the
// late one moves as late (shift.lua), before the next slot comes.

//go:embed shift.lua
var shiftLua string

var shiftScript = redis.NewScript(shiftLua)

// lateMargin is how late past the burst tolerance a call may leave before
// the schedule after it moves: a woken server is late by well under it
// (the fine timer wakes 0.1 to 0.2 ms late), and the slack learned from
// 429s covers what is left.
const lateMargin = 500 * time.Microsecond

// leftLate moves the fleet's schedule on past r when its call leaves late
// now: only where the limit has no burst tolerance to absorb it (b.fine),
// only for a call whose reply came before its slot (a call that goes at
// once, on an idle budget or after a slow reply, leaves a reply's latency
// after its slot every time, and a round trip more for each would cost
// more than it saves), and by at most an interval (a call later than that
// has passed the next slot already).
func (b *Budget) leftLate(r booking) {
	if !b.fine || r.local || r.slot <= 0 || !r.early {
		return
	}
	until, ok := b.lead.until(r.slot, time.Now())
	late := -until.Microseconds()
	if !ok || late <= b.tau+lateMargin.Microseconds() {
		return
	}
	late = min(late, b.t)
	b.stats.late.Add(1)
	b.later(func() {
		ctx, cancel := context.WithTimeout(b.base, giveBackTimeout)
		defer cancel()
		if r.kidx > 0 {
			b.shiftKey(ctx, r.kidx, r.slot, late)
			return
		}
		_, _ = b.shift(ctx, r.slot, late)
	})
}

// shift moves the fleet's schedule d µs later after the slot from (see
// shift.lua), and this server's own sleeping Waits with it at once,
// without waiting for the message. It returns the instant of the move, or
// 0 when nothing was booked after from.
func (b *Budget) shift(ctx context.Context, from, d int64) (int64, error) {
	at, err := redisx.Run(ctx, b.rdb, func(ctx context.Context) (int64, error) {
		return shiftScript.Run(ctx, b.rdb.Redis(), []string{b.key}, from, d, b.tau,
			b.rdb.PublishFlag(), maxAhead.Microseconds()).Int64()
	}, nil)
	if err == nil && at > 0 {
		b.heardShift(at, from, d)
	}
	return at, err
}

// heardShift records that at the instant at (µs of the Redis clock) every
// slot after from moved d later (see shift.lua), and wakes the sleeping
// Waits to move theirs.
func (b *Budget) heardShift(at, from, d int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.addMove(respace{at: at, from: from, d: d})
}

// addMove keeps m, a move of the fleet's schedule, in order of instant
// among those kept (a reply and the message announcing the same move
// arrive in either order: the second is dropped), and wakes the sleeping
// Waits to move their slots again. b.mu is held.
func (b *Budget) addMove(m respace) {
	if insertMove(&b.respaces, &b.forgotRespaces, m) {
		b.moves++
		close(b.paused)
		b.paused = make(chan struct{})
	}
}

// insertMove inserts m in list, in order of instant, unless it is there
// already or older than forgot (the latest instant of the moves dropped),
// dropping the oldest past maxRespaces. It reports whether it inserted m.
func insertMove(list *[]respace, forgot *int64, m respace) bool {
	if m.at <= *forgot {
		return false
	}
	// Two moves may share an instant (two scripts within a µs): only the
	// very same move is dropped.
	i, _ := slices.BinarySearchFunc(*list, m.at, func(r respace, at int64) int {
		return cmp.Compare(r.at, at)
	})
	for ; i < len(*list) && (*list)[i].at == m.at; i++ {
		if (*list)[i] == m {
			return false
		}
	}
	*list = slices.Insert(*list, i, m)
	if n := len(*list); n > maxRespaces {
		*forgot = (*list)[n-maxRespaces-1].at
		*list = slices.Delete(*list, 0, n-maxRespaces)
	}
	return true
}
