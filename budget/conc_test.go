package budget_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/observe"
)

// fast is a limit that never delays a call: the tests of concurrency slots
// see the slots alone.
var fast = budget.Limit{Rate: 1_000_000, Per: time.Second, Burst: 1_000_000}

// upstream counts the calls in flight, as an upstream would see them.
type upstream struct {
	now, most, calls atomic.Int64
}

// call runs one call of d.
func (u *upstream) call(d time.Duration) {
	n := u.now.Add(1)
	for m := u.most.Load(); n > m && !u.most.CompareAndSwap(m, n); m = u.most.Load() {
	}
	u.calls.Add(1)
	time.Sleep(d)
	u.now.Add(-1)
}

// TestConcurrencyFleetCap runs servers × goroutines reserving calls with a
// cap of N across the fleet: the upstream never sees more than N calls at
// once, and sees N at some point.
func TestConcurrencyFleetCap(t *testing.T) {
	s := redistest.Start(t, nil)
	const n, servers, goroutines = 5, 4, 8
	opt := &budget.Options{Concurrency: n, SlotLease: 2 * time.Second}
	var u upstream
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var buds []*budget.Budget
	for range servers {
		buds = append(buds, newBudget(t, s.Client(t, nil), "cap", fast, opt))
	}
	for _, b := range buds {
		for range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 10 {
					r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
					if err != nil {
						t.Error(err)
						return
					}
					u.call(2 * time.Millisecond)
					if err := r.Done(ctx); err != nil {
						t.Error(err)
					}
				}
			}()
		}
	}
	wg.Wait()
	if m := u.most.Load(); m > n || m < n {
		t.Errorf("the upstream saw %d calls at once, want %d", m, n)
	}
	if c := u.calls.Load(); c != servers*goroutines*10 {
		t.Errorf("%d calls, want %d", c, servers*goroutines*10)
	}
	for i, b := range buds {
		if got := b.Stats().InFlight; got != 0 {
			t.Errorf("server %d: InFlight %d after every Done", i, got)
		}
	}
	if z := s.Do(t, "ZCARD", budget.Key(buds[0])+":slots"); z != int64(0) {
		t.Errorf("%v slots held after every Done", z)
	}
}

// TestConcurrencyFIFO: with one slot, callers that line up on several
// servers get it in the order they lined up, each woken when the previous
// one is done.
func TestConcurrencyFIFO(t *testing.T) {
	s := redistest.Start(t, nil)
	opt := &budget.Options{Concurrency: 1}
	var buds []*budget.Budget
	for range 3 {
		buds = append(buds, newBudget(t, s.Client(t, nil), "fifo", fast, opt))
	}
	ctx := redistest.Context(t, 20*time.Second)
	first, err := buds[0].Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	queue := budget.Key(buds[0]) + ":queue"
	got := make(chan int, 6)
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := range 6 {
		b := buds[i%3]
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
			if err != nil {
				t.Error(err)
				got <- -1
				return
			}
			got <- i
			time.Sleep(time.Millisecond)
			if err := r.Done(ctx); err != nil {
				t.Error(err)
			}
		}()
		redistest.WaitFor(t, fmt.Sprintf("caller %d in line", i), func() bool {
			return s.Do(t, "ZCARD", queue) == int64(i+1)
		})
	}
	if err := first.Done(ctx); err != nil {
		t.Fatal(err)
	}
	for want := range 6 {
		if i := <-got; i != want {
			t.Fatalf("caller %d got the slot, want %d", i, want)
		}
	}
}

// counter counts the commands a client sends, by name (a go-redis hook).
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.mu.Lock()
		c.n[cmd.Name()]++
		c.mu.Unlock()
		return next(ctx, cmd)
	}
}

func (c *counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.mu.Lock()
		for _, cmd := range cmds {
			c.n[cmd.Name()]++
		}
		c.mu.Unlock()
		return next(ctx, cmds)
	}
}

// take returns the counts since the last take.
func (c *counter) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n
	c.n = make(map[string]int)
	return n
}

