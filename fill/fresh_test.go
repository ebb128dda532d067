package fill_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// versioned is a loader whose calls are counted and numbered; each call
// blocks until its gate opens when gated.
type versioned struct {
	calls atomic.Int32
	fail  atomic.Bool
	mu    sync.Mutex
	gate  chan struct{} // nil: return at once
}

func (v *versioned) load(ctx context.Context) (int, error) {
	n := int(v.calls.Add(1))
	v.mu.Lock()
	g := v.gate
	v.mu.Unlock()
	if g != nil {
		select {
		case <-g:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	if v.fail.Load() {
		return 0, fmt.Errorf("upstream 503 (call %d)", n)
	}
	return n, nil
}

func (v *versioned) hold() chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.gate = make(chan struct{})
	return v.gate
}

// staleNow waits until the value of key is past its TTL: its key's PTTL is
// at most the stale window.
func staleNow(t *testing.T, rdb *redis.Client, key string, window time.Duration) {
	t.Helper()
	redistest.WaitFor(t, "the value goes stale", func() bool {
		d, err := rdb.PTTL(context.Background(), "__locksmith:{"+key+"}:value").Result()
		return err == nil && d > 0 && d <= window
	})
}

func fleetOf(t *testing.T, s *redistest.Server, n int, opt *fill.Options) []*fill.Cache {
	var cs []*fill.Cache
	for range n {
		cs = append(cs, newCache(t, s.Client(t, nil), opt))
	}
	return cs
}

// TestStaleWhileRevalidate: past its TTL a value is served at once by every
// server while exactly one server, fleet-wide, refreshes it.
func TestStaleWhileRevalidate(t *testing.T) {
	s := redistest.Start(t, nil)
	const window = 10 * time.Second
	fleet := fleetOf(t, s, 4, &fill.Options{TTL: 200 * time.Millisecond, Jitter: -1, StaleWhileRevalidate: window})
	ctx := redistest.Context(t, 30*time.Second)
	var v versioned
	if got, err := fill.Get(ctx, fleet[0], "k", v.load); err != nil || got != 1 {
		t.Fatalf("first: %v, %v", got, err)
	}
	staleNow(t, s.Client(t, nil), "k", window)
	open := v.hold() // the refresh blocks: every Get below must return without it
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			got, err := fill.Get(ctx, fleet[i%len(fleet)], "k", v.load)
			if err != nil || got != 1 {
				t.Errorf("stale read: got %v, %v; want the old value at once", got, err)
			}
		})
	}
	wg.Wait()
	// The refresh runs in the background: it may start after the reads.
	redistest.WaitFor(t, "the refresh starts", func() bool { return v.calls.Load() >= 2 })
	if n := v.calls.Load(); n != 2 {
		t.Fatalf("loader calls = %d; want the first and exactly one refresh", n)
	}
	close(open)
	redistest.WaitFor(t, "the refreshed value", func() bool {
		got, err := fill.Get(ctx, fleet[1], "k", v.load)
		return err == nil && got == 2
	})
	var stale, refreshes uint64
	for _, c := range fleet {
		stale += c.Stats().StaleHits
		refreshes += c.Stats().Refreshes
	}
	// Concurrent reads on one server merge: a stale hit per flight.
	if stale < uint64(len(fleet)) || refreshes != 1 {
		t.Errorf("StaleHits %d, Refreshes %d; want ≥ %d and 1", stale, refreshes, len(fleet))
	}
}

