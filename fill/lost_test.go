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

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/lock"
	"github.com/locksmith-go/locksmith/observe"
)

// lostWatch passes on the keys of LeaseLost events.
type lostWatch struct{ keys chan string }

func (w lostWatch) Handle(_ context.Context, e observe.Event) {
	if e.Kind == observe.LeaseLost {
		w.keys <- e.Key
	}
}

// breakLock deletes the fill lock on key, or steals it: another holder's
// token in its place.
func breakLock(t *testing.T, rdb *redis.Client, key string, steal bool) {
	t.Helper()
	lk := "__locksmith:{" + key + "}"
	var err error
	if steal {
		err = rdb.Set(context.Background(), lk, "thief", time.Minute).Err()
	} else {
		err = rdb.Del(context.Background(), lk).Err()
	}
	if err != nil {
		t.Fatal(err)
	}
}

// checkBroken checks what a load whose lock was broken left in Redis:
// no value, and the thief's lock when stolen.
func checkBroken(t *testing.T, rdb *redis.Client, key string, steal bool) {
	t.Helper()
	ctx := context.Background()
	if n := rdb.Exists(ctx, "__locksmith:{"+key+"}:value").Val(); n != 0 {
		t.Errorf("%s: a value was stored by a load that had lost its lock", key)
	}
	holder, _ := rdb.Get(ctx, "__locksmith:{"+key+"}").Result()
	if steal && holder != "thief" {
		t.Errorf("%s: the lock holds %q after the load; want the thief's token", key, holder)
	}
}

// TestLeaseLostDuringLoad: a fill lock deleted or taken over while its
// loader runs ends the loader's ctx (cause ErrNotHeld) at the next renewal,
// fires a LeaseLost event, and the loaded value, or absence, still reaches
// every caller, but is not stored.
func TestLeaseLostDuringLoad(t *testing.T) {
	s := redistest.Start(t, nil)
	admin := s.Client(t, nil)
	for _, steal := range []bool{false, true} {
		for _, absent := range []bool{false, true} {
			name := fmt.Sprintf("steal=%v,absent=%v", steal, absent)
			t.Run(name, func(t *testing.T) {
				key := name
				w := lostWatch{keys: make(chan string, 10)}
				// Renewals every 100ms: the loss is seen within one.
				c := newCache(t, s.Client(t, nil), &fill.Options{LockTTL: 300 * time.Millisecond, Events: w})
				ctx := redistest.Context(t, 20*time.Second)
				started := make(chan struct{})
				cause := make(chan error, 1)
				load := func(lctx context.Context) (string, error) {
					close(started)
					select {
					case <-lctx.Done():
						cause <- context.Cause(lctx)
					case <-ctx.Done():
						cause <- errors.New("the loader's ctx did not end")
					}
					if absent {
						return "", fill.ErrNotFound
					}
					return "loaded", nil
				}
				const callers = 3
				var wg sync.WaitGroup
				for i := range callers {
					wg.Go(func() {
						if i > 0 {
							<-started
						}
						v, err := fill.Get(ctx, c, key, load)
						switch {
						case absent && !errors.Is(err, fill.ErrNotFound):
							t.Errorf("caller %d: got %q, %v; want ErrNotFound", i, v, err)
						case !absent && (err != nil || v != "loaded"):
							t.Errorf("caller %d: got %q, %v; want the loaded value", i, v, err)
						}
					})
				}
				<-started
				redistest.WaitFor(t, "every caller joins the flight", func() bool { return c.Stats().LocalMerges == callers-1 })
				breakLock(t, admin, key, steal)
				if err := <-cause; !errors.Is(err, lock.ErrNotHeld) {
					t.Errorf("the loader's ctx: cause %v; want ErrNotHeld", err)
				}
				if k := <-w.keys; k != key {
					t.Errorf("LeaseLost for %q; want %q", k, key)
				}
				wg.Wait()
				if n := c.Stats().StaleStores; n != 1 {
					t.Errorf("StaleStores = %d; want 1", n)
				}
				checkBroken(t, admin, key, steal)
			})
		}
	}
}

