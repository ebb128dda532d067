package budget_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestLateCallMovesTheNext: where the limit has no burst tolerance, a call
// that leaves its slot late (here held 10 ms past it, its reply having
// come well before it) moves the slot of the call booked after it on
// another server as late, before that slot comes: the upstream counts the
// next call from this one's arrival. Without the move the second call
// would go one interval after the first's slot, 10 ms too close to its
// arrival.
func TestLateCallMovesTheNext(t *testing.T) {
	m, rdb := redistest.Mini(t)
	other := redistest.Client(t, m.Addr())
	l := budget.Limit{Rate: 20, Burst: 1} // T = 50ms
	const T = 50000
	a := newBudget(t, rdb, "late", l, nil)
	b := newBudget(t, other, "late", l, nil)
	ctx := context.Background()

	type result struct {
		slot int64
		err  error
	}
	second := make(chan result, 1)
	// A call on an idle budget goes at once; the next one sleeps to its
	// slot, one interval later: it is the one held past its slot.
	if err := a.Wait(ctx, budget.Foreground); err != nil {
		t.Fatal(err)
	}
	var first int64
	budget.OnBook(a, func(k budget.Booking) {
		first = k.Slot
		// The second call is booked on the other server while the first
		// is on its way; then the first leaves 10 ms late.
		booked := make(chan struct{})
		var once sync.Once
		budget.OnBook(b, func(budget.Booking) { once.Do(func() { close(booked) }) })
		go func() {
			r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
			if err != nil {
				second <- result{err: err}
				return
			}
			second <- result{slot: budget.Slot(r)}
			_ = r.Done(ctx)
		}()
		<-booked
		time.Sleep(time.Until(time.UnixMicro(k.Slot).Add(10 * time.Millisecond)))
	})
	if err := a.Wait(ctx, budget.Foreground); err != nil {
		t.Fatal(err)
	}
	res := <-second
	if res.err != nil {
		t.Fatal(res.err)
	}
	if got := res.slot - first; got < T+5000 {
		t.Errorf("the call after one that left 10 ms late went %dµs after the late one's slot; want at least T + 10 ms less the error of the clocks (a reply's latency), %dµs", got, T+5000)
	}
	if st := a.Stats(); st.Late != 1 {
		t.Errorf("Stats().Late = %d on the late server; want 1", st.Late)
	}
	if st := b.Stats(); st.Stretched != 1 {
		t.Errorf("Stats().Stretched = %d on the other server; want 1", st.Stretched)
	}
}
