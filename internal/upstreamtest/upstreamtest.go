// Package upstreamtest gives tests and benchmarks an upstream whose limit
// nobody states: a token bucket that refuses a call over it (a bare 429),
// whose rate can change while calls arrive, and that logs every call.
package upstreamtest

import (
	"sync"
	"time"
)

// Hidden is an upstream of a hidden limit: a token bucket of rate calls per
// second, burst calls deep.
type Hidden struct {
	// Start is when the calls' instants count from; set it before the
	// first call.
	Start time.Time

	mu     sync.Mutex // guards the fields below
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
	calls  []Call
}

// Call is one call a Hidden answered: when it arrived, since Start, and
// whether it was served.
type Call struct {
	At time.Duration
	OK bool
}

// NewHidden returns a Hidden of rate calls per second, burst calls deep,
// its bucket full, Start now.
func NewHidden(rate, burst float64) *Hidden {
	now := time.Now()
	return &Hidden{Start: now, rate: rate, burst: burst, tokens: burst, last: now}
}

// Call takes a token for a call arriving now, and reports whether it had
// one: served, or refused with a 429.
func (u *Hidden) Call() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := time.Now()
	u.tokens = min(u.burst, u.tokens+now.Sub(u.last).Seconds()*u.rate)
	u.last = now
	ok := u.tokens >= 1
	if ok {
		u.tokens--
	}
	u.calls = append(u.calls, Call{At: now.Sub(u.Start), OK: ok})
	return ok
}

// SetRate changes the hidden limit from now on.
func (u *Hidden) SetRate(rate float64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := time.Now()
	u.tokens = min(u.burst, u.tokens+now.Sub(u.last).Seconds()*u.rate)
	u.last, u.rate = now, rate
}

// Count returns the calls served and refused that arrived within
// [from, to) since Start.
func (u *Hidden) Count(from, to time.Duration) (served, refused int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, c := range u.calls {
		switch {
		case c.At < from || c.At >= to:
		case c.OK:
			served++
		default:
			refused++
		}
	}
	return served, refused
}