// TestConcurrencyHandOffNoPolling: a caller waiting for the one slot, held
// by another server for a while, is woken by the holder's Done, and costs
// two round trips (in line, then the slot), however long it waited; the
// holder's cost one each way. No command polls.
func TestConcurrencyHandOffNoPolling(t *testing.T) {
	s := redistest.Start(t, nil)
	opt := &budget.Options{Concurrency: 1}
	cnt := &counter{n: make(map[string]int)}
	ca, cb := s.Client(t, nil), s.Client(t, nil)
	ca.AddHook(cnt)
	cb.AddHook(cnt)
	a := newBudget(t, ca, "handoff", fast, opt)
	b := newBudget(t, cb, "handoff", fast, opt)
	ctx := redistest.Context(t, 20*time.Second)
	// Load the scripts: the counts below are of EVALSHA alone.
	r, err := a.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Done(ctx); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "subscriptions", func() bool {
		n, _ := s.Do(t, "PUBSUB", "NUMSUB", budget.Key(a)).([]any)
		return len(n) == 2 && n[1] == int64(2)
	})
	cnt.take()
	held, err := a.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan time.Time, 1)
	go func() {
		r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
		at := time.Now()
		if err != nil {
			t.Error(err)
		} else if err := r.Done(ctx); err != nil {
			t.Error(err)
		}
		got <- at
	}()
	redistest.WaitFor(t, "a caller in line", func() bool {
		return s.Do(t, "ZCARD", budget.Key(a)+":queue") == int64(1)
	})
	time.Sleep(300 * time.Millisecond) // a poller would show up here
	done := time.Now()
	if err := held.Done(ctx); err != nil {
		t.Fatal(err)
	}
	at := <-got
	got2 := cnt.take()
	// Two Reserves, two Dones, one booking again by the caller woken. The
	// Hubs' heartbeats (PUBLISH) are theirs, however many callers wait.
	delete(got2, "publish")
	delete(got2, "hello") // a new connection's handshake
	delete(got2, "client")
	if got2["evalsha"] != 5 || len(got2) != 1 {
		t.Errorf("commands %v, want evalsha: 5 (2 Reserves + 1 booking again when woken + 2 Dones) and nothing else", got2)
	}
	t.Logf("hand-off: %v from Done to the waiter's Reserve returning", at.Sub(done))
}

// TestConcurrencyCloseFrees: a server that closes gives its slots back at
// once: a caller waiting on another server gets one well before the lease
// would have run out.
func TestConcurrencyCloseFrees(t *testing.T) {
	s := redistest.Start(t, nil)
	opt := &budget.Options{Concurrency: 2, SlotLease: time.Minute}
	a := budget.New(s.Client(t, nil), "close", fast, opt)
	b := newBudget(t, s.Client(t, nil), "close", fast, opt)
	ctx := redistest.Context(t, 10*time.Second)
	var rs []*budget.Reservation
	for range 2 {
		r, err := a.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	if got := a.Stats().InFlight; got != 2 {
		t.Fatalf("InFlight %d, want 2", got)
	}
	got := make(chan error, 1)
	go func() {
		r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err == nil {
			err = r.Done(ctx)
		}
		got <- err
	}()
	redistest.WaitFor(t, "a caller in line", func() bool {
		return s.Do(t, "ZCARD", budget.Key(a)+":queue") == int64(1)
	})
	start := time.Now()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the slot came back after %v", d)
	}
	for _, r := range rs {
		if c := context.Cause(r.Context()); !errors.Is(c, budget.ErrSlotLost) {
			t.Errorf("a reservation of the closed server: context cause %v, want ErrSlotLost", c)
		}
		if err := r.Done(ctx); !errors.Is(err, budget.ErrSlotLost) {
			t.Errorf("Done after Close: %v, want ErrSlotLost", err)
		}
	}
}

// TestConcurrencyLostLease: a holder whose renewals cannot reach Redis
// loses its slot when its lease runs out: its reservation's context ends
// with ErrSlotLost, Done says so, and the slot is another server's.
func TestConcurrencyLostLease(t *testing.T) {
	s := redistest.Start(t, nil)
	p := redistest.NewProxy(t, s.Addr())
	const lease = 300 * time.Millisecond
	opt := &budget.Options{Concurrency: 1, SlotLease: lease}
	a := newBudget(t, redistest.Client(t, p.Addr()), "lost", fast, opt)
	b := newBudget(t, s.Client(t, nil), "lost", fast, opt)
	ctx := redistest.Context(t, 10*time.Second)
	r, err := a.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	p.Refuse(true)
	p.DropAll()
	start := time.Now()
	other, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	if d > 2*lease {
		t.Errorf("the slot came back after %v, lease %v", d, lease)
	}
	select {
	case <-r.Context().Done():
	case <-ctx.Done():
		t.Fatal("the holder's context did not end")
	}
	if c := context.Cause(r.Context()); !errors.Is(c, budget.ErrSlotLost) {
		t.Errorf("cause %v, want ErrSlotLost", c)
	}
	if err := r.Done(ctx); !errors.Is(err, budget.ErrSlotLost) {
		t.Errorf("Done: %v, want ErrSlotLost", err)
	}
	if err := other.Done(ctx); err != nil {
		t.Error(err)
	}
	t.Logf("slot back after %v (lease %v)", d, lease)
}

