package budget_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// A fleet is servers sharing one budget, each a Budget on a client of its
// own, each with goroutines that call Wait(Foreground) in a loop. Every call
// let through is recorded with the slot its Wait booked last and the instant
// it returned: what the upstream would have seen.
type fleet struct {
	l      budget.Limit
	buds   []*budget.Budget
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex // guards the fields below
	calls []call
	books []book
}

// call is a Wait that returned nil.
type call struct {
	server int
	slot   int64 // µs: of the Redis clock, or of this process's for a local slot
	local  bool  // decided by the local limiter
	at     int64 // when Wait returned, µs of this process's clock
}

// book is a booking in Redis, seen when its reply arrived.
type book struct {
	server        int
	slot, tat, at int64 // its slot and the tat it set; when its reply arrived (µs of this process's clock)
}

// slotOf is where a Wait's booking hook leaves the slot for its caller.
type slotOf struct{}

type booked struct {
	slot  int64
	local bool
}

// startFleet starts servers × goroutines callers. prio gives each server's
// priority; nil means Foreground for all.
func startFleet(t *testing.T, s *redistest.Server, name string, l budget.Limit, opt *budget.Options, servers, goroutines int, prio func(server int) budget.Priority) *fleet {
	t.Helper()
	f := &fleet{l: l}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	t.Cleanup(f.stop)
	for i := range servers {
		// No retries: a killed Redis is an outage at the first refused dial.
		b := newBudget(t, s.Client(t, &redis.Options{MaxRetries: -1}), name, l, opt)
		budget.OnBookContext(b, func(ctx context.Context, k budget.Booking) {
			if h, ok := ctx.Value(slotOf{}).(*booked); ok {
				h.slot, h.local = k.Slot, k.Local
			}
			if !k.Local {
				f.mu.Lock()
				f.books = append(f.books, book{server: i, slot: k.Slot, tat: k.TAT, at: time.Now().UnixMicro()})
				f.mu.Unlock()
			}
		})
		f.buds = append(f.buds, b)
		p := budget.Foreground
		if prio != nil {
			p = prio(i)
		}
		for range goroutines {
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				h := &booked{}
				wctx := context.WithValue(ctx, slotOf{}, h)
				for ctx.Err() == nil {
					*h = booked{}
					err := b.Wait(wctx, p)
					at := time.Now().UnixMicro()
					switch {
					case err == nil:
						f.mu.Lock()
						f.calls = append(f.calls, call{server: i, slot: h.slot, local: h.local, at: at})
						f.mu.Unlock()
					case ctx.Err() != nil, errors.Is(err, context.DeadlineExceeded):
					default:
						t.Errorf("server %d: Wait: %v", i, err)
						return
					}
				}
			}()
		}
	}
	return f
}

func (f *fleet) stop() {
	f.cancel()
	f.wg.Wait()
}

// callsSince returns how many calls returned after at (µs), and how many of
// them were decided by Redis.
func (f *fleet) callsSince(at int64) (n, redis int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.calls {
		if c.at > at {
			n++
			if !c.local {
				redis++
			}
		}
	}
	return n, redis
}

// waitCalls waits until n calls returned after at.
func (f *fleet) waitCalls(t *testing.T, what string, at int64, n int) {
	t.Helper()
	redistest.WaitFor(t, what, func() bool { got, _ := f.callsSince(at); return got >= n })
}

// check asserts that no call returned before its slot, and returns the most
// calls that returned within any window of Per overlapping [from, to] (µs of
// this process's clock), and the latest any call returned after its slot.
// The Redis clock and this process's are the same machine's.
func (f *fleet) check(t *testing.T, from, to int64) (most int, late time.Duration) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	per := f.l.Per.Microseconds()
	var ts []int64
	early := 0
	for _, c := range f.calls {
		if c.at > from-per && c.at < to+per {
			ts = append(ts, c.at)
		}
		if c.slot == 0 {
			continue // no slot seen
		}
		if c.at < c.slot {
			if early++; early <= 3 {
				t.Errorf("server %d: a call returned %v before its slot (local %v)", c.server, time.Duration(c.slot-c.at)*time.Microsecond, c.local)
			}
		}
		late = max(late, time.Duration(c.at-c.slot)*time.Microsecond)
	}
	if early > 0 {
		t.Errorf("%d calls of %d returned before their slot", early, len(f.calls))
	}
	return maxInWindow(ts, per), late
}

