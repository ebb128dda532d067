// Package notify multiplexes Redis pub/sub subscriptions for many waiters over
// one connection per Redis server (one per shard on a Redis Cluster, where it
// uses sharded pub/sub).
//
// A waiter subscribes to a channel, waits until the subscription is confirmed
// by the server ([Sub.Ready]), re-checks the state it waits on, then waits for
// a message. Because the confirmation arrives on the same connection as the
// messages, anything published after Ready is delivered: there is no lost
// wake-up between the re-check and the wait. Subscriptions are reference
// counted per channel, so a thousand waiters on one key cost one SUBSCRIBE.
//
// Nothing here blocks a caller on the network: SUBSCRIBE and UNSUBSCRIBE are
// queued and written by one goroutine that owns the pub/sub connections, in
// order, batched.
package notify

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Wake is the payload delivered to every waiter on a channel when its
// subscription was re-established after a reconnect: messages may have been
// lost, so waiters must re-check. Publishers never publish an empty payload.
const Wake = ""

// Hub owns the pub/sub connections of one Redis client. The zero value is not
// usable; create one with [New]. A Hub must be closed with [Hub.Close].
type Hub struct {
	rdb     redis.UniversalClient
	cluster *redis.ClusterClient // non-nil: sharded pub/sub, one connection per master

	pingSeq atomic.Uint64

	mu      sync.Mutex // guards every field below
	chans   map[string]*entry
	pings   map[string]chan struct{} // Sync calls awaiting their PONG
	shards  map[string]*shard        // by master address; "" when not a cluster
	ops     []op
	closed  bool
	started bool
	kick    chan struct{} // wakes the writer; capacity 1
	done    chan struct{} // closed by Close
	wg      sync.WaitGroup
}

type op struct {
	channel   string
	subscribe bool
}

type shard struct {
	ps *redis.PubSub
}

// entry is the state of one channel. want says whether the last command
// queued for it was SUBSCRIBE; pending counts subscribe confirmations still
// to arrive. The channel is ready when want && pending == 0: replies arrive in
// command order on one connection, so the confirmation of the newest
// SUBSCRIBE is the last one counted.
type entry struct {
	refs    int
	want    bool
	pending int
	ready   chan struct{} // closed when subscribed; replaced when want turns false
	isReady bool
	subs    map[*Sub]struct{}
}

// New returns a Hub for rdb. It opens no connection until the first
// [Hub.Subscribe].
func New(rdb redis.UniversalClient) *Hub {
	h := &Hub{
		rdb:    rdb,
		chans:  make(map[string]*entry),
		pings:  make(map[string]chan struct{}),
		shards: make(map[string]*shard),
		kick:   make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		h.cluster = cc
	}
	return h
}

// Sub is one waiter's subscription to one channel.
type Sub struct {
	h       *Hub
	channel string
	e       *entry
	c       chan string
	closed  bool // guarded by h.mu
}

// Subscribe subscribes to channel. It never blocks on the network: the
// returned Sub is ready once the server has confirmed the subscription. It
// never fails either: when Redis cannot be reached Ready stays open, and the
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
		e.want = true
		e.pending++
		h.enqueue(op{channel: channel, subscribe: true})
	}
	return s
}

// Ready is closed once the server has confirmed the subscription.
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
	h.enqueue(op{channel: s.channel, subscribe: false})
}

