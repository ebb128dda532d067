package budget

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestShiftKey: a call on a key of a pool that left late moves that key's
// schedule alone (its hash's tat, and its summary in the pool's index), and
// this server's Waits sleeping on the key move their slots with it.
func TestShiftKey(t *testing.T) {
	m, rdb := redistest.Mini(t)
	b := New(rdb, "shift-keys", Limit{Rate: 10}, &Options{Keys: []string{"key-a", "key-b"}})
	t.Cleanup(func() { _ = b.Close() })
	ctx := context.Background()
	var rs []*Reservation
	for range 2 {
		r, err := b.Reserve(ctx, Foreground, Cost{})
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	k, other := rs[0].r.kidx, rs[1].r.kidx
	tat := func(k int) int64 {
		n, _ := strconv.ParseInt(m.HGet(b.pool.hashes[k-1], "tat"), 10, 64)
		return n
	}
	before, otherBefore := tat(k), tat(other)
	b.shiftKey(ctx, k, rs[0].r.slot, 30000)
	if got := tat(k); got != before+30000 {
		t.Fatalf("the key's tat = %d after a shift of 30ms; want %d", got, before+30000)
	}
	if got := tat(other); got != otherBefore {
		t.Fatalf("the other key's tat moved from %d to %d; want it unmoved", otherBefore, got)
	}
	score, err := m.ZScore(b.pool.zset, b.pool.ids[k-1])
	if err != nil || int64(score) != before+30000-b.tau {
		t.Fatalf("the key's summary = %v (%v); want %d", score, err, before+30000-b.tau)
	}
	// A Wait sleeping on a later slot of the key, booked before the
	// shift, moves its slot by it, in place; one on the other key does not.
	slot := rs[0].r.slot + 100000
	if moved, _, ok := b.stretchOf(k, slot, rs[0].r.slot); !ok || moved != slot+30000 {
		t.Fatalf("a slot of the key after the late call moved to %d (ok %v); want %d", moved, ok, slot+30000)
	}
	if moved, _, ok := b.stretchOf(other, slot, rs[0].r.slot); !ok || moved != slot {
		t.Fatalf("a slot of the other key moved to %d (ok %v); want it unmoved", moved, ok)
	}
	if b.keyMoved(booking{kidx: k, slot: slot}, rs[0].r.slot) {
		t.Fatal("a Wait on the key is told to book again after a shift; want it to move in place")
	}
}

// TestKeyArgsMemory: a booking of a pool sends what this server remembers
// of a key (its latest tat, to stand in for one Redis lost) only for keys
// whose tat lies ahead of the Redis clock, each with its place among the
// keys sent; and after FLUSHALL the script books a key from that memory
// when it is ahead, and afresh when it is past.
func TestKeyArgsMemory(t *testing.T) {
	m, rdb := redistest.Mini(t)
	b := New(rdb, "key-args", Limit{Rate: 10}, &Options{Keys: []string{"key-a", "key-b", "key-c"}})
	t.Cleanup(func() { _ = b.Close() })
	now := time.Now().UnixMicro() + b.clock.Load()
	b.pool.mu.Lock()
	b.pool.keys[0].mine = now - 5000000 // in the past: left out
	b.pool.keys[1].mine, b.pool.keys[1].respacedAt = now+60000000, 42
	b.pool.mu.Unlock()
	_, args, cand := b.keyArgs(nil, 0)
	if len(cand) != 3 {
		t.Fatalf("%d keys sent; want 3", len(cand))
	}
	mem, _ := args[len(args)-3].([]byte)
	if want := ",2:" + strconv.FormatInt(now+60000000, 10) + ":42"; string(mem) != want {
		t.Fatalf("the memory sent = %q; want %q", mem, want)
	}
	// Redis loses everything: the key remembered books from this
	// server's memory, a minute out (beyond the caller's patience); the
	// one remembered in the past goes at once.
	one := New(rdb, "key-args-one", Limit{Rate: 10}, &Options{Keys: []string{"key-b"}})
	t.Cleanup(func() { _ = one.Close() })
	for _, ahead := range []bool{false, true} {
		at := time.Now().UnixMicro() + one.clock.Load() - 5000000
		if ahead {
			at += 65000000
		}
		one.pool.mu.Lock()
		one.pool.keys[0].mine = at
		one.pool.mu.Unlock()
		m.FlushAll()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r, err := one.Reserve(ctx, Foreground, Cost{})
		cancel()
		switch {
		case ahead && (!errors.Is(err, context.DeadlineExceeded) || one.Stats().Refused != 1):
			t.Fatalf("after FLUSHALL, a key this server remembers booked a minute ahead: %v (%d refused); want it refused at once, its slot past the caller's deadline", err, one.Stats().Refused)
		case !ahead && err != nil:
			t.Fatalf("after FLUSHALL, a key remembered in the past: %v; want a slot at once", err)
		case !ahead:
			_ = r.Done(context.Background())
		}
	}
}