// slots returns the slots of the calls decided by Redis.
func (f *fleet) slots() []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var s []int64
	for _, c := range f.calls {
		if !c.local && c.slot != 0 {
			s = append(s, c.slot)
		}
	}
	return s
}

// lag returns how far apart, in emission intervals, the servers' latest
// bookings before at (µs) were: the tat each last set, the latest against the
// earliest.
func (f *fleet) lag(at int64) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	latest := make([]int64, len(f.buds))
	for _, k := range f.books {
		if k.at < at {
			latest[k.server] = max(latest[k.server], k.tat)
		}
	}
	t := f.l.Per.Microseconds() / int64(f.l.Rate)
	return (slices.Max(latest) - slices.Min(latest) + t - 1) / t
}

// intervals returns how many emission intervals d spans, rounded up.
func intervals(l budget.Limit, d time.Duration) int {
	t := l.Per / time.Duration(l.Rate)
	return int((d + t - 1) / t)
}

// TestFlushAll: when Redis loses the budget's state (a restart without
// persistence, FLUSHALL, a failover to a replica behind), each server brings
// the latest tat it set, and the fleet keeps its limit.
//
// The bound: the budget books at most Rate+Burst-1 slots in any window of
// Per. After the flush, the first server to book brings its own latest tat;
// slots other servers booked after it are booked again until the server
// that knows the latest books: at most lag more slots, lag being how far
// apart (in T) the servers' latest bookings were. A call returns at or after
// its slot (checked), at most late after it: the returns within a window of
// Per are the slots within a window of Per+late, at most late/T more.
func TestFlushAll(t *testing.T) {
	s := redistest.Start(t, nil)
	l := budget.Limit{Rate: 50, Per: 500 * time.Millisecond, Burst: 5}
	f := startFleet(t, s, "flush", l, nil, 4, 10, nil)
	f.waitCalls(t, "the fleet to saturate the budget", 0, 2*l.Rate)
	flush := time.Now().UnixMicro()
	s.Do(t, "FLUSHALL")
	f.waitCalls(t, "calls after the flush", flush, 2*l.Rate)
	f.stop()
	most, late := f.check(t, flush, flush)
	lag := f.lag(flush)
	bound := l.Rate + l.Burst - 1 + int(lag) + intervals(l, late)
	t.Logf("around FLUSHALL: at most %d calls in a window of %v; bound %d (Rate+Burst-1 %d, lag %d, latest return %v after its slot)",
		most, l.Per, bound, l.Rate+l.Burst-1, lag, late)
	if most > bound {
		t.Errorf("%d calls in a window of %v around FLUSHALL; want at most %d", most, l.Per, bound)
	}
}

// returned reports whether every server had a call decided by Redis after
// at (µs).
func (f *fleet) returned(at int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	back := make([]bool, len(f.buds))
	for _, c := range f.calls {
		if c.at > at && !c.local {
			back[c.server] = true
		}
	}
	return !slices.Contains(back, false)
}

