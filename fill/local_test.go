package fill_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// localFleet returns n caches with a local tier on one real Redis.
func localFleet(t *testing.T, s *redistest.Server, n int, maxStale time.Duration) []*fill.Cache {
	return fleetOf(t, s, n, &fill.Options{Local: &fill.LocalOptions{Size: 1000, MaxStaleness: maxStale}})
}

// warmLocal waits until c serves key from memory.
func warmLocal(t *testing.T, ctx context.Context, c *fill.Cache, key string, load func(context.Context) (int, error)) {
	t.Helper()
	redistest.WaitFor(t, "a local hit on "+key, func() bool {
		before := c.Stats().LocalHits
		if _, err := fill.Get(ctx, c, key, load); err != nil {
			t.Fatal(err)
		}
		return c.Stats().LocalHits > before
	})
}

// TestLocalHit: a value read from Redis is served from memory afterwards,
// without a round trip.
func TestLocalHit(t *testing.T) {
	s := redistest.Start(t, nil)
	fleet := localFleet(t, s, 2, time.Second)
	ctx := redistest.Context(t, 20*time.Second)
	var loads atomic.Int32
	load := func(context.Context) (int, error) { return int(loads.Add(1)), nil }
	if _, err := fill.Get(ctx, fleet[0], "k", load); err != nil {
		t.Fatal(err)
	}
	// Read from Redis by the other server, then from its memory.
	warmLocal(t, ctx, fleet[1], "k", load)
	before := scriptCalls(t, s)
	for range 100 {
		if v, err := fill.Get(ctx, fleet[1], "k", load); err != nil || v != 1 {
			t.Fatalf("got %v, %v", v, err)
		}
	}
	if n := scriptCalls(t, s) - before; n > 0 {
		t.Errorf("%d scripts run for 100 local hits", n)
	}
	if loads.Load() != 1 {
		t.Errorf("loads = %d", loads.Load())
	}
}

// TestLocalInvalidation: a Delete or a store on one server evicts the
// other servers' copies by push.
func TestLocalInvalidation(t *testing.T) {
	s := redistest.Start(t, nil)
	fleet := localFleet(t, s, 3, 10*time.Second)
	ctx := redistest.Context(t, 20*time.Second)
	var version atomic.Int32
	load := func(context.Context) (int, error) { return int(version.Load()), nil }
	version.Store(1)
	for _, c := range fleet {
		warmLocal(t, ctx, c, "k", load)
	}
	// Delete on server 0, then a new value stored by server 0.
	if err := fleet[0].Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	version.Store(2)
	if v, _ := fill.Get(ctx, fleet[0], "k", load); v != 2 {
		t.Fatalf("server 0 after its Delete: got %d", v)
	}
	for i, c := range fleet[1:] {
		redistest.WaitFor(t, fmt.Sprint("server ", i+1, " sees the new value"), func() bool {
			v, err := fill.Get(ctx, c, "k", load)
			return err == nil && v == 2
		})
		if c.Stats().Invalidations == 0 {
			t.Errorf("server %d: no invalidation counted", i+1)
		}
	}
}

// TestLocalCluster: on a Redis Cluster, copies are served from memory and a
// store or Delete on one server evicts the others' copies by push, for keys
// in every node's slots. MaxStaleness is a minute, so only the push can
// evict them within the test.
func TestLocalCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	opt := &fill.Options{Local: &fill.LocalOptions{Size: 1000, MaxStaleness: time.Minute}}
	var fleet []*fill.Cache
	for range 3 {
		fleet = append(fleet, newCache(t, cl.Client(t, nil), opt))
	}
	ctx := redistest.Context(t, 60*time.Second)
	var version atomic.Int32
	version.Store(1)
	load := func(context.Context) (int, error) { return int(version.Load()), nil }
	keys := []string{"user:1", "user:2", "user:3", "user:4", "user:5", "user:6"}
	for _, k := range keys {
		for _, c := range fleet {
			warmLocal(t, ctx, c, k, load)
		}
	}
	version.Store(2)
	for i, k := range keys {
		// Deleted on one server: every server drops its copy, and one of
		// them loads the new value, which then reaches every server.
		if err := fleet[i%3].Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
		for j, c := range fleet {
			redistest.WaitFor(t, fmt.Sprint(k, ": server ", j, " sees the new value"), func() bool {
				v, err := fill.Get(ctx, c, k, load)
				return err == nil && v == 2
			})
		}
	}
	for i, c := range fleet {
		if st := c.Stats(); st.Invalidations == 0 || st.LocalHits == 0 {
			t.Errorf("server %d: %d invalidations, %d local hits; want some of each", i, st.Invalidations, st.LocalHits)
		}
	}
}

