// Package redistest gives Go tests a Redis to talk to: an embedded miniredis
// (Mini), a real redis-server child process (Start), a real Redis Cluster
// (StartCluster), a master and replica watched by Redis Sentinels
// (StartSentinel), or servers sharded by a redis.Ring (StartRing). A Proxy
// put between a client and a server injects network faults.
//
// Real servers listen on free 127.0.0.1 ports chosen at start-up, keep their
// files in a per-server t.TempDir(), persist nothing, and are killed in
// t.Cleanup. Tests that need a real server are skipped when redis-server is
// not on PATH, unless LOCKSMITH_REQUIRE_REDIS=1 (see Require).
//
// The real-server helpers signal the child process with SIGSTOP, SIGCONT and
// SIGKILL, so the package builds on Unix-like systems only.
package redistest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

const (
	// requireEnv names the environment variable that turns a missing
	// redis-server from a skip into a failure.
	requireEnv = "LOCKSMITH_REQUIRE_REDIS"

	readyTimeout   = 10 * time.Second // start-up until PING answers PONG
	restartTimeout = 5 * time.Second  // how long Restart retries a busy port
	exitTimeout    = 10 * time.Second // SIGKILL until the process is reaped
	signalTimeout  = 10 * time.Second // SIGSTOP/SIGCONT until the state shows
	doTimeout      = 30 * time.Second // one command sent by Server.Do
	pollInterval   = 5 * time.Millisecond
	startAttempts  = 5 // fresh ports tried by Start when one is taken
)

// Mini starts an embedded miniredis server with miniredis.RunT and returns it
// together with a go-redis client connected to it. The client is closed, and
// then the server stopped, in t.Cleanup.
func Mini(t testing.TB) (*miniredis.Miniredis, *redis.Client) {
	t.Helper()
	m := miniredis.RunT(t)
	return m, Client(t, m.Addr())
}