// TestOutageHandOver: Redis dies while the fleet saturates the budget, and
// comes back empty. Each server's local limiter goes on from this server's
// latest slot and the fleet's schedule it last heard of, not with a full
// burst; back on Redis, each server brings the latest slot its local limiter
// gave, and the calls sleeping on local slots book again in Redis.
//
// The bound: at most Rate+Burst-1 slots in any window of Per (the budget's
// limit; during the outage FleetSize local limiters at Rate/FleetSize with a
// burst of Burst/FleetSize each keep under it). At a switch, each server's
// first slot on the other side follows its own latest slot by one interval
// of its own pace; the servers' slots interleave, so each may go up to one
// fleet interval early against the fleet's sequence: FleetSize more. Calls
// returned late add late/T (see TestFlushAll). And the calls no server can
// place: at the kill, a server's local calls while slots other servers
// booked in Redis after its latest booking still go (it never heard of
// them); at the return, the local calls of servers whose outage has not
// ended yet (each finds Redis back at its next probe, 200ms apart at most)
// while others are back on Redis. Those are counted, and bounded on their
// own: a server back on Redis makes no local call.
func TestOutageHandOver(t *testing.T) {
	s := redistest.Start(t, nil)
	l := budget.Limit{Rate: 40, Per: time.Second, Burst: 4}
	const servers = 4
	f := startFleet(t, s, "outage", l, &budget.Options{FleetSize: servers}, servers, 10, nil)
	f.waitCalls(t, "the fleet to saturate the budget", 0, l.Rate+l.Burst)
	kill := time.Now().UnixMicro()
	s.Kill(t)
	f.waitCalls(t, "calls during the outage", kill, 3*l.Rate/2)
	back := time.Now().UnixMicro()
	s.Restart(t)
	redistest.WaitFor(t, "every server back on Redis", func() bool { return f.returned(back) })
	f.waitCalls(t, "calls after the return", time.Now().UnixMicro(), 3*l.Rate/2)
	f.stop()

	f.mu.Lock()
	calls := slices.Clone(f.calls)
	f.mu.Unlock()
	// The last call Redis placed before the outage, and each server's
	// first after it.
	lastRedis, firstBack := int64(0), map[int]int64{}
	for _, c := range calls {
		switch {
		case c.local:
		case c.at < back:
			lastRedis = max(lastRedis, c.at)
		case firstBack[c.server] == 0 || c.at < firstBack[c.server]:
			firstBack[c.server] = c.at
		}
	}
	firstAny := int64(0)
	for _, at := range firstBack {
		if firstAny == 0 || at < firstAny {
			firstAny = at
		}
	}
	unplaced := map[string]int{}
	for _, c := range calls {
		switch {
		case !c.local:
		case c.at < lastRedis:
			unplaced["the kill"]++
		case c.at > firstAny:
			unplaced["the outage and the return"]++
		}
	}
	for _, c := range []struct {
		name     string
		from, to int64
	}{{"the kill", kill, kill}, {"the outage and the return", back, time.Now().UnixMicro()}} {
		most, late := f.check(t, c.from, c.to)
		bound := l.Rate + l.Burst - 1 + servers + intervals(l, late) + unplaced[c.name]
		if c.name != "the kill" {
			// Redis came back empty: the first booking starts a fresh
			// budget, whose burst the local calls of the other servers
			// just before it did not spend.
			bound += int(l.Burst)
		}
		t.Logf("around %s: at most %d calls in a window of %v; bound %d (latest return %v after its slot; %d local calls beside Redis's)",
			c.name, most, l.Per, bound, late, unplaced[c.name])
		if most > bound {
			t.Errorf("%d calls in a window of %v around %s; want at most %d", most, l.Per, c.name, bound)
		}
	}
	// Local calls beside Redis's at the return: servers still in their
	// outage, each for its probe's pause (200ms at most) at its pace
	// (Rate/FleetSize), not the local slots booked ahead (a second's worth
	// of them: 39-43 went when they stayed local), which book again in
	// Redis. Half of Per at the fleet's rate bounds them with room for a
	// loaded machine (1 to 14 measured).
	if n, most := unplaced["the outage and the return"], int(l.Rate)/2; n > most {
		t.Errorf("%d local calls after a server was back on Redis; want at most %d", n, most)
	}
}

