package budget

import (
	"sync"
	"time"

	"github.com/locksmith-go/locksmith/internal/fine"
)

// The clocks. Slots are instants of the Redis clock; a server sleeps on its
// own. A reply tells how far the Redis clock is ahead of this process's
// only up to the reply's time on the way back, which varies from one reply
// to the next by as much as a slot's width on a busy host: a server that
// woke a reply's latency after each slot would send its calls with that
// jitter, and the upstream would see two calls closer than its limit. So a
// server keeps the greatest lead seen, from the reply that came back
// fastest, and wakes at slot minus that lead: never before the slot, and
// late by the fastest reply's latency alone, the same from one call to the
// next.

// leadDrift is how fast the kept lead falls between samples (µs of lead
// per second), so that it follows clocks that drift or slew apart (NTP
// slews at most 500 ppm) and a path to Redis that got slower for good.
const leadDrift = 500

// leadClock estimates the Redis clock's lead on this process's monotonic
// clock, which never steps.
type leadClock struct {
	base time.Time // the origin of the monotonic clock; set once

	mu    sync.Mutex // guards known, est and at
	known bool
	est   int64 // µs
	at    int64 // of the latest sample, µs since base
}

// sample records that the Redis clock read redis (µs) at a reply that
// arrived at now.
func (c *leadClock) sample(redis int64, now time.Time) {
	at := now.Sub(c.base).Microseconds()
	s := redis - at
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.known && s <= c.est {
		// The kept lead falls with the time since the last sample, but
		// not below this sample.
		s = max(s, c.est-(at-c.at)*leadDrift/1e6)
	}
	c.known, c.est, c.at = true, s, at
}

// until returns how long from now until slot (µs of the Redis clock) by
// the kept lead, or ok false when no reply was seen yet.
func (c *leadClock) until(slot int64, now time.Time) (d time.Duration, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.known {
		return 0, false
	}
	return time.Duration(slot-c.est-now.Sub(c.base).Microseconds()) * time.Microsecond, true
}

// fineWindow is the last stretch of a sleep before a slot that, where
// precise waking is needed (see [Budget.sleep]), is slept with the
// operating system's fine timer instead of Go's, whose timers on Linux wake
// up to a millisecond late.
const fineWindow = fine.Window
