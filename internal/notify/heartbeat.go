package notify

import (
	"context"
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
const (
	defaultBeat = 200 * time.Millisecond
	beatMissed  = 3
)

// beats is what the heartbeats taught about the connection they travel on
// (the shard at Hub.beatAddr).
type beats struct {
	heard atomic.Int64 // Unix ns of newest, the value of Heard; 0 when none

	mu         sync.Mutex // guards the fields below
	sentUnseen int        // heartbeats accepted by Redis since the last one seen
	newest     time.Time  // when the newest heartbeat seen was sent
	// On a Cluster a heartbeat goes to every master, and newest is the
	// oldest of the newest seen from each of nodes (the masters of the
	// last round that every master accepted): every node's path to this
	// connection is proven, not one.
	from  map[string]time.Time
	nodes []string
}

// forget drops what was heard: the connection broke or was replaced.
func (b *beats) forget() {
	b.mu.Lock()
	b.newest = time.Time{}
	clear(b.from)
	b.heard.Store(0)
	b.mu.Unlock()
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
	t := time.NewTicker(beatEvery)
	defer t.Stop()
	for {
		select {
		case <-h.done:
			return
		case <-t.C:
		case <-now:
		}
		h.mu.Lock()
		sh := h.shards[h.beatAddr]
		active := sh != nil && len(h.chans) > 0
		h.mu.Unlock()
		if refused, _ := h.refusal.holding(); !active || refused {
			continue
		}
		sent := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), beatEvery)
		err := h.publishBeat(ctx, strconv.FormatInt(sent.UnixNano(), 10))
		cancel()
		if err != nil {
			continue // Redis is away or refuses: nothing to learn
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

// publishBeat publishes one heartbeat: on a Cluster, one to every master,
// each naming the master ("ns addr"), and the round's masters become
// beats.nodes if every one accepted it; else one ("ns").
func (h *Hub) publishBeat(ctx context.Context, ns string) error {
	if h.cluster == nil {
		return h.rdb.Publish(ctx, h.beat, ns).Err()
	}
	var mu sync.Mutex
	var nodes []string
	err := h.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		addr := c.Options().Addr
		if err := c.Publish(ctx, h.beat, ns+" "+addr).Err(); err != nil {
			return err
		}
		mu.Lock()
		nodes = append(nodes, addr)
		mu.Unlock()
		return nil
	})
	if len(nodes) == 0 {
		return err
	}
	if err == nil {
		// A master that did not accept keeps its place (and its old
		// heartbeat) in nodes: its path is not proven.
		h.beats.mu.Lock()
		h.beats.nodes = nodes
		h.beats.mu.Unlock()
	}
	return nil
}

func (h *Hub) heartbeatSeen(payload string) {
	nsStr, from, _ := strings.Cut(payload, " ")
	ns, err := strconv.ParseInt(nsStr, 10, 64)
	if err != nil {
		return
	}
	b := &h.beats
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sentUnseen = 0
	t := time.Unix(0, ns)
	if from != "" {
		if b.from == nil {
			b.from = make(map[string]time.Time)
		}
		if t.After(b.from[from]) {
			b.from[from] = t
		}
		// The oldest path decides.
		t = time.Time{}
		for i, n := range b.nodes {
			if f := b.from[n]; i == 0 || f.Before(t) {
				t = f
			}
		}
		if t.IsZero() {
			return
		}
		b.newest = t
		b.heard.Store(t.UnixNano())
		return
	}
	if t.After(b.newest) {
		b.newest = t
		b.heard.Store(ns)
	}
}

// replace gives the heartbeat shard a new pub/sub connection (which dials
// the client's current master; on a Cluster, a node of its current view)
// and subscribes its channels on it.
func (h *Hub) replace(sh *shard) {
	h.mu.Lock()
	if h.closed || h.shards[h.beatAddr] != sh {
		h.mu.Unlock()
		return
	}
	old := sh.ps
	sh.ps = h.rdb.Subscribe(context.Background())
	sh.wait = nil
	h.beats.mu.Lock()
	h.beats.sentUnseen = 0
	h.beats.mu.Unlock()
	for _, e := range h.chans {
		// Still ready for waiters already waiting: they get Wake when the
		// new connection confirms the channel.
		e.subscribed = false
	}
	h.wg.Add(1)
	go h.reader(sh, sh.ps)
	h.mu.Unlock()
	_ = old.Close()
	h.lost(sh)
	h.resubscribe(sh)
}

// Heard returns when the newest heartbeat that came back was sent, in Unix
// nanoseconds: every message published before then, with classic PUBLISH
// (on a Cluster: to a channel of ListenAll), has been delivered. On a
// Cluster a heartbeat is published on every master, and Heard is the oldest
// of the newest from each: a message published on any master before then
// has been delivered. It is 0 on a Ring (no heartbeats), on a Cluster until
// ListenAll, and after a connection broke until a heartbeat comes back on
// the new one.
func (h *Hub) Heard() int64 { return h.beats.heard.Load() }

// Heartbeats reports whether the Hub sends heartbeats, whose return Heard
// reports: on a standalone or Sentinel client while anyone waits or
// listens, and on a Cluster while a ListenAll listener lives; never on a
// Ring.
func (h *Hub) Heartbeats() bool { return h.beat != "" }
