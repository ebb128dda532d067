//go:build !linux

package redistest

import "os/exec"

// KillWithParent does nothing: parent-death signals are Linux-only.
func KillWithParent(*exec.Cmd) {}

// ProcessStopped cannot tell whether a process is stopped outside Linux; known
// is always false, so Pause and Resume don't wait for the signal to land.
func ProcessStopped(int) (stopped, known bool) { return false, false }
