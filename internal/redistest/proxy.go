package redistest

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// proxyDialTimeout bounds how long the proxy waits to reach its upstream.
const proxyDialTimeout = 5 * time.Second

// Proxy is a TCP proxy on a free 127.0.0.1 port in front of one upstream
// address, which injects network faults between a client and a server: it
// drops connections, holds replies back, or turns new connections away. Its
// methods may be called from several goroutines.
type Proxy struct {
	upstream string
	l        net.Listener
	ctx      context.Context // ends when the proxy closes, cancelling dials
	cancel   context.CancelFunc
	wg       sync.WaitGroup // the accept loop and every connection's goroutines

	mu      sync.Mutex // guards the fields below and every link's pending and closed
	changed *sync.Cond // on mu; broadcast when hold, closed or a link changes
	links   map[*link]struct{}
	hold    bool // hold server-to-client bytes back
	refuse  bool // close new connections at once
	closed  bool
	// drops counts DropAll's calls: a connection accepted before one and
	// still dialing the upstream when it came is dropped too.
	drops int
}

// link is one proxied connection: a client's connection to the proxy and the
// proxy's connection to the upstream.
type link struct {
	client, server net.Conn
	pending        []byte // read from server, not yet written to client
	serverDone     bool   // server has nothing more to send
	closed         bool
}

// NewProxy starts a Proxy that forwards connections to upstream, a
// "host:port" address, and stops it in t.Cleanup: its listener and every
// connection are closed and its goroutines have returned when the cleanup
// ends. Each accepted connection is forwarded over a new connection to
// upstream; if upstream cannot be reached, the accepted connection is closed.
func NewProxy(t testing.TB, upstream string) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: proxy listening: %v", err)
	}
	p := &Proxy{upstream: upstream, l: l, links: map[*link]struct{}{}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.changed = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Addr returns the address clients connect to, "127.0.0.1:PORT".
func (p *Proxy) Addr() string { return p.l.Addr().String() }

// Conns returns the number of open proxied connections: accepted, connected
// to upstream, and not yet closed by either end or DropAll.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// DropAll closes every current connection, on both sides, at once. Replies
// held back by HoldReplies are discarded. New connections are proxied as
// before.
func (p *Proxy) DropAll() {
	p.mu.Lock()
	p.drops++
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		p.drop(l)
	}
}

// HoldReplies stops forwarding bytes from the upstream to clients, on
// current and new connections; they are buffered until ReleaseReplies, or
// discarded by DropAll. Requests still reach the upstream, so a client's
// commands run but their replies arrive late, or never.
func (p *Proxy) HoldReplies() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hold = true
}

// ReleaseReplies forwards the replies held back since HoldReplies, and
// anything later, as usual.
func (p *Proxy) ReleaseReplies() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hold = false
	p.changed.Broadcast()
}

// Held returns the number of bytes from the upstream held back by
// HoldReplies and not yet forwarded: above zero once a reply is waiting.
func (p *Proxy) Held() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for l := range p.links {
		n += len(l.pending)
	}
	return n
}

// Refuse sets whether new connections are turned away: while refuse is true,
// the proxy accepts each new connection and closes it at once, without
// contacting the upstream, so a client's dial succeeds but its first command
// fails. (Closing the listener instead would free its port for anyone to
// take.) Open connections are not affected.
func (p *Proxy) Refuse(refuse bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = refuse
}

// close stops the proxy and waits for its goroutines to return.
func (p *Proxy) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	_ = p.l.Close()
	p.DropAll()
	p.wg.Wait()
}

// accept accepts connections until the listener is closed.
func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient failure, such as running out of file descriptors.
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		p.mu.Lock()
		refuse, drops := p.refuse, p.drops
		p.mu.Unlock()
		if refuse {
			_ = c.Close()
			continue
		}
		p.wg.Add(1)
		go p.serve(c, drops)
	}
}

// serve connects client to the upstream and forwards bytes both ways until
// either end closes or the link is dropped; drops is DropAll's count when
// client was accepted.
func (p *Proxy) serve(client net.Conn, drops int) {
	defer p.wg.Done()
	d := net.Dialer{Timeout: proxyDialTimeout}
	server, err := d.DialContext(p.ctx, "tcp", p.upstream)
	if err != nil {
		_ = client.Close()
		return
	}
	l := &link{client: client, server: server}
	p.mu.Lock()
	if p.closed || p.drops != drops {
		// Closed, or a DropAll came while the upstream was dialed: this
		// connection was open then, and goes with the others.
		p.mu.Unlock()
		_ = client.Close()
		_ = server.Close()
		return
	}
	p.links[l] = struct{}{}
	p.mu.Unlock()

	p.wg.Add(2)
	go p.readServer(l)
	go p.writeClient(l)
	// Client to server needs no holding back: copy directly.
	_, _ = io.Copy(server, client)
	p.drop(l)
}

// readServer moves bytes from the link's server into its pending buffer.
func (p *Proxy) readServer(l *link) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := l.server.Read(buf)
		p.mu.Lock()
		if n > 0 && !l.closed {
			l.pending = append(l.pending, buf[:n]...)
		}
		if err != nil {
			l.serverDone = true
		}
		p.changed.Broadcast()
		p.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// writeClient moves bytes from the link's pending buffer to its client,
// except while replies are held, and closes the link once the server has
// closed and everything it sent is forwarded.
func (p *Proxy) writeClient(l *link) {
	defer p.wg.Done()
	p.mu.Lock()
	for {
		switch {
		case l.closed:
			p.mu.Unlock()
			return
		case len(l.pending) > 0 && !p.hold:
			b := l.pending
			l.pending = nil
			p.mu.Unlock()
			if _, err := l.client.Write(b); err != nil {
				p.drop(l)
				return
			}
			p.mu.Lock()
		case l.serverDone && len(l.pending) == 0:
			p.mu.Unlock()
			p.drop(l)
			return
		default:
			p.changed.Wait()
		}
	}
}

// drop closes both of the link's connections, if not done already, and
// then forgets the link, so that Conns counts only links still open.
func (p *Proxy) drop(l *link) {
	p.mu.Lock()
	if l.closed {
		p.mu.Unlock()
		return
	}
	l.closed = true
	l.pending = nil
	p.changed.Broadcast()
	p.mu.Unlock()
	_ = l.client.Close()
	_ = l.server.Close()
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}
