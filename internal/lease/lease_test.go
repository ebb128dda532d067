package lease

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/locksmith-go/locksmith/internal/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestParseAcquire(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply any
		want  Result
		ok    bool
	}{
		{"held", []any{int64(0), int64(1500)}, Result{State: Held, N: 1500}, true},
		{"acquired", []any{int64(1), int64(42)}, Result{State: Acquired, N: 42}, true},
		{"found", "bytes", Result{State: Found, Value: "bytes"}, true},
		{"found empty", "", Result{State: Found}, true},
		{"nil", nil, Result{}, false},
		{"number", int64(1), Result{}, false},
		{"short", []any{int64(1)}, Result{}, false},
		{"long", []any{int64(1), int64(2), int64(3)}, Result{}, false},
		{"bad state", []any{int64(7), int64(1)}, Result{}, false},
		{"state as string", []any{"1", int64(1)}, Result{}, false},
		{"found as a pair", []any{int64(2), "bytes"}, Result{}, false},
		{"acquired with string", []any{int64(1), "x"}, Result{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseAcquire(tc.reply)
			if (err == nil) != tc.ok || got != tc.want {
				t.Errorf("got %+v, %v; want %+v, ok=%v", got, err, tc.want, tc.ok)
			}
		})
	}
}

func TestParseFlag(t *testing.T) {
	for reply, want := range map[any]bool{int64(0): false, int64(1): true} {
		if got, err := ParseFlag(reply); err != nil || got != want {
			t.Errorf("ParseFlag(%v): got %v, %v", reply, got, err)
		}
	}
	for _, bad := range []any{nil, int64(2), int64(-1), "1", []any{int64(1)}} {
		if _, err := ParseFlag(bad); err == nil {
			t.Errorf("ParseFlag(%v): got nil error", bad)
		}
	}
}

// FuzzParseAcquire feeds the reply parser every shape a Redis reply can
// take: it must return a result or an error, never panic.
func FuzzParseAcquire(f *testing.F) {
	f.Add(uint8(2), int64(0), int64(1500), "")
	f.Add(uint8(2), int64(1), int64(42), "")
	f.Add(uint8(3), int64(2), int64(0), "value")
	f.Add(uint8(0), int64(0), int64(0), "")
	f.Add(uint8(1), int64(9), int64(0), "x")
	f.Fuzz(func(t *testing.T, shape uint8, a, b int64, s string) {
		var reply any
		switch shape % 6 {
		case 0:
			reply = nil
		case 1:
			reply = []any{a}
		case 2:
			reply = []any{a, b}
		case 3:
			reply = []any{a, s}
		case 4:
			reply = []any{s, b, a}
		case 5:
			reply = s
		}
		r, err := ParseAcquire(reply)
		if err == nil && (r.State < Held || r.State > Found) {
			t.Fatalf("accepted state %d", r.State)
		}
		_, _ = ParseFlag(reply)
	})
}

func TestQuote(t *testing.T) {
	if got := Quote("a\x00"); got != `"a\x00"` {
		t.Errorf("got %s", got)
	}
	long := make([]byte, 1000)
	if got := Quote(string(long)); len(got) > 400 {
		t.Errorf("long name quoted to %d bytes", len(got))
	}
}

func TestKeeper(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	c := NewClient(rdb)
	ctx := context.Background()
	const ttl = 300 * time.Millisecond
	acquire := func(key string) (string, time.Time) {
		token, since := NewToken(), time.Now()
		r, err := c.Acquire(ctx, key, "", token, ttl, true)
		if err != nil || r.State != Acquired {
			t.Fatalf("Acquire: %+v, %v", r, err)
		}
		return token, since
	}
	t.Run("renews", func(t *testing.T) {
		token, since := acquire("{renew}")
		k := Keep(c, "{renew}", token, ttl, since, nil)
		deadline := time.Now().Add(4 * ttl)
		for time.Now().Before(deadline) {
			if v, _ := rdb.Get(ctx, "{renew}").Result(); v != token {
				t.Fatalf("lease lost while kept: key holds %q", v)
			}
			time.Sleep(ttl / 10)
		}
		if err := k.Stop(); err != nil {
			t.Fatalf("Stop: %v", err)
		}
	})
	t.Run("reports loss", func(t *testing.T) {
		token, since := acquire("{lose}")
		lost := make(chan struct{})
		k := Keep(c, "{lose}", token, ttl, since, func() { close(lost) })
		if err := rdb.Del(ctx, "{lose}").Err(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-lost:
		case <-time.After(10 * time.Second):
			t.Fatal("loss not reported")
		}
		if err := k.Stop(); !errors.Is(err, ErrNotHeld) {
			t.Fatalf("Stop: got %v; want ErrNotHeld", err)
		}
	})
	t.Run("gives up when Redis stalls past the lease", func(t *testing.T) {
		token, since := acquire("{stall}")
		lost := make(chan struct{})
		k := Keep(c, "{stall}", token, ttl, since, func() { close(lost) })
		s.Pause(t)
		select {
		case <-lost:
		case <-time.After(10 * time.Second):
			t.Error("loss not reported while Redis was stalled")
		}
		s.Resume(t)
		if err := k.Stop(); !errors.Is(err, ErrNotHeld) {
			t.Fatalf("Stop: got %v; want ErrNotHeld", err)
		}
	})
}

func TestRunLate(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	release := make(chan struct{})
	late := make(chan int, 1)
	go func() {
		time.Sleep(time.Millisecond)
		cancel()
	}()
	ctx, cancel2 := context.WithTimeout(ctx, time.Minute)
	defer cancel2()
	_, err := Run(ctx, &Client{}, func(context.Context) (int, error) {
		<-release
		return 7, nil
	}, func(v int, err error) { late <- v })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v; want Canceled", err)
	}
	close(release)
	if v := <-late; v != 7 {
		t.Fatalf("late: got %d; want 7", v)
	}
}

// TestAcquireRetried: a client that retries an acquire whose reply was lost
// (go-redis does, by default) gets the lease it already took, not "held".
func TestAcquireRetried(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := NewClient(rdb)
	ctx := context.Background()
	token := NewToken()
	first, err := c.Acquire(ctx, "{k}", "", token, time.Minute, true)
	if err != nil || first.State != Acquired {
		t.Fatalf("first: %+v, %v", first, err)
	}
	again, err := c.Acquire(ctx, "{k}", "", token, time.Minute, true)
	if err != nil || again != first {
		t.Fatalf("retried: got %+v, %v; want %+v", again, err, first)
	}
	other, err := c.Acquire(ctx, "{k}", "", NewToken(), time.Minute, true)
	if err != nil || other.State != Held {
		t.Fatalf("another holder: got %+v, %v; want Held", other, err)
	}
}
