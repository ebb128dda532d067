package budget

// A pool of keys (Options.Keys) while Redis is unreachable: a local
// limiter per key, and pauses of a key kept in this process.

import (
	"context"
	"fmt"
	"time"

	"github.com/locksmith-go/locksmith/internal/redisx"
)

// waitLocalKey is Wait (or Reserve: op) of w on a pool while Redis is
// unreachable: each key has a local limiter at Rate/FleetSize, and the call
// goes on the live key, not paused in this process, whose next local slot
// comes first. It returns the key (1 + its index).
func (b *Budget) waitLocalKey(ctx context.Context, op string, p Priority, w want) (int, error) {
	for {
		i, pause, ok := b.pool.pickLocal(time.Now(), w)
		switch {
		case !ok:
			return 0, b.noKeysError(op)
		case pause > 0:
			// Every live key is paused in this process.
			if dl, ok := ctx.Deadline(); ok && time.Now().Add(pause).After(dl) {
				b.stats.refused.Add(1)
				return 0, fmt.Errorf("budget: %s %s: every key paused for %v, past the deadline: %w",
					op, redisx.Quote(b.name), pause, context.DeadlineExceeded)
			}
			if err := b.sleep(ctx, pause, false, nil); err != nil {
				return 0, err
			}
			continue
		}
		return i + 1, b.waitLocalOn(ctx, op, p, w, b.pool.local[i])
	}
}

// pickLocal returns the live key, not paused in this process, whose local
// limiter's next slot for w comes first; or, when every live key is paused
// here, how long until the first pause ends; ok is false when no key is
// live.
func (p *pool) pickLocal(now time.Time, w want) (i int, pause time.Duration, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i = -1
	var best time.Time
	for j, k := range p.keys {
		switch {
		case k.removed:
			continue
		case k.localPause.After(now):
			if d := k.localPause.Sub(now); pause == 0 || d < pause {
				pause = d
			}
			ok = true
			continue
		}
		if s := p.local[j].next(now, w); i < 0 || s.Before(best) {
			i, best = j, s
		}
		ok = true
	}
	if i >= 0 {
		return i, 0, true
	}
	return 0, pause, ok
}

// pauseKeyLocally keeps a pause of key i in this process while Redis is
// unreachable.
func (b *Budget) pauseKeyLocally(i int, until time.Time) {
	b.stats.localPauses.Add(1)
	p := b.pool
	p.mu.Lock()
	if until.After(p.keys[i].localPause) {
		p.keys[i].localPause = until
	}
	p.mu.Unlock()
}

// next returns the slot from now that reserve would give w, booking
// nothing.
func (l *localLimiter) next(now time.Time, w want) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.slot(now, w)
}
