package faults_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/internal/redistest"
)

// helperEnv names the environment variable that makes the test binary run as
// one of the helpers below instead of running tests.
const helperEnv = "LOCKSMITH_FAULTS_HELPER"

// helpers are the child-process programs, by name. Each returns the exit
// code; its protocol lines on stdout start with linePrefix.
var helpers = map[string]func() int{
	"hold":  helperHold,
	"mutex": helperMutex,
}

// linePrefix marks the lines a helper writes for its parent test; anything
// else on its stdout is passed on to the test log.
const linePrefix = "@ "

// emit writes one protocol line to stdout. It is safe for concurrent use.
func emit(format string, args ...any) {
	emitMu.Lock()
	defer emitMu.Unlock()
	fmt.Fprintf(os.Stdout, linePrefix+format+"\n", args...)
}

var emitMu sync.Mutex

// child is a helper running in a child process: the test binary run again.
type child struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // protocol lines, closed at EOF
	other chan string // anything else on stdout or stderr, closed at EOF
	done  chan struct{}
	mu    sync.Mutex
	state string // exit state, once done
}

// startChild runs the helper named mode in a child process with env added
// to the test's environment. The child is killed (after SIGCONT) in
// t.Cleanup if it is still running.
func startChild(t testing.TB, name, mode string, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	cmd.Env = append(cmd.Env, env...)
	redistest.KillWithParent(cmd)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{name: name, cmd: cmd, stdin: stdin,
		lines: make(chan string, 1<<16), other: make(chan string, 1<<10), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if l, ok := strings.CutPrefix(sc.Text(), linePrefix); ok {
				c.lines <- l
				continue
			}
			c.note(sc.Text())
		}
		close(c.lines)
	}()
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			c.note(sc.Text())
		}
	}()
	go func() {
		readers.Wait()
		err := cmd.Wait()
		c.mu.Lock()
		c.state = fmt.Sprint(cmd.ProcessState)
		if err != nil && cmd.ProcessState == nil {
			c.state = err.Error()
		}
		c.mu.Unlock()
		close(c.other)
		close(c.done)
	}()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			_ = cmd.Process.Signal(syscall.SIGCONT)
			_ = cmd.Process.Kill()
		}
		select {
		case <-c.done:
		case <-time.After(hangTimeout):
			t.Errorf("%s (pid %d) did not exit within %v of SIGKILL", name, cmd.Process.Pid, hangTimeout)
		}
		_ = stdin.Close()
		for l := range c.other {
			t.Logf("%s: %s", name, l)
		}
	})
	return c
}

// note keeps a line of the child's other output for the test log, dropping
// it if too many are pending.
func (c *child) note(l string) {
	select {
	case c.other <- l:
	default:
	}
}

// line returns the child's next protocol line, failing the test if none
// comes within hangTimeout or the child exits first.
func (c *child) line(t testing.TB) string {
	t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			t.Fatalf("%s exited without the expected output (%s)", c.name, c.exitState())
		}
		return l
	case <-time.After(hangTimeout):
		t.Fatalf("no output from %s within %v", c.name, hangTimeout)
		return ""
	}
}

// send writes a line to the child's stdin.
func (c *child) send(t testing.TB, l string) {
	t.Helper()
	if _, err := io.WriteString(c.stdin, l+"\n"); err != nil {
		t.Fatalf("writing to %s: %v", c.name, err)
	}
}

// pause stops the child with SIGSTOP and waits until it is stopped.
func (c *child) pause(t testing.TB) { c.signal(t, syscall.SIGSTOP, true) }

// resume continues the child with SIGCONT and waits until it runs.
func (c *child) resume(t testing.TB) { c.signal(t, syscall.SIGCONT, false) }

func (c *child) signal(t testing.TB, sig syscall.Signal, stop bool) {
	t.Helper()
	select {
	case <-c.done:
		t.Fatalf("cannot send %v to %s: it exited (%s)", sig, c.name, c.exitState())
	default:
	}
	if err := c.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("sending %v to %s: %v", sig, c.name, err)
	}
	waitFor(t, fmt.Sprintf("%s to react to %v", c.name, sig), func() bool {
		stopped, known := redistest.ProcessStopped(c.cmd.Process.Pid)
		return !known || stopped == stop
	})
}

// wait waits for the child to exit, failing the test if it does not within
// d, and returns an error unless it exited with status 0.
func (c *child) wait(t testing.TB, d time.Duration) error {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(d):
		// Ask the Go runtime for its goroutines' stacks: the dump reaches
		// the test log with the child's other output.
		_ = c.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
		}
		t.Fatalf("%s did not exit within %v (goroutine dump below)", c.name, d)
	}
	if !c.cmd.ProcessState.Success() {
		return errors.New(c.name + ": " + c.exitState())
	}
	return nil
}

func (c *child) exitState() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == "" {
		return "running"
	}
	return c.state
}
