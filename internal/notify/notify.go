// Package notify multiplexes Redis pub/sub subscriptions for many waiters over
// one connection per Redis server: one for a standalone server or a
// Sentinel-managed master, one per master on a Redis Cluster (sharded
// pub/sub), one per shard of a Ring.
//
// A waiter subscribes to a channel, waits until the subscription is confirmed
// ([Sub.Ready]), re-checks the state it waits on, then waits for a message.
// Ready means more than the server's "subscribe" reply: after each batch of
// SUBSCRIBE commands the Hub sends a PING on the same connection, and a
// channel is ready when that PING's reply arrives and the newest
// subscription reply for the channel before it said "subscribed". Replies
// arrive in command order on one connection, so a subscription confirmed
// that way is in force, whatever was subscribed, unsubscribed or lost to a
// reconnect before: anything published after Ready is delivered, and no
// wake-up is lost between the re-check and the wait. Subscriptions are
// reference counted per channel, so a thousand waiters on one key cost one
// SUBSCRIBE.
//
// Nothing here blocks a caller on the network: SUBSCRIBE and UNSUBSCRIBE are
// queued and written by one goroutine, in order, batched.
//
// When Redis refuses a subscription (an ACL user without channel
// permissions), the Hub does not retry at once: it counts the error, reports
// it once, and tries again after a back-off while waiters fall back to
// polling. On a standalone or Sentinel-managed server the Hub also publishes
// a heartbeat on a channel of its own while anyone waits; when heartbeats
// that Redis accepted stop arriving (after a Sentinel failover the pub/sub
// connection still points at the old master), it opens a new connection,
// which follows the client to the current master. On a Cluster, channels
// of [Hub.ListenAll] share a classic pub/sub connection with the
// heartbeats.
package notify

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Wake is the payload delivered to every waiter on a channel when its
// subscription was re-established (after a reconnect, a new connection, or
// a refusal lifted): messages may have been lost, so waiters must re-check.
// Publishers never publish an empty payload.
const Wake = ""

// ErrClosed is returned by [Hub.Await] when the Hub is closed while waiting.
var ErrClosed = errors.New("notify: closed")

// Hub owns the pub/sub connections of one Redis client. The zero value is not
// usable; create one with [New]. A Hub must be closed with [Hub.Close].
type Hub struct {
	rdb     redis.UniversalClient
	cluster *redis.ClusterClient // non-nil: sharded pub/sub, one connection per master
	ring    *redis.Ring          // non-nil: one connection per shard
	beat    string               // heartbeat channel; "" on a Ring
	// beatAddr is the shards key of the connection heartbeats travel on:
	// "" for a standalone client, broadcastAddr on a Cluster.
	beatAddr string

	errCount  atomic.Uint64
	onError   func(error)
	beatEvery time.Duration
	heard     atomic.Int64 // sh.heard of the shard at beatAddr, Unix ns; 0 when none

	mu     sync.Mutex // guards every field below and the fields of shards and entries
	chans  map[string]*entry
	shards map[string]*shard // by server address; "" for a standalone client, broadcastAddr
	// broadcast holds the channels of ListenAll: on a Cluster they are
	// subscribed with classic SUBSCRIBE on the broadcast connection.
	broadcast map[string]bool
	ops       []op
	subSeq    uint64 // numbers SUBSCRIBE ops
	closed    bool
	started   bool
	refused   bool      // a subscription was refused and not yet retried
	retryAt   time.Time // when refused subscriptions are tried again
	backoff   time.Duration
	told      bool          // the refusal was reported
	kick      chan struct{} // wakes the writer; capacity 1
	beatNow   chan struct{} // asks for a heartbeat at once; capacity 1, made with the heartbeat goroutine
	done      chan struct{} // closed by Close
	wg        sync.WaitGroup
}

// Options configure a [Hub]. The zero value is valid.
type Options struct {
	// OnError, if not nil, is called when Redis refuses a subscription,
	// once per refusal that follows a working subscription.
	OnError func(error)
	// Heartbeat is how often the Hub of a standalone or Sentinel client
	// publishes a heartbeat while anyone waits or listens. One more is
	// published as soon as the heartbeat channel is subscribed, at start
	// and after every reconnect, so that [Hub.Heard] is known at once.
	// default: 200ms
	Heartbeat time.Duration
}