// TestLocalAfterPubSubKilled: when the pub/sub connections are killed, no
// server serves its copy for longer than MaxStaleness after a newer value
// was stored.
func TestLocalAfterPubSubKilled(t *testing.T) {
	s := redistest.Start(t, nil)
	const maxStale = time.Second
	fleet := localFleet(t, s, 3, maxStale)
	localAfterPubSubKilled(t, fleet, maxStale, func() { s.Do(t, "CLIENT", "KILL", "TYPE", "pubsub") })
}

// TestLocalClusterAfterPubSubKilled: TestLocalAfterPubSubKilled on a Redis
// Cluster, every node's pub/sub connections killed.
func TestLocalClusterAfterPubSubKilled(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	const maxStale = time.Second
	opt := &fill.Options{Local: &fill.LocalOptions{Size: 1000, MaxStaleness: maxStale}}
	var fleet []*fill.Cache
	for range 3 {
		fleet = append(fleet, newCache(t, cl.Client(t, nil), opt))
	}
	localAfterPubSubKilled(t, fleet, maxStale, func() {
		for _, n := range cl.Nodes() {
			n.Do(t, "CLIENT", "KILL", "TYPE", "pubsub")
		}
	})
}

func localAfterPubSubKilled(t *testing.T, fleet []*fill.Cache, maxStale time.Duration, kill func()) {
	ctx := redistest.Context(t, 30*time.Second)
	var version atomic.Int32
	load := func(context.Context) (int, error) { return int(version.Load()), nil }
	for round := 1; round <= 5; round++ {
		version.Store(int32(round))
		if round > 1 {
			kill()
			if err := fleet[0].Delete(ctx, "k"); err != nil {
				t.Fatal(err)
			}
		}
		stored := time.Now()
		if v, _ := fill.Get(ctx, fleet[0], "k", load); v != round {
			t.Fatalf("round %d: server 0 got %d", round, v)
		}
		for i, c := range fleet[1:] {
			for {
				readAt := time.Now()
				v, err := fill.Get(ctx, c, "k", load)
				if err != nil {
					t.Fatal(err)
				}
				if v == round {
					break
				}
				if readAt.Sub(stored) > maxStale {
					t.Fatalf("round %d: server %d served version %d %v after version %d was stored",
						round, i+1, v, readAt.Sub(stored), round)
				}
			}
		}
		for _, c := range fleet {
			warmLocal(t, ctx, c, "k", load)
		}
	}
	for i, c := range fleet {
		if n := c.Stats().LocalClears; n == 0 {
			t.Errorf("server %d: no LocalClears counted after its connection was killed 4 times", i)
		}
	}
}

// TestLocalOwnCopyReplaced: a Cache's own Delete drops its own copy at
// once, and its own store replaces it.
func TestLocalOwnCopyReplaced(t *testing.T) {
	s := redistest.Start(t, nil)
	// MaxStaleness is long, so that a heartbeat late on a loaded machine
	// does not make the copy unservable for a moment.
	c := localFleet(t, s, 1, 30*time.Second)[0]
	ctx := redistest.Context(t, 20*time.Second)
	v := 1
	load := func(context.Context) (int, error) { return v, nil }
	warmLocal(t, ctx, c, "k", load)
	if err := c.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	v = 2
	if got, _ := fill.Get(ctx, c, "k", load); got != 2 {
		t.Fatalf("after Delete: got %d; want 2", got)
	}
	st := c.Stats()
	if got, _ := fill.Get(ctx, c, "k", load); got != 2 {
		t.Fatalf("after its own store: got %d; want 2", got)
	}
	if after := c.Stats(); after.LocalHits != st.LocalHits+1 &&
		after.Invalidations == st.Invalidations && after.LocalClears == st.LocalClears {
		// Two excuses only: the Delete's own invalidation, stamped in the
		// same millisecond as the new value's claim, arrived after the
		// store and dropped the copy (an invalidation no older than a
		// copy drops it: a tie is not taken for "older"); or the tier was
		// emptied because the pub/sub connection was replaced (on a loaded
		// machine, heartbeats late enough look like a dead connection).
		t.Fatalf("after its own store: local hits %d → %d, no invalidation, no clear", st.LocalHits, after.LocalHits)
	}
	warmLocal(t, ctx, c, "k", load)
}

// TestLocalAbsence: a cached absence is served locally too, as ErrNotFound.
func TestLocalAbsence(t *testing.T) {
	s := redistest.Start(t, nil)
	c := localFleet(t, s, 1, time.Second)[0]
	ctx := redistest.Context(t, 20*time.Second)
	var loads int
	load := func(context.Context) (int, error) { loads++; return 0, fill.ErrNotFound }
	redistest.WaitFor(t, "a local hit", func() bool {
		before := c.Stats().LocalHits
		_, err := fill.Get(ctx, c, "k", load)
		return err != nil && c.Stats().LocalHits > before
	})
	if loads != 1 {
		t.Errorf("loads = %d", loads)
	}
}

