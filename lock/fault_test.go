package lock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/lock"
)

// TestStalledRedis: with Redis stopped (SIGSTOP) every call returns by its
// ctx, on a client built with go-redis defaults (ContextTimeoutEnabled false,
// so go-redis alone would wait out its 3s ReadTimeout), and everything works
// again once Redis resumes.
func TestStalledRedis(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil) // go-redis defaults
	l := locker(t, rdb, nil)
	ctx := redistest.Context(t, 30*time.Second)
	held, err := l.Obtain(ctx, "held")
	if err != nil {
		t.Fatal(err)
	}
	s.Pause(t)
	resumed := false
	defer func() {
		if !resumed {
			s.Resume(t)
		}
	}()
	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
		t.Cleanup(cancel)
		return c
	}
	calls := map[string]func(context.Context) error{
		"Obtain": func(c context.Context) error {
			_, err := l.Obtain(c, "free")
			return err
		},
		"TryObtain": func(c context.Context) error {
			_, err := l.TryObtain(c, "free2")
			return err
		},
		"Release": held.Release,
		"Refresh": held.Refresh,
		"Do": func(c context.Context) error {
			return l.Do(c, "free3", func(context.Context) error { return nil })
		},
	}
	for name, call := range calls {
		if err := call(short()); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s on a stalled Redis: got %v; want DeadlineExceeded", name, err)
		}
	}
	s.Resume(t)
	resumed = true
	// The abandoned acquisitions that reached Redis ran once it resumed, and
	// each was released by its token-checked cleanup: the names are free.
	for _, name := range []string{"free", "free2", "free3"} {
		redistest.WaitFor(t, "the condition", func() bool {
			lk, err := l.TryObtain(ctx, name)
			if err != nil {
				return false
			}
			return lk.Release(ctx) == nil
		})
	}
	// The abandoned Release of "held" ran, or never left the client: either
	// way, releasing again leaves the name free.
	if err := held.Release(ctx); err != nil && !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("Release after resume: got %v; want nil or ErrNotHeld", err)
	}
	lk, err := l.TryObtain(ctx, "held")
	if err != nil {
		t.Fatalf("TryObtain after resume: %v", err)
	}
	_ = lk.Release(ctx)
}

// TestAbandonedAcquireCleanedUp: a caller gives up while its acquire is in
// flight; the acquire still runs on Redis and takes the lock, and the library
// releases it, so no lock is left behind that nobody would release.
func TestAbandonedAcquireCleanedUp(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	l := locker(t, rdb, nil)
	ctx := redistest.Context(t, 30*time.Second)
	// Warm the script cache so the stalled call is the script itself.
	lk, err := l.Obtain(ctx, "warm")
	if err != nil {
		t.Fatal(err)
	}
	_ = lk.Release(ctx)

	s.Pause(t)
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := l.Obtain(short, "abandoned"); !errors.Is(err, context.DeadlineExceeded) {
		s.Resume(t)
		t.Fatalf("Obtain: got %v; want DeadlineExceeded", err)
	}
	s.Resume(t)
	// The acquire ran (it issued a fencing token) ...
	redistest.WaitFor(t, "the condition", func() bool {
		n, err := rdb.Exists(ctx, "__locksmith:{abandoned}:fence").Result()
		return err == nil && n == 1
	})
	// ... and its lock was released.
	redistest.WaitFor(t, "the condition", func() bool {
		n, err := rdb.Exists(ctx, "__locksmith:{abandoned}").Result()
		return err == nil && n == 0
	})
}

// TestTokensIncreaseAcrossRestart: Redis restarts empty (no persistence) and
// fencing tokens still increase.
func TestTokensIncreaseAcrossRestart(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	l := locker(t, rdb, nil)
	ctx := redistest.Context(t, 30*time.Second)
	before, err := l.Obtain(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	s.Kill(t)
	s.Restart(t)
	var after *lock.Lock
	redistest.WaitFor(t, "the condition", func() bool {
		after, err = l.Obtain(ctx, "k")
		return err == nil
	})
	if after.Token() <= before.Token() {
		t.Fatalf("token after restart %d <= before %d", after.Token(), before.Token())
	}
}

// TestRestartMidDo: Redis is killed and restarted empty while Do holds the
// lock; fn's ctx is cancelled and Do reports ErrNotHeld.
func TestRestartMidDo(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	l := locker(t, rdb, &lock.Options{TTL: 600 * time.Millisecond})
	ctx := redistest.Context(t, 30*time.Second)
	err := l.Do(ctx, "k", func(fctx context.Context) error {
		s.Kill(t)
		s.Restart(t)
		select {
		case <-fctx.Done():
			return nil
		case <-time.After(10 * time.Second):
			t.Error("fn ctx not cancelled after the lock vanished")
			return nil
		}
	})
	if !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("Do: got %v; want ErrNotHeld", err)
	}
}

// TestReleaseReplyLostRetriedByClient: a release whose reply is lost, and
// that go-redis sends again by itself (its MaxRetries), finds the lock gone
// — released by its first try — and reports it released. It used to report
// ErrNotHeld, and Do then failed work that had run under the lock.
func TestReleaseReplyLostRetriedByClient(t *testing.T) {
	s := redistest.Start(t, nil)
	p := redistest.NewProxy(t, s.Addr())
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr()}) // MaxRetries: 3
	t.Cleanup(func() { rdb.Close() })
	direct := s.Client(t, nil)
	l := locker(t, rdb, nil)
	ctx := redistest.Context(t, 30*time.Second)
	// Loads the release script: the release below is one EVALSHA.
	warm, err := l.Obtain(ctx, "warm-up")
	if err != nil {
		t.Fatal(err)
	}
	if err := warm.Release(ctx); err != nil {
		t.Fatal(err)
	}
	k, err := l.Obtain(ctx, "lost-reply")
	if err != nil {
		t.Fatal(err)
	}
	p.HoldReplies()
	released := make(chan error, 1)
	go func() { released <- k.Release(ctx) }()
	redistest.WaitFor(t, "the release to run, its reply held", func() bool {
		n, err := direct.Exists(ctx, lock.DefaultPrefix+"{lost-reply}").Result()
		return err == nil && n == 0 && p.Held() > 0
	})
	p.DropAll()
	p.ReleaseReplies()
	if err := <-released; err != nil {
		t.Fatalf("Release = %v; want nil: the lock was released, its reply lost", err)
	}
}
