package lock_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/lock"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// backend is a Redis to run a test against, and a way to make more clients
// of it (each a "server" of the fleet).
type backend struct {
	name      string
	newClient func(t *testing.T) redis.UniversalClient
}

func backends(t *testing.T) []backend {
	return []backend{
		{"miniredis", func(t *testing.T) redis.UniversalClient {
			m, _ := redistest.Mini(t)
			return redistest.Client(t, m.Addr())
		}},
		{"redis-server", func(t *testing.T) redis.UniversalClient {
			s := redistest.Start(t, nil)
			return s.Client(t, nil)
		}},
	}
}

func locker(t *testing.T, rdb redis.UniversalClient, opt *lock.Options) *lock.Locker {
	l := lock.New(rdb, opt)
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// TestStorm runs 4 clients × 8 goroutines × 10 holds each on one name and
// checks that exactly one goroutine holds the lock at a time and that fencing
// tokens strictly increase in the order the lock was held.
func TestStorm(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			const clients, goroutines, holds = 4, 8, 10
			first := b.newClient(t)
			addr := first.(*redis.Client).Options().Addr
			var (
				inside    atomic.Int32
				overlaps  atomic.Int32
				mu        sync.Mutex
				lastToken int64
				order     []int64
				wg        sync.WaitGroup
			)
			ctx := redistest.Context(t, 60*time.Second)
			for c := 0; c < clients; c++ {
				l := locker(t, redistest.Client(t, addr), nil)
				for g := 0; g < goroutines; g++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for h := 0; h < holds; h++ {
							lk, err := l.Obtain(ctx, "storm")
							if err != nil {
								t.Errorf("Obtain: %v", err)
								return
							}
							if inside.Add(1) != 1 {
								overlaps.Add(1)
							}
							mu.Lock()
							if lk.Token() <= lastToken {
								t.Errorf("token %d after %d; want strictly increasing", lk.Token(), lastToken)
							}
							lastToken = lk.Token()
							order = append(order, lk.Token())
							mu.Unlock()
							inside.Add(-1)
							if err := lk.Release(ctx); err != nil {
								t.Errorf("Release: %v", err)
								return
							}
						}
					}()
				}
			}
			wg.Wait()
			if got := overlaps.Load(); got != 0 {
				t.Errorf("overlapping holds: got %d; want 0", got)
			}
			if got, want := len(order), clients*goroutines*holds; got != want {
				t.Errorf("holds: got %d; want %d", got, want)
			}
		})
	}
}

func TestTryObtain(t *testing.T) {
	_, rdb := redistest.Mini(t)
	l := locker(t, rdb, nil)
	ctx := redistest.Context(t, 10*time.Second)
	lk, err := l.TryObtain(ctx, "k")
	if err != nil {
		t.Fatalf("TryObtain: %v", err)
	}
	if _, err := l.TryObtain(ctx, "k"); !errors.Is(err, lock.ErrNotObtained) {
		t.Fatalf("second TryObtain: got %v; want ErrNotObtained", err)
	}
	if err := lk.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := lk.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("second Release: got %v; want ErrNotHeld", err)
	}
	if err := lk.Refresh(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("Refresh after Release: got %v; want ErrNotHeld", err)
	}
	lk2, err := l.TryObtain(ctx, "k")
	if err != nil {
		t.Fatalf("TryObtain after release: %v", err)
	}
	if lk2.Token() <= lk.Token() {
		t.Errorf("token %d after %d; want strictly increasing", lk2.Token(), lk.Token())
	}
}

func TestKeyLayout(t *testing.T) {
	m, rdb := redistest.Mini(t)
	ctx := redistest.Context(t, 10*time.Second)
	for _, tc := range []struct {
		prefix, name, key string
	}{
		{"", "tw:42", "__locksmith:{tw:42}"},
		// Names whose hash tag would be empty, and names that begin with
		// the escape byte itself, get 0xFF put before them.
		{"app:", "", "app:{\xff}"},
		{"app:", "}x", "app:{\xff}x}"},
		{"app:", "\xffy", "app:{\xff\xffy}"},
		{"app:", "a}b", "app:{a}b}"},
	} {
		l := locker(t, rdb, &lock.Options{Prefix: tc.prefix, TTL: 3 * time.Second})
		lk, err := l.Obtain(ctx, tc.name)
		if err != nil {
			t.Fatalf("Obtain(%q): %v", tc.name, err)
		}
		if !m.Exists(tc.key) {
			t.Errorf("key %q missing; keys: %v", tc.key, m.Keys())
		}
		if !m.Exists(tc.key + ":fence") {
			t.Errorf("fence key %q missing; keys: %v", tc.key+":fence", m.Keys())
		}
		if got := m.TTL(tc.key); got != 3*time.Second {
			t.Errorf("TTL of %q: got %v; want 3s", tc.key, got)
		}
		if lk.Key() != tc.name {
			t.Errorf("Key(): got %q; want %q", lk.Key(), tc.name)
		}
		if err := lk.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if m.Exists(tc.key) {
			t.Errorf("key %q still there after Release", tc.key)
		}
	}
}

