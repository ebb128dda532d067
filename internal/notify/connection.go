package notify

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// op is a SUBSCRIBE or UNSUBSCRIBE queued for the writer.
type op struct {
	channel   string
	subscribe bool
	n         uint64 // a SUBSCRIBE's number, see entry.subOp
	sh        *shard // nil: the shard channel's owner; else this one
	at        time.Time
}

// shard is one pub/sub connection and the PINGs that confirm its
// subscriptions. Its fields are guarded by Hub.mu.
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
	// echoes counts the replies still to come to SUNSUBSCRIBEs sent after
	// the shard's master dropped channels whose slots it no longer owns
	// (see dropped): an sunsubscribe, or MOVED.
	echoes int
	// client is a Ring shard's own client, which a new connection dials.
	client *redis.Client
}

// broadcastAddr keys a Cluster's classic pub/sub connection among the
// shards (which are keyed by address otherwise).
const broadcastAddr = "*broadcast"

// enqueue queues a command for the writer. h.mu must be held. A SUBSCRIBE
// wakes the writer at once. An UNSUBSCRIBE waits (see unsubDelay): the
// first one queued arms a timer that wakes the writer then, and the rest
// wake nobody, so that a wait that ends (its Sub closed) makes no other
// goroutine runnable beside its caller.
func (h *Hub) enqueue(o op) {
	o.at = time.Now()
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
	switch {
	case o.subscribe:
		h.kickWriter()
	case len(h.ops) > 1:
		// The writer was woken for the first, or its timer armed.
	case h.unsubTimer == nil:
		h.unsubTimer = time.AfterFunc(unsubDelay, h.kickWriter)
	default:
		h.unsubTimer.Reset(unsubDelay)
	}
}