// TestConcurrencyLocalCap: while Redis is unreachable each server holds
// at most Concurrency/FleetSize slots; with a pool of keys, one key's
// share, whatever key its local limiter picks.
func TestConcurrencyLocalCap(t *testing.T) {
	for _, keys := range [][]string{nil, {"key-a", "key-b"}} {
		t.Run(fmt.Sprintf("keys=%d", len(keys)), func(t *testing.T) {
			s := redistest.Start(t, nil)
			opt := &budget.Options{Keys: keys, Concurrency: 6, FleetSize: 3}
			b := newBudget(t, s.Client(t, &redis.Options{MaxRetries: -1}), "local", fast, opt)
			s.Kill(t)
			ctx := redistest.Context(t, 10*time.Second)
			var u upstream
			var wg sync.WaitGroup
			for range 10 {
				wg.Go(func() {
					for range 3 {
						r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
						if err != nil {
							t.Error(err)
							return
						}
						if keys != nil && r.Key() == "" {
							t.Error("a local reservation with no key")
						}
						u.call(time.Millisecond)
						_ = r.Done(ctx)
					}
				})
			}
			wg.Wait()
			if m := u.most.Load(); m != 2 {
				t.Errorf("%d calls at once on one server while Redis was down, want 6/3 = 2", m)
			}
			if st := b.Stats(); st.LocalWaits == 0 || st.InFlight != 0 {
				t.Errorf("stats %+v: want local waits, none in flight", st)
			}
		})
	}
}

// TestConcurrencyCrashedHolder: the slots of a server killed while holding
// them (SIGKILL: no Close, no Done) come back within the lease.
func TestConcurrencyCrashedHolder(t *testing.T) {
	s := redistest.Start(t, nil)
	const lease = 500 * time.Millisecond
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+s.Addr()+" crashed 2 "+lease.String())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "held\n" {
		t.Fatalf("child: %q, %v", line, err)
	}
	b := newBudget(t, s.Client(t, nil), "crashed", fast, &budget.Options{Concurrency: 2, SlotLease: lease})
	ctx := redistest.Context(t, 10*time.Second)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	var rs []*budget.Reservation
	for range 2 {
		r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	d := time.Since(killed)
	if d > lease+lease/2 {
		t.Errorf("the killed server's slots came back after %v, lease %v", d, lease)
	}
	for _, r := range rs {
		_ = r.Done(ctx)
	}
	t.Logf("slots back %v after SIGKILL (lease %v)", d, lease)
}

// childEnv names the variable that makes the test binary a child server:
// "ADDR NAME N LEASE": it reserves N slots of the budget NAME on ADDR,
// prints "held" and blocks until killed.
const childEnv = "LOCKSMITH_BUDGET_CHILD"

