package notify

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/locksmith-go/locksmith/internal/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func recv(t *testing.T, s *Sub) string {
	t.Helper()
	select {
	case p := <-s.C():
		return p
	case <-time.After(10 * time.Second):
		t.Fatal("no message within 10s")
		return ""
	}
}

func ready(t *testing.T, s *Sub) {
	t.Helper()
	select {
	case <-s.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("subscription not confirmed within 10s")
	}
}

func TestRefCounting(t *testing.T) {
	_, rdb := redistest.Mini(t)
	h := New(rdb)
	defer h.Close()
	ctx := context.Background()
	numSub := func() int64 {
		n, _ := rdb.PubSubNumSub(ctx, "ch").Result()
		return n["ch"]
	}
	a, b := h.Subscribe("ch"), h.Subscribe("ch")
	ready(t, a)
	ready(t, b)
	if n := numSub(); n != 1 {
		t.Fatalf("subscribers: got %d; want 1 shared connection", n)
	}
	if err := rdb.Publish(ctx, "ch", "hello").Err(); err != nil {
		t.Fatal(err)
	}
	if p := recv(t, a); p != "hello" {
		t.Errorf("a got %q", p)
	}
	if p := recv(t, b); p != "hello" {
		t.Errorf("b got %q", p)
	}
	a.Close()
	a.Close() // idempotent
	if err := rdb.Publish(ctx, "ch", "again").Err(); err != nil {
		t.Fatal(err)
	}
	if p := recv(t, b); p != "again" {
		t.Errorf("b got %q", p)
	}
	b.Close()
	redistest.WaitFor(t, "unsubscribed", func() bool { return numSub() == 0 })
	// Subscribing again after the last Close works.
	c := h.Subscribe("ch")
	defer c.Close()
	ready(t, c)
	if err := rdb.Publish(ctx, "ch", "third").Err(); err != nil {
		t.Fatal(err)
	}
	if p := recv(t, c); p != "third" {
		t.Errorf("c got %q", p)
	}
}

// TestNewestMessageWins: a reader slower than the messages finds only the
// newest payload buffered.
func TestNewestMessageWins(t *testing.T) {
	srv := redistest.Start(t, nil)
	rdb := srv.Client(t, nil)
	h := New(rdb)
	defer h.Close()
	s := h.Subscribe("ch")
	defer s.Close()
	ready(t, s)
	ctx := context.Background()
	for _, p := range []string{"1", "2", "3"} {
		if err := rdb.Publish(ctx, "ch", p).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.Sync(ctx, "ch"); err != nil { // all three delivered
		t.Fatalf("Sync: %v", err)
	}
	if p := recv(t, s); p != "3" {
		t.Fatalf("got %q; want the newest payload, 3", p)
	}
	select {
	case p := <-s.C():
		t.Fatalf("got %q after the newest; want nothing buffered", p)
	default:
	}
}

// TestWakeAfterReconnect: Redis restarts; the Hub subscribes again by itself
// and wakes the waiters, which may have missed messages meanwhile.
func TestWakeAfterReconnect(t *testing.T) {
	srv := redistest.Start(t, nil)
	rdb := srv.Client(t, nil)
	h := New(rdb)
	defer h.Close()
	s := h.Subscribe("ch")
	defer s.Close()
	ready(t, s)
	srv.Kill(t)
	srv.Restart(t)
	if p := recv(t, s); p != Wake {
		t.Fatalf("got %q; want the Wake payload", p)
	}
	if err := rdb.Publish(context.Background(), "ch", "after").Err(); err != nil {
		t.Fatal(err)
	}
	if p := recv(t, s); p != "after" {
		t.Fatalf("got %q after the restart", p)
	}
}

func TestAwait(t *testing.T) {
	_, rdb := redistest.Mini(t)
	h := New(rdb)
	defer h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	attempts := 0
	got := make(chan error, 1)
	go func() {
		got <- h.Await(ctx, "ch", func() (Step, error) {
			attempts++
			return Step{Wait: time.Minute}, nil
		}, func(p string) (bool, error) {
			return p == "done", nil
		})
	}()
	redistest.WaitFor(t, "subscribed", func() bool {
		n, _ := rdb.PubSubNumSub(ctx, "ch").Result()
		return n["ch"] == 1
	})
	for _, p := range []string{"other", "done"} {
		if err := rdb.Publish(ctx, "ch", p).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if attempts < 2 {
		t.Errorf("attempts: got %d; want a re-check after subscribing", attempts)
	}
	short, cancel2 := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel2()
	err := h.Await(short, "ch", func() (Step, error) { return Step{Wait: time.Minute}, nil }, nil)
	if err != context.DeadlineExceeded {
		t.Errorf("got %v; want DeadlineExceeded", err)
	}
}

// TestSync: every message published before Sync is delivered when it returns.
func TestSync(t *testing.T) {
	srv := redistest.Start(t, nil)
	rdb := srv.Client(t, nil)
	h := New(rdb)
	defer h.Close()
	s := h.Subscribe("ch")
	defer s.Close()
	ready(t, s)
	ctx := context.Background()
	for i := 0; i < 50; i++ {
		if err := rdb.Publish(ctx, "ch", fmt.Sprint(i)).Err(); err != nil {
			t.Fatal(err)
		}
		if err := h.Sync(ctx, "ch"); err != nil {
			t.Fatalf("Sync: %v", err)
		}
		select {
		case p := <-s.C():
			if p != fmt.Sprint(i) {
				t.Fatalf("got %q; want %d", p, i)
			}
		default:
			t.Fatalf("message %d not delivered by the time Sync returned", i)
		}
	}
}

// TestAwaitConfirm: an attempt that claims after waiting is overtaken by a
// message published before it.
func TestAwaitConfirm(t *testing.T) {
	srv := redistest.Start(t, nil)
	rdb := srv.Client(t, nil)
	h := New(rdb)
	defer h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	attempts := 0
	err := h.Await(ctx, "ch", func() (Step, error) {
		attempts++
		if attempts == 1 {
			return Step{Wait: time.Minute}, nil
		}
		// The failure is published just before this attempt "claims".
		if err := rdb.Publish(ctx, "ch", "failed").Err(); err != nil {
			t.Fatal(err)
		}
		return Step{Done: true, Confirm: true}, nil
	}, func(p string) (bool, error) {
		return p == "failed", nil
	})
	if !errors.Is(err, ErrOvertaken) {
		t.Fatalf("got %v; want ErrOvertaken", err)
	}
}
