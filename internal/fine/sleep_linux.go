package fine

import (
	"syscall"
	"time"
)

// Spin is the last stretch of a [Sleep] spent polling the clock instead of
// sleeping: nanosleep(2) itself wakes 50–100 µs late on a virtualised host
// (the kernel's default timer slack is 50 µs), and a pop or a slot that
// late is late for every caller behind it.
const Spin = 150 * time.Microsecond

// Sleep sleeps until deadline with nanosleep(2) until [Spin] before it, and
// polls the clock for the rest: it returns within a few microseconds of
// deadline. It blocks the calling thread, and is meant for at most
// [Window]; a signal interrupts the sleep and it sleeps again. The polling
// keeps a CPU busy for up to Spin: 0.75% of one at 50 sleeps a second.
func Sleep(deadline time.Time) {
	for d := time.Until(deadline) - Spin; d > 0; d = time.Until(deadline) - Spin {
		ts := syscall.NsecToTimespec(int64(d))
		_ = syscall.Nanosleep(&ts, nil)
	}
	for time.Now().Before(deadline) {
	}
}
