package budget

import (
	"context"
	"sync"
	"time"
)

// Booking is a slot a Budget booked, as the wait script returned it: the
// slot and the tat its booking set, in µs of the Redis clock, how long the
// caller was told to sleep, and whether a background call passed the share
// gate (a foreground booking lay in the future). A slot of the local limiter
// (Local) is in µs of this process's clock, and its TAT is 0.
type Booking struct {
	Slot, TAT int64
	Wait      time.Duration
	Priority  Priority
	Gated     bool
	Local     bool
	Key       int // with Options.Keys, the key booked: 1 + its index in the pool
}

// OnBook has f called with every slot b books. Set it before the first Wait.
func OnBook(b *Budget, f func(Booking)) {
	OnBookContext(b, func(_ context.Context, k Booking) { f(k) })
}

// OnBookContext has f called with every slot b books, on the goroutine of
// the Wait that booked it and with its ctx. Set it before the first Wait.
func OnBookContext(b *Budget, f func(context.Context, Booking)) {
	bookHooks.Store(b, f)
}

// bookHooks holds each watched Budget's f.
var bookHooks sync.Map

func init() {
	testHookBooked = func(b *Budget, ctx context.Context, r booking, p Priority) {
		if f, ok := bookHooks.Load(b); ok {
			f.(func(context.Context, Booking))(ctx, Booking{Slot: r.slot, TAT: r.tat, Wait: r.wait, Priority: p, Gated: r.gated, Local: r.local, Key: r.kidx})
		}
	}
}

// BackgroundInterval returns the least time between background slots while
// a foreground call waits.
func BackgroundInterval(b *Budget) time.Duration { return time.Duration(b.tb) * time.Microsecond }

// Horizon returns how far ahead b books background calls.
func Horizon(b *Budget) time.Duration { return time.Duration(b.horizon) * time.Microsecond }

// Key returns the name of b's hash in Redis.
func Key(b *Budget) string { return b.key }

// Slot returns the slot r booked, in µs of the Redis clock.
func Slot(r *Reservation) int64 { return r.r.slot }

// LearnCalls is U, the calls accepted that bring a learned rate back to
// where it was cut (Options.Adaptive).
const LearnCalls = learnCalls

// LearnKeep is the share of a learned rate a cut keeps.
const LearnKeep = learnKeep

// KeyID returns the id a credential of Options.Keys has in Redis.
func KeyID(cred string) string { return keyID(cred) }
