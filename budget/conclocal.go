package budget

import (
	"context"
	"time"
)

// acquireLocal takes a slot of the local cap, max(1, Concurrency/FleetSize),
// while Redis is unreachable. The slots this server holds in Redis count in
// it while their leases run: the fleet counts them until then, and their
// calls are still in flight.
func (b *Budget) acquireLocal(ctx context.Context) error {
	c := b.conc
	backs := b.backs.Load()
	for {
		b.mu.Lock()
		back := b.paused // closed, among others, when Redis is back
		b.mu.Unlock()
		if b.backs.Load() != backs {
			// Redis is back: the slot is taken there, where the
			// servers back on Redis see it.
			return errBackOnRedis
		}
		now := time.Now()
		c.mu.Lock()
		held, next := 0, time.Duration(-1)
		for _, h := range c.held {
			if left := h.end.Sub(now); left > 0 {
				held++
				if next < 0 || left < next {
					next = left
				}
			}
		}
		if c.localUsed+held < c.localCap {
			c.localUsed++
			c.mu.Unlock()
			c.out.Add(1)
			return nil
		}
		if c.localChanged == nil {
			c.localChanged = make(chan struct{})
		}
		changed := c.localChanged
		c.mu.Unlock()
		if err := b.awaitLocal(ctx, changed, back, next); err != nil {
			return err
		}
	}
}

// awaitLocal waits until changed or back is closed, for d when d >= 0 (a
// held slot's lease ends then), or until ctx ends or the Budget closes.
func (b *Budget) awaitLocal(ctx context.Context, changed, back <-chan struct{}, d time.Duration) error {
	var leaseEnd <-chan time.Time
	if d >= 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		leaseEnd = t.C
	}
	select {
	case <-changed:
	case <-back:
	case <-leaseEnd:
	case <-ctx.Done():
		return ctx.Err()
	case <-b.done:
		return ErrClosed
	}
	return nil
}

// releaseLocal gives back a slot of the local cap.
func (b *Budget) releaseLocal() {
	c := b.conc
	c.mu.Lock()
	c.localUsed--
	c.localChange()
	c.mu.Unlock()
	c.out.Add(-1)
}

// localChange wakes the callers waiting for the local cap. c.mu must be
// held.
func (c *conc) localChange() {
	if c.localChanged != nil {
		close(c.localChanged)
		c.localChanged = nil
	}
}