// enqueue queues a command for the writer. h.mu must be held.
func (h *Hub) enqueue(o op) {
	h.ops = append(h.ops, o)
	if !h.started {
		h.started = true
		h.wg.Add(1)
		go h.writer()
	}
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// writer sends queued SUBSCRIBE and UNSUBSCRIBE commands in order, batching
// runs of the same command on the same shard.
func (h *Hub) writer() {
	defer h.wg.Done()
	for {
		select {
		case <-h.done:
			return
		case <-h.kick:
		}
		h.mu.Lock()
		ops := h.ops
		h.ops = nil
		h.mu.Unlock()
		for i := 0; i < len(ops); {
			sh := h.shardFor(ops[i].channel)
			j := i + 1
			// SSUBSCRIBE takes channels of one slot only: on a Cluster, one
			// command per channel.
			for h.cluster == nil && j < len(ops) && ops[j].subscribe == ops[i].subscribe {
				j++
			}
			h.send(sh, ops[i].subscribe, ops[i:j])
			i = j
		}
	}
}

// writeTimeout bounds one SUBSCRIBE or UNSUBSCRIBE write (and the dial that
// may precede it). A write that fails leaves the channel registered in the
// go-redis PubSub, which subscribes it again when it reconnects.
const writeTimeout = 5 * time.Second

func (h *Hub) send(sh *shard, subscribe bool, ops []op) {
	if sh == nil {
		return // the cluster's slot owner is unknown: waiters poll
	}
	channels := make([]string, len(ops))
	for i, o := range ops {
		channels[i] = o.channel
	}
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	switch {
	case h.cluster != nil && subscribe:
		_ = sh.ps.SSubscribe(ctx, channels...)
	case h.cluster != nil:
		_ = sh.ps.SUnsubscribe(ctx, channels...)
	case subscribe:
		_ = sh.ps.Subscribe(ctx, channels...)
	default:
		_ = sh.ps.Unsubscribe(ctx, channels...)
	}
}

// shardFor returns the pub/sub connection serving channel, creating it and
// its reader on first use. The writer and [Hub.Sync] call it; creating a
// shard happens under h.mu, so two callers never create two.
func (h *Hub) shardFor(channel string) *shard {
	addr := ""
	if h.cluster != nil {
		ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
		node, err := h.cluster.MasterForKey(ctx, channel)
		cancel()
		if err != nil {
			return nil
		}
		addr = node.Options().Addr
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil
	}
	if sh := h.shards[addr]; sh != nil {
		return sh
	}
	var ps *redis.PubSub
	if h.cluster != nil {
		// The connection is routed by the slot of the first channel it
		// subscribes; SSubscribe with no channel leaves it unconnected.
		ps = h.cluster.SSubscribe(context.Background())
	} else {
		ps = h.rdb.Subscribe(context.Background())
	}
	sh := &shard{ps: ps}
	h.shards[addr] = sh
	h.wg.Add(1)
	go h.reader(sh)
	return sh
}

// healthEvery is how long the reader waits for a message before it pings
// the connection, which makes go-redis notice a dead one and reconnect.
const healthEvery = 3 * time.Second

// reader dispatches one connection's replies until it is closed. go-redis
// reconnects and subscribes again by itself; on a Cluster its one
// SSUBSCRIBE for every channel fails when they span slots (CROSSSLOT), so an
// error reply makes the reader subscribe them again one by one.
func (h *Hub) reader(sh *shard) {
	defer h.wg.Done()
	ctx := context.Background()
	backoff := time.Duration(0)
	for {
		m, err := sh.ps.ReceiveTimeout(ctx, healthEvery)
		if err != nil {
			if h.isClosed() || errors.Is(err, redis.ErrClosed) {
				return
			}
			var re redis.Error
			var ne net.Error
			switch {
			case errors.As(err, &re):
				h.resubscribe()
			case errors.As(err, &ne) && ne.Timeout():
				_ = sh.ps.Ping(ctx)
			default:
				// Disconnected: the next receive dials again.
				backoff = min(max(2*backoff, 10*time.Millisecond), time.Second)
				select {
				case <-h.done:
					return
				case <-time.After(backoff):
				}
			}
			continue
		}
		backoff = 0
		switch m := m.(type) {
		case *redis.Message:
			h.deliver(m.Channel, m.Payload)
		case *redis.Subscription:
			h.confirm(m.Kind, m.Channel)
		case *redis.Pong:
			h.pong(m.Payload)
		}
	}
}

func (h *Hub) isClosed() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closed
}