// Client returns a go-redis client for addr with default options, closed in
// t.Cleanup: one more server of a fleet, in tests that need several.
func Client(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Available reports whether a redis-server binary is on PATH.
func Available() bool {
	_, err := exec.LookPath("redis-server")
	return err == nil
}

// Require skips the test when redis-server is not on PATH, or fails it
// instead when the environment variable LOCKSMITH_REQUIRE_REDIS is "1".
func Require(t testing.TB) {
	t.Helper()
	if Available() {
		return
	}
	msg := "redis-server not found on PATH; install Debian's redis-server package, or set " +
		requireEnv + "=1 to make this a failure"
	if os.Getenv(requireEnv) == "1" {
		t.Fatal(msg)
		return
	}
	t.Skip(msg)
}

// ServerOptions configures Start. The zero value and nil are both valid.
type ServerOptions struct {
	// Args are extra redis-server arguments appended to the defaults, for
	// example {"--maxmemory", "2mb", "--maxmemory-policy", "noeviction"}.
	// They must not override --port, --bind or --dir.
	Args []string
}

// Server is a real redis-server child process listening on a free
// 127.0.0.1 port. Its methods may be called from several goroutines.
type Server struct {
	port int      // fixed for the Server's lifetime, also across Restart
	dir  string   // working directory (--dir), a t.TempDir()
	conf string   // configuration file given before --port, or "" for none
	args []string // every argument except the configuration file and --port

	cluster bool // a cluster node, whose bus port is port+10000

	mu     sync.Mutex
	proc   *process // the latest run, possibly exited; nil only before the first
	paused bool
	held   []func() // releases the ports held while the server is killed (see holdPort)
}

// process is one run of redis-server.
type process struct {
	cmd  *exec.Cmd
	out  *tailBuffer
	done chan struct{} // closed once cmd.Wait has returned
}

// Start starts a redis-server on a free 127.0.0.1 port and waits until it
// answers PING. It calls Require first, so the test is skipped when
// redis-server is missing. opt may be nil. The server runs with --save ""
// --appendonly no --protected-mode no in its own t.TempDir(), followed by
// opt.Args; it is killed (resumed first if paused) in t.Cleanup.
func Start(t testing.TB, opt *ServerOptions) *Server {
	t.Helper()
	Require(t)
	var extra []string
	if opt != nil {
		extra = opt.Args
	}
	return startServer(t, serverConfig{extra: extra})
}

// serverConfig says how startServer runs redis-server. The zero value runs
// a plain server.
type serverConfig struct {
	cluster  bool     // run as a cluster node
	sentinel string   // if not empty, run as a Sentinel with this initial sentinel.conf
	extra    []string // appended to the default arguments
}

// Files in a Server's directory that hold its identity and survive Restart.
const (
	clusterConfFile  = "nodes.conf"
	sentinelConfFile = "sentinel.conf"
)

// startServer starts a Server as cfg says. It tries a few fresh ports if
// redis-server finds its port already taken.
func startServer(t testing.TB, cfg serverConfig) *Server {
	t.Helper()
	// TempDir's removal is registered before the kill below, so it runs after.
	s := &Server{dir: t.TempDir(), cluster: cfg.cluster}
	s.args = []string{"--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", s.dir, "--protected-mode", "no"}
	if cfg.cluster {
		s.args = append(s.args, "--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(s.dir, clusterConfFile),
			"--cluster-node-timeout", "5000")
	}
	if cfg.sentinel != "" {
		// Sentinel rewrites its configuration file, so each gets its own.
		s.conf = filepath.Join(s.dir, sentinelConfFile)
		if err := os.WriteFile(s.conf, []byte(cfg.sentinel), 0o600); err != nil {
			t.Fatalf("redistest: writing sentinel configuration: %v", err)
		}
		s.args = append(s.args, "--sentinel")
	}
	s.args = append(s.args, cfg.extra...)
	t.Cleanup(func() { s.cleanup(t) })

	var errs []error
	for range startAttempts {
		port, err := freePort(cfg.cluster)
		if err != nil {
			t.Fatalf("redistest: %v", err)
		}
		p, err := s.launch(port)
		if err == nil {
			s.port, s.proc = port, p
			return s
		}
		errs = append(errs, err)
		if !errors.Is(err, errAddrInUse) {
			break
		}
	}
	t.Fatalf("redistest: starting redis-server: %v", errors.Join(errs...))
	return nil
}

// Addr returns the server's address, "127.0.0.1:PORT".
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Port returns the server's TCP port. It stays the same across Restart.
func (s *Server) Port() int { return s.port }

// Client returns a new go-redis client for the server, closed in t.Cleanup.
// opts may be nil; it is copied and its Addr set to the server's address.
func (s *Server) Client(t testing.TB, opts *redis.Options) *redis.Client {
	t.Helper()
	var o redis.Options
	if opts != nil {
		o = *opts
	}
	o.Addr = s.Addr()
	c := redis.NewClient(&o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Do runs one command on a short-lived client against the server and returns
// its reply, or nil for a nil reply. Any other error fails the test. The
// command is not retried and must complete within 30 seconds, so commands such
// as CONFIG SET or DEBUG SLEEP 1 are fine.
func (s *Server) Do(t testing.TB, args ...any) any {
	t.Helper()
	v, err := do(s.Addr(), args...)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	return v
}

// ACLUser creates the ACL user named user, enabled, with password pass and
// the given ACL rules, replacing any user of that name: it runs ACL SETUSER
// with the rules "reset", "on", ">"+pass and then rules. Typical rules are
// "~*" (every key) and "+@all" (every command); Redis 7 grants a new user no
// Pub/Sub channel unless a rule such as "&*" or "allchannels" says so. The
// user is lost on Restart.
func (s *Server) ACLUser(t testing.TB, user, pass string, rules ...string) {
	t.Helper()
	args := []any{"ACL", "SETUSER", user, "reset", "on", ">" + pass}
	for _, r := range rules {
		args = append(args, r)
	}
	s.Do(t, args...)
}

// SetMaxMemory sets the server's maxmemory to bytes and, unless policy is
// empty, its maxmemory-policy to policy (for example "noeviction" or
// "allkeys-lru"), with CONFIG SET. Zero bytes means no limit. The setting is
// lost on Restart.
func (s *Server) SetMaxMemory(t testing.TB, bytes int64, policy string) {
	t.Helper()
	args := []any{"CONFIG", "SET", "maxmemory", bytes}
	if policy != "" {
		args = append(args, "maxmemory-policy", policy)
	}
	s.Do(t, args...)
}

// do runs one command against addr on a short-lived client.
func do(addr string, args ...any) (any, error) {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DisableIdentity: true,
		ReadTimeout: -1, ContextTimeoutEnabled: true})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), doTimeout)
	defer cancel()
	v, err := c.Do(ctx, args...).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%v on %s: %w", args, addr, err)
	}
	return v, nil
}

// WaitTimeout is how long [WaitFor] waits: long enough that only a hang
// reaches it.
const WaitTimeout = 20 * time.Second

// WaitFor polls cond every millisecond until it holds, and fails the test,
// naming what it waited for, if it does not within [WaitTimeout].
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(WaitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", WaitTimeout, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Context returns a context that ends after d, or when the test ends, so
// that a hang fails the test instead of the whole run.
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Buffer is a byte buffer safe for concurrent use: a place for a test's
// log output (slog.NewTextHandler(&buf, nil)) that the test reads while
// the code under test still writes.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
