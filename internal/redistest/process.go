package redistest

// The life of a real redis-server child process: pausing, resuming,
// killing and restarting it, launching it and probing it until it answers.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Pause stops the server with SIGSTOP and, on Linux, waits until the kernel
// reports it stopped. Connections stay open but go unanswered until Resume.
func (s *Server) Pause(t testing.TB) {
	t.Helper()
	s.signal(t, syscall.SIGSTOP, true)
}

// Resume continues a paused server with SIGCONT.
func (s *Server) Resume(t testing.TB) {
	t.Helper()
	s.signal(t, syscall.SIGCONT, false)
}

// signal sends sig to the running server and, where the process state can be
// read, waits until the process is stopped (stop) or running (!stop).
func (s *Server) signal(t testing.TB, sig syscall.Signal, stop bool) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.proc
	if p == nil || p.exited() {
		t.Fatalf("redistest: cannot send %v: redis-server on %s is not running%s", sig, s.Addr(), s.tail())
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("redistest: sending %v to redis-server on %s: %v", sig, s.Addr(), err)
	}
	s.paused = stop
	pid := p.cmd.Process.Pid
	deadline := time.Now().Add(signalTimeout)
	for {
		stopped, known := ProcessStopped(pid)
		if !known || stopped == stop {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("redistest: redis-server on %s (pid %d) did not react to %v within %v",
				s.Addr(), pid, sig, signalTimeout)
		}
		time.Sleep(pollInterval)
	}
}

// Kill kills the server with SIGKILL (after SIGCONT, in case it is paused) and
// waits for the process to exit. Killing a server that is not running does
// nothing. Until Restart, the server's port refuses connections, and no other
// listener on the machine is given it (on Unix systems, see holdPort).
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.kill(); err != nil {
		t.Fatalf("redistest: %v", err)
	}
	s.hold()
}

// hold holds the server's ports while it is down, if they are not held
// already. Holding is best effort: a port the kernel gave to another socket
// in the moment since the kill stays with it. s.mu must be held.
func (s *Server) hold() {
	if s.held != nil {
		return
	}
	ports := []int{s.port}
	if s.cluster {
		ports = append(ports, s.port+10000)
	}
	s.held = []func(){}
	for _, p := range ports {
		if release, err := holdPort(p); err == nil {
			s.held = append(s.held, release)
		}
	}
}

// unhold releases the ports held by hold. s.mu must be held.
func (s *Server) unhold() {
	for _, release := range s.held {
		release()
	}
	s.held = nil
}

