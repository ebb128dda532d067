package notify

import (
	"context"
	"time"
)

// A Redis Cluster moves a slot to another master in a resharding or a
// failover; the old master then unsubscribes the slot's shard channels
// (sunsubscribe), and answers MOVED to a client that still sends it their
// SSUBSCRIBE or SUNSUBSCRIBE.

// dropped handles a shard channel that sh's master unsubscribed while it
// was wanted: its slot moved to another master (a resharding, a failover).
// Its waiters are woken, since messages published meanwhile were not
// heard; go-redis's record of sh's channels forgets it (so that sh does not
// subscribe it again when it reconnects); and once the client knows the
// slot's new owner, it is subscribed there. h.mu must be held.
func (h *Hub) dropped(e *entry, sh *shard, channel string) {
	e.subscribed, e.sh = false, nil
	e.send(Wake)
	if h.closed {
		return
	}
	sh.echoes++
	h.enqueue(op{channel: channel, sh: sh})
	h.wg.Add(1)
	go h.follow([]string{channel}, sh.addr)
}

// movedReply handles a MOVED reply on sh: the answer to an SUNSUBSCRIBE
// after a drop, or an SSUBSCRIBE sent by a client that did not know yet
// that the slot moved. That is no refusal: the client learns the cluster's
// slots anew, and sh's channels are subscribed again once it routes them
// elsewhere.
func (h *Hub) movedReply(sh *shard) {
	h.moved.Add(1)
	h.mu.Lock()
	defer h.mu.Unlock()
	if sh.echoes > 0 {
		sh.echoes--
		return
	}
	if h.closed {
		return
	}
	var channels []string
	for ch, e := range h.chans {
		if e.want && e.sh == sh {
			e.sh = nil
			channels = append(channels, ch)
		}
	}
	if len(channels) > 0 {
		h.wg.Add(1)
		go h.follow(channels, sh.addr)
	}
}

// movedWait bounds how long a dropped shard channel waits for the client
// to learn its slot's new owner before it is subscribed again anyway.
const movedWait = 2 * time.Second

// follow subscribes channels again once the Cluster client routes the
// first of them (of the slot that moved) to another master than from, or
// after movedWait; one still on from is subscribed there again.
func (h *Hub) follow(channels []string, from string) {
	defer h.wg.Done()
	h.cluster.ReloadState(context.Background())
	deadline := time.Now().Add(movedWait)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
		node, err := h.cluster.MasterForKey(ctx, channels[0])
		cancel()
		if err == nil && node.Options().Addr != from {
			break
		}
		select {
		case <-h.done:
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	for _, ch := range channels {
		if e := h.chans[ch]; e != nil && e.want && e.sh == nil {
			h.subSeq++
			e.subOp, e.needPing = h.subSeq, 0
			h.enqueue(op{channel: ch, subscribe: true, n: h.subSeq})
		}
	}
}