// TestOutageSleepersLeaveOnTime: callers sleeping for slots booked in Redis
// when it dies leave at their slots, not after the client's dial back-off
// (go-redis tries 5 dials over about 400ms before a read fails): each looks
// for a pause it may have missed with the subscription gone, and gives up
// the look rather than its slot. Late, they would bunch with the calls the
// local limiter lets through once the outage is known.
func TestOutageSleepersLeaveOnTime(t *testing.T) {
	s := redistest.Start(t, nil)
	l := budget.Limit{Rate: 20, Per: time.Second, Burst: 1}
	b := newBudget(t, s.Client(t, nil), "ontime", l, nil)
	type slotBox struct{ slot atomic.Int64 }
	budget.OnBookContext(b, func(ctx context.Context, k budget.Booking) {
		if box, ok := ctx.Value(slotOf{}).(*slotBox); ok && !k.Local {
			box.slot.Store(k.Slot)
		}
	})
	const callers = 10
	ctx := redistest.Context(t, 20*time.Second)
	var wg sync.WaitGroup
	late := make(chan time.Duration, callers)
	for range callers {
		box := &slotBox{}
		cctx := context.WithValue(ctx, slotOf{}, box)
		wg.Go(func() {
			err := b.Wait(cctx, budget.Foreground)
			at := time.Now().UnixMicro()
			if err != nil {
				t.Error(err)
				return
			}
			if s := box.slot.Load(); s > 0 {
				late <- time.Duration(at-s) * time.Microsecond
			}
		})
		redistest.WaitFor(t, "a slot booked", func() bool { return box.slot.Load() > 0 })
	}
	// The last slot lies (callers-1)/Rate ahead: most callers sleep.
	s.Kill(t)
	wg.Wait()
	close(late)
	worst, n := time.Duration(0), 0
	for d := range late {
		worst, n = max(worst, d), n+1
	}
	if n != callers {
		t.Fatalf("%d callers left on a slot booked in Redis; want %d", n, callers)
	}
	// Half an interval bounds the look; the rest is a loaded machine's
	// timers.
	if worst > 150*time.Millisecond {
		t.Errorf("a caller left %v after its slot; want within half an interval (25ms) and a loaded machine's slack", worst)
	}
	t.Logf("latest departure %v after its slot", worst)
}

// TestFlushAllPause: when Redis loses a pause (FLUSHALL, a restart, a
// failover to a replica without it), a server that heard of it keeps to
// it: no Wait returns before its end, one that cannot wait so long is
// refused, and neither books slot after slot up to the pause's end (a
// pause of an hour at 100/s would be 360,000 bookings).
func TestFlushAllPause(t *testing.T) {
	m, rdb := redistest.Mini(t)
	b := budget.New(rdb, "flushpause", budget.Limit{Rate: 100}, nil)
	defer b.Close()
	ctx := context.Background()
	if err := b.Wait(ctx, budget.Foreground); err != nil {
		t.Fatal(err)
	}
	var books atomic.Int64
	budget.OnBook(b, func(budget.Booking) { books.Add(1) })

	if err := b.PauseUntil(ctx, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	m.FlushAll()
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	refused := b.Stats().Refused
	err := b.Wait(wctx, budget.Foreground)
	// Refused (counted) rather than put to sleep until its ctx ended.
	if !errors.Is(err, context.DeadlineExceeded) || b.Stats().Refused != refused+1 {
		t.Errorf("Wait within 300ms of an hour's pause Redis lost: %v, %d refused; want refused at once, counted",
			err, b.Stats().Refused-refused)
	}
	if n := books.Load(); n > 3 {
		t.Errorf("%d bookings for one Wait; want at most 3", n)
	}
	if !b.Paused() {
		t.Error("Paused() false; want the pause this server heard of")
	}

	// A short pause lost (on a budget of its own: this one keeps to the
	// hour): the Wait returns after its end.
	b2 := budget.New(rdb, "flushpause2", budget.Limit{Rate: 100}, nil)
	defer b2.Close()
	if err := b2.Wait(ctx, budget.Foreground); err != nil {
		t.Fatal(err)
	}
	budget.OnBook(b2, func(budget.Booking) { books.Add(1) })
	end := time.Now().Add(200 * time.Millisecond)
	if err := b2.PauseUntil(ctx, end); err != nil {
		t.Fatal(err)
	}
	m.FlushAll()
	books.Store(0)
	if err := b2.Wait(ctx, budget.Foreground); err != nil {
		t.Fatal(err)
	}
	if now := time.Now(); now.Before(end) {
		t.Errorf("Wait returned %v before the end of a pause Redis lost", end.Sub(now))
	}
	if n := books.Load(); n > 3 {
		t.Errorf("%d bookings for one Wait; want at most 3", n)
	}
}