// Restart starts a fresh, empty redis-server with the same arguments on the
// same port, killing the running one first if necessary, and waits until it
// answers PING. Files left in the server's directory are removed, except a
// cluster node's nodes.conf: a restarted cluster node rejoins its cluster with
// its old identity and slots, but without data. ACL users and CONFIG SET
// changes are lost too. If the port is briefly unavailable, Restart retries
// for a few seconds.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.kill(); err != nil {
		t.Fatalf("redistest: restart: %v", err)
	}
	// The ports stay held until the new server listens: redis-server binds
	// with SO_REUSEADDR, which a held port allows.
	s.hold()
	defer s.unhold()
	if err := clearDir(s.dir, clusterConfFile, sentinelConfFile); err != nil {
		t.Fatalf("redistest: restart: %v", err)
	}
	deadline := time.Now().Add(restartTimeout)
	for {
		p, err := s.launch(s.port)
		if err == nil {
			s.proc = p
			return
		}
		if !errors.Is(err, errAddrInUse) || time.Now().After(deadline) {
			t.Fatalf("redistest: restarting redis-server: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cleanup kills the server at the end of the test, and logs the tail of its
// output if the test failed.
func (s *Server) cleanup(t testing.TB) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.Failed() && s.proc != nil {
		t.Logf("redistest: redis-server on %s:%s", s.Addr(), s.tail())
	}
	if err := s.kill(); err != nil {
		t.Errorf("redistest: cleanup: %v", err)
	}
	s.unhold()
}

// kill kills and reaps the current process, if any. s.mu must be held.
func (s *Server) kill() error {
	p := s.proc
	if p != nil && !p.exited() {
		// A stopped process dies of SIGKILL too, but resume it first so that
		// nothing is left stopped should the kill fail.
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("killing redis-server on %s: %w", s.Addr(), err)
		}
		select {
		case <-p.done:
		case <-time.After(exitTimeout):
			return fmt.Errorf("redis-server on %s (pid %d) did not exit within %v of SIGKILL",
				s.Addr(), p.cmd.Process.Pid, exitTimeout)
		}
	}
	s.paused = false
	return nil
}

// tail returns the last lines of the latest process's output, formatted for
// appending to a message. s.mu must be held.
func (s *Server) tail() string {
	if s.proc == nil {
		return ""
	}
	return s.proc.out.tail()
}

// errAddrInUse marks a start-up failure because the port was taken.
var errAddrInUse = errors.New("address already in use")

// launch runs redis-server on port and waits until it answers PING. On
// failure the process is killed and the error includes its output; it wraps
// errAddrInUse if redis-server could not bind its port.
func (s *Server) launch(port int) (*process, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("finding redis-server: %w", err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	// redis-server takes a configuration file only as its first argument.
	var argv []string
	if s.conf != "" {
		argv = append(argv, s.conf)
	}
	argv = append(argv, "--port", strconv.Itoa(port))
	cmd := exec.Command(bin, append(argv, s.args...)...)
	cmd.Dir = s.dir
	p := &process{cmd: cmd, out: &tailBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.WaitDelay = time.Second // don't wait forever for output held by forked children
	KillWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("running %s: %w", bin, err)
	}
	go func() {
		_ = cmd.Wait() // how it ended shows in its output
		close(p.done)
	}()

	deadline := time.Now().Add(readyTimeout)
	var probeErr error
	for {
		if p.exited() {
			err := fmt.Errorf("redis-server on %s exited during start-up (%v)", addr, cmd.ProcessState)
			if strings.Contains(p.out.String(), "Address already in use") {
				err = fmt.Errorf("%w: %w", err, errAddrInUse)
			}
			return nil, fmt.Errorf("%w%s", err, p.out.tail())
		}
		if probeErr = probe(addr, cmd.Process.Pid); probeErr == nil {
			return p, nil
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(pollInterval)
	}
	_ = cmd.Process.Kill()
	<-p.done
	return nil, fmt.Errorf("redis-server on %s not ready within %v: %v%s", addr, readyTimeout, probeErr, p.out.tail())
}

// exited reports whether the process has exited and been reaped.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// probe checks that the server on addr answers PING with PONG and that it is
// the process with the given pid, not some other server that took the port.
func probe(addr string, pid int) error {
	conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(time.Second)); err != nil {
		return err
	}
	r := bufio.NewReader(conn)
	if _, err := io.WriteString(conn, "PING\r\n"); err != nil {
		return fmt.Errorf("sending PING: %w", err)
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading PING reply: %w", err)
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	if _, err := io.WriteString(conn, "INFO server\r\n"); err != nil {
		return fmt.Errorf("sending INFO: %w", err)
	}
	line, err = r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading INFO reply: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "$")))
	if !strings.HasPrefix(line, "$") || err != nil || n < 0 {
		return fmt.Errorf("INFO answered %q", strings.TrimSpace(line))
	}
	info := make([]byte, n+2)
	if _, err := io.ReadFull(r, info); err != nil {
		return fmt.Errorf("reading INFO reply: %w", err)
	}
	want := "process_id:" + strconv.Itoa(pid) + "\r\n"
	if !strings.Contains(string(info), want) {
		return fmt.Errorf("%s is served by another process (INFO lacks %q)", addr, strings.TrimSpace(want))
	}
	return nil
}

// freePort returns a 127.0.0.1 port that was free a moment ago. For a cluster
// node, port+10000 (its cluster bus port) must be free too.
func freePort(cluster bool) (int, error) {
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("finding a free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		if !cluster {
			return port, l.Close()
		}
		if port+10000 > 65535 {
			l.Close()
			continue
		}
		bus, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+10000)))
		l.Close()
		if err == nil {
			return port, bus.Close()
		}
	}
	return 0, errors.New("finding a free port pair (port, port+10000): gave up after 100 tries")
}

// clearDir removes everything in dir except the entries named keep.
func clearDir(dir string, keep ...string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("clearing %s: %w", dir, err)
	}
	for _, e := range entries {
		if slices.Contains(keep, e.Name()) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("clearing %s: %w", dir, err)
		}
	}
	return nil
}

// tailBuffer collects a process's output, keeping only the last 64 KiB. It is
// safe for concurrent use.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

const tailBufferSize = 64 << 10

// Write appends p, dropping the oldest output beyond 64 KiB.
func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - tailBufferSize; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

// String returns the output kept so far.
func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// tail returns the last 20 lines of output, indented and preceded by a
// newline, ready to append to a message.
func (b *tailBuffer) tail() string {
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return "\n\tredis-server output (last lines):\n\t\t" + strings.Join(lines, "\n\t\t")
}
