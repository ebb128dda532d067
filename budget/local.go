package budget

// The local fallback: while Redis is unreachable, each server keeps to
// Rate/FleetSize on its own clock, taking over from its latest slot in
// Redis and handing its latest local slot back on Redis's return.

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/locksmith-go/locksmith/internal/redisx"
)

// sleepLocalPause sleeps until the end of a pause kept locally.
func (b *Budget) sleepLocalPause(ctx context.Context, op string) error {
	for {
		b.mu.Lock()
		d := time.Until(b.localPause)
		b.mu.Unlock()
		if d <= 0 {
			return nil
		}
		if dl, ok := ctx.Deadline(); ok && time.Now().Add(d).After(dl) {
			b.stats.refused.Add(1)
			return fmt.Errorf("budget: %s %s: paused for %v, past the deadline: %w",
				op, redisx.Quote(b.name), d, context.DeadlineExceeded)
		}
		if err := b.sleep(ctx, d, false, nil); err != nil {
			return err
		}
	}
}

// waitLocal is Wait (or Reserve: op) while Redis is unreachable: a local
// limiter at Rate/FleetSize decides, on the calls' Limit alone: Also and
// Meters are not enforced locally. Background calls book no further ahead than the
// horizon, as with Redis; there is no background share. The local limiter
// goes on from this server's latest slot in Redis, one local interval
// after it, not with a full burst: its calls booked there still go.
func (b *Budget) waitLocal(ctx context.Context, op string, p Priority) error {
	b.stats.localWaits.Add(1)
	horizon := time.Duration(b.horizon) * time.Microsecond
	for {
		if err := b.sleepLocalPause(ctx, op); err != nil {
			return err
		}
		if s := b.mineSlot.Load(); s > 0 {
			b.local.seed(time.UnixMicro(s - b.clock.Load()).Add(b.local.t))
		}
		now := time.Now()
		slot, tat := b.local.reserve(now)
		d := slot.Sub(now)
		if dl, ok := ctx.Deadline(); ok && slot.After(dl) {
			b.local.cancel(tat)
			b.stats.refused.Add(1)
			return fmt.Errorf("budget: %s %s (local limit, Redis unreachable): the next slot, %v away, lies past the deadline: %w",
				op, redisx.Quote(b.name), d, context.DeadlineExceeded)
		}
		if p == Background && d > horizon {
			b.local.cancel(tat)
			b.stats.comeBacks.Add(1)
			if err := b.sleep(ctx, d-horizon, false, nil); err != nil {
				return err
			}
			continue
		}
		// Back on Redis, this server brings the slot: the call goes, and
		// the next may follow T later, without a burst.
		b.know(slot.UnixMicro()+b.clock.Load()+b.t+b.tau, 0)
		if b.onBook != nil {
			b.onBook(ctx, booking{slot: slot.UnixMicro(), wait: d, local: true}, p)
		}
		if d <= 0 {
			return nil
		}
		b.mu.Lock()
		pause := b.localPause
		b.mu.Unlock()
		err := b.sleep(ctx, d, b.fine, func(int64, int64) bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			return b.localPause.After(pause)
		})
		switch {
		case errors.Is(err, errPaused):
			b.local.cancel(tat)
			b.stats.rebooked.Add(1)
			continue
		case err != nil:
			b.local.cancel(tat)
			if !errors.Is(err, ErrClosed) {
				b.stats.abandoned.Add(1)
			}
			return err
		}
		return nil
	}
}

// localLimiter is GCRA on this process's clock, with emission interval t
// and burst tolerance tau: the budget of one server while Redis is
// unreachable.
type localLimiter struct {
	t, tau time.Duration

	mu  sync.Mutex // guards tat
	tat time.Time
}

// reserve books the next slot from now, and returns it and the tat the
// booking set.
func (l *localLimiter) reserve(now time.Time) (slot, tat time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	slot = now
	if s := l.tat.Add(-l.tau); s.After(slot) {
		slot = s
	}
	if slot.After(l.tat) {
		l.tat = slot
	}
	l.tat = l.tat.Add(l.t)
	return slot, l.tat
}

// cancel gives back the booking that set tat, when no booking came after
// it.
func (l *localLimiter) cancel(tat time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.tat.Equal(tat) {
		l.tat = tat.Add(-l.t)
	}
}

// seed makes the next slot no earlier than at.
func (l *localLimiter) seed(at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if at = at.Add(l.tau); at.After(l.tat) {
		l.tat = at
	}
}