// TestLeaseLostDuringBatch: in a batch, a key whose lock is lost during the
// load fires LeaseLost; its value still reaches its caller but is not
// stored, while the keys still held are stored. When every key's lock is
// lost, the loader's ctx ends (cause ErrNotHeld).
func TestLeaseLostDuringBatch(t *testing.T) {
	s := redistest.Start(t, nil)
	admin := s.Client(t, nil)
	for _, steal := range []bool{false, true} {
		t.Run(fmt.Sprintf("steal=%v", steal), func(t *testing.T) {
			w := lostWatch{keys: make(chan string, 10)}
			c := newCache(t, s.Client(t, nil), &fill.Options{LockTTL: 300 * time.Millisecond, Events: w})
			ctx := redistest.Context(t, 20*time.Second)
			values := func(keys []string) map[string]string {
				m := map[string]string{}
				for _, k := range keys {
					if k != "gone" && k != "gone2" {
						m[k] = "v:" + k
					}
				}
				return m
			}

			// One key of three lost: "lost" (a value) and "gone" (an absence:
			// left out of the loader's map).
			started := make(chan struct{})
			got := make(chan map[string]string, 1)
			go func() {
				m, err := fill.GetMany(ctx, c, []string{"lost", "gone", "kept"}, func(_ context.Context, keys []string) (map[string]string, error) {
					close(started)
					lost := map[string]bool{}
					for len(lost) < 2 {
						select {
						case k := <-w.keys:
							lost[k] = true
						case <-ctx.Done():
							return nil, ctx.Err()
						}
					}
					if !lost["lost"] || !lost["gone"] {
						t.Errorf("LeaseLost for %v; want lost and gone", lost)
					}
					return values(keys), nil
				})
				if err != nil {
					t.Error(err)
				}
				got <- m
			}()
			<-started
			breakLock(t, admin, "lost", steal)
			breakLock(t, admin, "gone", steal)
			m := <-got
			if len(m) != 2 || m["lost"] != "v:lost" || m["kept"] != "v:kept" {
				t.Errorf("GetMany: got %v; want lost and kept", m)
			}
			checkBroken(t, admin, "lost", steal)
			checkBroken(t, admin, "gone", steal)
			if n := admin.Exists(ctx, "__locksmith:{kept}:value").Val(); n != 1 {
				t.Error("the key whose lock was kept was not stored")
			}
			if n := c.Stats().StaleStores; n != 2 {
				t.Errorf("StaleStores = %d; want 2", n)
			}

			// Every key's lock lost: the loader's ctx ends.
			started = make(chan struct{})
			cause := make(chan error, 1)
			go func() {
				m, err := fill.GetMany(ctx, c, []string{"all1", "gone2"}, func(lctx context.Context, keys []string) (map[string]string, error) {
					close(started)
					select {
					case <-lctx.Done():
						cause <- context.Cause(lctx)
					case <-ctx.Done():
						cause <- errors.New("the loader's ctx did not end")
					}
					return values(keys), nil
				})
				if err != nil {
					t.Error(err)
				}
				got <- m
			}()
			<-started
			breakLock(t, admin, "all1", steal)
			breakLock(t, admin, "gone2", steal)
			if err := <-cause; !errors.Is(err, lock.ErrNotHeld) {
				t.Errorf("the loader's ctx: cause %v; want ErrNotHeld", err)
			}
			if m := <-got; len(m) != 1 || m["all1"] != "v:all1" {
				t.Errorf("GetMany: got %v; want all1", m)
			}
			checkBroken(t, admin, "all1", steal)
			checkBroken(t, admin, "gone2", steal)
			if n := c.Stats().StaleStores; n != 4 {
				t.Errorf("StaleStores = %d; want 4", n)
			}
		})
	}
}

