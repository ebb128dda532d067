package budget

// The limit: what the upstream allows, how a call waits for it, and what
// is said when servers disagree on it.

import (
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/locksmith-go/locksmith/internal/redisx"
)

// Limit is the upstream's rate limit: at most Burst calls at once after a
// quiet spell, and Rate calls per Per after that. In any window of length Per
// the budget lets through at most Rate+Burst-1 calls.
type Limit struct {
	// Rate is how many calls are allowed per Per. It must be positive.
	Rate int
	// Per is the period of Rate.
	// default: 1s
	Per time.Duration
	// Burst is how many calls may start at once after a quiet spell.
	// default: 1
	Burst int
}

// DefaultPrefix is the default key prefix, the original locksmith one: the
// same constant as lock.DefaultPrefix.
const DefaultPrefix = redisx.DefaultPrefix

// maxAhead is how far ahead of now any instant of a budget may lie: a longer
// burst window or pause is refused, and a field of the budget's hash further
// ahead is corrupt.
const maxAhead = 10 * 365 * 24 * time.Hour

func (l Limit) withDefaults() Limit {
	if l.Per == 0 {
		l.Per = time.Second
	}
	if l.Burst == 0 {
		l.Burst = 1
	}
	return l
}

// Validate returns an error when l cannot be used: Rate not positive, Per or
// Burst negative, more than one call per microsecond, or a burst window
// (Burst-1 emission intervals) longer than ten years. A zero Per or Burst
// takes its default.
func (l Limit) Validate() error {
	if err := l.check(); err != nil {
		return errors.New("budget: " + err.Error())
	}
	return nil
}

func (l Limit) check() error {
	switch {
	case l.Rate <= 0:
		return fmt.Errorf("limit rate %d: want more than 0", l.Rate)
	case l.Per < 0:
		return fmt.Errorf("limit period %v: want 0 (1s) or more", l.Per)
	case l.Burst < 0:
		return fmt.Errorf("limit burst %d: want 0 (1) or more", l.Burst)
	}
	l = l.withDefaults()
	t := interval(l)
	switch {
	case l.Per/time.Duration(l.Rate) < time.Microsecond:
		return fmt.Errorf("limit %d per %v: more than one call per microsecond", l.Rate, l.Per)
	case t > maxAhead || int64(l.Burst-1) > int64(maxAhead/t):
		return fmt.Errorf("limit %d per %v, burst %d: the burst window exceeds %v", l.Rate, l.Per, l.Burst, maxAhead)
	}
	return nil
}

// interval returns the emission interval Per/Rate, rounded up to a whole
// microsecond, the budget's unit: rounding up never lets more calls through.
func interval(l Limit) time.Duration {
	us := l.Per.Nanoseconds() / int64(l.Rate) / 1000
	if time.Duration(us*1000)*time.Duration(l.Rate) < l.Per {
		us++
	}
	return time.Duration(us) * time.Microsecond
}

// Priority says how a call waits for the budget.
type Priority int

const (
	// Foreground is a call that a caller waits for. Foreground calls are
	// served in booking order and never wait behind more than the horizon
	// of background calls (see the package documentation).
	Foreground Priority = iota
	// Background is a call nobody waits for: a refresh or a prefetch. It
	// yields to foreground calls.
	Background
)

// String returns "foreground" or "background".
func (p Priority) String() string {
	switch p {
	case Foreground:
		return "foreground"
	case Background:
		return "background"
	}
	return "Priority(" + strconv.Itoa(int(p)) + ")"
}

// limitConflict counts a booking that found the budget last booked with
// another limit, other ("T:tau" in µs), and logs the first.
func (b *Budget) limitConflict(other string) {
	b.stats.limitConflicts.Add(1)
	if b.toldConflict.Swap(true) {
		return
	}
	b.log("servers disagree on the budget's limit: each booking brings its own, so the fleet's limit is not kept",
		"ours", describeLimit(b.sig), "theirs", describeLimit(other))
}

// describeLimit tells a limit given as "T:tau" (µs) in words, with the
// number of extra dimensions when there are some.
func describeLimit(sig string) string {
	sig, more, extra := strings.Cut(sig, " ")
	if extra {
		return describeLimit(sig) + fmt.Sprintf(" and %d more limits", strings.Count(more, " ")+1)
	}
	ts, taus, ok := strings.Cut(sig, ":")
	t, err1 := strconv.ParseInt(ts, 10, 64)
	tau, err2 := strconv.ParseInt(taus, 10, 64)
	if !ok || err1 != nil || err2 != nil || t <= 0 {
		return strconv.Quote(sig)
	}
	return fmt.Sprintf("a call every %v, burst %d", time.Duration(t)*time.Microsecond, tau/t+1)
}
