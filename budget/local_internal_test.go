package budget

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestLocalOverdraftKept: the local limiter (Redis unreachable) keeps an
// overdraw of years as a slot years ahead: units times a unit's interval
// would overflow a Duration and wrap the tat into the past.
func TestLocalOverdraftKept(t *testing.T) {
	_, rdb := redistest.Mini(t)
	b := New(rdb, "local-overdraft", Limit{Rate: 1000, Burst: 1000}, &Options{Meters: map[string][]Limit{
		"tokens": {{Rate: 1000, Burst: 1000}}}})
	defer b.Close()
	ll := newLocalLimiter(Limit{Rate: 1000, Per: time.Second, Burst: 1000}.withDefaults(), b.dims, 4)
	now := time.Now()
	ll.reserve(now, b.wantOf(Cost{Meters: map[string]int64{"tokens": 3e12}}))
	if next := ll.slot(now, b.wantOf(Cost{Meters: map[string]int64{"tokens": 1}})); next.Sub(now) < 365*24*time.Hour {
		t.Errorf("the next slot after an overdraw of 3e12 tokens at 1000/s: %v from now; want years", next.Sub(now))
	}
}

// TestGiveBackAhead: giveback.lua writes a tat at most maxAhead of now,
// the bound every other script is given as an argument: its own copy of
// the bound is maxAhead.
func TestGiveBackAhead(t *testing.T) {
	want := fmt.Sprintf("local ahead = %d\n", maxAhead.Microseconds())
	if !strings.Contains(givebackLua, want) {
		t.Errorf("giveback.lua does not hold %q: its bound differs from maxAhead", strings.TrimSpace(want))
	}
}
