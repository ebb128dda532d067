package fill_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestStaleIfErrorBackoff: failing refreshes back off fleet-wide, in Redis:
// 1s after the first failure, doubling after each, capped at a minute.
// During a back-off the old value is served without calling the upstream.
func TestStaleIfErrorBackoff(t *testing.T) {
	m, rdb := redistest.Mini(t)
	now := time.Now().Truncate(time.Second)
	m.SetTime(now) // the scripts read the clock with TIME
	advance := func(d time.Duration) {
		now = now.Add(d)
		m.SetTime(now)
		m.FastForward(d)
	}
	c := newCache(t, rdb, &fill.Options{TTL: time.Second, Jitter: -1, StaleIfError: 24 * time.Hour})
	ctx := redistest.Context(t, 20*time.Second)
	var v versioned
	if got, err := fill.Get(ctx, c, "k", v.load); err != nil || got != 1 {
		t.Fatalf("first Get: got %v, %v; want 1", got, err)
	}
	advance(2 * time.Second)
	v.fail.Store(true)
	want := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60, 60}
	for i, w := range want {
		w *= time.Second
		calls := v.calls.Load()
		if got, err := fill.Get(ctx, c, "k", v.load); err != nil || got != 1 {
			t.Fatalf("failure %d: got %v, %v; want the old value", i+1, got, err)
		}
		if n := v.calls.Load() - calls; n != 1 {
			t.Fatalf("failure %d: %d refreshes; want one, the back-off having ended", i+1, n)
		}
		b, err := m.Get("__locksmith:{k}:backoff")
		if err != nil {
			t.Fatalf("failure %d: no back-off in Redis: %v", i+1, err)
		}
		until, _, _ := strings.Cut(b, " ")
		ms, _ := strconv.ParseInt(until, 10, 64)
		if got := time.UnixMilli(ms).Sub(now); got != w {
			t.Errorf("back-off after failure %d: %v; want %v", i+1, got, w)
		}
		// Until it ends, the old value is served without a refresh.
		advance(w - time.Millisecond)
		if got, err := fill.Get(ctx, c, "k", v.load); err != nil || got != 1 {
			t.Fatalf("during back-off %d: got %v, %v; want the old value", i+1, got, err)
		}
		if n := v.calls.Load() - calls; n != 1 {
			t.Fatalf("during back-off %d: the upstream was called again", i+1)
		}
		advance(time.Millisecond)
	}
}
