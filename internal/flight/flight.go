// Package flight merges the callers of one process that want the same thing
// at the same time on one flight, as golang.org/x/sync/singleflight does,
// with three differences that a fleet-wide cache needs:
//
//   - Each caller waits with its own ctx ([Call.Wait]): a caller that gives
//     up leaves, and the flight goes on for the others.
//   - A flight knows when nobody waits for it any more ([Call.Patience]), so
//     work that only its callers want (waiting for a budget or for another
//     server) stops, and the next caller starts a new flight.
//   - A panic is handed to every caller, who re-raises it on their own
//     goroutine; when no caller is left, [Group.Land] re-raises it, so a
//     panic is never swallowed. x/sync's DoChan instead re-raises on a new
//     goroutine, which no caller can recover.
package flight

import (
	"context"
	"errors"
	"sync"
)

// ErrClosed is returned by [Group.Join] after [Group.Close].
var ErrClosed = errors.New("flight: group closed")

// Outcome is how a flight ended: a value, an error, or a panic value that
// every caller re-raises.
type Outcome struct {
	Val   any
	Err   error
	Panic any
}

// Group holds the flights in progress, by key. The zero value is not
// usable; create one with [New].
type Group[K comparable] struct {
	mu     sync.Mutex // guards calls, closed and every Call's waiters
	calls  map[K]*Call
	closed bool
}

// New returns an empty Group.
func New[K comparable]() *Group[K] {
	return &Group[K]{calls: make(map[K]*Call)}
}

// Call is one flight.
type Call struct {
	mu       *sync.Mutex   // the Group's
	done     chan struct{} // closed when out is set
	waiters  int           // callers still waiting; guarded by mu
	patience context.Context
	leave    context.CancelFunc
	detach   func() // removes the call from its Group
	out      Outcome
}

// Join joins the flight for k, or starts one when none is in progress:
// leader reports that the caller started it and must see it to [Group.Land].
// Every caller then waits with [Call.Wait].
func (g *Group[K]) Join(k K) (c *Call, leader bool, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, false, ErrClosed
	}
	if c := g.calls[k]; c != nil {
		c.waiters++
		return c, false, nil
	}
	c = &Call{mu: &g.mu, done: make(chan struct{}), waiters: 1}
	c.patience, c.leave = context.WithCancel(context.Background())
	c.detach = func() {
		if g.calls[k] == c {
			delete(g.calls, k)
		}
	}
	g.calls[k] = c
	return c, true, nil
}

// Patience is done once every caller of the flight has left without its
// outcome. The flight is then no longer joined: the next caller for its key
// starts a new one.
func (c *Call) Patience() context.Context { return c.patience }

// Waiters returns how many callers still wait for the flight.
func (c *Call) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.waiters
}

// Done is closed when the flight has landed.
func (c *Call) Done() <-chan struct{} { return c.done }

// Wait returns the flight's outcome, or ctx.Err() when ctx ends first: the
// caller then leaves the flight. A panic outcome is re-raised here.
func (c *Call) Wait(ctx context.Context) (any, error) {
	select {
	case <-c.done:
	case <-ctx.Done():
		c.mu.Lock()
		select {
		case <-c.done:
			c.mu.Unlock()
		default:
			c.waiters--
			if c.waiters == 0 {
				c.detach()
				c.leave()
			}
			c.mu.Unlock()
			return nil, ctx.Err()
		}
	}
	if c.out.Panic != nil {
		panic(c.out.Panic)
	}
	return c.out.Val, c.out.Err
}

// Land ends the flight with out and hands it to its callers. When out is a
// panic and no caller is left to re-raise it, Land re-raises it.
func (g *Group[K]) Land(c *Call, out Outcome) {
	g.mu.Lock()
	c.detach()
	c.out = out
	waiters := c.waiters
	close(c.done)
	g.mu.Unlock()
	c.leave()
	if out.Panic != nil && waiters == 0 {
		panic(out.Panic)
	}
}

// Close makes every later Join fail with [ErrClosed]. Flights in progress
// are not affected.
func (g *Group[K]) Close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
}