// kickWriter wakes the writer.
func (h *Hub) kickWriter() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// writer sends queued SUBSCRIBE and UNSUBSCRIBE commands in order, batching
// runs of the same command on the same connection, each batch of SUBSCRIBEs
// followed by a PING. UNSUBSCRIBEs alone wait unsubDelay (see there).
func (h *Hub) writer() {
	defer h.wg.Done()
	var retry, hold *time.Timer
	defer func() {
		for _, t := range []*time.Timer{retry, hold} {
			if t != nil {
				t.Stop()
			}
		}
	}()
	for {
		var retryC, holdC <-chan time.Time
		if retry != nil {
			retryC = retry.C
		}
		if hold != nil {
			holdC = hold.C
		}
		select {
		case <-h.done:
			return
		case <-h.kick:
		case <-holdC:
			hold = nil
		case <-retryC:
			retry = nil
			h.refusal.lift()
			h.resubscribe(nil)
		}
		h.wakes.Add(1)
		if refused, retryAt := h.refusal.holding(); refused {
			// Subscriptions are refused: hold every op until the back-off
			// ends; Close and want state are applied then.
			if retry == nil {
				retry = time.NewTimer(time.Until(retryAt))
			}
			continue
		}
		h.mu.Lock()
		ops := h.ops
		if wait := unsubscribesDue(ops); wait > 0 {
			h.mu.Unlock()
			if hold == nil {
				hold = time.NewTimer(wait)
			}
			continue
		}
		h.ops = nil
		h.mu.Unlock()
		for i := 0; i < len(ops); {
			sh := ops[i].sh
			if sh == nil {
				sh = h.shardFor(ops[i].channel)
			}
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

// unsubDelay is how long UNSUBSCRIBEs wait to be sent, unless a SUBSCRIBE
// is queued behind them: a wait ends as its message arrives, and the
// messages of a batch's keys arrive together, on every server; the
// UNSUBSCRIBEs of their waits, sent at once, would reach Redis and come
// back (a reply each server's reader reads) while the batch's last
// messages are still on their way, and hold them up. Sent a little later,
// they go together: one command (on a Cluster, whose SUNSUBSCRIBE takes
// one slot's channels, one per channel still). A channel unsubscribed
// meanwhile still receives its messages, which reach no Sub.
var unsubDelay = 2 * time.Millisecond

// unsubscribesDue returns how long to wait before sending ops: zero when
// one of them is a SUBSCRIBE (the order must hold: they all go now) or the
// first is unsubDelay old.
func unsubscribesDue(ops []op) time.Duration {
	if len(ops) == 0 {
		return 0
	}
	for _, o := range ops {
		if o.subscribe {
			return 0
		}
	}
	return max(0, unsubDelay-time.Since(ops[0].at))
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
			if ops[0].sh == nil {
				// Not a drop's clean-up (see dropped), which counts
				// its replies apart: their reply may be MOVED.
				h.mu.Lock()
				for _, ch := range channels {
					if e := h.chans[ch]; e != nil {
						e.unsubs++
					}
				}
				h.mu.Unlock()
			}
			_ = ps.SUnsubscribe(ctx, channels...)
		} else {
			_ = ps.Unsubscribe(ctx, channels...)
		}
		return
	}
	// The channels are recorded on sh before the write: its reader may
	// read the reply (MOVED, from a master that no longer owns the slot)
	// before the write returns, and movedReply looks for them there.
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
	var err error
	if sharded {
		err = ps.SSubscribe(ctx, channels...)
		h.startReader(sh)
		if f := subscribeSent.Load(); f != nil {
			(*f)(h)
		}
	} else {
		err = ps.Subscribe(ctx, channels...)
	}
	if err != nil {
		// go-redis subscribes the channels again when it reconnects; a
		// new PING follows then (see resubscribe).
		h.mu.Lock()
		delete(sh.wait, n)
		h.mu.Unlock()
		return
	}
	_ = ps.Ping(ctx, pingPrefix+strconv.FormatUint(n, 10))
}

// subscribeSent, when set (by tests), runs after an SSUBSCRIBE is written.
var subscribeSent atomic.Pointer[func(h *Hub)]

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
		h.subscribeBeat()
	case h.cluster != nil:
		// The connection is routed by the slot of the first channel it
		// subscribes; SSubscribe with no channel leaves it unconnected,
		// and so must the reader until then (see shard.unread).
		sh.ps = h.cluster.SSubscribe(context.Background())
		sh.unread = true
		h.shards[addr] = sh
		return sh
	case client != nil:
		sh.client = client
		sh.ps = client.Subscribe(context.Background())
	default:
		sh.ps = h.rdb.Subscribe(context.Background())
		h.subscribeBeat()
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

// reader dispatches one connection's replies until it is closed or
// replaced. go-redis reconnects and subscribes again by itself; the reader
// then queues SUBSCRIBEs for the shard's channels so that a PING follows
// them, and waiters of channels that were ready are woken (messages may
// have been lost).
func (h *Hub) reader(sh *shard, ps *redis.PubSub) {
	defer h.wg.Done()
	ctx := context.Background()
	backoff := time.Duration(0)
	pinged := false // a health ping is unanswered: nothing came since
	for {
		m, err := ps.ReceiveTimeout(ctx, healthEvery)
		if err != nil {
			if h.isClosed() || errors.Is(err, redis.ErrClosed) {
				return
			}
			var re redis.Error
			var ne net.Error
			wasPinged := pinged
			pinged = false
			switch {
			case errors.As(err, &re) && h.cluster != nil && strings.HasPrefix(err.Error(), "CROSSSLOT"):
				// go-redis subscribed every channel at once after a
				// reconnect; SSUBSCRIBE takes one slot at a time.
				h.resubscribe(sh)
			case errors.As(err, &re) && h.cluster != nil && strings.HasPrefix(err.Error(), "MOVED"):
				h.movedReply(sh)
			case errors.As(err, &re):
				h.refuse(err)
			case errors.As(err, &ne) && ne.Timeout():
				if wasPinged && h.reconnect(sh) {
					return // silent since the last ping: a new reader reads
				}
				pinged = true
				_ = ps.Ping(ctx)
			default:
				// Disconnected: the next receive dials again.
				h.lost(sh)
				h.resubscribe(sh)
				backoff = min(max(2*backoff, 10*time.Millisecond), time.Second)
				select {
				case <-h.done:
					return
				case <-time.After(backoff):
				}
			}
			continue
		}
		backoff, pinged = 0, false
		switch m := m.(type) {
		case *redis.Message:
			if m.Channel == h.beat && h.beat != "" {
				h.heartbeatSeen(m.Payload)
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
	if sh != nil && sh.addr == h.beatAddr {
		h.subscribeBeat()
	}
}

func (h *Hub) deliver(channel, payload string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e := h.chans[channel]; e != nil {
		e.send(payload)
	}
}

func (h *Hub) confirm(sh *shard, kind, channel string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if channel == h.beat && kind == "subscribe" {
		h.beatSubscribed()
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
			e.send(Wake)
		}
		h.refusal.working()
	case "unsubscribe", "sunsubscribe":
		if kind == "sunsubscribe" && e.unsubs > 0 {
			// The reply to an SUNSUBSCRIBE of this Hub's.
			e.unsubs--
		} else if kind == "sunsubscribe" && e.want {
			switch {
			case e.sh == sh:
				h.dropped(e, sh, channel)
				return
			case e.sh == nil && sh.echoes > 0:
				// The reply to the SUNSUBSCRIBE that followed a drop.
				sh.echoes--
				return
			}
		}
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

// lost tells the listeners of sh's channels, with [Wake], that messages may
// have been lost: the connection broke or was replaced. It runs before any
// message of a new connection is dispatched to them.
func (h *Hub) lost(sh *shard) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if sh.addr == h.beatAddr {
		h.beats.forget()
	}
	// The replies awaited from sh will not come.
	sh.echoes = 0
	for _, e := range h.chans {
		if e.sh != sh && e.sh != nil {
			continue
		}
		e.unsubs = 0
		for l := range e.listeners {
			l.fn(Wake)
		}
	}
}
