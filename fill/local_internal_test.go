package fill

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/notify"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestLocalBoundedBySize: the tier holds at most about Size values, however
// many keys are read.
func TestLocalBoundedBySize(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := New(rdb, &Options{Local: &LocalOptions{Size: 100}})
	defer c.Close()
	ctx := context.Background()
	for i := range 2000 {
		if _, err := Get(ctx, c, fmt.Sprint(i), func(context.Context) (int, error) { return i, nil }); err != nil {
			t.Fatal(err)
		}
	}
	c.local.values.CleanUp()
	if n := c.local.values.EstimatedSize(); n > 100 {
		t.Errorf("%d values kept with Size 100", n)
	}
}

// handDriven returns the local tier of a new Cache on miniredis, its
// fleet's flag in place, without heartbeats: a test drives it by hand.
func handDriven(t *testing.T) *local {
	_, rdb := redistest.Mini(t)
	c := New(rdb, &Options{Local: &LocalOptions{MaxStaleness: time.Hour}})
	t.Cleanup(func() { _ = c.Close() })
	l := c.local
	l.beats = false
	redistest.WaitFor(t, "the fleet's flag in place", func() bool { return l.confirmed.Load() != 0 })
	return l
}

// TestLocalIgnoresOlderInvalidation: an invalidation for an older entry
// does not evict a newer copy, and a read under way when a newer value was
// announced does not put its older copy back.
func TestLocalIgnoresOlderInvalidation(t *testing.T) {
	l := handDriven(t)
	base := time.UnixMilli(1_000_000)
	until := time.Now().Add(time.Hour)
	l.keep("k", 2, false, base.Add(2*time.Millisecond), time.Now(), until)
	l.message("s" + fmt.Sprint(base.Add(time.Millisecond).UnixMilli()) + " k")
	if v, _, ok := l.get("k"); !ok || v != 2 {
		t.Fatalf("an older invalidation evicted a newer copy: %v, %v", v, ok)
	}
	l.message("s" + fmt.Sprint(base.Add(3*time.Millisecond).UnixMilli()) + " k")
	if _, _, ok := l.get("k"); ok {
		t.Fatal("a newer invalidation did not evict the copy")
	}
	// A read of the entry created at +2ms finishes after the +3ms
	// invalidation: it must not be kept.
	l.keep("k", 2, false, base.Add(2*time.Millisecond), time.Now(), until)
	if _, _, ok := l.get("k"); ok {
		t.Fatal("a read older than an invalidation was kept")
	}
	l.keep("k", 4, false, base.Add(4*time.Millisecond), time.Now(), until)
	if v, _, ok := l.get("k"); !ok || v != 4 {
		t.Fatal("a read newer than the invalidation was not kept")
	}
	// After a possible loss of messages, reads sent before it are dropped.
	sent := time.Now()
	l.message("")
	l.keep("k", 5, false, base.Add(5*time.Millisecond), sent.Add(-time.Millisecond), until)
	if _, _, ok := l.get("k"); ok {
		t.Fatal("a read sent before messages may have been lost was kept")
	}
}

// TestLocalStoreAcrossWake: a store sent before the invalidations were
// known lost (a reconnect: Wake) is not kept as an in-process copy when
// its reply is handled after, as a read sent then is not: an invalidation
// lost meanwhile (another server's Delete) could not drop it.
func TestLocalStoreAcrossWake(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := New(rdb, &Options{Local: &LocalOptions{MaxStaleness: time.Second}})
	defer c.Close()
	redistest.WaitFor(t, "the fleet's flag placed", func() bool { return c.local.confirmed.Load() != 0 })
	ctx := context.Background()
	ks := c.keyset("k")
	tok := lease.NewToken()
	claimed := look{token: tok, sent: time.Now()}
	claimed.r, claimed.err = c.claim(ctx, ks, tok, modeRead, "")
	if claimed.err != nil || claimed.r.state != acquired {
		t.Fatalf("claim: %+v, %v", claimed.r, claimed.err)
	}
	o := typedOps[int](c.opt.Codec, nil)
	entry, v, err := c.entryOf("k", o, &claimed, 1, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	sc := c.storeCall(ks, &claimed, entry, time.Hour, time.Hour, v, false)
	s, err := c.settle(ctx, &sc.req) // stored in Redis; then, before the reply is handled:
	for !time.Now().After(sc.sent) {
	}
	c.local.message(notify.Wake)
	c.stored(&sc, s, err)
	if _, kept := c.local.values.GetIfPresent("k"); kept {
		t.Error("a store sent before a Wake is kept in the local tier; want it dropped, as a read sent then")
	}
	// A store sent after the Wake is kept.
	v2, err := Get(ctx, c, "k2", func(context.Context) (int, error) { return 2, nil })
	if _, kept := c.local.values.GetIfPresent("k2"); err != nil || v2 != 2 || !kept {
		t.Errorf("a store after the Wake: %v, %v, kept %v; want it kept", v2, err, kept)
	}
}

// TestLocalKeepRacingInvalidation: a read's copy kept at the moment its
// key's invalidation arrives (on the Hub's goroutine) never outlives it:
// either the invalidation finds the copy, or keep finds the invalidation's
// tomb once the copy is in place.
func TestLocalKeepRacingInvalidation(t *testing.T) {
	l := handDriven(t)
	base := time.UnixMilli(1_000_000)
	until := time.Now().Add(time.Hour)
	stale := 0
	for i := range 20000 {
		key := "k" + strconv.Itoa(i)
		sent := time.Now()
		start := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() { <-start; l.keep(key, 1, false, base, sent, until) })
		wg.Go(func() { <-start; l.invalidate(key, base.Add(time.Millisecond)) })
		close(start)
		wg.Wait()
		if _, _, ok := l.get(key); ok {
			stale++
		}
	}
	if stale > 0 {
		t.Errorf("%d of 20000 copies outlived an invalidation newer than them", stale)
	}
}

// TestLocalOwnStoreNotOverwritten: a read of an older entry of a key that
// finishes after this Cache stored a newer one (another flight of the key,
// of another type, or a refresh's store) is not kept over the store's copy:
// the store's own invalidation drops nothing, so the store leaves the mark
// a foreign one would.
func TestLocalOwnStoreNotOverwritten(t *testing.T) {
	l := handDriven(t)
	base := time.UnixMilli(1_000_000)
	until := time.Now().Add(time.Hour)
	sent := time.Now() // the older read was sent first
	newer := base.Add(2 * time.Millisecond)
	l.expect("k", newer)
	l.set("k", "new", false, newer, time.Now(), until)
	l.message(invalidation("k", newer)) // its own: drops nothing
	l.keep("k", "old", false, base, sent, until)
	if v, _, ok := l.get("k"); !ok || v != "new" {
		t.Errorf("the copy after an older read finished: %v, %v; want the store's, new", v, ok)
	}
}