type op struct {
	channel   string
	subscribe bool
	n         uint64 // a SUBSCRIBE's number, see entry.subOp
}

type shard struct {
	addr string
	ps   *redis.PubSub
	seq  uint64              // the last PING sent
	wait map[uint64][]string // PING number -> channels subscribed just before it
	// unread: the shard's reader is not started yet. A Cluster shard's
	// reader starts after its first SSUBSCRIBE: go-redis routes a sharded
	// connection by the slot of its first channel, and a reader that
	// connected first would land on a random master, which refuses the
	// shard's channels with MOVED.
	unread bool
	// Heartbeats, on the shard at beatAddr only.
	sentUnseen int       // heartbeats accepted by Redis since the last one seen
	heard      time.Time // when the newest heartbeat seen was sent
	// On a Cluster a heartbeat goes to every master, and heard is the
	// oldest of the newest seen from each of beatNodes (the masters of the
	// last round that every master accepted): every node's path to this
	// connection is proven, not one.
	heardFrom map[string]time.Time
	beatNodes []string
}

// entry is the state of one channel.
type entry struct {
	listeners  map[*Listener]struct{}
	refs       int
	want       bool   // the newest op queued for the channel is SUBSCRIBE
	subOp      uint64 // the number of that SUBSCRIBE
	needPing   uint64 // ready when a PONG numbered at least this arrives; 0: not sent yet
	subscribed bool   // the newest subscription reply said subscribed
	sh         *shard // where it was last subscribed
	ready      chan struct{}
	isReady    bool
	subs       map[*Sub]struct{}
}

// New returns a Hub for rdb. It opens no connection until the first
// [Hub.Subscribe].
func New(rdb redis.UniversalClient, opt *Options) *Hub {
	h := &Hub{
		rdb:    rdb,
		chans:  make(map[string]*entry),
		shards: make(map[string]*shard),
		kick:   make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	h.beatEvery = defaultBeat
	if opt != nil {
		h.onError = opt.OnError
		if opt.Heartbeat > 0 {
			h.beatEvery = opt.Heartbeat
		}
	}
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		h.cluster = c
		h.beatAddr = broadcastAddr
	case *redis.Ring:
		h.ring = c
	}
	if h.ring == nil {
		h.beat = "__locksmith:hub:" + strconv.FormatUint(rand.Uint64(), 36)
	}
	return h
}

// Errors returns how many subscriptions Redis refused.
func (h *Hub) Errors() uint64 { return h.errCount.Load() }

// Sub is one waiter's subscription to one channel.
type Sub struct {
	h       *Hub
	channel string
	e       *entry
	c       chan string
	closed  bool // guarded by h.mu
}

// Subscribe subscribes to channel. It never blocks on the network: the
// returned Sub is ready once the subscription is confirmed. It never fails
// either: when Redis cannot be reached or refuses, Ready stays open and the
// waiter falls back to polling. The caller must Close the Sub.
func (h *Hub) Subscribe(channel string) *Sub {
	s := &Sub{h: h, channel: channel, c: make(chan string, 1)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		s.closed = true
		s.e = &entry{ready: make(chan struct{})}
		return s
	}
	e := h.chans[channel]
	if e == nil {
		e = &entry{ready: make(chan struct{}), subs: make(map[*Sub]struct{})}
		h.chans[channel] = e
	}
	s.e = e
	e.refs++
	e.subs[s] = struct{}{}
	if !e.want {
		h.want(channel, e)
	}
	return s
}

// want queues a SUBSCRIBE for channel. h.mu must be held.
func (h *Hub) want(channel string, e *entry) {
	h.subSeq++
	e.want, e.subOp, e.needPing = true, h.subSeq, 0
	h.enqueue(op{channel: channel, subscribe: true, n: h.subSeq})
}

// Ready is closed once the subscription is confirmed.
func (s *Sub) Ready() <-chan struct{} {
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	return s.e.ready
}

// C delivers messages published on the channel. It holds only the newest one:
// a waiter that is slow to read sees the latest payload, and [Wake] after a
// reconnect.
func (s *Sub) C() <-chan string { return s.c }

