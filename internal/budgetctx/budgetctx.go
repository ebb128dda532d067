// Package budgetctx carries in a context the budget that the loads of a
// fill flight started on it wait for, instead of their Cache's
// Options.Budget: an httpfill Transport's requests carry its own, so that
// its upstream calls obey its budget whatever the Cache holds.
package budgetctx

import (
	"context"
	"errors"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/budgetctx/reskey"
)

type key struct{}

// With returns a copy of ctx carrying b. A nil b undoes a budget carried by
// ctx: the Cache's then applies again.
func With(ctx context.Context, b *budget.Budget) context.Context {
	return context.WithValue(ctx, key{}, b)
}

// From returns the budget ctx carries, if any.
func From(ctx context.Context) (*budget.Budget, bool) {
	b, _ := ctx.Value(key{}).(*budget.Budget)
	return b, b != nil
}

// CacheBudget returns the budget a *fill.Cache's loads wait for when their
// context carries none (its Options.Budget), or nil; c is the *fill.Cache.
// Package fill sets it when it is initialised, so every importer of fill
// finds it set. It lets httpfill read a Cache's budget without the Cache
// exporting it.
var CacheBudget func(c any) *budget.Budget

// WithReservation returns a copy of ctx carrying r, the reservation a load
// runs under: budget.FromContext(ctx) returns it. A nil r undoes one
// carried by ctx.
func WithReservation(ctx context.Context, r *budget.Reservation) context.Context {
	return context.WithValue(ctx, reskey.Key{}, r)
}

// UnderSlot returns a copy of ctx that also ends, with cause
// budget.ErrSlotLost, when rc, the context of a reservation holding a
// concurrency slot (budget.Reservation.Context), ends because the slot was
// lost; stop stops watching rc and ends the copy. An upstream call made
// under a slot runs under it, as lock.Do's function runs under its lease:
// once the slot is lost, the fleet may have given it to another call. rc
// ending otherwise (Done, Cancel) leaves the copy alone: a response read
// after Done is still read.
func UnderSlot(ctx, rc context.Context) (sctx context.Context, stop context.CancelFunc) {
	sctx, cancel := context.WithCancelCause(ctx)
	unwatch := context.AfterFunc(rc, func() {
		if cause := context.Cause(rc); errors.Is(cause, budget.ErrSlotLost) {
			cancel(cause)
		}
	})
	return sctx, func() { unwatch(); cancel(nil) }
}
