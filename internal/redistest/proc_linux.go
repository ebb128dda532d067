package redistest

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// KillWithParent makes the kernel kill cmd's process (a redis-server, a
// helper process) if the test binary dies without running its cleanups, for
// example on a -timeout panic, so that no orphaned process is left behind. (Strictly, the signal fires when the OS
// thread that started the process exits; the Go runtime only ends a thread
// when a goroutine exits while locked to it by runtime.LockOSThread, which
// neither this package nor go-redis does.)
func KillWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// ProcessStopped reports whether the process is stopped (state T or t in
// /proc/PID/stat); known is false if the state cannot be read.
func ProcessStopped(pid int) (stopped, known bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false, false
	}
	// The format is "PID (COMM) STATE ...", and COMM may contain ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false, false
	}
	return s[i+2] == 'T' || s[i+2] == 't', true
}
