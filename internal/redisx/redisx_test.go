package redisx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/locksmith-go/locksmith/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type replyErr string

func (e replyErr) Error() string { return string(e) }
func (replyErr) RedisError()     {}

func TestClassify(t *testing.T) {
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	for _, tc := range []struct {
		err  error
		want Class
	}{
		{nil, OK},
		{context.Canceled, Canceled},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), Canceled},
		{dial, Unreachable},
		{fmt.Errorf("%w: %w", context.DeadlineExceeded, dial), Unreachable},
		{io.EOF, Unreachable},
		{&net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, Unreachable},
		{&DownError{Since: time.Now(), Err: dial}, Unreachable},
		{redis.ErrPoolTimeout, Saturated},
		{redis.ErrClosed, Closed},
		{replyErr("READONLY You can't write against a read only replica."), Transient},
		{replyErr("LOADING Redis is loading the dataset in memory"), Transient},
		{replyErr("MASTERDOWN Link with MASTER is down"), Transient},
		{replyErr("CLUSTERDOWN The cluster is down"), Transient},
		{replyErr("TRYAGAIN Multiple keys request during rehashing of slot"), Transient},
		{replyErr("ERR max number of clients reached"), Transient},
		{replyErr("BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."), Transient},
		{replyErr("BUSYKEY Target key name already exists."), Reply},
		{replyErr("WRONGTYPE Operation against a key holding the wrong kind of value"), Reply},
		{replyErr("OOM command not allowed when used memory > 'maxmemory'."), Reply},
		{replyErr("NOPERM this user has no permissions"), Reply},
		{errors.New("something else"), Other},
	} {
		if got := Classify(tc.err); got != tc.want {
			t.Errorf("Classify(%v) = %d; want %d", tc.err, got, tc.want)
		}
	}
}

func TestKey(t *testing.T) {
	for name, want := range map[string]string{
		"k":     "p:{k}",
		"":      "p:{\xff}",
		"}":     "p:{\xff}}",
		"}a":    "p:{\xff}a}",
		"\xff":  "p:{\xff\xff}",
		"a}b":   "p:{a}b}",
		"{":     "p:{{}",
		"\xffa": "p:{\xff\xffa}",
	} {
		if got := Key("p:", name); got != want {
			t.Errorf("Key(%q) = %q; want %q", name, got, want)
		}
	}
	if err := CheckPrefix("ok:"); err != nil {
		t.Errorf("CheckPrefix(ok:) = %v", err)
	}
	for _, p := range []string{"a{", "}", "x{y}z"} {
		if err := CheckPrefix(p); err == nil {
			t.Errorf("CheckPrefix(%q) = nil", p)
		}
	}
}

// TestOutageRemembered: once a call finds Redis unreachable, later calls
// fail at once without trying, until a probe finds Redis back.
func TestOutageRemembered(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	c := New(rdb)
	defer c.Close()
	ctx := redistest.Context(t, 30*time.Second)
	get := func() error { return getK(ctx, c, rdb) }
	if err := get(); err != nil {
		t.Fatal(err)
	}
	var began, ended atomic.Int32
	c.SetOnOutage(func(error) { began.Add(1) }, func(time.Duration) { ended.Add(1) })
	s.Kill(t)
	if err := get(); Classify(err) != Unreachable || errors.Is(err, ErrUnavailable) {
		t.Fatalf("first call with Redis down: got %v; want a connection error", err)
	}
	calls := 0
	for range 100 {
		_, err := Run(ctx, c, func(context.Context) (int, error) { calls++; return 0, nil }, nil)
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "unavailable since") {
			t.Fatalf("during the outage: got %v; want ErrUnavailable", err)
		}
	}
	if calls != 0 {
		t.Fatalf("%d calls made during a known outage", calls)
	}
	if !c.Down() || c.Outages() != 1 || began.Load() != 1 {
		t.Fatalf("Down %v, Outages %d, began %d; want true, 1, 1", c.Down(), c.Outages(), began.Load())
	}
	s.Restart(t)
	redistest.WaitFor(t, "the probe finds Redis back", func() bool { return !c.Down() })
	if err := get(); err != nil {
		t.Fatalf("after the outage: %v", err)
	}
	if n := ended.Load(); n != 1 {
		t.Fatalf("outage ends reported: %d; want 1", n)
	}
}