// TestFreshHitOneRoundTrip: freshness costs a fresh hit nothing.
func TestFreshHitOneRoundTrip(t *testing.T) {
	m, rdb := redistest.Mini(t)
	var h countHook
	rdb2 := redistest.Client(t, m.Addr())
	rdb2.AddHook(&h)
	opt := &fill.Options{StaleWhileRevalidate: time.Minute, StaleIfError: time.Hour, EarlyRefresh: true}
	ctx := redistest.Context(t, 20*time.Second)
	if _, err := fill.Get(ctx, newCache(t, rdb, opt), "k", func(context.Context) (int, error) { return 1, nil }); err != nil {
		t.Fatal(err)
	}
	c := newCache(t, rdb2, opt)
	rdb2.Ping(ctx) // the connection's handshake is not a hit's cost
	h.n.Store(0)
	for range 10 {
		if _, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) { return 2, nil }); err != nil {
			t.Fatal(err)
		}
	}
	if n := h.n.Load(); n != 10 {
		t.Errorf("%d round trips for 10 fresh hits", n)
	}
}

// TestNeverTooStale: a value older than TTL + StaleWhileRevalidate is not
// served: its key has expired, and the Get loads.
func TestNeverTooStale(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := newCache(t, rdb, &fill.Options{TTL: time.Second, Jitter: -1, StaleWhileRevalidate: time.Second})
	ctx := redistest.Context(t, 20*time.Second)
	var v versioned
	if got, err := fill.Get(ctx, c, "k", v.load); err != nil || got != 1 {
		t.Fatalf("first Get: got %v, %v; want 1", got, err)
	}
	m.FastForward(2*time.Second + time.Millisecond)
	if got, err := fill.Get(ctx, c, "k", v.load); err != nil || got != 2 {
		t.Fatalf("got %v, %v; want a fresh load", got, err)
	}
	if n := c.Stats().StaleHits; n != 0 {
		t.Errorf("StaleHits = %d", n)
	}
}

// TestStaleIfError: while refreshes fail the old value is served, and the
// failing upstream is called a bounded number of times, fleet-wide, however
// many servers read: refreshes back off in Redis.
func TestStaleIfError(t *testing.T) {
	s := redistest.Start(t, nil)
	const window = 20 * time.Second
	fleet := fleetOf(t, s, 4, &fill.Options{TTL: 200 * time.Millisecond, Jitter: -1, StaleIfError: window})
	ctx := redistest.Context(t, 30*time.Second)
	var v versioned
	if _, err := fill.Get(ctx, fleet[0], "k", v.load); err != nil {
		t.Fatal(err)
	}
	staleNow(t, s.Client(t, nil), "k", window)
	v.fail.Store(true)
	// Reads for about a second and a half: the first refresh fails, the
	// back-off (1s, then 2s) holds every server off the upstream.
	deadline := time.Now().Add(1500 * time.Millisecond)
	reads := 0
	for time.Now().Before(deadline) {
		for _, c := range fleet {
			got, err := fill.Get(ctx, c, "k", v.load)
			if err != nil || got != 1 {
				t.Fatalf("read while refreshes fail: got %v, %v; want the old value", got, err)
			}
			reads++
		}
	}
	if n := v.calls.Load() - 1; n < 1 || n > 2 {
		t.Errorf("%d refresh calls in 1.5s of %d reads; want 1 or 2 (back-off from 1s)", n, reads)
	}
	var refreshErrors uint64
	for _, c := range fleet {
		refreshErrors += c.Stats().LoadErrors
	}
	if refreshErrors == 0 {
		t.Error("failed refreshes not counted")
	}
	v.fail.Store(false)
	redistest.WaitFor(t, "a refresh succeeds after the back-off", func() bool {
		got, err := fill.Get(ctx, fleet[2], "k", v.load)
		return err == nil && got > 1
	})
}

