package budget_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// kin returns each key's count of slots held, by credential, as Redis
// holds them.
func kin(t *testing.T, rdb redis.UniversalClient, b *budget.Budget, creds ...string) map[string]int64 {
	t.Helper()
	got := map[string]int64{}
	for _, c := range creds {
		n, err := rdb.HGet(context.Background(), budget.Key(b)+":kin", budget.KeyID(c)).Int64()
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			t.Fatal(err)
		default:
			got[c] = n
		}
	}
	return got
}

// emptySlots fails t unless no slot, place in line or key count is left
// (a caller that gave up leaves its place in the background: soon).
func emptySlots(t *testing.T, rdb redis.UniversalClient, b *budget.Budget) {
	t.Helper()
	ctx := context.Background()
	redistest.WaitFor(t, "no slot, place or count left", func() bool {
		n := int64(0)
		for _, k := range []string{":slots", ":queue", ":queued"} {
			n += rdb.ZCard(ctx, budget.Key(b)+k).Val()
		}
		for _, k := range []string{":kin", ":kheld"} {
			n += rdb.HLen(ctx, budget.Key(b)+k).Val()
		}
		return n == 0
	})
}

// reserveEach makes n reservations on b at once and returns them by key.
func reserveEach(t *testing.T, ctx context.Context, b *budget.Budget, n int) map[string][]*budget.Reservation {
	t.Helper()
	on := map[string][]*budget.Reservation{}
	for range n {
		r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err != nil {
			t.Fatal(err)
		}
		on[r.Key()] = append(on[r.Key()], r)
	}
	return on
}

// slotLost waits for the context of r, the reservation of what, to end
// (failing once ctx ends first), and checks that its Done says the slot
// was lost.
func slotLost(t *testing.T, ctx context.Context, r *budget.Reservation, what string) {
	t.Helper()
	select {
	case <-r.Context().Done():
	case <-ctx.Done():
		t.Fatalf("%s kept its slot: its context did not end", what)
	}
	if err := r.Done(ctx); !errors.Is(err, budget.ErrSlotLost) {
		t.Errorf("Done of %s: %v; want ErrSlotLost", what, err)
	}
}

// lineUp reserves a call on b in the background and returns where its
// reservation comes (nil on an error, reported); with s, it returns once
// the caller is in line, the queue of the budget named like b holding one.
func lineUp(t *testing.T, ctx context.Context, s *redistest.Server, b *budget.Budget) <-chan *budget.Reservation {
	t.Helper()
	got := make(chan *budget.Reservation, 1)
	go func() {
		r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err != nil {
			t.Error(err)
		}
		got <- r
	}()
	if s != nil {
		redistest.WaitFor(t, "a caller in line", func() bool {
			return s.Do(t, "ZCARD", budget.Key(b)+":queue") == int64(1)
		})
	}
	return got
}