// TestRanOutUnusedRelease: a lease that ran out with nobody taking the lock
// since (its fencing counter unchanged) is reported released: no other
// holder could have run meanwhile. A second Release reports ErrNotHeld.
func TestRanOutUnusedRelease(t *testing.T) {
	m, rdb := redistest.Mini(t)
	ctx := redistest.Context(t, 10*time.Second)
	l := locker(t, rdb, &lock.Options{TTL: time.Second})
	lk, err := l.Obtain(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	m.FastForward(1100 * time.Millisecond)
	if m.Exists(lock.DefaultPrefix + "{k}") {
		t.Fatal("the lease did not run out")
	}
	if err := lk.Release(ctx); err != nil {
		t.Errorf("Release of a lease run out, nobody else holding it since: %v; want nil", err)
	}
	if err := lk.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("second Release: got %v; want ErrNotHeld", err)
	}
}

// TestStaleRelease: the lease runs out, another client takes the lock, and
// the first holder's Release and Refresh fail with ErrNotHeld and leave the
// successor's lock alone.
func TestStaleRelease(t *testing.T) {
	m, rdb := redistest.Mini(t)
	ctx := redistest.Context(t, 10*time.Second)
	l1 := locker(t, rdb, &lock.Options{TTL: time.Second})
	l2 := locker(t, redistest.Client(t, m.Addr()), &lock.Options{TTL: time.Second})
	old, err := l1.Obtain(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	m.FastForward(1100 * time.Millisecond)
	succ, err := l2.TryObtain(ctx, "k")
	if err != nil {
		t.Fatalf("successor TryObtain: %v", err)
	}
	if err := old.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("stale Release: got %v; want ErrNotHeld", err)
	}
	if err := old.Refresh(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("stale Refresh: got %v; want ErrNotHeld", err)
	}
	if _, err := l1.TryObtain(ctx, "k"); !errors.Is(err, lock.ErrNotObtained) {
		t.Errorf("successor's lock gone: TryObtain got %v; want ErrNotObtained", err)
	}
	if succ.Token() <= old.Token() {
		t.Errorf("successor token %d <= old %d", succ.Token(), old.Token())
	}
	if err := succ.Release(ctx); err != nil {
		t.Errorf("successor Release: %v", err)
	}
}

func TestRefreshExtends(t *testing.T) {
	m, rdb := redistest.Mini(t)
	ctx := redistest.Context(t, 10*time.Second)
	l := locker(t, rdb, &lock.Options{TTL: time.Second})
	lk, err := l.Obtain(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	m.FastForward(800 * time.Millisecond)
	if err := lk.Refresh(ctx); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	m.FastForward(800 * time.Millisecond)
	if err := lk.Release(ctx); err != nil {
		t.Fatalf("Release after refresh: got %v; want nil", err)
	}
}

// TestHandoff: a waiter on another client is woken by the release.
func TestHandoff(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			rdb := b.newClient(t)
			addr := rdb.(*redis.Client).Options().Addr
			// PollInterval is a minute: only the push can wake the waiter before
			// the test's deadline.
			opt := &lock.Options{PollInterval: time.Minute}
			l1 := locker(t, rdb, opt)
			l2 := locker(t, redistest.Client(t, addr), opt)
			ctx := redistest.Context(t, 20*time.Second)
			for i := 0; i < 5; i++ {
				held, err := l1.Obtain(ctx, "h")
				if err != nil {
					t.Fatal(err)
				}
				got := make(chan error, 1)
				go func() {
					lk, err := l2.Obtain(ctx, "h")
					if err == nil {
						err = lk.Release(ctx)
					}
					got <- err
				}()
				// Let the waiter block, then release.
				redistest.WaitFor(t, "the condition", func() bool {
					n, _ := rdb.PubSubNumSub(ctx, "__locksmith:{h}").Result()
					return n["__locksmith:{h}"] > 0
				})
				if err := held.Release(ctx); err != nil {
					t.Fatal(err)
				}
				if err := <-got; err != nil {
					t.Fatalf("waiter: %v", err)
				}
			}
		})
	}
}

