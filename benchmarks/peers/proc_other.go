//go:build !linux

package main

import "os/exec"

// setParentDeathSignal does nothing where the kernel offers no parent-death
// signal: the child is killed by redisServer.Stop only.
func setParentDeathSignal(*exec.Cmd) {}
