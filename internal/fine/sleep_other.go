//go:build !linux

package fine

import "time"

// Sleep sleeps until deadline on Go's timer: elsewhere than on Linux Go's
// timers are as fine as the platform allows.
func Sleep(deadline time.Time) {
	time.Sleep(time.Until(deadline))
}
