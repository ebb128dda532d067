package fill_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestNoLocalTierPublishesNoInvalidation: in a fleet without a local tier,
// a store publishes only to the key's waiters, and a Delete publishes no
// invalidation and keeps no stamp; once a server has a local tier, both
// publish their invalidation.
func TestNoLocalTierPublishesNoInvalidation(t *testing.T) {
	s := redistest.Start(t, nil)
	a := newCache(t, s.Client(t, nil), nil)
	ctx := redistest.Context(t, 20*time.Second)
	load := func(context.Context) (int, error) { return 1, nil }
	set := commandCalls(t, s, "set")
	n := published(t, s, func() {
		if _, err := fill.Get(ctx, a, "k", load); err != nil {
			t.Fatal(err)
		}
		// The lock and the value; no stamp.
		if n := commandCalls(t, s, "set") - set; n != 2 {
			t.Errorf("a miss without a local tier ran SET %d times; want 2 (lock, value)", n)
		}
		if err := a.Delete(ctx, "k"); err != nil {
			t.Fatal(err)
		}
	})
	if n != 2 {
		t.Errorf("a store and a delete without a local tier published %d messages; want 2 (to the waiters)", n)
	}

	newCache(t, s.Client(t, nil), &fill.Options{Local: &fill.LocalOptions{MaxStaleness: time.Minute}})
	rdb := s.Client(t, nil)
	redistest.WaitFor(t, "the local tier's flag", func() bool { return rdb.Exists(ctx, "__locksmith:local").Val() == 1 })
	n = published(t, s, func() {
		if _, err := fill.Get(ctx, a, "k", load); err != nil {
			t.Fatal(err)
		}
		if err := a.Delete(ctx, "k"); err != nil {
			t.Fatal(err)
		}
	})
	if n != 4 {
		t.Errorf("a store and a delete with a local tier in the fleet published %d messages; want 4", n)
	}
}

// published returns how many messages were published while do ran, the
// Hubs' heartbeats (channels __locksmith:hub:*) left out: a subscriber to
// every channel counts them up to a marker published after do.
func published(t *testing.T, s *redistest.Server, do func()) int {
	t.Helper()
	ctx := redistest.Context(t, 10*time.Second)
	sub := s.Client(t, nil).PSubscribe(ctx, "*")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	do()
	marker := fmt.Sprintf("__test:marker:%d", time.Now().UnixNano())
	if err := s.Client(t, nil).Publish(ctx, marker, "").Err(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		m, err := sub.ReceiveMessage(ctx)
		switch {
		case err != nil:
			t.Fatal(err)
		case m.Channel == marker:
			return n
		case !strings.HasPrefix(m.Channel, "__locksmith:hub:"):
			n++
		}
	}
}

// TestLocalTierTurnedOnLate: a server whose local tier starts after the
// fleet stored and deleted without one (publishing nothing) still never
// serves a replaced or deleted value.
func TestLocalTierTurnedOnLate(t *testing.T) {
	s := redistest.Start(t, nil)
	a := newCache(t, s.Client(t, nil), nil)
	ctx := redistest.Context(t, 20*time.Second)
	v := 1
	load := func(context.Context) (int, error) { return v, nil }
	if _, err := fill.Get(ctx, a, "k", load); err != nil {
		t.Fatal(err)
	}
	l := newCache(t, s.Client(t, nil), &fill.Options{Local: &fill.LocalOptions{MaxStaleness: time.Minute}})
	// l keeps the entry stored before its tier started.
	warmLocal(t, ctx, l, "k", load)
	for v = 2; v <= 3; v++ {
		if v == 2 {
			if err := a.Delete(ctx, "k"); err != nil {
				t.Fatal(err)
			}
		}
		want := v
		if v == 3 {
			// An overwrite without a Delete: a refresh stores over it.
			if _, err := s.Client(t, nil).Del(ctx, "__locksmith:{k}:value").Result(); err != nil {
				t.Fatal(err)
			}
			if _, err := fill.Get(ctx, a, "k", load); err != nil {
				t.Fatal(err)
			}
		}
		redistest.WaitFor(t, fmt.Sprint("the local tier drops its copy of ", want-1), func() bool {
			got, err := fill.Get(ctx, l, "k", load)
			return err == nil && got == want
		})
	}
}

// TestLocalFlagLost: when the fleet's flag goes missing (flushed, evicted,
// lost in a failover), stores publish nothing; a local tier finds it out at
// its next refresh and drops its copies, within MaxStaleness.
func TestLocalFlagLost(t *testing.T) {
	s := redistest.Start(t, nil)
	a := newCache(t, s.Client(t, nil), nil)
	const maxStale = 400 * time.Millisecond
	l := newCache(t, s.Client(t, nil), &fill.Options{Local: &fill.LocalOptions{MaxStaleness: maxStale}})
	ctx := redistest.Context(t, 20*time.Second)
	v := 1
	load := func(context.Context) (int, error) { return v, nil }
	warmLocal(t, ctx, l, "k", load)
	rdb := s.Client(t, nil)
	if err := rdb.Del(ctx, "__locksmith:local", "__locksmith:{k}:value").Err(); err != nil {
		t.Fatal(err)
	}
	v = 2
	if _, err := fill.Get(ctx, a, "k", load); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "the local tier drops its copy", func() bool {
		got, err := fill.Get(ctx, l, "k", load)
		return err == nil && got == 2
	})
}
