package budget

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestMovesKeepTheSchedule: whatever sequence of shifts (a call left late)
// and stretches (an overshoot) the fleet's schedule goes through, the
// slots sleeping Waits move their own to, without a round trip, and the
// slots Redis books next, stay at least an interval apart and after every
// late call's departure: the sleepers and the script make the same moves.
// The Redis clock is miniredis's, set by the test.
func TestMovesKeepTheSchedule(t *testing.T) {
	const T = 10000 // µs: 100 calls/s, no burst
	for seed := range uint64(20) {
		m, rdb := redistest.Mini(t)
		clock := time.Now()
		m.SetTime(clock)
		b := New(rdb, "moves", Limit{Rate: 100, Burst: 1}, nil)
		ctx := context.Background()
		rnd := rand.New(rand.NewPCG(seed, 1))

		// A sleeper's slot is worked out again from its booking (orig, at
		// the instant booked) as moves are heard of.
		type sleeper struct{ orig, booked, slot int64 }
		var sleepers []sleeper
		// departures are the instants calls went at: a late call's slot
		// plus its lateness.
		var departures []int64
		now := func() int64 { return clock.UnixMicro() }
		book := func() {
			r, err := b.book(ctx, Foreground, 0, b.waitWant)
			if err != nil || r.kind != booked {
				t.Fatalf("seed %d: booking: %+v, %v", seed, r, err)
			}
			sleepers = append(sleepers, sleeper{r.slot, r.slot - r.wait.Microseconds(), r.slot})
		}
		for range 8 {
			book()
		}
		for step := range 60 {
			clock = clock.Add(time.Duration(200+rnd.IntN(3000)) * time.Microsecond)
			m.SetTime(clock)
			// Sleepers move their slots by what they heard; those due go.
			b.mu.Lock()
			pauseAt := b.pauseAt
			b.mu.Unlock()
			var left []sleeper
			for _, s := range sleepers {
				moved, _, ok := b.stretch(s.orig, s.booked)
				if !ok {
					t.Fatalf("seed %d step %d: a move since the booking is not known", seed, step)
				}
				s.slot = moved
				switch {
				case pauseAt > s.slot:
					// A pause reaches past it: it books again, its slot
					// left empty.
					book()
					continue
				case s.slot <= now():
					departures = append(departures, s.slot)
					continue
				}
				left = append(left, s)
			}
			sleepers = left
			switch op := rnd.IntN(10); {
			case op < 5 && len(sleepers) > 0:
				// The earliest sleeper goes late.
				i := 0
				for j, s := range sleepers {
					if s.slot < sleepers[i].slot {
						i = j
					}
				}
				s := sleepers[i]
				sleepers = slices.Delete(sleepers, i, i+1)
				d := int64(lateMargin.Microseconds() + rnd.Int64N(T-lateMargin.Microseconds()))
				clock = time.UnixMicro(max(now(), s.slot+d))
				m.SetTime(clock)
				departures = append(departures, s.slot+d)
				if rnd.IntN(3) > 0 {
					if _, err := b.shift(ctx, s.slot, d); err != nil {
						t.Fatalf("seed %d step %d: shift: %v", seed, step, err)
					}
					break
				}
				// The move is heard of only after the next one (its
				// message, on another connection, may come first): a
				// stretch after it.
				at, err := shiftScript.Run(ctx, rdb, []string{b.key}, s.slot, d, b.tau, "0", maxAhead.Microseconds()).Int64()
				if err != nil {
					t.Fatal(err)
				}
				clock = clock.Add(time.Millisecond)
				m.SetTime(clock)
				if err := b.apply(ctx, "observe", feedback{pause: time.Second, cause: rateLimited}); err != nil {
					t.Fatal(err)
				}
				if at > 0 {
					b.heardShift(at, s.slot, d)
				}
			case op < 7:
				// A 429 taken for an overshoot respaces the schedule.
				if err := b.apply(ctx, "observe", feedback{pause: time.Second, cause: rateLimited}); err != nil {
					t.Fatal(err)
				}
			default:
				book()
			}
		}
		for _, s := range sleepers {
			if moved, _, ok := b.stretch(s.orig, s.booked); ok {
				s.slot = moved
			}
			departures = append(departures, s.slot)
		}
		book()
		departures = append(departures, sleepers[len(sleepers)-1].slot)
		slices.Sort(departures)
		for i := 1; i < len(departures); i++ {
			if gap := departures[i] - departures[i-1]; gap < T {
				t.Errorf("seed %d: calls %d and %d went %dµs apart; want at least T, %dµs", seed, i-1, i, gap, T)
			}
		}
		_ = b.Close()
	}
}

// TestMovesInOneInstant: two moves of the schedule made in the same
// microsecond (two scripts run back to back) are both kept; the same move
// heard twice (its reply and its message) counts once.
func TestMovesInOneInstant(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := New(rdb, "instant", Limit{Rate: 100, Burst: 1}, nil)
	defer b.Close()
	const at, slot = 1000, 5000
	b.heardShift(at, 100, 300)
	b.heardShift(at, 200, 700)
	b.heardShift(at, 100, 300) // the first again
	moved, moves, ok := b.stretch(slot, at-1)
	if !ok || moved != slot+1000 || moves != 2 {
		t.Fatalf("stretch = %d, %d moves, %v; want %d after both moves, 2, true", moved, moves, ok, slot+1000)
	}
}
