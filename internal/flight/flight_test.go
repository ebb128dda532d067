package flight

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestMerge(t *testing.T) {
	g := New[string]()
	c, leader, err := g.Join("k")
	if err != nil || !leader {
		t.Fatalf("first Join: leader %v, %v; want the leader", leader, err)
	}
	const n = 10
	var wg sync.WaitGroup
	got := make(chan any, n)
	for range n {
		c2, leader, err := g.Join("k")
		if err != nil || leader || c2 != c {
			t.Fatalf("Join: leader %v, same call %v, %v; want a follower of the same call", leader, c2 == c, err)
		}
		wg.Go(func() {
			v, err := c2.Wait(context.Background())
			if err != nil {
				t.Error(err)
			}
			got <- v
		})
	}
	if w := c.Waiters(); w != n+1 {
		t.Fatalf("Waiters = %d; want %d", w, n+1)
	}
	g.Land(c, Outcome{Val: 42})
	wg.Wait()
	close(got)
	for v := range got {
		if v != 42 {
			t.Fatalf("got %v; want 42", v)
		}
	}
	if v, err := c.Wait(context.Background()); v != 42 || err != nil {
		t.Fatalf("leader: got %v, %v", v, err)
	}
	// Landed: the next Join starts anew.
	if _, leader, _ := g.Join("k"); !leader {
		t.Fatal("Join after Land: not the leader")
	}
}

func TestLeaveAndPatience(t *testing.T) {
	g := New[string]()
	c, _, _ := g.Join("k")
	g.Join("k")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait: got %v; want Canceled", err)
	}
	select {
	case <-c.Patience().Done():
		t.Fatal("patience ended with a caller still waiting")
	default:
	}
	if _, err := c.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait: got %v; want Canceled", err)
	}
	select {
	case <-c.Patience().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("patience did not end when the last caller left")
	}
	// Nobody waits: the next caller starts a new flight, and the old one
	// lands without disturbing it.
	c2, leader, _ := g.Join("k")
	if !leader || c2 == c {
		t.Fatal("Join after every caller left: not a new flight")
	}
	g.Land(c, Outcome{Val: "old"})
	g.Land(c2, Outcome{Val: "new"})
	if v, _ := c2.Wait(context.Background()); v != "new" {
		t.Fatalf("new flight: got %v", v)
	}
}

func TestPanic(t *testing.T) {
	g := New[string]()
	c, _, _ := g.Join("k")
	g.Land(c, Outcome{Panic: "boom"})
	defer func() {
		if r := recover(); r != "boom" {
			t.Fatalf("recovered %v; want boom", r)
		}
	}()
	_, _ = c.Wait(context.Background())
	t.Fatal("Wait did not panic")
}

func TestPanicWithoutCallers(t *testing.T) {
	g := New[string]()
	c, _, _ := g.Join("k")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _ = c.Wait(ctx)
	defer func() {
		if r := recover(); r != "boom" {
			t.Fatalf("recovered %v; want boom", r)
		}
	}()
	g.Land(c, Outcome{Panic: "boom"})
	t.Fatal("Land swallowed a panic nobody else could see")
}

func TestClose(t *testing.T) {
	g := New[int]()
	c, _, _ := g.Join(1)
	g.Close()
	if _, _, err := g.Join(2); !errors.Is(err, ErrClosed) {
		t.Fatalf("Join after Close: got %v; want ErrClosed", err)
	}
	g.Land(c, Outcome{Err: errors.New("x")})
	if _, err := c.Wait(context.Background()); err == nil || err.Error() != "x" {
		t.Fatalf("flight in progress at Close: got %v", err)
	}
}