// TestStaleIfErrorWindowEnds: once past TTL + StaleIfError, a failing
// refresh is a failing miss.
func TestStaleIfErrorWindowEnds(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := newCache(t, rdb, &fill.Options{TTL: time.Second, Jitter: -1, StaleIfError: time.Second})
	ctx := redistest.Context(t, 20*time.Second)
	var v versioned
	if got, err := fill.Get(ctx, c, "k", v.load); err != nil || got != 1 {
		t.Fatalf("first Get: got %v, %v; want 1", got, err)
	}
	v.fail.Store(true)
	m.FastForward(1500 * time.Millisecond)
	if got, err := fill.Get(ctx, c, "k", v.load); err != nil || got != 1 {
		t.Fatalf("within the window: got %v, %v; want the old value", got, err)
	}
	// The old value was served because the refresh failed, not as a
	// fresh hit.
	if n, st := v.calls.Load(), c.Stats(); n != 2 || st.StaleHits != 1 {
		t.Fatalf("within the window: %d loader calls, %d stale hits; want the failed refresh and one stale hit", n, st.StaleHits)
	}
	m.FastForward(time.Second)
	if _, err := fill.Get(ctx, c, "k", v.load); err == nil {
		t.Fatal("past the window: got the old value; want the loader's error")
	}
}

// TestDeleteEndsStale: nothing stale is served after Delete.
func TestDeleteEndsStale(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := newCache(t, rdb, &fill.Options{TTL: time.Second, Jitter: -1, StaleWhileRevalidate: time.Hour, StaleIfError: time.Hour})
	ctx := redistest.Context(t, 20*time.Second)
	var v versioned
	if got, err := fill.Get(ctx, c, "k", v.load); err != nil || got != 1 {
		t.Fatalf("first Get: got %v, %v; want 1", got, err)
	}
	m.FastForward(2 * time.Second)
	// Before the Delete the value is servable stale (its refresh fails).
	v.fail.Store(true)
	if got, err := fill.Get(ctx, c, "k", v.load); err != nil || got != 1 {
		t.Fatalf("before Delete: got %v, %v; want the stale value", got, err)
	}
	redistest.WaitFor(t, "the refresh fails", func() bool { return c.Stats().RefreshErrors == 1 })
	if err := c.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := fill.Get(ctx, c, "k", v.load); err == nil {
		t.Fatal("after Delete: got a value; want the failing loader's error")
	}
	if keys := withoutStamps(m.Keys()); len(keys) != 1 || keys[0] != "__locksmith:{k}:failed" {
		t.Errorf("keys after Delete and a failed load: %v", keys)
	}
}

// TestEarlyRefresh: a value read near its expiry is refreshed before it
// expires, by one server, without any reader waiting for it.
func TestEarlyRefresh(t *testing.T) {
	s := redistest.Start(t, nil)
	fleet := fleetOf(t, s, 3, &fill.Options{TTL: 600 * time.Millisecond, Jitter: -1, EarlyRefresh: true})
	ctx := redistest.Context(t, 30*time.Second)
	var calls atomic.Int32
	slow := func(context.Context) (int, error) {
		n := int(calls.Add(1))
		time.Sleep(150 * time.Millisecond) // a load takes a quarter of the TTL
		return n, nil
	}
	if _, err := fill.Get(ctx, fleet[0], "k", slow); err != nil {
		t.Fatal(err)
	}
	var misses uint64
	redistest.WaitFor(t, "a refresh before expiry", func() bool {
		for _, c := range fleet {
			if _, err := fill.Get(ctx, c, "k", slow); err != nil {
				t.Fatal(err)
			}
		}
		return calls.Load() >= 2
	})
	for _, c := range fleet {
		misses += c.Stats().Misses
	}
	if misses != 1 {
		t.Errorf("misses = %d; want only the first: no reader waited for a refresh", misses)
	}
	var refreshes uint64
	for _, c := range fleet {
		refreshes += c.Stats().Refreshes
	}
	if refreshes < 1 || int(refreshes) != int(calls.Load())-1 {
		t.Errorf("Refreshes %d, loads %d", refreshes, calls.Load())
	}
}

