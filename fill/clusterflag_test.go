package fill_test

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestClusterInvalidationsOnlyWithLocalTier: on a Cluster, whose nodes
// forward every classic PUBLISH to every other, a fleet without a local
// tier publishes no invalidation once a read has found the fleet's flag
// missing; as soon as a server with a local tier puts the flag in place,
// stores and deletes on the others publish again, and its copies are
// dropped by them.
func TestClusterInvalidationsOnlyWithLocalTier(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	ctx := redistest.Context(t, 60*time.Second)
	c := newCache(t, cl.Client(t, nil), &fill.Options{Prefix: "inv:"})

	// Every invalidation reaches any node: count them on one, between
	// markers this test publishes after each store or delete. A message
	// reaches that node over the cluster bus link of the node it was
	// published on, and only one link keeps order: a marker is published
	// on every node, and the count ends once all have come, so that an
	// invalidation from any node, sent before its node's marker, is counted
	// in its own round and not the next.
	nodes := cl.Nodes()
	sub := nodes[0].Client(t, nil).Subscribe(ctx, "inv:invalidate")
	t.Cleanup(func() { _ = sub.Close() })
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	pubs := make([]*redis.Client, len(nodes))
	for i, n := range nodes {
		pubs[i] = n.Client(t, nil)
	}
	ch := sub.Channel()
	marks := 0
	// published runs op and returns how many invalidations it published.
	published := func(op func()) int {
		t.Helper()
		op()
		marks++
		mark := "mark " + strconv.Itoa(marks) + " "
		for i, pub := range pubs {
			if err := pub.Publish(ctx, "inv:invalidate", mark+strconv.Itoa(i)).Err(); err != nil {
				t.Fatal(err)
			}
		}
		n, seen := 0, 0
		for seen < len(pubs) {
			select {
			case m := <-ch:
				if strings.HasPrefix(m.Payload, mark) {
					seen++
					continue
				}
				n++
			case <-ctx.Done():
				t.Fatal("the markers never came")
			}
		}
		return n
	}
	var version atomic.Int32
	version.Store(1)
	load := func(context.Context) (int, error) { return int(version.Load()), nil }
	i := 0
	store := func() {
		i++
		if _, err := fill.Get(ctx, c, "k"+strconv.Itoa(i), load); err != nil {
			t.Fatal(err)
		}
	}
	redistest.WaitFor(t, "a store that publishes no invalidation", func() bool { return published(store) == 0 })
	for range 20 {
		if n := published(store); n != 0 {
			t.Fatalf("a store published %d invalidations; want none without a local tier", n)
		}
	}
	if n := published(func() {
		if err := c.Delete(ctx, "k1"); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("a delete published %d invalidations; want none without a local tier", n)
	}

	// A server with a local tier joins: the others publish again, and its
	// copy of a key another server deletes and reloads is dropped.
	lc := newCache(t, cl.Client(t, nil), &fill.Options{Prefix: "inv:",
		Local: &fill.LocalOptions{Size: 1000, MaxStaleness: time.Minute}})
	published(func() { warmLocal(t, ctx, lc, "shared", load) })
	if n := published(store); n != 1 {
		t.Fatalf("a store published %d invalidations with a local tier in the fleet; want 1", n)
	}
	version.Store(2)
	if err := c.Delete(ctx, "shared"); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "the local tier sees the new value", func() bool {
		v, err := fill.Get(ctx, lc, "shared", load)
		return err == nil && v == 2
	})
}
