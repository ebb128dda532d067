package faults_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/lock"
)

// TestLockKeyDeletedWhileHeld: the lock key is deleted under its holder.
// Refresh and Release report ErrNotHeld, Release never deletes the
// successor's lock, and Do cancels its callback with ErrNotHeld.
func TestLockKeyDeletedWhileHeld(t *testing.T) {
	ctx := ctxT(t, testTimeout)
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	l := newLocker(t, rdb, &lock.Options{TTL: 10 * time.Second})

	lk, err := l.Obtain(ctx, "del")
	if err != nil {
		t.Fatal(err)
	}
	s.Do(t, "DEL", lockKey("del"))
	if err := lk.Refresh(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Refresh after DEL: got %v; want ErrNotHeld", err)
	}
	succ, err := l.TryObtain(ctx, "del")
	if err != nil {
		t.Fatalf("TryObtain after DEL: %v", err)
	}
	if succ.Token() <= lk.Token() {
		t.Errorf("successor token %d not above %d", succ.Token(), lk.Token())
	}
	if err := lk.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("old holder's Release: got %v; want ErrNotHeld", err)
	}
	if !exists(t, ctx, rdb, lockKey("del")) {
		t.Errorf("the old holder's Release deleted the successor's lock")
	}
	if err := succ.Release(ctx); err != nil {
		t.Errorf("successor's Release: %v", err)
	}

	// Under Do: the keeper's next renewal finds the key gone.
	ld := newLocker(t, rdb, &lock.Options{TTL: 600 * time.Millisecond})
	var cause error
	err = within(t, "Do", func() error {
		return ld.Do(ctx, "del-do", func(fctx context.Context) error {
			s.Do(t, "DEL", lockKey("del-do"))
			select {
			case <-fctx.Done():
				cause = context.Cause(fctx)
				return nil
			case <-time.After(hangTimeout):
				return errors.New("callback's ctx not cancelled")
			}
		})
	})
	if !errors.Is(cause, lock.ErrNotHeld) || !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Do with its key deleted: callback ctx cause %v, Do returned %v; want both ErrNotHeld", cause, err)
	}
	t.Logf("Do with its key deleted: %v", err)
}

// junk is a 64 KiB value for filling memory.
var junk = strings.Repeat("x", 64<<10)

// maxmemory is the memory limit of the servers that run out of memory. An
// empty Redis 7.0 already uses about 0.9 MB, and a few client connections
// take it past 1 MB: at --maxmemory 1mb every key would be evicted as soon
// as written (allkeys-lru), or every write refused even after FLUSHALL
// (noeviction), before any junk is written. 2mb leaves room to fill.
const maxmemory = "2mb"

// TestLockKeyEvicted: a Redis with maxmemory 2mb and allkeys-lru evicts a
// held lock as junk is written. The holder learns it lost the lock
// (ErrNotHeld), and the next holder's fencing token is still higher, even if
// the fencing counter was evicted too.
func TestLockKeyEvicted(t *testing.T) {
	ctx := ctxT(t, testTimeout)
	s := redistest.Start(t, &redistest.ServerOptions{Args: []string{"--maxmemory", maxmemory, "--maxmemory-policy", "allkeys-lru"}})
	rdb := s.Client(t, nil)
	l := newLocker(t, rdb, &lock.Options{TTL: time.Minute})
	lk, err := l.Obtain(ctx, "ev")
	if err != nil {
		t.Fatal(err)
	}
	if !exists(t, ctx, rdb, lockKey("ev")) {
		t.Fatal("the lock key was evicted before any junk was written: maxmemory too low")
	}
	written := 0
	for ; written < 1000 && exists(t, ctx, rdb, lockKey("ev")); written++ {
		if err := rdb.Set(ctx, "junk:"+strconv.Itoa(written), junk, 0).Err(); err != nil {
			t.Fatalf("SET junk: %v", err)
		}
	}
	if exists(t, ctx, rdb, lockKey("ev")) {
		t.Fatalf("the lock key survived %d junk writes of 64 KiB", written)
	}
	fenceLeft := exists(t, ctx, rdb, fenceKey("ev"))
	t.Logf("lock key evicted after %d junk writes (fencing counter evicted too: %t)", written, !fenceLeft)
	if err := lk.Refresh(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Refresh of an evicted lock: got %v; want ErrNotHeld", err)
	}
	succ, err := l.TryObtain(ctx, "ev")
	if err != nil {
		t.Fatalf("TryObtain after eviction: %v", err)
	}
	if succ.Token() <= lk.Token() {
		t.Errorf("successor token %d not above the evicted holder's %d", succ.Token(), lk.Token())
	}
	if err := lk.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Release of an evicted lock: got %v; want ErrNotHeld", err)
	}
	if err := succ.Release(ctx); err != nil && !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("successor's Release: %v", err)
	}
}