// TestKeysConcurrencyPerKey: with Keys and Concurrency, each key holds at
// most Concurrency slots; a caller finding every key full waits in line and
// takes the slot of the key that frees one.
func TestKeysConcurrencyPerKey(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	keys := []string{"key-a", "key-b"}
	b := newBudget(t, rdb, "kconc", fast, &budget.Options{Keys: keys, Concurrency: 2})
	ctx := redistest.Context(t, 20*time.Second)
	held := reserveEach(t, ctx, b, 4)
	if len(held["key-a"]) != 2 || len(held["key-b"]) != 2 {
		t.Fatalf("four reservations on %d of key-a and %d of key-b; want 2 each", len(held["key-a"]), len(held["key-b"]))
	}
	if got := kin(t, rdb, b, keys...); got["key-a"] != 2 || got["key-b"] != 2 {
		t.Fatalf("slots held in Redis by key: %v; want 2 each", got)
	}
	got := lineUp(t, ctx, s, b)
	select {
	case r := <-got:
		t.Fatalf("a fifth Reserve got a slot on %q with every key full", r.Key())
	default:
	}
	if err := held["key-b"][0].Done(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r == nil {
		t.FailNow()
	}
	if r.Key() != "key-b" {
		t.Fatalf("the waiter got a slot on %q; want key-b, the key that freed one", r.Key())
	}
	if n := b.Stats().InFlight; n != 4 {
		t.Errorf("Stats().InFlight = %d; want 4", n)
	}
	for _, r := range append(append(held["key-a"], held["key-b"][1]), r) {
		if err := r.Done(ctx); err != nil {
			t.Fatal(err)
		}
	}
	emptySlots(t, rdb, b)
}

// TestKeysConcurrencyFleetCap: servers × goroutines reserving calls over
// three keys with a cap of N per key: the upstream never sees more than N
// calls at once on a key, and sees N on each. Paced: each key's rate lets
// more go than the cap, half the callers are background, and one 429
// pauses a key for a second mid-run, its sleepers moving to the others
// with their slots.
func TestKeysConcurrencyFleetCap(t *testing.T) {
	t.Run("unpaced", func(t *testing.T) { testKeysConcurrencyFleetCap(t, fast, 2*time.Millisecond, false) })
	t.Run("paced", func(t *testing.T) {
		testKeysConcurrencyFleetCap(t, budget.Limit{Rate: 300, Burst: 1}, 20*time.Millisecond, true)
	})
}

func testKeysConcurrencyFleetCap(t *testing.T, l budget.Limit, d time.Duration, paced bool) {
	s := redistest.Start(t, nil)
	const n, servers, goroutines, calls = 2, 3, 6, 10
	keys := []string{"key-a", "key-b", "key-c"}
	opt := &budget.Options{Keys: keys, Concurrency: n, SlotLease: 2 * time.Second}
	ups := map[string]*upstream{}
	for _, k := range keys {
		ups[k] = &upstream{}
	}
	var buds []*budget.Budget
	for range servers {
		buds = append(buds, newBudget(t, s.Client(t, nil), "kcap", l, opt))
	}
	ctx := redistest.Context(t, 30*time.Second)
	var wg sync.WaitGroup
	var paused atomic.Bool
	for _, b := range buds {
		for g := range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := budget.Foreground
				if paced && g%2 == 1 {
					p = budget.Background
				}
				for range calls {
					r, err := b.Reserve(ctx, p, budget.Cost{})
					if err != nil {
						t.Error(err)
						return
					}
					ups[r.Key()].call(d)
					if paced && r.Key() == "key-a" && paused.CompareAndSwap(false, true) {
						if err := r.Observe(ctx, rateLimited("1"), http.StatusTooManyRequests); err != nil {
							t.Error(err)
						}
					}
					if err := r.Done(ctx); err != nil {
						t.Error(err)
					}
				}
			}()
		}
	}
	wg.Wait()
	total := int64(0)
	for k, u := range ups {
		if m := u.most.Load(); m != n {
			t.Errorf("%s: the upstream saw %d calls at once; want %d", k, m, n)
		}
		total += u.calls.Load()
	}
	if total != servers*goroutines*calls {
		t.Errorf("%d calls; want %d", total, servers*goroutines*calls)
	}
	emptySlots(t, s.Client(t, nil), buds[0])
}

