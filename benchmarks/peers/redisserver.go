package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// errNoRedisServer is returned by startRedis when redis-server is not on PATH.
var errNoRedisServer = errors.New("redis-server not found on PATH (install it, e.g. apt-get install redis-server, or pass -redis host:port)")

const (
	redisReadyTimeout = 10 * time.Second // start-up until PING answers
	redisStopTimeout  = 5 * time.Second  // SIGKILL until the process is reaped
	redisAttempts     = 3                // fresh ports tried when one is taken
)

// redisServer is a redis-server child process listening on 127.0.0.1,
// persisting nothing.
type redisServer struct {
	Addr string

	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{} // closed when the process has been reaped
	once   sync.Once
}

// startRedis starts redis-server on a free loopback port and waits until it
// answers PING. The caller must Stop it.
func startRedis(ctx context.Context) (*redisServer, error) {
	path, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errNoRedisServer
	}
	var lastErr error
	for range redisAttempts {
		s, err := startRedisOnce(ctx, path)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func startRedisOnce(ctx context.Context, path string) (*redisServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	out := &lockedBuffer{}
	cmd := exec.Command(path,
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--loglevel", "warning",
	)
	cmd.Stdout = out
	cmd.Stderr = out
	setParentDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", path, err)
	}
	s := &redisServer{
		Addr:   net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		cmd:    cmd,
		out:    out,
		exited: make(chan struct{}),
	}
	go func() {
		_ = cmd.Wait()
		close(s.exited)
	}()
	if err := s.waitReady(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// waitReady polls PING until the server answers, the process exits, or the
// deadline passes.
func (s *redisServer) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, redisReadyTimeout)
	defer cancel()
	rdb := redis.NewClient(&redis.Options{
		Addr:        s.Addr,
		DialTimeout: 200 * time.Millisecond,
		ReadTimeout: 200 * time.Millisecond,
		MaxRetries:  -1,
		PoolSize:    1,
	})
	defer func() { _ = rdb.Close() }()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := rdb.Ping(ctx).Err()
		if err == nil {
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("redis-server on %s exited during start-up: %s", s.Addr, s.output())
		case <-ctx.Done():
			return fmt.Errorf("redis-server on %s did not answer PING within %s (last error: %v): %s",
				s.Addr, redisReadyTimeout, err, s.output())
		case <-tick.C:
		}
	}
}

func (s *redisServer) output() string {
	o := strings.TrimSpace(s.out.String())
	if o == "" {
		return "no output"
	}
	return o
}

// Stop kills the server and waits for it to be reaped. It is idempotent.
func (s *redisServer) Stop() {
	s.once.Do(func() {
		_ = s.cmd.Process.Kill()
		select {
		case <-s.exited:
		case <-time.After(redisStopTimeout):
		}
	})
}

// freePort returns a TCP port that was free on 127.0.0.1 a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, err
	}
	return port, nil
}

// lockedBuffer collects a child process's output.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > 64<<10 {
		return len(p), nil // keep the start-up messages, drop the rest
	}
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
