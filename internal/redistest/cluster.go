package redistest

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	clusterSlots        = 16384
	clusterReadyTimeout = 30 * time.Second
)

// Cluster is a real Redis Cluster of masters without replicas, each a Server
// on a free loopback port.
type Cluster struct {
	nodes []*Server
}

// StartCluster starts a Redis Cluster of n masters and waits until it is
// usable: every node reports cluster_state:ok and a connected bus link to
// every other (so a classic PUBLISH reaches every node), every node's
// CLUSTER SLOTS covers all 16384 slots, and a ClusterClient can SET and GET a key in every
// node's slots. Slots are split evenly into one contiguous range per node. It
// calls Require first, so the test is skipped when redis-server is missing.
// The nodes are killed in t.Cleanup.
//
// The cluster is built with plain commands rather than redis-cli --cluster
// create: CLUSTER SET-CONFIG-EPOCH and CLUSTER ADDSLOTSRANGE (Redis 7) on each
// node, then CLUSTER MEET from the first node to the others.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	Require(t)
	if n < 1 || n > clusterSlots {
		t.Fatalf("redistest: StartCluster(%d): need between 1 and %d nodes", n, clusterSlots)
	}
	c := &Cluster{nodes: make([]*Server, n)}
	for i := range c.nodes {
		c.nodes[i] = startServer(t, serverConfig{cluster: true})
	}
	for i, s := range c.nodes {
		// Distinct config epochs spare the nodes resolving epoch collisions.
		s.Do(t, "CLUSTER", "SET-CONFIG-EPOCH", i+1)
		lo, hi := slotRange(i, n)
		s.Do(t, "CLUSTER", "ADDSLOTSRANGE", lo, hi)
	}
	for _, s := range c.nodes[1:] {
		c.nodes[0].Do(t, "CLUSTER", "MEET", "127.0.0.1", s.Port())
	}

	deadline := time.Now().Add(clusterReadyTimeout)
	for {
		for _, s := range c.nodes {
			s.mu.Lock()
			exited, tail := s.proc.exited(), s.tail()
			s.mu.Unlock()
			if exited {
				t.Fatalf("redistest: cluster node %s exited during start-up%s", s.Addr(), tail)
			}
		}
		err := c.check()
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			var logs strings.Builder
			for _, s := range c.nodes {
				s.mu.Lock()
				fmt.Fprintf(&logs, "\n%s:%s", s.Addr(), s.tail())
				s.mu.Unlock()
			}
			t.Fatalf("redistest: cluster %v not ready within %v: %v%s", c.Addrs(), clusterReadyTimeout, err, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Addrs returns the nodes' addresses, "127.0.0.1:PORT", in node order.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, s := range c.nodes {
		addrs[i] = s.Addr()
	}
	return addrs
}

// Nodes returns the cluster's nodes. Node i owns the i-th of the n contiguous
// slot ranges.
func (c *Cluster) Nodes() []*Server {
	return append([]*Server(nil), c.nodes...)
}

// Client returns a new redis.ClusterClient over all the nodes' addresses,
// closed in t.Cleanup. opts may be nil; it is copied and its Addrs set.
func (c *Cluster) Client(t testing.TB, opts *redis.ClusterOptions) *redis.ClusterClient {
	t.Helper()
	var o redis.ClusterOptions
	if opts != nil {
		o = *opts
	}
	o.Addrs = c.Addrs()
	cc := redis.NewClusterClient(&o)
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// check returns nil if the cluster is ready, or else an error describing the
// first unmet condition.
func (c *Cluster) check() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n := len(c.nodes)
	for _, s := range c.nodes {
		if err := checkNode(ctx, s.Addr(), n); err != nil {
			return err
		}
	}

	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), DisableIdentity: true})
	defer cc.Close()
	for i := range c.nodes {
		key := keyInSlots(slotRange(i, n))
		if err := cc.Set(ctx, key, "1", 0).Err(); err != nil {
			return fmt.Errorf("cluster client: SET %s (slot %d): %w", key, keySlot(key), err)
		}
		if v, err := cc.Get(ctx, key).Result(); err != nil || v != "1" {
			return fmt.Errorf("cluster client: GET %s (slot %d) = %q, %v; want \"1\"", key, keySlot(key), v, err)
		}
		if err := cc.Del(ctx, key).Err(); err != nil {
			return fmt.Errorf("cluster client: DEL %s (slot %d): %w", key, keySlot(key), err)
		}
	}
	return nil
}

