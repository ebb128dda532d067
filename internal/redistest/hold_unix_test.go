//go:build unix

package redistest

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// bindPlain binds a socket without SO_REUSEADDR to 127.0.0.1:port, as the
// kernel's choice of a port for another listener must, and closes it.
func bindPlain(port int) error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	return syscall.Bind(fd, &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
}

// TestKillHoldsPort: while a killed server is down its port refuses
// connections and cannot be bound by anyone else; Restart listens on it
// again and lets it go at cleanup.
func TestKillHoldsPort(t *testing.T) {
	t.Parallel()
	s := Start(t, nil)
	s.Kill(t)
	_, err := net.DialTimeout("tcp", s.Addr(), time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dialing a killed server: %v; want connection refused", err)
	}
	if err := bindPlain(s.Port()); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("binding a killed server's port: %v; want EADDRINUSE", err)
	}
	s.Restart(t)
	if got := s.Do(t, "PING"); got != "PONG" {
		t.Fatalf("PING after Restart = %#v; want PONG", got)
	}
	s.mu.Lock()
	held := len(s.held)
	s.mu.Unlock()
	if held != 0 {
		t.Fatalf("%d ports still held after Restart", held)
	}
}
