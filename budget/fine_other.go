//go:build !linux

package budget

import "time"

// sleepFine sleeps until deadline on Go's timer: elsewhere than on Linux
// Go's timers are as fine as the platform allows.
func sleepFine(deadline time.Time) {
	time.Sleep(time.Until(deadline))
}
