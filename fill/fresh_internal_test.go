package fill

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestEarlyClaimRefusesNewerValue: an early refresh's claim carries the
// PTTL its reader saw; a value stored again since (another server's
// refresh: a longer PTTL), or deleted, is not claimed, so it is not loaded
// a second time right after that store. One read as it was is claimed.
func TestEarlyClaimRefusesNewerValue(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := New(rdb, &Options{TTL: time.Hour, EarlyRefresh: true})
	defer c.Close()
	ctx := context.Background()
	load := func(context.Context) (int, error) { return 1, nil }
	if _, err := Get(ctx, c, "k", load); err != nil {
		t.Fatal(err)
	}
	m.FastForward(40 * time.Minute)
	ks := c.keyset("k")
	o := typedOps[int](c.opt.Codec, nil)
	l := c.look(ctx, ks, lease.NewToken(), o, modeRead, "")
	if l.err != nil || l.r.pttl <= 0 {
		t.Fatalf("look: %+v, %v", l.r, l.err)
	}
	seen := fmt.Sprint(l.r.pttl.Milliseconds())
	claim := func() claimState {
		t.Helper()
		r, err := c.claim(ctx, ks, lease.NewToken(), modeEarly, seen)
		if err != nil {
			t.Fatal(err)
		}
		if r.state == acquired {
			_ = rdb.Del(ctx, ks.lock).Err()
		}
		return r.state
	}
	// Stored again by another server since the read: a fresh PTTL.
	if err := c.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if st := claim(); st == acquired {
		t.Error("an early refresh claimed a deleted value")
	}
	if _, err := Get(ctx, c, "k", load); err != nil {
		t.Fatal(err)
	}
	if st := claim(); st == acquired {
		t.Error("an early refresh claimed a value stored again since it was read")
	}
	// A value as it was read is claimed.
	m.FastForward(40 * time.Minute)
	l = c.look(ctx, ks, lease.NewToken(), o, modeRead, "")
	seen = fmt.Sprint(l.r.pttl.Milliseconds())
	if st := claim(); st != acquired {
		t.Errorf("an early refresh of the value as read: %v; want it claimed", st)
	}
}
