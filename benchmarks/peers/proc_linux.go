package main

import (
	"os/exec"
	"syscall"
)

// setParentDeathSignal has the kernel kill the child if this process dies
// without stopping it (killed, crashed).
func setParentDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