// runChild is the child server's life (see childEnv).
func runChild(spec string) {
	f := strings.Fields(spec)
	n, _ := strconv.Atoi(f[2])
	lease, _ := time.ParseDuration(f[3])
	rdb := redis.NewClient(&redis.Options{Addr: f[0]})
	b := budget.New(rdb, f[1], fast, &budget.Options{Concurrency: n, SlotLease: lease})
	for range n {
		if _, err := b.Reserve(context.Background(), budget.Foreground, budget.Cost{}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	fmt.Println("held")
	select {}
}

// TestConcurrencyCancelAndGiveUp: Cancel frees the slot for the caller in
// line; a caller whose ctx ends in line leaves it, and the one behind it
// moves up.
func TestConcurrencyCancelAndGiveUp(t *testing.T) {
	s := redistest.Start(t, nil)
	opt := &budget.Options{Concurrency: 1}
	a := newBudget(t, s.Client(t, nil), "cancel", fast, opt)
	b := newBudget(t, s.Client(t, nil), "cancel", fast, opt)
	ctx := redistest.Context(t, 10*time.Second)
	held, err := a.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	queue := budget.Key(a) + ":queue"
	quit, giveUp := context.WithCancel(ctx)
	gaveUp := make(chan error, 1)
	go func() {
		_, err := b.Reserve(quit, budget.Foreground, budget.Cost{})
		gaveUp <- err
	}()
	redistest.WaitFor(t, "the first caller in line", func() bool { return s.Do(t, "ZCARD", queue) == int64(1) })
	got := lineUp(t, ctx, nil, b)
	redistest.WaitFor(t, "the second caller in line", func() bool { return s.Do(t, "ZCARD", queue) == int64(2) })
	giveUp()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("the caller that gave up: %v", err)
	}
	redistest.WaitFor(t, "the line after giving up", func() bool { return s.Do(t, "ZCARD", queue) == int64(1) })
	if err := held.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r == nil {
		t.FailNow()
	}
	if st := b.Stats(); st.InFlight != 1 {
		t.Errorf("InFlight %d, want 1", st.InFlight)
	}
	if err := r.Done(ctx); err != nil {
		t.Fatal(err)
	}
	if z := s.Do(t, "ZCARD", budget.Key(a)+":slots"); z != int64(0) {
		t.Errorf("%v slots held after Done", z)
	}
}

// TestConcurrencyWaitTakesNoSlot: Wait takes no concurrency slot, and a
// budget without Concurrency keeps no slots in Redis.
func TestConcurrencyWaitTakesNoSlot(t *testing.T) {
	s := redistest.Start(t, nil)
	a := newBudget(t, s.Client(t, nil), "wait", fast, &budget.Options{Concurrency: 1})
	ctx := redistest.Context(t, 10*time.Second)
	r, err := a.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Wait(ctx, budget.Foreground); err != nil {
		t.Fatal(err)
	}
	_ = r.Done(ctx)
	plain := newBudget(t, s.Client(t, nil), "plain", fast, nil)
	r, err = plain.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Context() != ctx {
		t.Error("a reservation without a concurrency slot: its context is not Reserve's")
	}
	_ = r.Done(ctx)
	if n := s.Do(t, "EXISTS", budget.Key(plain)+":slots", budget.Key(plain)+":queue"); n != int64(0) {
		t.Errorf("a budget without Concurrency keeps %v slot keys", n)
	}
}

// TestConcurrencySlotTaken: a holder whose slot Redis no longer holds
// (deleted, say) learns it at the next renewal: its context ends with
// ErrSlotLost.
func TestConcurrencySlotTaken(t *testing.T) {
	s := redistest.Start(t, nil)
	a := newBudget(t, s.Client(t, nil), "taken", fast, &budget.Options{Concurrency: 1, SlotLease: 150 * time.Millisecond})
	ctx := redistest.Context(t, 10*time.Second)
	r, err := a.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	s.Do(t, "DEL", budget.Key(a)+":slots")
	select {
	case <-r.Context().Done():
	case <-ctx.Done():
		t.Fatal("the holder's context did not end")
	}
	if c := context.Cause(r.Context()); !errors.Is(c, budget.ErrSlotLost) {
		t.Errorf("cause %v, want ErrSlotLost", c)
	}
	if err := r.Done(ctx); !errors.Is(err, budget.ErrSlotLost) {
		t.Errorf("Done: %v, want ErrSlotLost", err)
	}
	if st := a.Stats(); st.InFlight != 0 {
		t.Errorf("InFlight %d after the slot was lost", st.InFlight)
	}
}

// TestConcurrencyOptions: a negative Concurrency or a SlotLease too short
// to renew make an unusable Budget.
func TestConcurrencyOptions(t *testing.T) {
	_, rdb := redistest.Mini(t)
	for _, opt := range []*budget.Options{{Concurrency: -1}, {Concurrency: 1, SlotLease: time.Millisecond}, {SlotLease: -time.Second}} {
		b := budget.New(rdb, "opts", fast, opt)
		if _, err := b.Reserve(context.Background(), budget.Foreground, budget.Cost{}); err == nil {
			t.Errorf("%+v: Reserve succeeded", *opt)
		}
		_ = b.Close()
	}
}

// TestConcurrencyRenewDuringBookings: renewals run while reservations
// take and free slots all along; a slot taken while a renewal is under way
// is not counted lost.
func TestConcurrencyRenewDuringBookings(t *testing.T) {
	s := redistest.Start(t, nil)
	opt := &budget.Options{Concurrency: 4, SlotLease: 90 * time.Millisecond}
	ctx := redistest.Context(t, 30*time.Second)
	var wg sync.WaitGroup
	var lost atomic.Int64
	for range 2 {
		b := newBudget(t, s.Client(t, nil), "renew", fast, opt)
		for range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 150 {
					r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
					if err != nil {
						t.Error(err)
						return
					}
					if err := r.Done(ctx); errors.Is(err, budget.ErrSlotLost) {
						lost.Add(1)
					} else if err != nil {
						t.Error(err)
					}
				}
			}()
		}
	}
	wg.Wait()
	if n := lost.Load(); n > 0 {
		t.Errorf("%d slots counted lost while held", n)
	}
}

