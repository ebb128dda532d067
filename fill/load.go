package fill

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/budgetctx"
	"github.com/locksmith-go/locksmith/internal/redisx"
	"github.com/locksmith-go/locksmith/observe"
)

// Running a loader: the budget, the upstream's rate limiting, and loads
// without the lock while Redis is unavailable.

// failOpen loads without the fleet-wide lock: Redis is unreachable.
func (c *Cache) failOpen(ctx, wctx context.Context, j *job, cause error) outcome {
	key := j.ks.name
	c.stats.failOpens.Add(1)
	c.event(ctx, observe.Event{Kind: observe.FailOpen, Key: key, Err: cause})
	c.mu.Lock()
	tell := !c.failedOpen
	c.failedOpen = true
	c.mu.Unlock()
	if tell {
		c.log("loading without the fleet-wide lock: redis unavailable", "err", cause)
	}
	out, _ := c.load(ctx, wctx, key, c.loader(j), budget.Foreground, j.cl.cost)
	if out.err != nil && c.closing(ctx) {
		return outcome{err: ErrClosed}
	}
	return out
}

// load runs the loader once its budget allows, again while the upstream
// rate-limits and its callers wait, and returns its outcome and how long
// the last call took. Each call of the loader runs under a reservation of
// cost in the budget, of priority p, carried by the loader's ctx and done
// when the loader returns. A load that nobody waits for any more (wctx
// ended) before it starts is not started, and its reservation is
// cancelled. key names the load in events and errors: a batch's is "a
// batch of N keys".
func (c *Cache) load(ctx, wctx context.Context, key string, run func(context.Context) (any, error), p budget.Priority, cost budget.Cost) (outcome, time.Duration) {
	bg := p == budget.Background
	bud := c.budget(ctx)
	for {
		lctx := ctx
		var res *budget.Reservation
		if bud != nil {
			var err error
			if res, err = c.reserve(ctx, wctx, bud, key, p, cost); err != nil {
				return outcome{err: err}, 0
			}
			lctx = budgetctx.WithReservation(ctx, res)
		} else if budget.FromContext(ctx) != nil {
			// Not the reservation of a load this one runs under.
			lctx = budgetctx.WithReservation(ctx, nil)
		}
		stop := func() {}
		if rc := res.Context(); res != nil && rc != wctx {
			// The reservation holds a concurrency slot: the load runs
			// under its lease, and ends when the fleet may have given
			// the slot to another call.
			lctx, stop = budgetctx.UnderSlot(lctx, rc)
		}
		start := time.Now()
		out := c.runReserved(lctx, run, res)
		took := time.Since(start)
		stop()
		if notCalled(out.err) {
			// No call was made: none counted, its reservation given back.
			if out.err == errNotStarted {
				out.err = ErrClosed
			}
			return out, 0
		}
		c.stats.loads.Add(1)
		loadErr := out.err
		if out.panicked != nil {
			loadErr = out.panicked
		}
		c.event(ctx, observe.Event{Kind: observe.Load, Key: key, Duration: took, Err: loadErr, Background: bg})
		var rle *budget.RateLimitedError
		if out.panicked != nil || !errors.As(out.err, &rle) {
			return out, took
		}
		c.stats.rateLimited.Add(1)
		if bud == nil || wctx.Err() != nil || ctx.Err() != nil {
			return out, took
		}
		// Pause every server for RetryAfter (one Per of the budget when
		// the upstream did not say; an Adaptive budget cuts its learned
		// rate instead), then load again when the budget allows.
		c.event(ctx, observe.Event{Kind: observe.Pause, Key: key, Duration: rle.RetryAfter})
		c.log("upstream rate-limited a load; telling the budget", "key", key, "retry_after", rle.RetryAfter)
		// With the load's reservation, a 429 for a call booked on a
		// schedule since respaced is told apart (see budget.PauseFor).
		if _, err := bud.PauseFor(budgetctx.WithReservation(ctx, res), out.err); err != nil {
			c.log("pausing the budget failed", "err", err)
		}
	}
}

// reserve books a loader call of cost in bud, within wctx. A reservation
// whose load is no longer wanted once it is granted (nobody waits any more,
// the Cache closed, the load's ctx ended) is cancelled: the call is not
// made.
func (c *Cache) reserve(ctx, wctx context.Context, bud *budget.Budget, key string, p budget.Priority, cost budget.Cost) (*budget.Reservation, error) {
	start := time.Now()
	res, err := bud.Reserve(wctx, p, cost)
	c.event(ctx, observe.Event{Kind: observe.BudgetWait, Key: key, Duration: time.Since(start), Err: err, Background: p == budget.Background})
	if err == nil {
		if err = context.Cause(ctx); err == nil {
			err = wctx.Err()
		}
		if err != nil {
			if cerr := res.Cancel(ctx); cerr != nil {
				c.log("cancelling a budget reservation failed", "key", key, "err", cerr)
			}
		}
	}
	if err != nil {
		if c.closing(ctx) {
			err = ErrClosed
		}
		return nil, fmt.Errorf("fill: %s: waiting for the budget: %w", redisx.Quote(key), err)
	}
	return res, nil
}

// runReserved runs the loader on ctx, then ends its reservation res, if
// not nil, as done: the call was made, whatever it returned (a panic and
// runtime.Goexit included), unless the loader said it made no call (see
// notCalled): then the reservation is cancelled, its slot given back. A
// load that returned a value tells the budget that the upstream accepted
// the call: an Adaptive budget counts it toward raising its learned rate,
// once per reservation (a loader that reported the response itself, as
// httpfill's does, loses nothing).
func (c *Cache) runReserved(ctx context.Context, run func(context.Context) (any, error), res *budget.Reservation) (out outcome) {
	if res != nil {
		defer func() {
			if notCalled(out.err) {
				if err := res.Cancel(ctx); err != nil {
					c.log("cancelling a budget reservation failed", "err", err)
				}
				return
			}
			if err := res.Done(ctx); err != nil {
				c.log("settling a budget reservation failed", "err", err)
			}
		}()
	}
	out = protect(ctx, run)
	if res != nil && out.err == nil && out.panicked == nil {
		_ = res.Observe(ctx, nil, http.StatusOK)
	}
	return out
}

// budget returns the budget the loads of a flight on ctx wait for: the one
// ctx carries (an httpfill Transport's), else Options.Budget.
func (c *Cache) budget(ctx context.Context) *budget.Budget {
	if b, ok := budgetctx.From(ctx); ok {
		return b
	}
	return c.opt.Budget
}