// TestKeysConcurrencyMovesOnPause: a reservation sleeping for its rate slot
// holds a concurrency slot on its key; when that key is paused it books
// again on another key with room, and its slot moves with it.
func TestKeysConcurrencyMovesOnPause(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	keys := []string{"key-a", "key-b"}
	b := newBudget(t, rdb, "kmove", budget.Limit{Rate: 1}, &budget.Options{Keys: keys, Concurrency: 2})
	ctx := redistest.Context(t, 20*time.Second)
	on := map[string]*budget.Reservation{}
	for k, rs := range reserveEach(t, ctx, b, 2) {
		on[k] = rs[0]
	}
	if len(on) != 2 {
		t.Fatalf("two reservations on %d keys; want one each", len(on))
	}
	got := lineUp(t, ctx, nil, b)
	// The third sleeps for the next slot of a key, holding a slot on it.
	var first string
	redistest.WaitFor(t, "a third slot held", func() bool {
		k := kin(t, rdb, b, keys...)
		for _, c := range keys {
			if k[c] == 2 {
				first = c
			}
		}
		return first != ""
	})
	if err := on[first].Observe(ctx, rateLimited("30"), http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r == nil {
		t.FailNow()
	}
	other := "key-a"
	if first == other {
		other = "key-b"
	}
	if r.Key() != other {
		t.Fatalf("after %s was paused the sleeper went on %q; want %s", first, r.Key(), other)
	}
	if k := kin(t, rdb, b, keys...); k[first] != 1 || k[other] != 2 {
		t.Fatalf("slots held by key: %v; want %s 1, %s 2", k, first, other)
	}
	for _, x := range []*budget.Reservation{on[first], on[other], r} {
		if err := x.Done(ctx); err != nil {
			t.Fatal(err)
		}
	}
	emptySlots(t, rdb, b)
}

// TestKeysConcurrencyRemoved: a removed key's slots count no more as free:
// a waiter does not get one when its holder is done, only when a live key
// frees one; with every key removed, Reserve fails and leaves nothing in
// Redis.
func TestKeysConcurrencyRemoved(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	keys := []string{"key-a", "key-b"}
	b := newBudget(t, rdb, "kremoved", fast, &budget.Options{Keys: keys, Concurrency: 1})
	ctx := redistest.Context(t, 20*time.Second)
	on := map[string]*budget.Reservation{}
	for k, rs := range reserveEach(t, ctx, b, 2) {
		on[k] = rs[0]
	}
	got := lineUp(t, ctx, s, b)
	if err := b.Remove(ctx, "key-a"); err != nil {
		t.Fatal(err)
	}
	if err := on["key-a"].Done(ctx); err != nil {
		t.Fatal(err)
	}
	// The waiter is not let through: key-a is gone. Its next look (a
	// renewal of the line's leases) would show it.
	if ok := b.Stats().InFlight; ok != 1 {
		t.Fatalf("Stats().InFlight = %d after key-a's holder was done; want 1", ok)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	select {
	case r := <-got:
		t.Fatalf("the waiter got a slot on %q with key-a removed and key-b full", r.Key())
	case <-short.Done():
	}
	if err := on["key-b"].Done(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r == nil {
		t.FailNow()
	}
	if r.Key() != "key-b" {
		t.Fatalf("the waiter got %q; want key-b", r.Key())
	}
	if err := r.Done(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Remove(ctx, "key-b"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Reserve(ctx, budget.Foreground, budget.Cost{}); !errors.Is(err, budget.ErrNoKeys) {
		t.Fatalf("Reserve with every key removed: %v; want ErrNoKeys", err)
	}
	emptySlots(t, rdb, b)
}

// TestKeysConcurrencyRoundTrips: an uncontended Reserve and Done on a pool
// with a cap per key cost one round trip each, as without the pool.
func TestKeysConcurrencyRoundTrips(t *testing.T) {
	s := redistest.Start(t, nil)
	cnt := &counter{n: make(map[string]int)}
	rdb := s.Client(t, nil)
	rdb.AddHook(cnt)
	keys := make([]string, 20)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%02d", i)
	}
	b := newBudget(t, rdb, "krtt", fast, &budget.Options{Keys: keys, Concurrency: 3})
	ctx := redistest.Context(t, 20*time.Second)
	for i := range 5 {
		if i == 1 {
			cnt.take() // the scripts are loaded, the keys announced
		}
		r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Done(ctx); err != nil {
			t.Fatal(err)
		}
	}
	got := cnt.take()
	for _, k := range []string{"publish", "hello", "client", "ping"} {
		delete(got, k)
	}
	if got["evalsha"] != 8 || len(got) != 1 {
		t.Errorf("commands for 4 Reserves and Dones: %v; want evalsha: 8 and nothing else", got)
	}
	emptySlots(t, rdb, b)
}

// TestKeysConcurrencyStateLost: when Redis loses one of a pool's
// concurrency keys and not the others (an eviction), the counts are made
// those of the holders again: a lost count does not let a key over its
// cap, a lost holder list or slot list does not leave keys full for ever.
func TestKeysConcurrencyStateLost(t *testing.T) {
	for _, tc := range []struct {
		lost string
		// free: a new Reserve gets a slot at once; else it waits.
		free bool
	}{
		{":kin", false},
		{":kheld", true},
		{":slots", true},
	} {
		t.Run(tc.lost[1:], func(t *testing.T) {
			s := redistest.Start(t, nil)
			rdb := s.Client(t, nil)
			keys := []string{"key-a", "key-b"}
			const lease = 300 * time.Millisecond
			b := newBudget(t, rdb, "klost", fast, &budget.Options{Keys: keys, Concurrency: 1, SlotLease: lease})
			ctx := redistest.Context(t, 20*time.Second)
			var held []*budget.Reservation
			for _, rs := range reserveEach(t, ctx, b, 2) {
				held = append(held, rs...)
			}
			if err := rdb.Del(ctx, budget.Key(b)+tc.lost).Err(); err != nil {
				t.Fatal(err)
			}
			short, cancel := context.WithTimeout(ctx, lease)
			defer cancel()
			r, err := b.Reserve(short, budget.Foreground, budget.Cost{})
			switch {
			case !tc.free && err == nil:
				t.Fatalf("with %s lost, a third Reserve got a slot on %q while both keys' are held", tc.lost, r.Key())
			case !tc.free && !errors.Is(err, context.DeadlineExceeded):
				t.Fatalf("with %s lost, a third Reserve: %v; want it to wait past its deadline", tc.lost, err)
			case !tc.free:
				if got := kin(t, rdb, b, keys...); got["key-a"] != 1 || got["key-b"] != 1 {
					t.Fatalf("counts after %s was lost: %v; want 1 each, as held", tc.lost, got)
				}
				for _, r := range held {
					if err := r.Done(ctx); err != nil {
						t.Fatal(err)
					}
				}
			case err != nil:
				t.Fatalf("with %s lost, a third Reserve: %v; want a slot (the holders' keys are unknown: they lose theirs)", tc.lost, err)
			default:
				for _, h := range held {
					slotLost(t, ctx, h, "a holder Redis forgot")
				}
				if err := r.Done(ctx); err != nil {
					t.Fatal(err)
				}
			}
			emptySlots(t, rdb, b)
		})
	}
}

// TestKeysConcurrencyIndexLost: when the pool's index is gone (its hour
// out, FLUSHALL of it) while every caller waits, a holder's Done still
// lets the head of the line through, which makes the index again: no wait
// for a lease to run out.
func TestKeysConcurrencyIndexLost(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	keys := []string{"key-a", "key-b"}
	b := newBudget(t, rdb, "kindex", fast, &budget.Options{Keys: keys, Concurrency: 1, SlotLease: time.Minute})
	ctx := redistest.Context(t, 20*time.Second)
	on := map[string]*budget.Reservation{}
	for k, rs := range reserveEach(t, ctx, b, 2) {
		on[k] = rs[0]
	}
	got := lineUp(t, ctx, s, b)
	if err := rdb.Del(ctx, budget.Key(b)+":keys").Err(); err != nil {
		t.Fatal(err)
	}
	if err := on["key-a"].Done(ctx); err != nil {
		t.Fatal(err)
	}
	wait, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	select {
	case r := <-got:
		if r == nil {
			t.FailNow()
		}
		if r.Key() != "key-a" {
			t.Fatalf("the waiter got %q; want key-a, the key freed", r.Key())
		}
		if err := r.Done(ctx); err != nil {
			t.Fatal(err)
		}
	case <-wait.Done():
		t.Fatal("the waiter was not let through within 5s of a Done (the lease is a minute)")
	}
	if err := on["key-b"].Done(ctx); err != nil {
		t.Fatal(err)
	}
	emptySlots(t, rdb, b)
}

// TestKeysConcurrencyCloseFrees: a server that closes gives its slots on
// every key back at once: a caller waiting on another server gets one
// well before the lease would have run out.
func TestKeysConcurrencyCloseFrees(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	keys := []string{"key-a", "key-b"}
	opt := &budget.Options{Keys: keys, Concurrency: 1, SlotLease: time.Minute}
	a := budget.New(s.Client(t, nil), "kclose", fast, opt)
	b := newBudget(t, rdb, "kclose", fast, opt)
	ctx := redistest.Context(t, 20*time.Second)
	var held []*budget.Reservation
	for _, rs := range reserveEach(t, ctx, a, 2) {
		held = append(held, rs...)
	}
	got := lineUp(t, ctx, s, b)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	for _, r := range held {
		if err := r.Done(ctx); !errors.Is(err, budget.ErrSlotLost) {
			t.Errorf("Done after Close: %v; want ErrSlotLost", err)
		}
	}
	wait, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	select {
	case r := <-got:
		if r == nil {
			t.FailNow()
		}
		if got := kin(t, rdb, b, keys...); got[r.Key()] != 1 || len(got) != 1 {
			t.Fatalf("slots held by key after the close: %v; want only the waiter's, on %s", got, r.Key())
		}
		if err := r.Done(ctx); err != nil {
			t.Fatal(err)
		}
	case <-wait.Done():
		t.Fatal("the waiter got no slot within 5s of the holder's Close (the lease is a minute)")
	}
	emptySlots(t, rdb, b)
}

// TestKeysConcurrencyLostLease: a holder whose server can no longer reach
// Redis (a crash, a partition) loses its slot when its lease runs out: the
// key's count drops with it, and a caller waiting on another server gets
// the slot on that key.
func TestKeysConcurrencyLostLease(t *testing.T) {
	s := redistest.Start(t, nil)
	p := redistest.NewProxy(t, s.Addr())
	rdb := s.Client(t, nil)
	const lease = 300 * time.Millisecond
	opt := &budget.Options{Keys: []string{"key-a"}, Concurrency: 1, SlotLease: lease}
	a := newBudget(t, redistest.Client(t, p.Addr()), "klost-lease", fast, opt)
	b := newBudget(t, rdb, "klost-lease", fast, opt)
	ctx := redistest.Context(t, 10*time.Second)
	r, err := a.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	p.Refuse(true)
	p.DropAll()
	other, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	if got := kin(t, rdb, b, "key-a"); got["key-a"] != 1 {
		t.Fatalf("key-a's count with the lost holder's slot taken over: %v; want 1", got)
	}
	slotLost(t, ctx, r, "the holder whose lease ran out")
	if err := other.Done(ctx); err != nil {
		t.Fatal(err)
	}
	emptySlots(t, rdb, b)
}

// TestRemoveLastKeyWhileInLine: callers in line for a concurrency slot
// when every key of their server is removed fail with ErrNoKeys, however
// far back in line. Only the head of the line (which looks again at the
// earliest lease's end) did: with no key left no slot is ever freed, so no
// wake-up came, and the others waited for good.
func TestRemoveLastKeyWhileInLine(t *testing.T) {
	s := redistest.Start(t, nil)
	b := newBudget(t, s.Client(t, nil), "last-key", fast,
		&budget.Options{Keys: []string{"key-a"}, Concurrency: 1, SlotLease: 300 * time.Millisecond})
	ctx := redistest.Context(t, 20*time.Second)
	h, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	for i := range 2 {
		go func() {
			_, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
			errs <- err
		}()
		redistest.WaitFor(t, "in line", func() bool { return s.Do(t, "ZCARD", budget.Key(b)+":queue") == int64(i+1) })
	}
	if err := b.Remove(ctx, "key-a"); err != nil {
		t.Fatal(err)
	}
	_ = h.Done(ctx)
	for i := range 2 {
		select {
		case err := <-errs:
			if !errors.Is(err, budget.ErrNoKeys) {
				t.Errorf("a caller in line: %v; want ErrNoKeys", err)
			}
		case <-time.After(5 * time.Second): // 16 leases
			t.Fatalf("caller %d of 2 in line still waits 5 s after every key was removed", i+1)
		}
	}
}

// TestRemoveKeyWhileBookingInLine: a caller whose booking put it in line
// as the pool's last key was removed (the booking ran in Redis, its reply
// still on its way) fails with ErrNoKeys once the reply comes. It used to
// watch for removals only from the reply on: the removal, already past,
// went unseen, and the caller, second in line, waited for a wake-up that
// no one would send.
func TestRemoveKeyWhileBookingInLine(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	// A lease longer than the test: no renewal, no lease's end, wakes the
	// callers in line.
	b := newBudget(t, rdb, "last-key-booking", fast,
		&budget.Options{Keys: []string{"key-a"}, Concurrency: 1, SlotLease: time.Minute})
	ctx := redistest.Context(t, 20*time.Second)
	h, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Done(ctx)
	errs := make(chan error, 2)
	reserve := func() {
		_, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
		errs <- err
	}
	go reserve()
	redistest.WaitFor(t, "the first caller in line", func() bool { return s.Do(t, "ZCARD", budget.Key(b)+":queue") == int64(1) })
	gate := redistest.NewHoldScript("last-key-booking")
	gate.Ran = true
	rdb.AddHook(gate)
	go reserve()
	select {
	case <-gate.Held:
	case <-time.After(10 * time.Second):
		t.Fatal("the second booking was not held")
	}
	if n := s.Do(t, "ZCARD", budget.Key(b)+":queue"); n != int64(2) {
		t.Fatalf("%v callers in line with the second booking's reply held; want 2", n)
	}
	if err := b.Remove(ctx, "key-a"); err != nil {
		t.Fatal(err)
	}
	close(gate.Release)
	for i := range 2 {
		select {
		case err := <-errs:
			if !errors.Is(err, budget.ErrNoKeys) {
				t.Errorf("a caller in line: %v; want ErrNoKeys", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("caller %d of 2 in line still waits 5 s after every key was removed", i+1)
		}
	}
}

// TestNoKeyLeavesLine: a caller in line that fails with ErrNoKeys (its
// server's keys all removed) leaves the fleet's line at once: the caller
// behind it, on a server with another key, gets that key's free slot. Its
// place stayed in Redis until its lease ran out, and the free slot with it.
func TestNoKeyLeavesLine(t *testing.T) {
	s := redistest.Start(t, nil)
	const lease = 3 * time.Second
	a := newBudget(t, s.Client(t, nil), "no-key-line", fast, &budget.Options{Keys: []string{"key-a"}, Concurrency: 1, SlotLease: lease})
	b := newBudget(t, s.Client(t, nil), "no-key-line", fast, &budget.Options{Keys: []string{"key-a", "key-b"}, Concurrency: 1, SlotLease: lease})
	ctx := redistest.Context(t, 20*time.Second)
	ha, err := a.Reserve(ctx, budget.Foreground, budget.Cost{}) // key-a
	if err != nil {
		t.Fatal(err)
	}
	hb, err := b.Reserve(ctx, budget.Foreground, budget.Cost{}) // key-b
	if err != nil || hb.Key() != "key-b" {
		t.Fatalf("second reservation: key %q, %v; want key-b", hb.Key(), err)
	}
	aErr := make(chan error, 1)
	go func() { _, err := a.Reserve(ctx, budget.Foreground, budget.Cost{}); aErr <- err }()
	redistest.WaitFor(t, "a caller of A in line", func() bool { return s.Do(t, "ZCARD", budget.Key(b)+":queue") == int64(1) })
	got := make(chan *budget.Reservation, 1)
	go func() {
		r, _ := b.Reserve(ctx, budget.Foreground, budget.Cost{})
		got <- r
	}()
	redistest.WaitFor(t, "a caller of B behind it", func() bool { return s.Do(t, "ZCARD", budget.Key(b)+":queue") == int64(2) })
	if err := b.Remove(ctx, "key-a"); err != nil {
		t.Fatal(err)
	}
	if err := <-aErr; !errors.Is(err, budget.ErrNoKeys) {
		t.Errorf("A's caller: %v; want ErrNoKeys", err)
	}
	_ = ha.Done(ctx)
	if err := hb.Done(ctx); err != nil { // frees key-b's slot
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if r == nil {
			t.Fatal("B's caller got no reservation")
		}
		_ = r.Done(ctx)
	case <-time.After(lease / 2):
		t.Fatal("key-b's free slot went unused behind a caller that had failed")
	}
}
