//go:build !linux

package redistest

import "os/exec"

// setParentDeathSignal does nothing: parent-death signals are Linux-only.
func setParentDeathSignal(*exec.Cmd) {}

// processStopped cannot tell whether a process is stopped outside Linux; known
// is always false, so Pause and Resume don't wait for the signal to land.
func processStopped(int) (stopped, known bool) { return false, false }