// TestConcurrencyLineIsQuiet: thirty callers in line on three servers send
// no command while they wait: not one booking, renewal or look again
// before the slot frees; then each takes its turn.
func TestConcurrencyLineIsQuiet(t *testing.T) {
	s := redistest.Start(t, nil)
	opt := &budget.Options{Concurrency: 1}
	cnt := &counter{n: make(map[string]int)}
	var buds []*budget.Budget
	for range 3 {
		rdb := s.Client(t, nil)
		rdb.AddHook(cnt)
		buds = append(buds, newBudget(t, rdb, "quiet", fast, opt))
	}
	ctx := redistest.Context(t, 20*time.Second)
	held, err := buds[0].Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := buds[i%3].Reserve(ctx, budget.Foreground, budget.Cost{})
			if err != nil {
				t.Error(err)
				return
			}
			if err := r.Done(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	redistest.WaitFor(t, "30 callers in line", func() bool {
		return s.Do(t, "ZCARD", budget.Key(buds[0])+":queue") == int64(30)
	})
	cnt.take()
	time.Sleep(500 * time.Millisecond) // a poller would show up here
	quiet := cnt.take()
	delete(quiet, "publish") // the Hubs' heartbeats
	if len(quiet) != 0 {
		t.Errorf("commands while 30 callers waited in line: %v", quiet)
	}
	if err := held.Done(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	// Each: one booking in line, one when woken, one Done; and the first
	// Done.
	if n := cnt.take()["evalsha"]; n != 30*2+1 {
		t.Errorf("%d scripts run after the slot freed, want %d", n, 30*2+1)
	}
}

// TestConcurrencyCluster: on a Redis Cluster the slots live in the
// budget's Cluster slot, and a freed slot wakes a caller in line on another
// server by sharded pub/sub.
func TestConcurrencyCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	for _, tc := range []struct {
		name string
		opt  *budget.Options
	}{
		{"cluster", &budget.Options{Concurrency: 1}},
		// A cap per key of a pool: every key its scripts touch under the
		// budget's hash tag, those of the pool's keys included.
		{"cluster-keys", &budget.Options{Concurrency: 1, Keys: []string{"key-a"}}},
	} {
		t.Run(tc.name, func(t *testing.T) { testConcurrencyCluster(t, c, tc.name, tc.opt) })
	}
}

func testConcurrencyCluster(t *testing.T, c *redistest.Cluster, name string, opt *budget.Options) {
	a := newBudget(t, c.Client(t, nil), name, fast, opt)
	b := newBudget(t, c.Client(t, nil), name, fast, opt)
	ctx := redistest.Context(t, 20*time.Second)
	held, err := a.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err == nil {
			err = r.Done(ctx)
		}
		got <- err
	}()
	probe := c.Client(t, nil)
	redistest.WaitFor(t, "a caller in line", func() bool {
		return probe.ZCard(ctx, budget.Key(a)+":queue").Val() == 1
	})
	if err := held.Done(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the caller in line was not woken (its fallback look is 10s away)")
	}
}

// panicOnce is an events handler that panics at its first event.
type panicOnce struct{ done atomic.Bool }

func (h *panicOnce) Handle(context.Context, observe.Event) {
	if h.done.CompareAndSwap(false, true) {
		panic("the handler's bug")
	}
}

// TestEventsPanicKeepsSlot: an events handler that panics while a
// Reserve reports its wait (its concurrency slot taken) loses its event;
// the Reserve returns its reservation, and its slot is freed by Done, not
// held, renewed, for the life of the process.
func TestEventsPanicKeepsSlot(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := budget.New(rdb, "panicky", budget.Limit{Rate: 1000, Burst: 10}, &budget.Options{Concurrency: 1, Events: &panicOnce{}})
	defer b.Close()
	ctx := context.Background()
	r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatalf("Reserve with a panicking handler: %v", err)
	}
	if err := r.Done(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	r2, err := b.Reserve(wctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatalf("the next Reserve of the one slot: %v; want it free", err)
	}
	_ = r2.Done(ctx)
	if n := b.Stats().InFlight; n != 0 {
		t.Errorf("InFlight %d after both were done; want 0", n)
	}
}