// slowClaim delays one client's claim scripts before they are sent, as a
// busy pool or scheduler would.
type slowClaim struct{ d time.Duration }

func (h slowClaim) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h slowClaim) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if isRead(cmd) { // the claim script
			time.Sleep(h.d)
		}
		return next(ctx, cmd)
	}
}
func (h slowClaim) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestLocalCopyDroppedAfterSlowClaim: a copy stored by a server whose claim
// was slow to leave is still dropped by a Delete that follows: entries are
// stamped by Redis's clock alone.
func TestLocalCopyDroppedAfterSlowClaim(t *testing.T) {
	s := redistest.Start(t, nil)
	a := newCache(t, s.Client(t, nil), nil)
	rdbB := s.Client(t, nil)
	rdbB.AddHook(slowClaim{d: 50 * time.Millisecond})
	b := newCache(t, rdbB, &fill.Options{Local: &fill.LocalOptions{MaxStaleness: time.Minute}})
	ctx := redistest.Context(t, 30*time.Second)
	var version atomic.Int32
	load := func(context.Context) (int, error) { return int(version.Add(1)), nil }
	warmLocal(t, ctx, b, "warm", load) // B's tier is live
	for round := range 5 {
		key := fmt.Sprint("k", round)
		v1, err := fill.Get(ctx, b, key, load) // B loads and stores it, and keeps a copy
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
		// MaxStaleness is a minute: only the invalidation can drop the copy.
		redistest.WaitFor(t, "B drops its copy", func() bool {
			v, err := fill.Get(ctx, b, key, load)
			return err == nil && v != v1
		})
	}
}

// holdClaimReply holds one client's claim replies, once armed, until
// released: the read ran in Redis, its reply is late.
type holdClaimReply struct {
	armed   atomic.Bool
	read    chan struct{} // closed when a held claim has run
	release chan struct{}
}

func (h *holdClaimReply) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *holdClaimReply) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if isRead(cmd) && h.armed.CompareAndSwap(true, false) {
			close(h.read)
			<-h.release
		}
		return err
	}
}
func (h *holdClaimReply) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// scriptMode returns the third argument after the keys of a script call
// (the claim script's mode, "r" to read; the settle script's, "s" to
// store), or "" for any other command.
func scriptMode(cmd redis.Cmder) string {
	args := cmd.Args()
	if cmd.Name() != "evalsha" || len(args) < 3 {
		return ""
	}
	n, ok := args[2].(int)
	if !ok || len(args) <= 3+n+2 {
		return ""
	}
	s, _ := args[3+n+2].(string)
	return s
}

// isRead reports whether cmd runs the claim script in read mode.
func isRead(cmd redis.Cmder) bool { return scriptMode(cmd) == "r" }

// TestLocalDeleteSameMillisecond: a read of a value whose reply arrives
// after the invalidation of a Delete stamped in the same millisecond as
// the value does not put the deleted value back in the local tier. (Redis'
// clock is frozen: every stamp is the same.)
func TestLocalDeleteSameMillisecond(t *testing.T) {
	m, _ := redistest.Mini(t)
	m.SetTime(time.Now())
	a := newCache(t, redistest.Client(t, m.Addr()), nil)
	rdbB := redistest.Client(t, m.Addr())
	h := &holdClaimReply{read: make(chan struct{}), release: make(chan struct{})}
	rdbB.AddHook(h)
	b := newCache(t, rdbB, &fill.Options{Local: &fill.LocalOptions{MaxStaleness: time.Minute}})
	ctx := redistest.Context(t, 20*time.Second)
	var version atomic.Int32
	load := func(context.Context) (int, error) { return int(version.Add(1)), nil }
	warmLocal(t, ctx, b, "sync", load)
	deleted, err := fill.Get(ctx, a, "k", load)
	if err != nil {
		t.Fatal(err)
	}
	h.armed.Store(true)
	res := make(chan int, 1)
	go func() {
		v, _ := fill.Get(ctx, b, "k", load)
		res <- v
	}()
	select {
	case <-h.read:
	case <-ctx.Done():
		t.Fatal("B's read never ran")
	}
	if err := a.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	// B's invalidations arrive in order: once A's delete of "sync" has
	// dropped B's copy of it, the delete of "k" has been seen.
	before := b.Stats().Invalidations
	if err := a.Delete(ctx, "sync"); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "B sees the deletes", func() bool { return b.Stats().Invalidations > before })
	close(h.release)
	if v := <-res; v != deleted {
		t.Fatalf("B's read got %d; want %d, read before the delete", v, deleted)
	}
	if v, err := fill.Get(ctx, b, "k", load); err != nil || v == deleted {
		t.Fatalf("got %d, %v after the delete; want a new value, not the deleted %d", v, err, deleted)
	}
}
