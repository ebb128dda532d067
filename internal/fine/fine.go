// Package fine sleeps to a deadline more precisely than Go's timers, for
// the last stretch of a wait whose end must be met: a budget's slot where
// the upstream allows no burst, the end of a fleet batch's window.
//
// Go's timers on Linux wake up to a millisecond late, more on a loaded or
// virtualised host. [Sleep] blocks its thread for the rest of a wait, so a
// caller sleeps on a Go timer until [Window] before its deadline and hands
// the rest to Sleep.
package fine

import "time"

// Window is the last stretch of a wait that a caller should hand to
// [Sleep]: longer than a Go timer's usual lateness, short enough that a
// blocked thread costs little.
const Window = 2500 * time.Microsecond