// TestOutageEndedByACall: an outage ended by a call that got through (one
// already under way when the outage began) before its first probe ran
// cancels that probe properly: a later outage is still probed, and ends,
// and Close returns. (Once, the probe's timer was stopped but still counted
// as running: no outage after that one was ever probed again, and Close
// waited forever.)
func TestOutageEndedByACall(t *testing.T) {
	var up atomic.Bool
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	o := &outage{ping: func(context.Context) error {
		if up.Load() {
			return nil
		}
		return refused
	}}
	o.observe(refused)
	o.observe(nil) // a call under way got through: Redis is back
	if o.check() != nil {
		t.Fatal("still down after a call got through")
	}
	o.observe(refused) // a second outage
	if o.check() == nil {
		t.Fatal("the second outage is not remembered")
	}
	up.Store(true)
	redistest.WaitFor(t, "a probe to end the second outage", func() bool { return o.check() == nil })
	closed := make(chan struct{})
	go func() {
		o.close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("close did not return within 10s")
	}
}

// TestReplyIsNotAnOutage: an error reply means Redis is there.
func TestReplyIsNotAnOutage(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := New(rdb)
	defer c.Close()
	ctx := context.Background()
	rdb.LPush(ctx, "list", "x")
	_, err := Run(ctx, c, func(ctx context.Context) (string, error) { return rdb.Get(ctx, "list").Result() }, nil)
	if Classify(err) != Reply || c.Down() {
		t.Fatalf("WRONGTYPE: class %d, down %v", Classify(err), c.Down())
	}
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

// getK GETs "k" through c (a missing key is no error).
func getK(ctx context.Context, c *Client, rdb *redis.Client) error {
	_, err := Run(ctx, c, func(ctx context.Context) (string, error) {
		return rdb.Get(ctx, "k").Result()
	}, nil)
	if errors.Is(err, redis.Nil) {
		return nil
	}
	return err
}

// TestClosedDuringOutage: a Client closed during an outage stops probing,
// and stops holding calls back: a call made after Close (a lock's Refresh,
// which a closed Locker still allows) goes to Redis, and gets through once
// Redis is back, rather than fail as unavailable for good.
func TestClosedDuringOutage(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	c := New(rdb)
	ctx := redistest.Context(t, 30*time.Second)
	get := func() error { return getK(ctx, c, rdb) }
	s.Kill(t)
	if err := get(); Classify(err) != Unreachable {
		t.Fatalf("with Redis down: %v; want it unreachable", err)
	}
	if !c.Down() {
		t.Fatal("no outage began")
	}
	c.Close()
	s.Restart(t)
	if err := get(); err != nil {
		t.Fatalf("a call after Close, Redis back: %v; want it through", err)
	}
}

// TestCloseWaitsForBackground: Close waits for the work Go started, and no
// longer than CloseWait for work that does not end.
func TestCloseWaitsForBackground(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := New(rdb)
	release := make(chan struct{})
	var ran atomic.Bool
	c.Go(func() {
		<-release
		ran.Store(true)
	})
	closed := make(chan struct{})
	go func() {
		c.Close()
		close(closed)
	}()
	select {
	case <-closed:
		t.Fatal("Close returned with background work running")
	case <-time.After(100 * time.Millisecond): // the duration under test
	}
	close(release)
	<-closed
	if !ran.Load() {
		t.Fatal("Close returned before the background work ended")
	}

	c = New(rdb)
	stuck := make(chan struct{})
	defer close(stuck)
	c.Go(func() { <-stuck })
	if c.bg.wait(50 * time.Millisecond) {
		t.Fatal("wait reported no work left with a goroutine running")
	}
}
