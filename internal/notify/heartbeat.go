package notify

import (
	"context"
	_ "embed"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Heartbeats: while anyone waits, the Hub of a standalone client publishes
// one every beatEvery, and one at once whenever the heartbeat channel is
// subscribed (at start, after a reconnect); after beatMissed heartbeats
// that Redis accepted without one arriving, the pub/sub connection is
// replaced.
//
// On a Cluster every classic PUBLISH is forwarded to every node, so the
// Hubs of all servers share one heartbeat channel (clusterBeat) and each
// master's heartbeats: a Hub publishes on a master only when no heartbeat
// from it arrived for half a period, so a fleet sends about one per master
// per period (two at most, while messages take less than half a period),
// whatever the number of servers. A heartbeat carries the master's clock
// (beat.lua); each Hub maps it to its own through a reading of that clock
// it took itself (beats.clock), which errs on the early side by at most a
// round trip, so Heard never claims more than was delivered.
const (
	defaultBeat = 200 * time.Millisecond
	beatMissed  = 3
	// clusterBeat is the heartbeat channel of every Hub on a Cluster.
	clusterBeat = "__locksmith:hub:beat"
	// clockEvery is how long a reading of a master's clock serves
	// before the Hub reads it again (with TIME, when it has no heartbeat
	// of its own to publish there).
	clockEvery = 10 * time.Second
)

//go:embed beat.lua
var beatLua string

var beatScript = redis.NewScript(beatLua)

// beats is what the heartbeats taught about the connection they travel on
// (the shard at Hub.beatAddr).
type beats struct {
	heard atomic.Int64 // Unix ns of newest, the value of Heard; 0 when none

	mu         sync.Mutex // guards the fields below
	sentUnseen int        // heartbeats accepted by Redis since the last one seen
	newest     time.Time  // when the newest heartbeat seen was sent
	// On a Cluster heartbeats go to every master, and newest is the oldest
	// of the newest seen from each of nodes (the masters of the last round
	// in which every master answered): every node's path to this
	// connection is proven, not one.
	nodes []string
	node  map[string]*nodeBeats // by master address
}

// nodeBeats is what the heartbeats of one Cluster master taught.
type nodeBeats struct {
	newest time.Time // when its newest heartbeat seen was sent at the latest, in this process's clock
	seen   time.Time // when its newest heartbeat (any Hub's) arrived
	// A reading of the master's clock: stamp (µs) was read at or after
	// read (this process's clock), so a heartbeat stamped s was sent at
	// read + (s - stamp) or later.
	read    time.Time
	stamp   int64
	pending int64 // the newest stamp seen before any reading, 0 when none
}

// forget drops what was heard: the connection broke or was replaced.
func (b *beats) forget() {
	b.mu.Lock()
	b.newest = time.Time{}
	for _, n := range b.node {
		n.newest, n.seen, n.pending = time.Time{}, time.Time{}, 0
	}
	b.heard.Store(0)
	b.mu.Unlock()
}

// nodeLocked returns addr's state, creating it. b.mu must be held.
func (b *beats) nodeLocked(addr string) *nodeBeats {
	n := b.node[addr]
	if n == nil {
		if b.node == nil {
			b.node = make(map[string]*nodeBeats)
		}
		n = &nodeBeats{}
		b.node[addr] = n
	}
	return n
}

// due reports whether this Hub publishes a heartbeat on master addr at
// now (none arrived for half of every, or force), or else whether it
// reads the master's clock (its reading is missing or old).
func (b *beats) due(addr string, now time.Time, every time.Duration, force bool) (publish, read bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := b.nodeLocked(addr)
	if force || now.Sub(n.seen) >= every/2 {
		return true, false
	}
	return false, n.read.IsZero() || now.Sub(n.read) >= clockEvery
}

// clock records a reading of master addr's clock: stamp (µs) was read at
// or after read.
func (b *beats) clock(addr string, read time.Time, stamp int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := b.nodeLocked(addr)
	n.read, n.stamp = read, stamp
	if n.pending != 0 {
		// A heartbeat (this Hub's own, maybe) arrived before the reading.
		n.seenStamp(n.pending, time.Now())
		n.pending = 0
		b.updateLocked()
	}
}

// seenStamp records a heartbeat stamped s (µs, the master's clock) that
// had arrived by now; the node has a reading.
func (n *nodeBeats) seenStamp(s int64, now time.Time) {
	// A heartbeat was not sent after it arrived, whatever its stamp says.
	t := n.read.Add(time.Duration(s-n.stamp) * time.Microsecond)
	if t.After(now) {
		t = now
	}
	if t.After(n.newest) {
		n.newest = t
	}
}

// updateLocked sets newest and Heard from the masters': the oldest path
// decides. b.mu must be held.
func (b *beats) updateLocked() {
	var t time.Time
	for i, addr := range b.nodes {
		var f time.Time
		if n := b.node[addr]; n != nil {
			f = n.newest
		}
		if i == 0 || f.Before(t) {
			t = f
		}
	}
	if t.IsZero() {
		return
	}
	b.newest = t
	b.heard.Store(t.UnixNano())
}

// subscribeBeat queues a SUBSCRIBE of the heartbeat channel. h.mu must be
// held.
func (h *Hub) subscribeBeat() {
	if h.beat == "" {
		return
	}
	h.subSeq++
	h.enqueue(op{channel: h.beat, subscribe: true, n: h.subSeq})
}

// beatSubscribed asks for a heartbeat at once: the channel was subscribed,
// at start or after a reconnect, and Heard is unknown until a heartbeat
// comes back, so one goes now, not a period later. h.mu must be held.
func (h *Hub) beatSubscribed() {
	if h.beatNow == nil {
		return
	}
	select {
	case h.beatNow <- struct{}{}:
	default:
	}
}

func (h *Hub) heartbeat(now <-chan struct{}) {
	defer h.wg.Done()
	beatEvery := h.beatEvery
	// The first tick comes at a random point of the period, so that the
	// Hubs of a fleet started together do not tick together (on a
	// Cluster, the first to tick after a heartbeat spares the others).
	t := time.NewTimer(rand.N(beatEvery))
	defer t.Stop()
	for {
		force := false
		select {
		case <-h.done:
			return
		case <-t.C:
			t.Reset(beatEvery)
		case <-now:
			force = true
		}
		h.mu.Lock()
		sh := h.shards[h.beatAddr]
		active := sh != nil && len(h.chans) > 0
		h.mu.Unlock()
		if refused, _ := h.refusal.holding(); !active || refused {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), beatEvery)
		sent := h.publishBeat(ctx, force)
		cancel()
		if !sent {
			continue // none to send, or Redis is away or refuses: nothing to learn
		}
		h.beats.mu.Lock()
		h.beats.sentUnseen++
		stale := h.beats.sentUnseen > beatMissed
		h.beats.mu.Unlock()
		if stale {
			h.replace(sh)
		}
	}
}

