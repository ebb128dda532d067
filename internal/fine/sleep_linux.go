package fine

import (
	"syscall"
	"time"
)

// Sleep sleeps until deadline with nanosleep(2), which wakes within tens of
// microseconds. It blocks the calling thread, and is meant for at most
// [Window]; a signal interrupts it and it sleeps again.
func Sleep(deadline time.Time) {
	for d := time.Until(deadline); d > 0; d = time.Until(deadline) {
		ts := syscall.NsecToTimespec(int64(d))
		_ = syscall.Nanosleep(&ts, nil)
	}
}