func TestObtainDeadline(t *testing.T) {
	_, rdb := redistest.Mini(t)
	l := locker(t, rdb, nil)
	ctx := redistest.Context(t, 10*time.Second)
	held, err := l.Obtain(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release(ctx)
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := l.Obtain(short, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Obtain on a held lock: got %v; want DeadlineExceeded", err)
	}
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if _, err := l.Obtain(cctx, "k"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Obtain with a cancelled ctx: got %v; want Canceled", err)
	}
}

func TestDo(t *testing.T) {
	m, rdb := redistest.Mini(t)
	l := locker(t, rdb, nil)
	ctx := redistest.Context(t, 10*time.Second)
	t.Run("releases on success", func(t *testing.T) {
		ran := false
		err := l.Do(ctx, "do", func(ctx context.Context) error {
			ran = true
			if !m.Exists("__locksmith:{do}") {
				t.Error("lock not held inside Do")
			}
			return nil
		})
		if err != nil || !ran {
			t.Fatalf("Do: err %v, ran %v", err, ran)
		}
		if m.Exists("__locksmith:{do}") {
			t.Error("lock still held after Do")
		}
	})
	t.Run("releases on error", func(t *testing.T) {
		boom := errors.New("boom")
		err := l.Do(ctx, "do", func(ctx context.Context) error { return boom })
		if !errors.Is(err, boom) {
			t.Fatalf("Do: got %v; want boom", err)
		}
		if errors.Is(err, lock.ErrNotHeld) {
			t.Fatalf("Do: got %v; want no ErrNotHeld", err)
		}
		if m.Exists("__locksmith:{do}") {
			t.Error("lock still held after Do")
		}
	})
	t.Run("releases on panic", func(t *testing.T) {
		defer func() {
			if r := recover(); r != "kaboom" {
				t.Fatalf("recovered %v; want kaboom", r)
			}
			if m.Exists("__locksmith:{do}") {
				t.Error("lock still held after panic")
			}
		}()
		_ = l.Do(ctx, "do", func(ctx context.Context) error { panic("kaboom") })
		t.Fatal("Do returned; want panic")
	})
}

// TestDoRenews holds a lock through five leases.
func TestDoRenews(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	const ttl = 300 * time.Millisecond
	l := locker(t, rdb, &lock.Options{TTL: ttl})
	other := locker(t, s.Client(t, nil), &lock.Options{TTL: ttl})
	ctx := redistest.Context(t, 20*time.Second)
	err := l.Do(ctx, "renew", func(ctx context.Context) error {
		end := time.Now().Add(5 * ttl)
		for time.Now().Before(end) {
			if _, err := other.TryObtain(ctx, "renew"); !errors.Is(err, lock.ErrNotObtained) {
				t.Errorf("TryObtain during Do: got %v; want ErrNotObtained", err)
				return nil
			}
			select {
			case <-ctx.Done():
				t.Errorf("fn ctx ended: %v", context.Cause(ctx))
				return nil
			case <-time.After(ttl / 10):
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
}

// TestDoLost: deleting the lock mid-Do cancels fn's ctx at the first
// renewal after the loss, and Do reports ErrNotHeld.
func TestDoLost(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	renewals := &scriptCalls{key: "__locksmith:{lost}"}
	rdb.AddHook(renewals)
	const ttl = 600 * time.Millisecond
	l := locker(t, rdb, &lock.Options{TTL: ttl})
	ctx := redistest.Context(t, 20*time.Second)
	fnErr := errors.New("fn saw the loss")
	err := l.Do(ctx, "lost", func(fctx context.Context) error {
		if err := rdb.Del(ctx, "__locksmith:{lost}").Err(); err != nil {
			t.Fatal(err)
		}
		// From now until fn returns, the only scripts on the key are
		// renewals.
		renewals.armed.Store(true)
		select {
		case <-fctx.Done():
			if !errors.Is(context.Cause(fctx), lock.ErrNotHeld) {
				t.Errorf("cause: got %v; want ErrNotHeld", context.Cause(fctx))
			}
			if n := renewals.n.Load(); n != 1 {
				t.Errorf("fn's ctx ended after %d renewals answered since the loss; want the first", n)
			}
			return fnErr
		case <-ctx.Done():
			t.Errorf("fn ctx not cancelled after %d renewals since the loss", renewals.n.Load())
			return nil
		}
	})
	if !errors.Is(err, lock.ErrNotHeld) || !errors.Is(err, fnErr) {
		t.Fatalf("Do: got %v; want ErrNotHeld joined with fn's error", err)
	}
}

// scriptCalls counts, once armed, the scripts run on key that Redis
// answered (a NOSCRIPT reply, resent as EVAL, counts once).
type scriptCalls struct {
	key   string
	armed atomic.Bool
	n     atomic.Int32
}

func (h *scriptCalls) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *scriptCalls) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		args := cmd.Args()
		isScript := cmd.Name() == "evalsha" || cmd.Name() == "eval"
		if h.armed.Load() && isScript && len(args) > 3 && args[3] == h.key &&
			(err == nil || !strings.HasPrefix(err.Error(), "NOSCRIPT")) {
			h.n.Add(1)
		}
		return err
	}
}
func (h *scriptCalls) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func TestWrongType(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			rdb := b.newClient(t)
			l := locker(t, rdb, nil)
			ctx := redistest.Context(t, 10*time.Second)
			for _, tc := range []struct {
				name, lock string
				setup      func(context.Context) error
				want       string
			}{
				{"hash at lock", "a", func(ctx context.Context) error {
					return rdb.HSet(ctx, "__locksmith:{a}", "f", "v").Err()
				}, "WRONGTYPE"},
				{"list at fence", "b", func(ctx context.Context) error {
					return rdb.RPush(ctx, "__locksmith:{b}:fence", "x").Err()
				}, "WRONGTYPE"},
				{"text at fence", "c", func(ctx context.Context) error {
					return rdb.Set(ctx, "__locksmith:{c}:fence", "hello", 0).Err()
				}, "not a fencing counter"},
				{"string without expiry", "d", func(ctx context.Context) error {
					return rdb.Set(ctx, "__locksmith:{d}", "foreign", 0).Err()
				}, "no expiry"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					if err := tc.setup(ctx); err != nil {
						t.Fatal(err)
					}
					before := dump(ctx, t, rdb, tc.lock)
					for _, obtain := range []func(context.Context, string) (*lock.Lock, error){l.Obtain, l.TryObtain} {
						_, err := obtain(ctx, tc.lock)
						if err == nil || errors.Is(err, lock.ErrNotObtained) || !strings.Contains(err.Error(), tc.want) {
							t.Errorf("got %v; want an error containing %q", err, tc.want)
						}
					}
					if after := dump(ctx, t, rdb, tc.lock); after != before {
						t.Errorf("foreign keys modified: got %s; want %s", after, before)
					}
				})
			}
		})
	}
}