// Close ends the subscription. The channel is unsubscribed when its last Sub
// closes. Close is idempotent.
func (s *Sub) Close() {
	h := s.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	e := s.e
	delete(e.subs, s)
	e.refs--
	if e.refs > 0 || h.closed {
		return
	}
	e.want = false
	if e.isReady {
		e.ready = make(chan struct{})
		e.isReady = false
	}
	h.enqueue(op{channel: s.channel})
}

// enqueue queues a command for the writer. h.mu must be held.
func (h *Hub) enqueue(o op) {
	h.ops = append(h.ops, o)
	if !h.started {
		h.started = true
		h.wg.Add(1)
		go h.writer()
		if h.beat != "" {
			h.beatNow = make(chan struct{}, 1)
			h.wg.Add(1)
			go h.heartbeat(h.beatNow)
		}
	}
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// writer sends queued SUBSCRIBE and UNSUBSCRIBE commands in order, batching
// runs of the same command on the same connection, each batch of SUBSCRIBEs
// followed by a PING.
func (h *Hub) writer() {
	defer h.wg.Done()
	var retry *time.Timer
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	for {
		var retryC <-chan time.Time
		if retry != nil {
			retryC = retry.C
		}
		select {
		case <-h.done:
			return
		case <-h.kick:
		case <-retryC:
			retry = nil
			h.mu.Lock()
			h.refused = false
			h.mu.Unlock()
			h.resubscribe(nil)
		}
		h.mu.Lock()
		if h.refused {
			// Subscriptions are refused: hold every op until the back-off
			// ends; Close and want state are applied then.
			if retry == nil {
				retry = time.NewTimer(time.Until(h.retryAt))
			}
			h.mu.Unlock()
			continue
		}
		ops := h.ops
		h.ops = nil
		h.mu.Unlock()
		for i := 0; i < len(ops); {
			sh := h.shardFor(ops[i].channel)
			j := i + 1
			// SSUBSCRIBE takes channels of one slot only: on a Cluster, one
			// command per channel. On a Ring, channels of a batch must be
			// on one shard.
			for h.cluster == nil && j < len(ops) && ops[j].subscribe == ops[i].subscribe &&
				(h.ring == nil || h.shardFor(ops[j].channel) == sh) {
				j++
			}
			h.send(sh, ops[i].subscribe, ops[i:j])
			i = j
		}
	}
}

// writeTimeout bounds one SUBSCRIBE, UNSUBSCRIBE or PING write (and the dial
// that may precede it). A write that fails leaves the channel registered in
// the go-redis PubSub, which subscribes it again when it reconnects; the
// reader then asks for a new PING.
const writeTimeout = 5 * time.Second

func (h *Hub) send(sh *shard, subscribe bool, ops []op) {
	if sh == nil {
		return // the slot's owner is unknown: waiters poll
	}
	channels := make([]string, len(ops))
	for i, o := range ops {
		channels[i] = o.channel
	}
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	h.mu.Lock()
	ps := sh.ps
	h.mu.Unlock()
	if ps == nil {
		return
	}
	sharded := h.cluster != nil && sh.addr != broadcastAddr
	if !subscribe {
		if sharded {
			_ = ps.SUnsubscribe(ctx, channels...)
		} else {
			_ = ps.Unsubscribe(ctx, channels...)
		}
		return
	}
	var err error
	if sharded {
		err = ps.SSubscribe(ctx, channels...)
		h.startReader(sh)
	} else {
		err = ps.Subscribe(ctx, channels...)
	}
	if err != nil {
		return
	}
	h.mu.Lock()
	sh.seq++
	n := sh.seq
	var waiting []string
	for _, o := range ops {
		if e := h.chans[o.channel]; e != nil && e.want && e.subOp == o.n {
			e.needPing, e.sh = n, sh
			waiting = append(waiting, o.channel)
		}
	}
	if sh.wait == nil {
		sh.wait = make(map[uint64][]string)
	}
	sh.wait[n] = waiting
	h.mu.Unlock()
	_ = ps.Ping(ctx, pingPrefix+strconv.FormatUint(n, 10))
}

// pingPrefix marks the Hub's PINGs, apart from health checks.
const pingPrefix = "locksmith:"

// shardFor returns the shard serving channel, creating it and its reader on
// first use.
func (h *Hub) shardFor(channel string) *shard {
	addr := ""
	var client *redis.Client
	h.mu.Lock()
	broadcast := h.cluster != nil && (channel == h.beat || h.broadcast[channel])
	h.mu.Unlock()
	switch {
	case broadcast:
		addr = broadcastAddr
	case h.cluster != nil:
		ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
		node, err := h.cluster.MasterForKey(ctx, channel)
		cancel()
		if err != nil {
			return nil
		}
		addr = node.Options().Addr
	case h.ring != nil:
		c, err := h.ring.GetShardClientForKey(channel)
		if err != nil {
			return nil
		}
		client, addr = c, c.Options().Addr
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil
	}
	if sh := h.shards[addr]; sh != nil {
		return sh
	}
	sh := &shard{addr: addr}
	switch {
	case broadcast:
		// Classic pub/sub on any node: a Cluster forwards every classic
		// PUBLISH to every node.
		sh.ps = h.rdb.Subscribe(context.Background())
		h.subSeq++
		h.enqueue(op{channel: h.beat, subscribe: true, n: h.subSeq})
	case h.cluster != nil:
		// The connection is routed by the slot of the first channel it
		// subscribes; SSubscribe with no channel leaves it unconnected,
		// and so must the reader until then (see shard.unread).
		sh.ps = h.cluster.SSubscribe(context.Background())
		sh.unread = true
		h.shards[addr] = sh
		return sh
	case client != nil:
		sh.ps = client.Subscribe(context.Background())
	default:
		sh.ps = h.rdb.Subscribe(context.Background())
		h.subSeq++
		h.enqueue(op{channel: h.beat, subscribe: true, n: h.subSeq})
	}
	h.shards[addr] = sh
	h.wg.Add(1)
	go h.reader(sh, sh.ps)
	return sh
}

// startReader starts sh's reader if it is not running yet.
func (h *Hub) startReader(sh *shard) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !sh.unread || h.closed {
		return
	}
	sh.unread = false
	h.wg.Add(1)
	go h.reader(sh, sh.ps)
}