// TestOutageCountsHeldSlots: while Redis is unreachable, the slots this
// server holds in Redis count in its local cap, max(1, Concurrency /
// FleetSize), as long as their leases run: they are still in flight, and
// the fleet counts them. The local cap was apart from them: with both of
// Concurrency 2 held, two more calls went at once, 4 in flight.
func TestOutageCountsHeldSlots(t *testing.T) {
	s := redistest.Start(t, nil)
	b := newBudget(t, s.Client(t, &redis.Options{MaxRetries: -1}), "outage-held", fast,
		&budget.Options{Concurrency: 2, SlotLease: time.Minute})
	ctx := redistest.Context(t, 20*time.Second)
	var held []*budget.Reservation
	for range 2 {
		r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, r)
	}
	s.Kill(t)
	short, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if r, err := b.Reserve(short, budget.Foreground, budget.Cost{}); err == nil {
		_ = r.Done(ctx)
		t.Fatalf("a third call went with both slots of Concurrency 2 held (InFlight %d)", b.Stats().InFlight)
	}
	// One of them done: its place goes to a local slot.
	_ = held[0].Done(ctx)
	r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatalf("with one slot held and one done: %v", err)
	}
	if n := b.Stats().InFlight; n != 2 {
		t.Errorf("InFlight %d; want 2", n)
	}
	_ = r.Done(ctx)
	_ = held[1].Done(ctx)
}

// TestDoneAfterLeaseRanOutInRedis: Done of a reservation whose slot Redis
// had already ended (this process paused past its lease, and another
// server took the slot) before this process noticed returns ErrSlotLost:
// the call may have overlapped another's. It returned nil, with a Spent to
// settle or without.
func TestDoneAfterLeaseRanOutInRedis(t *testing.T) {
	for _, spent := range []bool{false, true} {
		t.Run(fmt.Sprint("spent ", spent), func(t *testing.T) {
			s := redistest.Start(t, nil)
			opt := &budget.Options{Concurrency: 1, SlotLease: 3 * time.Second}
			a := newBudget(t, s.Client(t, nil), "done-lost", fast, opt)
			b := newBudget(t, s.Client(t, nil), "done-lost", fast, opt)
			ctx := redistest.Context(t, 10*time.Second)
			r, err := a.Reserve(ctx, budget.Foreground, budget.Cost{})
			if err != nil {
				t.Fatal(err)
			}
			if spent {
				r.Spent(budget.Cost{Calls: 2})
			}
			// As after a pause of the holder's process past its lease: the
			// lease's end lies in the past on the Redis clock.
			holder := s.Do(t, "ZRANGE", budget.Key(a)+":slots", 0, 0).([]any)[0]
			s.Do(t, "ZADD", budget.Key(a)+":slots", "XX", 1, holder)
			other, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
			if err != nil {
				t.Fatal(err)
			}
			defer other.Done(ctx)
			if err := r.Done(ctx); !errors.Is(err, budget.ErrSlotLost) {
				t.Errorf("Done of a slot Redis had given to another: %v; want ErrSlotLost", err)
			}
		})
	}
}

// TestOutageLocalWaitBackOnRedis: a caller waiting for the local cap
// during an outage (the server's Redis slots filling it) books in Redis as
// soon as Redis is back, instead of waiting for those slots' leases.
func TestOutageLocalWaitBackOnRedis(t *testing.T) {
	s := redistest.Start(t, nil)
	var outage atomic.Bool
	b := newBudget(t, s.Client(t, &redis.Options{MaxRetries: -1}), "outage-back", fast,
		&budget.Options{Concurrency: 1, SlotLease: time.Minute, Events: observe.Func(func(_ context.Context, e observe.Event) {
			if e.Kind == observe.OutageStart {
				outage.Store(true)
			}
		})})
	ctx := redistest.Context(t, 30*time.Second)
	held, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	s.Kill(t)
	got := make(chan error, 1)
	go func() {
		r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err == nil {
			defer r.Done(ctx)
		}
		got <- err
	}()
	redistest.WaitFor(t, "the outage noticed", outage.Load)
	select {
	case err := <-got:
		t.Fatalf("a second call went during the outage with the only slot held: %v", err)
	default:
	}
	s.Restart(t) // without persistence: the held slot is gone from Redis
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("Reserve once Redis was back: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a caller waiting for the local cap still waits 10 s after Redis came back")
	}
	_ = held.Done(ctx)
}
