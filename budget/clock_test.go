package budget_test

import (
	"context"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// TestSlowReplyDoesNotDelayTheSlot: a server sleeps to its slot by the lead
// of the Redis clock it learned from its fastest reply, not for the wait a
// reply states from the moment the reply arrived. A reply held back past its
// slot lets the call go at once; it used to sleep the whole wait again,
// going an interval late (and the upstream then saw that call close to the
// next one).
func TestSlowReplyDoesNotDelayTheSlot(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr()})
	t.Cleanup(func() { rdb.Close() })
	direct := redis.NewClient(&redis.Options{Addr: s.Addr()})
	t.Cleanup(func() { direct.Close() })

	const T = 2 * time.Second
	b := budget.New(rdb, "slow-reply", budget.Limit{Rate: 1, Per: T, Burst: 1}, nil)
	t.Cleanup(func() { b.Close() })
	var slots []int64
	budget.OnBook(b, func(k budget.Booking) { slots = append(slots, k.Slot) })
	ctx := context.Background()
	if err := b.Wait(ctx, budget.Foreground); err != nil {
		t.Fatal(err)
	}
	if len(slots) != 1 {
		t.Fatalf("%d bookings; want 1", len(slots))
	}
	next := slots[0] + T.Microseconds()

	// The next booking runs in Redis at once; its reply is held until the
	// slot it booked has passed. (A proxy holding replies held, on a busy
	// host, the handshake of a connection the pool dialed for the booking:
	// the booking then went out after its slot.)
	gate := redistest.NewHoldScript("slow-reply")
	gate.Ran = true
	rdb.AddHook(gate)
	done := make(chan error, 1)
	go func() { done <- b.Wait(ctx, budget.Foreground) }()
	select {
	case <-gate.Held:
	case err := <-done:
		t.Fatalf("Wait returned %v before its booking was held", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the booking's reply was not held")
	}
	if tat, _ := direct.HGet(ctx, budget.Key(b), "tat").Int64(); tat != next+T.Microseconds() {
		t.Fatalf("the call held left the tat at %d; want the booking's, %d", tat, next+T.Microseconds())
	}
	redistest.WaitFor(t, "the booked slot to pass on the Redis clock", func() bool { return redisNow(t, direct) > next })
	released := time.Now()
	close(gate.Release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(slots) != 2 || slots[1] != next {
		t.Fatalf("slots %v; want the second at %d", slots, next)
	}
	// The slot had passed when the reply came: the call goes at once. The
	// old code slept the reply's stated wait, T, after it arrived.
	if took := time.Since(released); took > T/2 {
		t.Errorf("Wait returned %v after its reply, its slot already past; want at once (the stated wait was %v)", took, T)
	}
}

// TestCloseGivesBackAbandonedBooking: a Wait whose ctx ends while its
// booking is on its way gives the slot back when the reply comes, and Close
// waits for that. It used to give it back on a goroutine Close did not wait
// for: Close returned with the booking still to come, and the give-back then
// reached a client its owner may have closed.
func TestCloseGivesBackAbandonedBooking(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr()})
	t.Cleanup(func() { rdb.Close() })
	direct := redis.NewClient(&redis.Options{Addr: s.Addr()})
	t.Cleanup(func() { direct.Close() })

	// One call a minute: a slot not given back keeps the next caller out.
	limit := budget.Limit{Rate: 1, Per: time.Minute, Burst: 1}
	b := budget.New(rdb, "abandoned", limit, nil)
	bg := context.Background()
	gate := redistest.NewHoldScript("abandoned")
	rdb.AddHook(gate)
	ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
	defer cancel()
	if err := b.Wait(ctx, budget.Foreground); err == nil {
		t.Fatal("Wait returned nil with its booking held back")
	}
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	// The booking is still on its way: Close waits for it (the duration
	// under test).
	select {
	case <-closed:
		t.Fatal("Close returned with a booking on its way; its slot would not be given back")
	case <-time.After(300 * time.Millisecond):
	}
	close(gate.Release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	// Given back: another server books the minute's only slot at once.
	other := budget.New(direct, "abandoned", limit, nil)
	defer other.Close()
	octx, ocancel := context.WithTimeout(bg, 2*time.Second)
	defer ocancel()
	if err := other.Wait(octx, budget.Foreground); err != nil {
		t.Fatalf("the abandoned booking's slot was not given back by Close's end: %v", err)
	}
}