// dump describes the type and TTL state of a name's lock and fence keys.
func dump(ctx context.Context, t *testing.T, rdb redis.UniversalClient, name string) string {
	t.Helper()
	var b strings.Builder
	for _, k := range []string{"__locksmith:{" + name + "}", "__locksmith:{" + name + "}:fence"} {
		typ, err := rdb.Type(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(k + "=" + typ + " ")
	}
	return b.String()
}

func TestUnreachable(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	l := locker(t, rdb, nil)
	ctx := redistest.Context(t, 10*time.Second)
	_, err := l.Obtain(ctx, "k")
	if err == nil || errors.Is(err, lock.ErrNotObtained) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Obtain with Redis down: got %v; want a connection error", err)
	}
	if err := l.Do(ctx, "k", func(context.Context) error { t.Error("fn ran"); return nil }); err == nil {
		t.Fatal("Do with Redis down: got nil error")
	}
}

func TestHugeAndOddNames(t *testing.T) {
	_, rdb := redistest.Mini(t)
	l := locker(t, rdb, nil)
	ctx := redistest.Context(t, 10*time.Second)
	for _, name := range []string{"", "}", "{", "a}b{c", "\x00\xff", strings.Repeat("x", 1<<20)} {
		lk, err := l.Obtain(ctx, name)
		if err != nil {
			t.Fatalf("Obtain(%d bytes): %v", len(name), err)
		}
		if _, err := l.TryObtain(ctx, name); !errors.Is(err, lock.ErrNotObtained) {
			t.Fatalf("TryObtain(%d bytes) while held: got %v", len(name), err)
		}
		if err := lk.Release(ctx); err != nil {
			t.Fatalf("Release(%d bytes): %v", len(name), err)
		}
	}
}

