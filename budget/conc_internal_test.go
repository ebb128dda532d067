package budget

import (
	"context"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestRenewRacingABooking: a slot taken by a booking that Redis ran after
// a renewal that did not find it yet (the caller was about to book when the
// renewal was sent) is held, not lost, when the renewal's reply comes.
func TestRenewRacingABooking(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := New(rdb, "race", Limit{Rate: 1000, Burst: 1000}, &Options{Concurrency: 1})
	defer b.Close()
	ctx := context.Background()
	w := b.wantOf(Cost{})
	w.cid = b.conc.newID()
	var rctx context.Context
	testHookRenewed = func(*Budget) {
		testHookRenewed = nil
		r, err := b.book(ctx, Foreground, 0, w)
		if err != nil || r.kind != booked {
			t.Fatalf("booking: %+v, %v", r, err)
		}
		rctx = b.conc.took(ctx, w.cid, time.Now())
	}
	defer func() { testHookRenewed = nil }()
	if !b.renew() {
		t.Fatal("renewal failed")
	}
	if rctx == nil {
		t.Fatal("the hook did not run")
	}
	if err := context.Cause(rctx); err != nil {
		t.Fatalf("the slot taken during the renewal was counted lost: %v", err)
	}
	if b.inFlight() != 1 {
		t.Fatalf("InFlight %d, want 1", b.inFlight())
	}
}