// resubscribe queues a SUBSCRIBE for every channel that should be
// subscribed. Their confirmations wake the waiters, which look again.
func (h *Hub) resubscribe() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	for ch, e := range h.chans {
		if e.want {
			h.enqueue(op{channel: ch, subscribe: true})
		}
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

func (h *Hub) confirm(kind, channel string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.chans[channel]
	if e == nil {
		return
	}
	switch kind {
	case "subscribe", "ssubscribe":
		if e.pending > 0 {
			e.pending--
		}
		if !e.want || e.pending > 0 {
			return
		}
		if !e.isReady {
			e.isReady = true
			close(e.ready)
			return
		}
		// Subscribed again while already subscribed: the connection was
		// re-established and messages may have been lost in between.
		for s := range e.subs {
			s.put(Wake)
		}
	case "unsubscribe", "sunsubscribe":
		if !e.want && e.refs == 0 && e.pending == 0 {
			delete(h.chans, channel)
		}
	}
}

// Close closes the pub/sub connections and stops the Hub's goroutines. Subs
// still open stay valid but receive nothing more. Close is idempotent.
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

// Step is an attempt's verdict for [Hub.Await].
type Step struct {
	// Done ends the wait.
	Done bool
	// Confirm, with Done, has Await first deliver every message published
	// before the attempt: an attempt that took something (a lock) on the
	// strength of what it saw may have been overtaken by a message saying
	// more (the holder failed, and the failure is to be shared).
	Confirm bool
	// Wait, without Done, is the longest to wait before the next attempt.
	Wait time.Duration
}

// ErrOvertaken is returned by [Hub.Await] when an attempt that asked to be
// confirmed was overtaken by a message that ended the wait: the caller
// undoes what the attempt took.
var ErrOvertaken = errors.New("notify: overtaken by a message")

// Await calls attempt until it reports done or fails, and between attempts
// waits for a message on channel, for the duration attempt returned, or for
// ctx, whichever comes first. Before its second attempt it subscribes and
// waits for the server's confirmation (at most that same duration), so an
// event published after the second attempt's check is never missed.
//
// A message is passed to message, if not nil, which may end the wait (done)
// or fail it; otherwise, or when message returns neither, attempt runs again.
// A message already received goes to message before the next attempt. The
// [Wake] payload is passed on too. Await returns ctx.Err() when ctx ends.
func (h *Hub) Await(ctx context.Context, channel string,
	attempt func() (Step, error),
	message func(payload string) (done bool, err error),
) error {
	var sub *Sub
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
		if err != nil {
			return err
		}
		if step.Done {
			if !step.Confirm || sub == nil {
				return nil
			}
			// Everything published before the attempt arrives before the
			// reply to a PING sent after it, on the same connection.
			if h.Sync(ctx, channel) == nil {
				select {
				case p := <-sub.C():
					if done, err := deliver(message, p); err != nil || done {
						return errors.Join(ErrOvertaken, err)
					}
				default:
				}
			}
			return nil
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

// syncTimeout bounds [Hub.Sync] when the pub/sub connection does not answer.
const syncTimeout = 100 * time.Millisecond

// Sync returns once every message published on channel before the call has
// been delivered to the channel's Subs: it sends a PING on the channel's
// pub/sub connection and waits for its reply. It gives up after 100ms or
// when ctx ends, returning an error.
func (h *Hub) Sync(ctx context.Context, channel string) error {
	sh := h.shardFor(channel)
	if sh == nil {
		return errors.New("notify: no connection")
	}
	id := strconv.FormatUint(h.pingSeq.Add(1), 10)
	done := make(chan struct{})
	h.mu.Lock()
	h.pings[id] = done
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.pings, id)
		h.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	if err := sh.ps.Ping(ctx, pingPrefix+id); err != nil {
		return err
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pingPrefix marks the PINGs of [Hub.Sync], apart from health checks.
const pingPrefix = "locksmith-sync:"

func (h *Hub) pong(payload string) {
	id, ok := strings.CutPrefix(payload, pingPrefix)
	if !ok {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if done := h.pings[id]; done != nil {
		close(done)
		delete(h.pings, id)
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
