package redisx

import (
	"sync"
	"time"
)

// Go runs f on a goroutine of its own that Close waits for.
func (c *Client) Go(f func()) {
	c.bg.add()
	go func() {
		defer c.bg.done()
		f()
	}()
}

// background counts the goroutines started by Go that have not returned.
type background struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0; nil while nobody waits
}

func (b *background) add() {
	b.mu.Lock()
	b.n++
	b.mu.Unlock()
}

func (b *background) done() {
	b.mu.Lock()
	b.n--
	if b.n == 0 && b.idle != nil {
		close(b.idle)
		b.idle = nil
	}
	b.mu.Unlock()
}

// wait waits until no goroutine runs, at most d; false if some still do.
func (b *background) wait(d time.Duration) bool {
	b.mu.Lock()
	if b.n == 0 {
		b.mu.Unlock()
		return true
	}
	if b.idle == nil {
		b.idle = make(chan struct{})
	}
	idle := b.idle
	b.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-idle:
		return true
	case <-t.C:
		return false
	}
}