// healthEvery is how long the reader waits for a message before it pings
// the connection, which makes go-redis notice a dead one and reconnect.
const healthEvery = 3 * time.Second

// reader dispatches one connection's replies until it is closed or
// replaced. go-redis reconnects and subscribes again by itself; the reader
// then queues SUBSCRIBEs for the shard's channels so that a PING follows
// them, and waiters of channels that were ready are woken (messages may
// have been lost).
func (h *Hub) reader(sh *shard, ps *redis.PubSub) {
	defer h.wg.Done()
	ctx := context.Background()
	backoff := time.Duration(0)
	for {
		m, err := ps.ReceiveTimeout(ctx, healthEvery)
		if err != nil {
			if h.isClosed() || errors.Is(err, redis.ErrClosed) {
				return
			}
			var re redis.Error
			var ne net.Error
			switch {
			case errors.As(err, &re) && h.cluster != nil && strings.HasPrefix(err.Error(), "CROSSSLOT"):
				// go-redis subscribed every channel at once after a
				// reconnect; SSUBSCRIBE takes one slot at a time.
				h.resubscribe(sh)
			case errors.As(err, &re):
				h.refuse(err)
			case errors.As(err, &ne) && ne.Timeout():
				_ = ps.Ping(ctx)
			default:
				// Disconnected: the next receive dials again.
				h.lost(sh)
				h.resubscribe(sh)
				backoff = min(max(2*backoff, 10*time.Millisecond), time.Second)
				t := time.NewTimer(backoff)
				select {
				case <-h.done:
					t.Stop()
					return
				case <-t.C:
				}
			}
			continue
		}
		backoff = 0
		switch m := m.(type) {
		case *redis.Message:
			if m.Channel == h.beat && h.beat != "" {
				h.heartbeatSeen(sh, m.Payload)
				continue
			}
			h.deliver(m.Channel, m.Payload)
		case *redis.Subscription:
			h.confirm(sh, m.Kind, m.Channel)
		case *redis.Pong:
			h.pong(sh, m.Payload)
		}
	}
}

func (h *Hub) isClosed() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closed
}

