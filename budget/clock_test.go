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
	p := redistest.NewProxy(t, s.Addr())
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr(), ReadTimeout: time.Minute})
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

	p.HoldReplies()
	done := make(chan error, 1)
	var released time.Time
	go func() { done <- b.Wait(ctx, budget.Foreground) }()
	deadline := time.Now().Add(30 * time.Second)
	for p.Held() == 0 || redisNow(t, direct) <= next {
		if time.Now().After(deadline) {
			t.Fatal("the booking's reply was not held, or the slot did not pass")
		}
		time.Sleep(10 * time.Millisecond)
	}
	released = time.Now()
	p.ReleaseReplies()
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
