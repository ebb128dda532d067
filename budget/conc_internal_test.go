package budget

import (
	"context"
	"io"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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

// failRenewOnce fails the next renewal of slots with io.EOF (an outage),
// once armed.
type failRenewOnce struct{ armed *atomic.Bool }

func (h failRenewOnce) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h failRenewOnce) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if slices.Contains(cmd.Args(), any("renew")) && h.armed.CompareAndSwap(true, false) {
			cmd.SetErr(io.EOF)
			return io.EOF
		}
		return next(ctx, cmd)
	}
}
func (h failRenewOnce) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestSlotRenewedWhileSleeping: a reservation that took its concurrency
// slot, then slept to its rate slot for longer than a lease, had its slot
// renewed meanwhile: its lease runs from the latest renewal, so one
// renewal that fails does not count it lost (only a whole lease without
// Redis does).
func TestSlotRenewedWhileSleeping(t *testing.T) {
	_, rdb := redistest.Mini(t)
	var armed atomic.Bool
	rdb.AddHook(failRenewOnce{&armed})
	const slotLease = 300 * time.Millisecond
	b := New(rdb, "sleeper", Limit{Rate: 2}, &Options{Concurrency: 2, SlotLease: slotLease}) // an interval of 500ms
	defer b.Close()
	ctx := context.Background()
	r1, err := b.Reserve(ctx, Foreground, Cost{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r2, err := b.Reserve(ctx, Foreground, Cost{}) // holds a slot, sleeps to its rate slot
	if err != nil {
		t.Fatal(err)
	}
	if slept := time.Since(start); slept < slotLease {
		t.Fatalf("the second Reserve returned after %v; want it to sleep past a lease, %v", slept, slotLease)
	}
	var renewals atomic.Int32
	testHookRenewed = func(*Budget) { renewals.Add(1) }
	defer func() { testHookRenewed = nil }()
	armed.Store(true)
	// The failed renewal, then one that works.
	redistest.WaitFor(t, "a renewal failed and one after it", func() bool { return !armed.Load() && renewals.Load() >= 2 })
	for i, r := range []*Reservation{r1, r2} {
		if cause := context.Cause(r.Context()); cause != nil {
			t.Errorf("reservation %d: its slot lost (%v) after one failed renewal; want it held", i+1, cause)
		}
	}
	_ = r1.Done(ctx)
	_ = r2.Done(ctx)
}