// resubscribe queues a SUBSCRIBE for every wanted channel of sh (every
// channel, when sh is nil). Their PING makes them ready again.
func (h *Hub) resubscribe(sh *shard) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	for ch, e := range h.chans {
		if e.want && (sh == nil || e.sh == nil || e.sh == sh) {
			h.subSeq++
			e.subOp, e.needPing = h.subSeq, 0
			h.enqueue(op{channel: ch, subscribe: true, n: h.subSeq})
		}
	}
	if sh != nil && sh.addr == h.beatAddr && h.beat != "" {
		h.subSeq++
		h.enqueue(op{channel: h.beat, subscribe: true, n: h.subSeq})
	}
}

// refusalMin and refusalMax bound the back-off after Redis refused a
// subscription.
const (
	refusalMin = time.Second
	refusalMax = 30 * time.Second
)

// refuse records that Redis refused a subscription: the writer holds its
// commands for a back-off, waiters poll meanwhile, and the error is counted
// and reported once.
func (h *Hub) refuse(err error) {
	h.errCount.Add(1)
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.backoff = min(max(2*h.backoff, refusalMin), refusalMax)
	h.refused, h.retryAt = true, time.Now().Add(h.backoff)
	tell := !h.told
	h.told = true
	onError := h.onError
	select {
	case h.kick <- struct{}{}:
	default:
	}
	h.mu.Unlock()
	if tell && onError != nil {
		onError(err)
	}
}

func (h *Hub) deliver(channel, payload string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.chans[channel]
	if e == nil {
		return
	}
	for s := range e.subs {
		s.put(payload)
	}
	for l := range e.listeners {
		l.fn(payload)
	}
}

// put delivers payload, replacing an unread older one. h.mu must be held.
func (s *Sub) put(payload string) {
	for {
		select {
		case s.c <- payload:
			return
		default:
		}
		select {
		case <-s.c:
		default:
		}
	}
}

func (h *Hub) confirm(sh *shard, kind, channel string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if channel == h.beat && kind == "subscribe" && h.beatNow != nil {
		// Subscribed, at start or after a reconnect: Heard is unknown
		// until a heartbeat comes back, so send one now, not a period
		// later.
		select {
		case h.beatNow <- struct{}{}:
		default:
		}
	}
	e := h.chans[channel]
	if e == nil {
		return
	}
	switch kind {
	case "subscribe", "ssubscribe":
		e.subscribed = true
		if e.isReady && e.want {
			// Subscribed again while ready: the connection was
			// re-established and messages may have been lost.
			for s := range e.subs {
				s.put(Wake)
			}
			for l := range e.listeners {
				l.fn(Wake)
			}
		}
		if h.told && h.backoff > 0 {
			// Subscriptions work again: the next refusal is reported.
			h.told, h.backoff = false, 0
		}
	case "unsubscribe", "sunsubscribe":
		e.subscribed = false
		if !e.want && e.refs == 0 {
			delete(h.chans, channel)
		}
	}
}

func (h *Hub) pong(sh *shard, payload string) {
	s, ok := strings.CutPrefix(payload, pingPrefix)
	if !ok {
		return
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, channels := range sh.wait {
		if k > n {
			continue
		}
		delete(sh.wait, k)
		for _, ch := range channels {
			e := h.chans[ch]
			if e == nil || !e.want || !e.subscribed || e.needPing == 0 || e.needPing > n || e.isReady {
				continue
			}
			e.isReady = true
			close(e.ready)
		}
	}
}

// Heartbeats: while anyone waits, the Hub of a standalone client publishes
// one every beatEvery, and one at once whenever the heartbeat channel is
// subscribed (at start, after a reconnect); after beatMissed heartbeats
// that Redis accepted without one arriving, the pub/sub connection is
// replaced.
const (
	defaultBeat = 200 * time.Millisecond
	beatMissed  = 3
)

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
		active := sh != nil && len(h.chans) > 0 && !h.refused
		h.mu.Unlock()
		if !active {
			continue
		}
		sent := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), beatEvery)
		err := h.publishBeat(ctx, sh, strconv.FormatInt(sent.UnixNano(), 10))
		cancel()
		if err != nil {
			continue // Redis is away or refuses: nothing to learn
		}
		h.mu.Lock()
		sh.sentUnseen++
		stale := sh.sentUnseen > beatMissed
		h.mu.Unlock()
		if stale {
			h.replace(sh)
		}
	}
}