// TestLegacyEntry: an entry written before stale windows existed (format
// version 1) is still read.
func TestLegacyEntry(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := newCache(t, rdb, &fill.Options{StaleWhileRevalidate: time.Minute})
	// Format 1: magic, version 1, flags, created-at, load duration, then
	// the payload's length and the msgpack int 7.
	if err := m.Set("__locksmith:{k}:value", "\xc1\x01\x00\x01\x01\x01\x07"); err != nil {
		t.Fatal(err)
	}
	m.SetTTL("__locksmith:{k}:value", time.Minute)
	got, err := fill.Get(redistest.Context(t, 10*time.Second), c, "k", func(context.Context) (int, error) {
		return 0, errors.New("loaded")
	})
	if err != nil || got != 7 {
		t.Fatalf("got %v, %v; want 7 from the old entry", got, err)
	}
}

// TestDeleteDuringStaleLoad: a Delete while a load holds a stale value to
// serve should it fail (StaleIfError) ends that value too: the load
// failing after the Delete gives its error, not the deleted value, to
// the callers who came after the Delete.
func TestDeleteDuringStaleLoad(t *testing.T) {
	m, rdb := redistest.Mini(t)
	c := newCache(t, rdb, &fill.Options{TTL: time.Second, Jitter: -1, StaleIfError: time.Hour})
	ctx := redistest.Context(t, 20*time.Second)
	if _, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) { return 1, nil }); err != nil {
		t.Fatal(err)
	}
	m.FastForward(2 * time.Second) // past its TTL, within stale-if-error
	started, release := make(chan struct{}), make(chan struct{})
	failing := func(context.Context) (int, error) {
		close(started)
		<-release
		return 0, errors.New("upstream down")
	}
	first := make(chan error, 1)
	go func() { _, err := fill.Get(ctx, c, "k", failing); first <- err }()
	<-started
	if err := c.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	after := make(chan struct {
		v   int
		err error
	}, 1)
	go func() {
		v, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) { return 2, nil })
		after <- struct {
			v   int
			err error
		}{v, err}
	}()
	redistest.WaitFor(t, "the Get after the Delete joins the load", func() bool { return c.Stats().LocalMerges == 1 })
	close(release)
	<-first
	if r := <-after; r.err == nil && r.v == 1 {
		t.Errorf("a Get after the Delete got the deleted value %d; want the load's error", r.v)
	}
}

// TestDeleteDuringStaleWait: a server waiting for another's load of a
// stale key, the stale value kept to serve should that load fail, drops
// it when the key is deleted: a load failing after the Delete gives its
// error, not the deleted value.
func TestDeleteDuringStaleWait(t *testing.T) {
	s := redistest.Start(t, nil)
	opt := &fill.Options{TTL: time.Second, Jitter: -1, StaleIfError: time.Hour, PollInterval: 50 * time.Millisecond}
	a, b := newCache(t, s.Client(t, nil), opt), newCache(t, s.Client(t, nil), opt)
	ctx := redistest.Context(t, 20*time.Second)
	if _, err := fill.Get(ctx, a, "k", func(context.Context) (int, error) { return 1, nil }); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "the value past its TTL", func() bool {
		return s.Client(t, nil).PTTL(ctx, "__locksmith:{k}:value").Val() < time.Hour-time.Second+500*time.Millisecond
	})
	started, release := make(chan struct{}), make(chan struct{})
	go func() {
		_, _ = fill.Get(ctx, a, "k", func(context.Context) (int, error) {
			close(started)
			<-release
			return 0, errors.New("upstream down")
		})
	}()
	<-started
	waited := make(chan struct {
		v   int
		err error
	}, 1)
	go func() {
		v, err := fill.Get(ctx, b, "k", func(context.Context) (int, error) { return 0, errors.New("upstream down here too") })
		waited <- struct {
			v   int
			err error
		}{v, err}
	}()
	redistest.WaitFor(t, "b waits for a's load", func() bool { return b.Stats().Misses == 1 })
	if err := a.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	r := <-waited
	close(release)
	if r.err == nil && r.v == 1 {
		t.Errorf("b's Get after the Delete got the deleted value %d; want an error", r.v)
	}
}