// TestCloseReleasesAbandonedClaim: a Get whose ctx ends while its claim is
// on its way releases the lock the claim took once the reply comes, and
// Close waits for that; so does a Locker's Close for an Obtain that gave
// up. Both used to release it on a goroutine Close did not wait for: Close
// returned with the lock still to be taken, and the release then reached a
// client its owner may have closed (the lock left for its lease).
func TestCloseReleasesAbandonedClaim(t *testing.T) {
	s := redistest.Start(t, nil)
	direct := redis.NewClient(&redis.Options{Addr: s.Addr()})
	t.Cleanup(func() { direct.Close() })
	bg := context.Background()
	for _, tc := range []struct {
		name string
		run  func(rdb *redis.Client, ctx context.Context) (closeFn func() error, lockKey string)
	}{
		{"fill", func(rdb *redis.Client, ctx context.Context) (func() error, string) {
			c := fill.New(rdb, &fill.Options{LockTTL: time.Minute})
			_, err := fill.Get(ctx, c, "abandoned-fill", func(context.Context) (string, error) { return "v", nil })
			if err == nil {
				t.Error("Get returned nil with its claim held back")
			}
			return c.Close, fill.DefaultPrefix + "{abandoned-fill}"
		}},
		{"lock", func(rdb *redis.Client, ctx context.Context) (func() error, string) {
			l := lock.New(rdb, &lock.Options{TTL: time.Minute})
			if _, err := l.Obtain(ctx, "abandoned-lock"); err == nil {
				t.Error("Obtain returned nil with its acquisition held back")
			}
			return l.Close, lock.DefaultPrefix + "{abandoned-lock}"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rdb := redis.NewClient(&redis.Options{Addr: s.Addr()})
			t.Cleanup(func() { rdb.Close() })
			gate := redistest.NewHoldScript("abandoned")
			rdb.AddHook(gate)
			ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
			defer cancel()
			closeFn, key := tc.run(rdb, ctx)
			closed := make(chan error, 1)
			go func() { closed <- closeFn() }()
			// The claim is still on its way: Close waits for it (the
			// duration under test).
			select {
			case <-closed:
				t.Fatal("Close returned with a claim on its way; its lock would be left for its lease")
			case <-time.After(300 * time.Millisecond):
			}
			close(gate.Release)
			if err := <-closed; err != nil {
				t.Fatal(err)
			}
			keys, err := direct.Keys(bg, "*abandoned*").Result()
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range keys {
				if k == key {
					t.Fatalf("the lock %s is still held after Close (keys %v)", key, keys)
				}
			}
		})
	}
}

// blockOnLocalHit holds the events handler on key's first local hit once
// armed, until release is closed.
type blockOnLocalHit struct {
	key     string
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (b *blockOnLocalHit) Handle(_ context.Context, e observe.Event) {
	if e.Kind == observe.LocalHit && e.Key == b.key && b.armed.CompareAndSwap(true, false) {
		close(b.entered)
		<-b.release
	}
}

// TestGetManyClosedMidway: a GetMany that finds the Cache closed midway
// ends the in-process flights it already leads with ErrClosed: a Get that
// joined one returns ErrClosed. It used to wait until its own ctx ended
// (for ever with context.Background()).
func TestGetManyClosedMidway(t *testing.T) {
	s := redistest.Start(t, nil)
	ev := &blockOnLocalHit{key: "h", entered: make(chan struct{}), release: make(chan struct{})}
	c := fill.New(s.Client(t, nil), &fill.Options{Local: &fill.LocalOptions{Size: 100}, Events: ev})
	ctx := redistest.Context(t, 20*time.Second)
	one := func(context.Context) (int, error) { return 1, nil }
	warmLocal(t, ctx, c, "h", one)
	ev.armed.Store(true)
	load := func(_ context.Context, keys []string) (map[string]int, error) {
		m := map[string]int{}
		for _, k := range keys {
			m[k] = 1
		}
		return m, nil
	}
	many := make(chan error, 1)
	go func() { _, err := fill.GetMany(ctx, c, []string{"a", "h", "b"}, load); many <- err }()
	<-ev.entered // GetMany leads "a", and is held on "h"
	got := make(chan error, 1)
	before := c.Stats().LocalMerges
	go func() {
		_, err := fill.Get(ctx, c, "a", one)
		got <- err
	}()
	redistest.WaitFor(t, "a Get joining GetMany's flight", func() bool { return c.Stats().LocalMerges > before })
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	redistest.WaitFor(t, "the Cache closed", func() bool {
		_, err := fill.Get(ctx, c, "probe", one)
		return errors.Is(err, fill.ErrClosed)
	})
	close(ev.release)
	if err := <-many; !errors.Is(err, fill.ErrClosed) {
		t.Errorf("GetMany: %v; want ErrClosed", err)
	}
	select {
	case err := <-got:
		if !errors.Is(err, fill.ErrClosed) {
			t.Errorf("Get of a key GetMany led: %v; want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a Get of a key GetMany led was not answered within 10s of Close")
	}
	<-closed
}