// publishBeat publishes one heartbeat: on a Cluster, one to every master,
// each naming the master ("ns addr"), and the round's masters become
// sh.beatNodes if every one accepted it; else one ("ns").
func (h *Hub) publishBeat(ctx context.Context, sh *shard, ns string) error {
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
		// heartbeat) in beatNodes: its path is not proven.
		h.mu.Lock()
		sh.beatNodes = nodes
		h.mu.Unlock()
	}
	return nil
}

func (h *Hub) heartbeatSeen(sh *shard, payload string) {
	nsStr, from, _ := strings.Cut(payload, " ")
	ns, err := strconv.ParseInt(nsStr, 10, 64)
	if err != nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	sh.sentUnseen = 0
	t := time.Unix(0, ns)
	if from != "" {
		if sh.heardFrom == nil {
			sh.heardFrom = make(map[string]time.Time)
		}
		if t.After(sh.heardFrom[from]) {
			sh.heardFrom[from] = t
		}
		// The oldest path decides.
		t = time.Time{}
		for i, n := range sh.beatNodes {
			if f := sh.heardFrom[n]; i == 0 || f.Before(t) {
				t = f
			}
		}
		if t.IsZero() {
			return
		}
		sh.heard = t
		h.heard.Store(t.UnixNano())
		return
	}
	if t.After(sh.heard) {
		sh.heard = t
		h.heard.Store(ns)
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
	sh.sentUnseen, sh.wait = 0, nil
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

// lost tells the listeners of sh's channels, with [Wake], that messages may
// have been lost: the connection broke or was replaced. It runs before any
// message of a new connection is dispatched to them.
func (h *Hub) lost(sh *shard) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if sh.addr == h.beatAddr {
		sh.heard = time.Time{}
		clear(sh.heardFrom)
		h.heard.Store(0)
	}
	for _, e := range h.chans {
		if e.sh != sh && e.sh != nil {
			continue
		}
		for l := range e.listeners {
			l.fn(Wake)
		}
	}
}

// broadcastAddr keys a Cluster's classic pub/sub connection among the
// shards (which are keyed by address otherwise).
const broadcastAddr = "*broadcast"

// Listener is a permanent subscription whose messages go to a function.
type Listener struct {
	h       *Hub
	channel string
	fn      func(string)
	sub     *Sub
}

// Listen subscribes to channel for as long as the Hub lives (or until
// [Listener.Close]) and calls fn with every message, on the Hub's reader
// goroutine and in order, while it holds the Hub's lock: fn must be quick
// and must not call the Hub. fn is also called with [Wake] whenever
// messages may have been lost (a connection broke or was replaced, or was
// re-established), before any later message.
func (h *Hub) Listen(channel string, fn func(payload string)) *Listener {
	l := &Listener{h: h, channel: channel, fn: fn}
	l.sub = h.Subscribe(channel)
	h.mu.Lock()
	defer h.mu.Unlock()
	if e := l.sub.e; e.subs != nil {
		if e.listeners == nil {
			e.listeners = make(map[*Listener]struct{})
		}
		e.listeners[l] = struct{}{}
	}
	return l
}

// ListenAll is Listen for a channel on which messages are published with
// classic PUBLISH on any node: on a Cluster, which forwards every classic
// PUBLISH to every node, it is subscribed with classic SUBSCRIBE on a
// connection of its own, which also carries the heartbeats (see
// [Hub.Heard]). On a Ring, whose shards forward nothing, it hears only what
// is published on the shard that owns channel.
func (h *Hub) ListenAll(channel string, fn func(payload string)) *Listener {
	h.mu.Lock()
	if h.broadcast == nil {
		h.broadcast = make(map[string]bool)
	}
	h.broadcast[channel] = true
	h.mu.Unlock()
	return h.Listen(channel, fn)
}

// Ready is closed once the listener's subscription is confirmed.
func (l *Listener) Ready() <-chan struct{} { return l.sub.Ready() }

// Close ends the listener's subscription.
func (l *Listener) Close() {
	l.h.mu.Lock()
	delete(l.sub.e.listeners, l)
	l.h.mu.Unlock()
	l.sub.Close()
}

// Heard returns when the newest heartbeat that came back was sent, in Unix
// nanoseconds: every message published before then, with classic PUBLISH
// (on a Cluster: to a channel of ListenAll), has been delivered. On a
// Cluster a heartbeat is published on every master, and Heard is the oldest
// of the newest from each: a message published on any master before then
// has been delivered. It is 0 on a Ring (no heartbeats), on a Cluster until
// ListenAll, and after a connection broke until a heartbeat comes back on
// the new one.
func (h *Hub) Heard() int64 { return h.heard.Load() }

// Heartbeats reports whether the Hub sends heartbeats, whose return Heard
// reports: on a standalone or Sentinel client while anyone waits or
// listens, and on a Cluster while a ListenAll listener lives; never on a
// Ring.
func (h *Hub) Heartbeats() bool { return h.beat != "" }

// Close closes the pub/sub connections and stops the Hub's goroutines. Subs
// still open stay valid but receive nothing more; [Hub.Await] calls return
// [ErrClosed]. Close is idempotent.
func (h *Hub) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	close(h.done)
	shards := h.shards
	h.shards = nil
	h.mu.Unlock()
	for _, sh := range shards {
		_ = sh.ps.Close()
	}
	h.wg.Wait()
	return nil
}

