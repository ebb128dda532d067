package budget

import (
	"context"
	"strconv"
	"testing"

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