// callErr runs a library call that must fail at once with a Redis error
// reply: it must return within its ctx with an error that is neither
// ErrNotObtained nor the ctx's, and whose text contains want.
func callErr(t *testing.T, ctx context.Context, what, want string, call func(context.Context) error) {
	t.Helper()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := within(t, what, func() error { return call(cctx) })
	switch {
	case err == nil:
		t.Errorf("%s: got nil error; want one containing %q", what, want)
	case errors.Is(err, lock.ErrNotObtained), errors.Is(err, context.DeadlineExceeded):
		t.Errorf("%s: got %v; want a Redis error containing %q at once", what, err, want)
	case !strings.Contains(err.Error(), want):
		t.Errorf("%s: got %v; want an error containing %q", what, err, want)
	default:
		t.Logf("%s: %v", what, err)
	}
}

// lockCalls returns Obtain, TryObtain and Do on name, as calls for callErr.
func lockCalls(l *lock.Locker, name string) map[string]func(context.Context) error {
	return map[string]func(context.Context) error{
		"Obtain": func(ctx context.Context) error {
			_, err := l.Obtain(ctx, name)
			return err
		},
		"TryObtain": func(ctx context.Context) error {
			_, err := l.TryObtain(ctx, name)
			return err
		},
		"Do": func(ctx context.Context) error {
			return l.Do(ctx, name, func(context.Context) error { return nil })
		},
	}
}

// TestKeysOfTheWrongType: the lock key, its fencing counter or a fill value
// key holds something else. Every call fails at once with a clear error
// instead of waiting for a lock nobody will release.
func TestKeysOfTheWrongType(t *testing.T) {
	ctx := ctxT(t, testTimeout)
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	l := newLocker(t, rdb, nil)

	s.Do(t, "LPUSH", lockKey("list"), "x")
	s.Do(t, "SET", lockKey("plain"), "x") // a string without expiry
	s.Do(t, "HSET", fenceKey("hash-fence"), "f", "v")
	s.Do(t, "SET", fenceKey("text-fence"), "abc")
	cases := map[string]string{
		"list":       "WRONGTYPE",
		"plain":      "no expiry",
		"hash-fence": "WRONGTYPE",
		"text-fence": "not a fencing counter",
	}
	for name, want := range cases {
		for call, fn := range lockCalls(l, name) {
			callErr(t, ctx, call+" on "+name, want, fn)
		}
	}

	// A held lock whose key is replaced by a list.
	lk, err := l.Obtain(ctx, "replaced")
	if err != nil {
		t.Fatal(err)
	}
	s.Do(t, "DEL", lockKey("replaced"))
	s.Do(t, "LPUSH", lockKey("replaced"), "x")
	callErr(t, ctx, "Refresh of a lock replaced by a list", "WRONGTYPE", lk.Refresh)
	callErr(t, ctx, "Release of a lock replaced by a list", "WRONGTYPE", lk.Release)

	// A fill whose value key is a list.
	c := newCache(t, rdb, nil)
	s.Do(t, "LPUSH", lockKey("fill-list")+":value", "x")
	var loads atomic.Int32
	callErr(t, ctx, "fill.Get on a list", "WRONGTYPE", func(ctx context.Context) error {
		_, err := fill.Get(ctx, c, "fill-list", func(context.Context) (string, error) {
			loads.Add(1)
			return "v", nil
		})
		return err
	})
	if n := loads.Load(); n != 0 {
		t.Errorf("the loader ran %d times on a WRONGTYPE error; want 0", n)
	}
}