// Done is closed when the Hub is closed.
func (h *Hub) Done() <-chan struct{} { return h.done }

// Step is an attempt's verdict for [Hub.Await].
type Step struct {
	// Done ends the wait.
	Done bool
	// Wait, without Done, is the longest to wait before the next attempt.
	Wait time.Duration
}

// Await calls attempt until it reports done or fails, and between attempts
// waits for a message on channel, for the duration attempt returned, or for
// ctx, whichever comes first. Before its second attempt it subscribes and
// waits for the subscription to be confirmed (at most that same duration),
// so an event published after the second attempt's check is never missed.
//
// A message is passed to message, if not nil, which may end the wait (done)
// or fail it; otherwise, or when message returns neither, attempt runs again.
// A message already received goes to message before the next attempt. The
// [Wake] payload is passed on too. Await returns ctx.Err() when ctx ends,
// and [ErrClosed] when the Hub is closed.
func (h *Hub) Await(ctx context.Context, channel string,
	attempt func() (Step, error),
	message func(payload string) (done bool, err error),
) error {
	return h.AwaitSub(ctx, channel, nil, attempt, message)
}

// AwaitSub is [Hub.Await] given sub, the caller's subscription to channel,
// which was ready (see [Sub.Ready]) before attempt's first check was sent
// to Redis: nothing published after that check can be missed, so the wait
// for a message begins after the first attempt. AwaitSub closes sub when
// it returns. A nil sub makes it Await.
func (h *Hub) AwaitSub(ctx context.Context, channel string, sub *Sub,
	attempt func() (Step, error),
	message func(payload string) (done bool, err error),
) error {
	var timer *time.Timer
	defer func() {
		if sub != nil {
			sub.Close()
		}
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		step, err := attempt()
		if err != nil || step.Done {
			return err
		}
		wait := max(step.Wait, time.Millisecond)
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		if sub == nil {
			sub = h.Subscribe(channel)
			select {
			case <-sub.Ready():
			case <-timer.C:
			case <-ctx.Done():
				return ctx.Err()
			case <-h.done:
				return ErrClosed
			}
		} else {
			select {
			case p := <-sub.C():
				if done, err := deliver(message, p); err != nil || done {
					return err
				}
			case <-timer.C:
			case <-ctx.Done():
				return ctx.Err()
			case <-h.done:
				return ErrClosed
			}
		}
		stop(timer)
		// A message may have arrived with the confirmation or the timer:
		// it says more than the next attempt can (a failure leaves the
		// lock free, looking like nothing happened), so it goes first.
		select {
		case p := <-sub.C():
			if done, err := deliver(message, p); err != nil || done {
				return err
			}
		default:
		}
	}
}

func deliver(message func(string) (bool, error), p string) (bool, error) {
	if message == nil {
		return false, nil
	}
	return message(p)
}

// stop stops t and drains its channel, so that it can be Reset.
func stop(t *time.Timer) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
}
