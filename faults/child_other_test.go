//go:build !linux

package faults_test

import "os/exec"

func setChildAttrs(*exec.Cmd) {}

// processStopped cannot tell a stopped process outside Linux.
func processStopped(int) (stopped, known bool) { return false, false }
