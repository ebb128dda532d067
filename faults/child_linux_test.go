package faults_test

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// setChildAttrs makes the kernel kill a helper process when the test binary
// dies without running its cleanups, so that none is left behind.
func setChildAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// processStopped reports whether the process is stopped (state T or t in
// /proc/PID/stat); known is false if the state cannot be read.
func processStopped(pid int) (stopped, known bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // COMM may contain ')'
	if i < 0 || i+2 >= len(s) {
		return false, false
	}
	return s[i+2] == 'T' || s[i+2] == 't', true
}