// publishBeat publishes this Hub's heartbeat, stamped with the time now
// ("ns"), and reports whether Redis accepted one. On a Cluster it
// publishes on every master whose heartbeats are due (see beats.due),
// each stamped by the master and naming it ("µs addr"), reads the clock of
// the others that need it, and makes the masters beats.nodes if every one
// answered.
func (h *Hub) publishBeat(ctx context.Context, force bool) bool {
	if h.cluster == nil {
		ns := strconv.FormatInt(time.Now().UnixNano(), 10)
		return h.rdb.Publish(ctx, h.beat, ns).Err() == nil
	}
	b := &h.beats
	var mu sync.Mutex
	var nodes []string
	sent := false
	err := h.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		addr := c.Options().Addr
		at := time.Now()
		publish, read := b.due(addr, at, h.beatEvery, force)
		var stamp int64
		var err error
		switch {
		case publish:
			stamp, err = beatScript.Run(ctx, c, nil, h.beat, addr).Int64()
		case read:
			var tm time.Time
			tm, err = c.Time(ctx).Result()
			stamp = tm.UnixMicro()
		}
		if err != nil {
			return err
		}
		if publish || read {
			b.clock(addr, at, stamp)
		}
		mu.Lock()
		defer mu.Unlock()
		nodes = append(nodes, addr)
		sent = sent || publish
		return nil
	})
	if err == nil && len(nodes) > 0 {
		// A master that did not answer keeps its place (and its old
		// heartbeat) in nodes: its path is not proven.
		b.mu.Lock()
		b.nodes = nodes
		b.updateLocked()
		for addr := range b.node {
			if !slices.Contains(nodes, addr) {
				delete(b.node, addr) // no longer a master
			}
		}
		b.mu.Unlock()
	}
	return sent
}

// heartbeatSeen records a heartbeat that came back: "ns" from this Hub on
// a standalone client, "µs addr" from any Hub on a Cluster.
func (h *Hub) heartbeatSeen(payload string) {
	stampStr, from, _ := strings.Cut(payload, " ")
	stamp, err := strconv.ParseInt(stampStr, 10, 64)
	if err != nil {
		return
	}
	b := &h.beats
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sentUnseen = 0
	if from == "" {
		if t := time.Unix(0, stamp); t.After(b.newest) {
			b.newest = t
			b.heard.Store(stamp)
		}
		return
	}
	n := b.nodeLocked(from)
	n.seen = time.Now()
	if n.read.IsZero() {
		n.pending = max(n.pending, stamp)
		return
	}
	n.seenStamp(stamp, n.seen)
	b.updateLocked()
}

// replace gives the heartbeat shard, sh, a new pub/sub connection (which
// dials the client's current master; on a Cluster, a node of its current
// view) when its heartbeats stopped coming back, and subscribes its
// channels on it (see reconnect).
func (h *Hub) replace(sh *shard) {
	h.mu.Lock()
	beatShard := h.shards[h.beatAddr] == sh
	h.mu.Unlock()
	if beatShard {
		h.reconnect(sh)
	}
}

// Heard returns when the newest heartbeat that came back was sent, in Unix
// nanoseconds: every message published before then, with classic PUBLISH
// (on a Cluster: to a channel of ListenAll), has been delivered. On a
// Cluster heartbeats are published on every master (by whichever Hub of
// the fleet is due), and Heard is the oldest of the newest from each, in
// this process's clock and early by at most a round trip: a message
// published on any master before then has been delivered. It is 0 on a Ring (no heartbeats), on a Cluster until
// ListenAll, and after a connection broke until a heartbeat comes back on
// the new one.
func (h *Hub) Heard() int64 { return h.beats.heard.Load() }

// Heartbeats reports whether the Hub sends heartbeats, whose return Heard
// reports: on a standalone or Sentinel client while anyone waits or
// listens, and on a Cluster while a ListenAll listener lives; never on a
// Ring.
func (h *Hub) Heartbeats() bool { return h.beat != "" }