// usedMemory returns the server's used_memory.
func usedMemory(t testing.TB, ctx context.Context, rdb *redis.Client) int64 {
	t.Helper()
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(info, "used_memory:")
	n, err := strconv.ParseInt(strings.TrimSpace(rest[:strings.IndexByte(rest, '\n')]), 10, 64)
	if err != nil {
		t.Fatalf("used_memory in INFO: %v", err)
	}
	return n
}

// TestOutOfMemory: a Redis with maxmemory 2mb and noeviction is full. Taking
// a lock or claiming a fill fails at once with the OOM error; a lock taken
// before can still be refreshed or released, or fails with the OOM error;
// once memory is freed everything works again.
func TestOutOfMemory(t *testing.T) {
	ctx := ctxT(t, testTimeout)
	s := redistest.Start(t, &redistest.ServerOptions{Args: []string{"--maxmemory", maxmemory, "--maxmemory-policy", "noeviction"}})
	rdb := s.Client(t, nil)
	l := newLocker(t, rdb, &lock.Options{TTL: 10 * time.Second})
	c := newCache(t, rdb, nil)
	held, err := l.Obtain(ctx, "held")
	if err != nil {
		t.Fatal(err)
	}
	// Fill until Redis refuses a write, then lower maxmemory a little
	// below the memory in use: client buffers come and go, and only a
	// server well past its limit refuses every write.
	var oom error
	for i := 0; i < 1000 && oom == nil; i++ {
		oom = rdb.Set(ctx, "junk:"+strconv.Itoa(i), junk, 0).Err()
	}
	var re redis.Error
	if !errors.As(oom, &re) || !strings.Contains(oom.Error(), "OOM") {
		t.Fatalf("filling memory: got %v; want an OOM error", oom)
	}
	used := usedMemory(t, ctx, rdb)
	s.Do(t, "CONFIG", "SET", "maxmemory", strconv.FormatInt(used-256<<10, 10))
	if err := rdb.Set(ctx, "tiny", "x", 0).Err(); err == nil || !strings.Contains(err.Error(), "OOM") {
		t.Fatalf("a tiny SET on the full server: got %v; want an OOM error", err)
	}

	for call, fn := range lockCalls(l, "oom") {
		callErr(t, ctx, call+" when out of memory", "OOM", fn)
	}
	var loads atomic.Int32
	callErr(t, ctx, "fill.Get when out of memory", "OOM", func(ctx context.Context) error {
		_, err := fill.Get(ctx, c, "oom-fill", func(context.Context) (string, error) {
			loads.Add(1)
			return "v", nil
		})
		return err
	})
	if n := loads.Load(); n != 0 {
		t.Errorf("the loader ran %d times on an OOM error; want 0", n)
	}
	for _, c := range []struct {
		what string
		fn   func(context.Context) error
	}{{"Refresh", held.Refresh}, {"Release", held.Release}} {
		what, fn := c.what, c.fn
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := within(t, what, func() error { return fn(cctx) })
		cancel()
		if err != nil && !strings.Contains(err.Error(), "OOM") {
			t.Errorf("%s of a lock held before memory ran out: %v; want success or an OOM error", what, err)
		}
		t.Logf("%s of a lock held before memory ran out: %v", what, err)
	}

	s.Do(t, "FLUSHALL")
	lk, err := l.Obtain(ctx, "oom")
	if err != nil {
		t.Fatalf("Obtain once memory is freed: %v", err)
	}
	if err := lk.Release(ctx); err != nil {
		t.Fatal(err)
	}
	v, err := fill.Get(ctx, c, "oom-fill", func(context.Context) (string, error) { return "v", nil })
	if err != nil || v != "v" {
		t.Fatalf("fill.Get once memory is freed: %q, %v", v, err)
	}
}
