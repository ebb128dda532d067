//go:build unix

package redistest

import "syscall"

// holdPort binds a socket to 127.0.0.1:port without listening on it, so
// that while a killed server is down its port refuses connections as a dead
// server's would, and the kernel gives it to no other listener or outgoing
// connection (a port freed by a killed server could otherwise be handed to
// another test's listener, and clients would reach a stranger). The socket
// is bound with SO_REUSEADDR, so redis-server can bind and listen on the
// port while it is held. release closes it.
func holdPort(port int) (release func(), err error) {
	syscall.ForkLock.RLock()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err == nil {
		syscall.CloseOnExec(fd)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, err
	}
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	return func() { syscall.Close(fd) }, nil
}
