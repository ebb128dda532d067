package fill

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestNoLoadOnceClosed: a key claimed as Close begins (the claim's reply
// comes after) is not loaded: the loader is not called, its ctx over
// already, and the lock is released at once, for another server to load;
// the Get returns ErrClosed. The loader used to be called once more; then,
// not called, it was still counted as a load.
func TestNoLoadOnceClosed(t *testing.T) {
	_, rdb := redistest.Mini(t)
	gate := redistest.NewHoldScript("closing-key")
	gate.Ran = true // the claim takes the lock; its reply is held
	rdb.AddHook(gate)
	c := New(rdb, nil)
	var calls atomic.Int32
	got := make(chan error, 1)
	go func() {
		_, err := Get(context.Background(), c, "closing-key", func(context.Context) (string, error) {
			calls.Add(1)
			return "v", nil
		})
		got <- err
	}()
	<-gate.Held
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	<-c.base.Done() // Close began; it waits for the flight
	close(gate.Release)
	if err := <-got; !errors.Is(err, ErrClosed) {
		t.Errorf("Get: %v; want ErrClosed", err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("the loader was called %d times once Close had begun; want none", n)
	}
	if n := c.Stats().Loads; n != 0 {
		t.Errorf("Stats().Loads = %d; want 0: no load was made", n)
	}
	if n, err := rdb.Exists(context.Background(), lease.LockKey(DefaultPrefix, "closing-key")).Result(); err != nil || n != 0 {
		t.Errorf("the lock: %d, %v; want it released", n, err)
	}
}
