// Package faults is locksmith's fault-injection suite: it runs package lock
// and package fill against real redis-server processes while connections
// are delayed, cut or black-holed (by an in-process toxiproxy), servers and
// lock holders are stopped with SIGSTOP, keys are deleted, evicted or
// replaced, and memory runs out. It checks that mutual exclusion holds where
// fencing tokens are used, that no call waits past its context, and that
// nothing is left behind: locks, flights or goroutines.
//
// The package has no API; everything is in its tests. See README.md.
package faults
