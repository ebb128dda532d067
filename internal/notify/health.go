package notify

import (
	"context"
	"time"
)

// healthEvery is how long the reader waits for a message before it pings
// the connection, which makes go-redis notice a dead one and reconnect. A
// ping not answered within another healthEvery (a peer gone silent, which
// TCP notices only after many minutes) has the connection replaced.
var healthEvery = 3 * time.Second

// reconnect gives sh a new pub/sub connection and subscribes its channels
// on it; the old one is closed, and its reader returns. Waiters of its
// channels are woken (messages may have been lost), and stay ready: they
// are woken again when the new connection confirms their channel. It
// reports false when the Hub is closed or sh is not its shard any more.
func (h *Hub) reconnect(sh *shard) bool {
	h.mu.Lock()
	if h.closed || h.shards[sh.addr] != sh {
		h.mu.Unlock()
		return false
	}
	old := sh.ps
	switch {
	case h.cluster != nil && sh.addr != broadcastAddr:
		// Routed by its first SSUBSCRIBE; read from then on.
		sh.ps = h.cluster.SSubscribe(context.Background())
		sh.unread = true
	case sh.client != nil:
		sh.ps = sh.client.Subscribe(context.Background())
	default:
		sh.ps = h.rdb.Subscribe(context.Background())
	}
	sh.wait, sh.echoes = nil, 0
	if sh.addr == h.beatAddr {
		h.beats.mu.Lock()
		h.beats.sentUnseen = 0
		h.beats.mu.Unlock()
	}
	for _, e := range h.chans {
		if e.sh == sh || e.sh == nil {
			e.subscribed = false
		}
	}
	if !sh.unread {
		h.wg.Add(1)
		go h.reader(sh, sh.ps)
	}
	h.mu.Unlock()
	_ = old.Close()
	h.lost(sh)
	h.resubscribe(sh)
	return true
}