// TestStaleFallbackWindowEnds: a stale value held to serve should a load
// fail (StaleIfError) is not served once its window has ended: the load
// failing after it, the callers get the failure, here and on another
// server. The value was served however late the load failed, long after it
// had left Redis.
func TestStaleFallbackWindowEnds(t *testing.T) {
	s := redistest.Start(t, nil)
	opt := &fill.Options{TTL: 200 * time.Millisecond, Jitter: -1, StaleIfError: 200 * time.Millisecond}
	a, b := newCache(t, s.Client(t, nil), opt), newCache(t, s.Client(t, nil), opt)
	direct := s.Client(t, nil)
	ctx := redistest.Context(t, 20*time.Second)
	if _, err := fill.Get(ctx, a, "k", func(context.Context) (int, error) { return 1, nil }); err != nil {
		t.Fatal(err)
	}
	value := fill.DefaultPrefix + "{k}:value"
	redistest.WaitFor(t, "the value stale", func() bool {
		d := direct.PTTL(ctx, value).Val()
		return d > 0 && d < 150*time.Millisecond
	})
	started, release := make(chan struct{}), make(chan struct{})
	errs := make(chan error, 2)
	go func() {
		_, err := fill.Get(ctx, a, "k", func(context.Context) (int, error) {
			close(started)
			<-release
			return 0, errors.New("upstream down")
		})
		errs <- err
	}()
	<-started
	go func() {
		_, err := fill.Get(ctx, b, "k", func(context.Context) (int, error) { return 2, errors.New("loaded twice") })
		errs <- err
	}()
	redistest.WaitFor(t, "the other server waiting", func() bool { return b.Stats().Misses == 1 })
	redistest.WaitFor(t, "the value gone from Redis", func() bool { return direct.Exists(ctx, value).Val() == 0 })
	close(release)
	for range 2 {
		if err := <-errs; err == nil {
			t.Error("a Get got the stale value after its StaleIfError window ended")
		}
	}
}

// TestEarlyRefreshStoredTTL: EarlyRefresh never refreshes a value before
// half the TTL it was stored with has passed, whatever TTL its reader asks
// for: a loader's SetTTL (as httpfill's max-age) shorter than Options.TTL
// counts, and so does a load that waited for the budget's slot. The
// reader's TTL was taken for the value's: with Options.TTL an hour and the
// value stored for a second, reads refreshed it right after each store;
// and a wait for the budget counted as part of the value's life.
func TestEarlyRefreshStoredTTL(t *testing.T) {
	for _, waits := range []bool{false, true} {
		t.Run(fmt.Sprint("budget wait ", waits), func(t *testing.T) {
			s := redistest.Start(t, nil)
			rdb := s.Client(t, nil)
			opt := &fill.Options{TTL: time.Hour, Jitter: -1, EarlyRefresh: true}
			ctx := redistest.Context(t, 20*time.Second)
			if waits {
				b := budget.New(rdb, "early-wait", budget.Limit{Rate: 1, Per: time.Second, Burst: 1}, nil)
				defer b.Close()
				opt.Budget = b
				if err := b.Wait(ctx, budget.Foreground); err != nil { // the load waits a second for its slot
					t.Fatal(err)
				}
			}
			c := fill.New(rdb, opt)
			load := func(ctx context.Context) (int, error) {
				time.Sleep(300 * time.Millisecond) // the upstream's latency: XFetch weighs it
				fill.SetTTL(ctx, time.Second)
				return 1, nil
			}
			if _, err := fill.Get(ctx, c, "k", load); err != nil {
				t.Fatal(err)
			}
			// Reads at once, most of the second left: a refresh chance of
			// about e^(-1/0.3) = 0.036 per read by XFetch alone.
			start := time.Now()
			for time.Since(start) < 300*time.Millisecond {
				if _, err := fill.Get(ctx, c, "k", load); err != nil {
					t.Fatal(err)
				}
			}
			if n := c.Stats().Refreshes; n != 0 {
				t.Errorf("%d early refreshes with most of the stored TTL left; want none before half of it", n)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