// checkNode returns nil if the node at addr says the cluster is ok, knows n
// nodes, has a connected bus link to each, and its CLUSTER SLOTS covers
// every slot with n distinct masters.
func checkNode(ctx context.Context, addr string, n int) error {
	rc := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DisableIdentity: true})
	defer rc.Close()
	info, err := rc.ClusterInfo(ctx).Result()
	if err != nil {
		return fmt.Errorf("CLUSTER INFO on %s: %w", addr, err)
	}
	if !strings.Contains(info, "cluster_state:ok\r\n") {
		return fmt.Errorf("CLUSTER INFO on %s: cluster_state is not ok", addr)
	}
	if want := "cluster_known_nodes:" + strconv.Itoa(n) + "\r\n"; !strings.Contains(info, want) {
		return fmt.Errorf("CLUSTER INFO on %s: want %s", addr, strings.TrimSpace(want))
	}
	// Every node's bus link to every other is up: until then a classic
	// PUBLISH on one node does not reach the other's subscribers.
	nodes, err := rc.ClusterNodes(ctx).Result()
	if err != nil {
		return fmt.Errorf("CLUSTER NODES on %s: %w", addr, err)
	}
	lines := strings.Split(strings.TrimSpace(nodes), "\n")
	if len(lines) != n {
		return fmt.Errorf("CLUSTER NODES on %s: %d nodes; want %d", addr, len(lines), n)
	}
	for _, l := range lines {
		if f := strings.Fields(l); len(f) < 8 || f[7] != "connected" {
			return fmt.Errorf("CLUSTER NODES on %s: link not connected: %s", addr, l)
		}
	}
	//lint:ignore SA1019 go-redis's ClusterClient routes by CLUSTER SLOTS, so that is the view to check.
	slots, err := rc.ClusterSlots(ctx).Result()
	if err != nil {
		return fmt.Errorf("CLUSTER SLOTS on %s: %w", addr, err)
	}
	covered, masters := 0, map[string]bool{}
	for _, r := range slots {
		covered += r.End - r.Start + 1
		if len(r.Nodes) > 0 {
			masters[r.Nodes[0].ID] = true
		}
	}
	if covered != clusterSlots || len(masters) != n {
		return fmt.Errorf("CLUSTER SLOTS on %s: %d of %d slots covered by %d of %d masters",
			addr, covered, clusterSlots, len(masters), n)
	}
	return nil
}

// slotRange returns the first and last slot of node i of n.
func slotRange(i, n int) (lo, hi int) {
	return i * clusterSlots / n, (i+1)*clusterSlots/n - 1
}

// keyInSlots returns a key whose hash slot lies in [lo, hi].
func keyInSlots(lo, hi int) string {
	for k := 0; ; k++ {
		key := "redistest:probe:" + strconv.Itoa(k)
		if s := keySlot(key); lo <= s && s <= hi {
			return key
		}
	}
}

// keySlot returns the Redis Cluster hash slot of key: CRC16 (XMODEM) of the
// key, or of its hash tag if it has a non-empty one, modulo 16384.
func keySlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % clusterSlots
}

// MoveSlot moves the hash slot of key, and the keys in it, to node to, as a
// resharding does (CLUSTER SETSLOT IMPORTING and MIGRATING, MIGRATE, then
// SETSLOT NODE on every node), and waits until every node says to owns it.
// It returns the index of the node that owned it.
func (c *Cluster) MoveSlot(t testing.TB, key string, to int) (from int) {
	t.Helper()
	slot := keySlot(key)
	ctx, cancel := context.WithTimeout(context.Background(), clusterReadyTimeout)
	defer cancel()
	ids := make([]string, len(c.nodes))
	for i, s := range c.nodes {
		ids[i] = fmt.Sprint(s.Do(t, "CLUSTER", "MYID"))
	}
	// The owner by the cluster's own account: an earlier move may have
	// changed it.
	from = slices.Index(ids, slotOwner(ctx, c.nodes[to], slot))
	if from < 0 {
		t.Fatalf("redistest: MoveSlot: no owner known for slot %d", slot)
	}
	if from == to {
		t.Fatalf("redistest: MoveSlot: node %d owns slot %d already", to, slot)
	}
	src, dst := c.nodes[from], c.nodes[to]
	dst.Do(t, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[from])
	src.Do(t, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to])
	for {
		keys, ok := src.Do(t, "CLUSTER", "GETKEYSINSLOT", slot, 100).([]any)
		if !ok || len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", "127.0.0.1", dst.Port(), "", 0, 5000, "KEYS"}
		args = append(args, keys...)
		src.Do(t, args...)
	}
	dst.Do(t, "CLUSTER", "SETSLOT", slot, "NODE", ids[to])
	src.Do(t, "CLUSTER", "SETSLOT", slot, "NODE", ids[to])
	for i, s := range c.nodes {
		if i != from && i != to {
			s.Do(t, "CLUSTER", "SETSLOT", slot, "NODE", ids[to])
		}
	}
	deadline := time.Now().Add(clusterReadyTimeout)
	for i := 0; i < len(c.nodes); {
		if slotOwner(ctx, c.nodes[i], slot) == ids[to] {
			i++
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("redistest: MoveSlot: node %d does not see slot %d on node %d within %v", i, slot, to, clusterReadyTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return from
}

// slotOwner returns the ID of the node that s says owns slot, or "".
func slotOwner(ctx context.Context, s *Server, slot int) string {
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	defer c.Close()
	shards, err := c.ClusterShards(ctx).Result()
	if err != nil {
		return ""
	}
	for _, sh := range shards {
		for _, r := range sh.Slots {
			if int(r.Start) <= slot && slot <= int(r.End) {
				for _, n := range sh.Nodes {
					if n.Role == "master" {
						return n.ID
					}
				}
			}
		}
	}
	return ""
}
