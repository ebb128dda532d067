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
// heartbeats, which the Hubs of all servers share too: a fleet publishes
// about one per master per period, however many servers it has.
//
// The files follow the ideas: hub.go the registry of channels, [Sub] and
// [Listener]; connection.go the pub/sub connections (writer, reader,
// readiness, refusal back-off); heartbeat.go the heartbeats ([Hub.Heard],
// failover detection); await.go the wait loop ([Hub.Await]); shared.go one
// Hub per client ([Share]).
package notify

import (
	"errors"
	"math/rand/v2"
	"strconv"
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
	beat    string               // heartbeat channel: this Hub's own, the fleet's on a Cluster, "" on a Ring
	// beatAddr is the shards key of the connection heartbeats travel on:
	// "" for a standalone client, broadcastAddr on a Cluster.
	beatAddr  string
	beatEvery time.Duration

	errCount atomic.Uint64
	wakes    atomic.Uint64 // the writer's wake-ups: what closing Subs costs, for tests
	moved    atomic.Uint64 // MOVED replies read, for tests
	onError  func(error)
	refusal  refusal // its own guard; taken inside mu, never the other way
	beats    beats   // its own guard; taken inside mu, never the other way

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
	kick      chan struct{} // wakes the writer; capacity 1
	// unsubTimer wakes the writer once the first UNSUBSCRIBE queued has
	// waited unsubDelay (see enqueue); nil until one is queued.
	unsubTimer *time.Timer
	beatNow    chan struct{} // asks for a heartbeat at once; capacity 1, made with the heartbeat goroutine
	done       chan struct{} // closed by Close
	wg         sync.WaitGroup
}

// Options configure a [Hub]. The zero value is valid.
type Options struct {
	// OnError, if not nil, is called when Redis refuses a subscription,
	// once per refusal that follows a working subscription.
	OnError func(error)
	// Heartbeat is how often the Hub of a standalone or Sentinel client
	// publishes a heartbeat while anyone waits or listens (on a Cluster,
	// while a ListenAll listener lives: how often the Hub checks that
	// every master's heartbeats arrive, publishing on those whose have
	// not, from any server, for half of it). One more is published as
	// soon as the heartbeat channel is subscribed, at start and after
	// every reconnect, so that [Hub.Heard] is known at once.
	// default: 200ms
	Heartbeat time.Duration
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
	// unsubs counts the SUNSUBSCRIBEs this Hub sent for the channel whose
	// reply has not come: such a reply is not the master dropping it.
	unsubs  int
	ready   chan struct{}
	isReady bool
	subs    map[*Sub]struct{}
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
		h.beatAddr, h.beat = broadcastAddr, clusterBeat
	case *redis.Ring:
		h.ring = c
	default:
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

// send gives payload to every Sub and Listener of e. h.mu must be held.
func (e *entry) send(payload string) {
	for s := range e.subs {
		s.put(payload)
	}
	for l := range e.listeners {
		l.fn(payload)
	}
}

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

func (h *Hub) isClosed() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closed
}

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
	if h.unsubTimer != nil {
		h.unsubTimer.Stop()
	}
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