// TestBadPrefix: a prefix with a brace is refused with a clear error at the
// first call, and nothing is written.
func TestBadPrefix(t *testing.T) {
	m, rdb := redistest.Mini(t)
	ctx := redistest.Context(t, 10*time.Second)
	for _, p := range []string{"bad{", "bad}", "{x}"} {
		l := locker(t, rdb, &lock.Options{Prefix: p})
		_, err := l.Obtain(ctx, "k")
		if err == nil || !strings.Contains(err.Error(), "prefix") {
			t.Errorf("prefix %q: got %v; want an error about the prefix", p, err)
		}
		if err := l.Do(ctx, "k", func(context.Context) error { return nil }); err == nil {
			t.Errorf("prefix %q: Do returned nil", p)
		}
	}
	if keys := m.Keys(); len(keys) != 0 {
		t.Errorf("keys written: %v", keys)
	}
}

// TestCloseWakesObtain: an Obtain waiting on a Locker that is closed
// returns ErrClosed at once, not at its next poll.
func TestCloseWakesObtain(t *testing.T) {
	_, rdb := redistest.Mini(t)
	ctx := redistest.Context(t, 20*time.Second)
	holder := locker(t, rdb, nil)
	lk, err := holder.Obtain(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Release(ctx)
	l := lock.New(rdb, &lock.Options{PollInterval: time.Hour})
	got := make(chan error, 1)
	go func() {
		_, err := l.Obtain(ctx, "k")
		got <- err
	}()
	redistest.WaitFor(t, "waiter subscribed", func() bool {
		n, _ := rdb.PubSubNumSub(ctx, "__locksmith:{k}").Result()
		return n["__locksmith:{k}"] == 1
	})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if !errors.Is(err, lock.ErrClosed) {
			t.Fatalf("got %v; want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a waiting Obtain did not return when the Locker closed")
	}
	if _, err := l.TryObtain(ctx, "other"); !errors.Is(err, lock.ErrClosed) {
		t.Fatalf("TryObtain after Close: got %v; want ErrClosed", err)
	}
}

// TestReleaseWithEndedContext: a deferred Release with a ctx that has ended
// (the request went away) still releases the lock, so the next holder does
// not wait out the lease.
func TestReleaseWithEndedContext(t *testing.T) {
	m, rdb := redistest.Mini(t)
	l := locker(t, rdb, nil)
	ctx := redistest.Context(t, 10*time.Second)
	req, cancel := context.WithCancel(ctx)
	lk, err := l.Obtain(req, "k")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := lk.Release(req); err != nil {
		t.Fatalf("Release with an ended ctx: %v", err)
	}
	if m.Exists("__locksmith:{k}") {
		t.Fatal("the lock is still held after Release")
	}
	if _, err := l.TryObtain(ctx, "k"); err != nil {
		t.Fatalf("TryObtain after Release: %v", err)
	}
}

// TestOddNamesOnCluster: every name works on a Redis Cluster, including the
// empty name and names beginning with '}', whose hash tag would be empty.
func TestOddNamesOnCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	rdb := cl.Client(t, nil)
	l := locker(t, rdb, nil)
	ctx := redistest.Context(t, 30*time.Second)
	for _, name := range []string{"", "}", "}x{y}", "\xff", "\xff}", "{", "{}"} {
		lk, err := l.Obtain(ctx, name)
		if err != nil {
			t.Fatalf("Obtain(%q): %v", name, err)
		}
		if _, err := l.TryObtain(ctx, name); !errors.Is(err, lock.ErrNotObtained) {
			t.Fatalf("TryObtain(%q) while held: got %v", name, err)
		}
		if err := lk.Release(ctx); err != nil {
			t.Fatalf("Release(%q): %v", name, err)
		}
	}
}

// TestHugeHolderTTL: a foreign lock key with a PTTL beyond what a
// time.Duration holds does not make waiters poll in a tight loop.
func TestHugeHolderTTL(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	ctx := redistest.Context(t, 20*time.Second)
	// 292 years and more overflow time.Duration in nanoseconds.
	s.Do(t, "SET", "__locksmith:{k}", "foreign", "PX", fmt.Sprint(int64(1)<<60))
	l := locker(t, rdb, &lock.Options{PollInterval: 200 * time.Millisecond})
	before := commandCalls(t, ctx, rdb, "evalsha")
	short, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := l.Obtain(short, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v; want DeadlineExceeded", err)
	}
	// About one attempt per PollInterval; an overflowed wait would poll
	// every millisecond.
	if n := commandCalls(t, ctx, rdb, "evalsha") - before; n > 10 {
		t.Errorf("%d acquire calls in 1s with a 200ms poll; want about 5", n)
	}
}

func commandCalls(t *testing.T, ctx context.Context, rdb *redis.Client, cmd string) int64 {
	t.Helper()
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_"+cmd+":calls="); ok {
			n, _ := strconv.ParseInt(rest[:strings.IndexByte(rest, ',')], 10, 64)
			return n
		}
	}
	return 0
}
