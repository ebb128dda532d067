package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestMini(t *testing.T) {
	t.Parallel()
	m, c := Mini(t)
	ctx := ctxT(t, 10*time.Second)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got, err := m.Get("k"); err != nil || got != "v" {
		t.Fatalf("miniredis Get(k) = %q, %v; want \"v\"", got, err)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET k = %q, %v; want \"v\"", got, err)
	}
}

// fakeTB records Skip and Fatal instead of ending the test.
type fakeTB struct {
	testing.TB
	skipped, fatal string
}

func (f *fakeTB) Skip(args ...any)  { f.skipped = fmt.Sprint(args...) }
func (f *fakeTB) Fatal(args ...any) { f.fatal = fmt.Sprint(args...) }

func TestRequireWithoutRedisServer(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	if Available() {
		t.Fatal("Available() = true with an empty PATH")
	}
	for _, env := range []string{"", "0", "1"} {
		t.Setenv(requireEnv, env)
		f := &fakeTB{TB: t}
		Require(f)
		got, other := f.skipped, f.fatal
		if env == "1" {
			got, other = f.fatal, f.skipped
		}
		if !strings.Contains(got, "redis-server not found on PATH") || !strings.Contains(got, requireEnv+"=1") || other != "" {
			t.Errorf("%s=%q: Require skipped with %q and failed with %q", requireEnv, env, f.skipped, f.fatal)
		}
	}
}

func TestStart(t *testing.T) {
	t.Parallel()
	s := Start(t, nil)
	if want := "127.0.0.1:" + strconv.Itoa(s.Port()); s.Addr() != want {
		t.Fatalf("Addr() = %q; want %q", s.Addr(), want)
	}
	c := s.Client(t, nil)
	ctx := ctxT(t, 10*time.Second)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET k = %q, %v; want \"v\"", got, err)
	}
	if got := s.Do(t, "GET", "k"); got != "v" {
		t.Fatalf("Do(GET k) = %#v; want \"v\"", got)
	}
	if got := s.Do(t, "GET", "missing"); got != nil {
		t.Fatalf("Do(GET missing) = %#v; want nil", got)
	}
}

func TestStartArgs(t *testing.T) {
	t.Parallel()
	s := Start(t, &ServerOptions{Args: []string{"--maxmemory", "2mb", "--maxmemory-policy", "noeviction"}})
	c := s.Client(t, nil)
	ctx := ctxT(t, 10*time.Second)
	got, err := c.ConfigGet(ctx, "maxmemory*").Result()
	if err != nil {
		t.Fatalf("CONFIG GET: %v", err)
	}
	if got["maxmemory"] != "2097152" || got["maxmemory-policy"] != "noeviction" {
		t.Fatalf("CONFIG GET maxmemory* = %v; want maxmemory 2097152, policy noeviction", got)
	}
	if got, err := c.ConfigGet(ctx, "save").Result(); err != nil || got["save"] != "" {
		t.Fatalf("CONFIG GET save = %v, %v; want empty", got, err)
	}
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	s := Start(t, nil)
	c := s.Client(t, &redis.Options{ContextTimeoutEnabled: true})
	if err := c.Ping(ctxT(t, 10*time.Second)).Err(); err != nil {
		t.Fatalf("PING: %v", err)
	}

	s.Pause(t)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.Get(ctx, "k").Err()
	elapsed := time.Since(start)
	t.Logf("GET on the paused server failed after %v: %v", elapsed, err)
	if elapsed > 5*time.Second {
		t.Errorf("GET on a paused server took %v; want about 200ms", elapsed)
	}
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("GET on a paused server: err = %v; want a deadline error", err)
	}

	s.Resume(t)
	if err := c.Ping(ctxT(t, 10*time.Second)).Err(); err != nil {
		t.Fatalf("PING after Resume: %v", err)
	}
}

func TestCleanupKillsPausedServer(t *testing.T) {
	t.Parallel()
	var pid int
	var dir string
	t.Run("paused", func(t *testing.T) {
		s := Start(t, nil)
		s.Pause(t)
		pid, dir = s.proc.cmd.Process.Pid, s.dir
	})
	if pid == 0 {
		t.Fatal("subtest did not start a server")
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("redis-server (pid %d) still exists after cleanup: kill(pid, 0) = %v", pid, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("server directory %s still exists after cleanup: %v", dir, err)
	}
}

func TestKillRestart(t *testing.T) {
	t.Parallel()
	s := Start(t, nil)
	addr := s.Addr()
	s.Do(t, "SET", "k", "v")
	// Something on disk must not survive Restart either.
	s.Do(t, "SAVE")

	s.Kill(t)
	s.Kill(t) // killing a dead server does nothing
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Fatalf("dialing %s after Kill succeeded", addr)
	}

	s.Restart(t)
	if s.Addr() != addr {
		t.Fatalf("Addr() after Restart = %q; want %q", s.Addr(), addr)
	}
	c := s.Client(t, nil)
	ctx := ctxT(t, 10*time.Second)
	if n, err := c.DBSize(ctx).Result(); err != nil || n != 0 {
		t.Fatalf("DBSIZE after Restart = %d, %v; want 0", n, err)
	}
	if err := c.Set(ctx, "k2", "v2", 0).Err(); err != nil {
		t.Fatalf("SET after Restart: %v", err)
	}

	// Restart also works on a running server.
	s.Restart(t)
	if n := s.Do(t, "DBSIZE"); n != int64(0) {
		t.Fatalf("DBSIZE after second Restart = %#v; want 0", n)
	}
}

func TestRestartWaitsForBusyPort(t *testing.T) {
	t.Parallel()
	s := Start(t, nil)
	s.Kill(t)
	l, err := net.Listen("tcp", s.Addr())
	if err != nil {
		t.Fatalf("occupying %s: %v", s.Addr(), err)
	}
	// Restart must keep retrying while the port is taken, for up to a few seconds.
	released := make(chan struct{})
	time.AfterFunc(300*time.Millisecond, func() { close(released); l.Close() })
	s.Restart(t)
	select {
	case <-released:
	default:
		t.Fatal("Restart succeeded while the port was still taken")
	}
	if got := s.Do(t, "PING"); got != "PONG" {
		t.Fatalf("PING after Restart = %#v; want PONG", got)
	}
}

func TestCluster(t *testing.T) {
	t.Parallel()
	start := time.Now()
	c := StartCluster(t, 3)
	t.Logf("StartCluster(3) took %v", time.Since(start))
	if len(c.Addrs()) != 3 || len(c.Nodes()) != 3 {
		t.Fatalf("Addrs() = %v, %d nodes; want 3 of each", c.Addrs(), len(c.Nodes()))
	}
	for _, s := range c.Nodes() {
		if p := s.Port(); p+10000 > 65535 {
			t.Errorf("node port %d leaves no room for the cluster bus port", p)
		}
	}

	cc := c.Client(t, nil)
	ctx := ctxT(t, 30*time.Second)
	const keys = 100
	for i := range keys {
		if err := cc.Set(ctx, fmt.Sprintf("key:%d", i), i, 0).Err(); err != nil {
			t.Fatalf("SET key:%d: %v", i, err)
		}
	}
	for i := range keys {
		got, err := cc.Get(ctx, fmt.Sprintf("key:%d", i)).Int()
		if err != nil || got != i {
			t.Fatalf("GET key:%d = %d, %v; want %d", i, got, err, i)
		}
	}

	total := int64(0)
	for i, s := range c.Nodes() {
		n, ok := s.Do(t, "DBSIZE").(int64)
		if !ok || n == 0 {
			t.Errorf("node %d (%s) holds %d keys; want some", i, s.Addr(), n)
		}
		total += n
	}
	if total != keys {
		t.Errorf("nodes hold %d keys in all; want %d", total, keys)
	}

	// keySlot agrees with the server, hash tags included.
	node := c.Nodes()[0]
	for _, key := range []string{"", "a", "key:42", "{user1000}.following", "foo{}{bar}", "foo{{bar}}zap", "{}x", "x{"} {
		want, _ := node.Do(t, "CLUSTER", "KEYSLOT", key).(int64)
		if got := keySlot(key); int64(got) != want {
			t.Errorf("keySlot(%q) = %d; CLUSTER KEYSLOT says %d", key, got, want)
		}
	}
}

func TestSlotRange(t *testing.T) {
	for _, n := range []int{1, 3, 7, 16384} {
		next := 0
		for i := range n {
			lo, hi := slotRange(i, n)
			if lo != next || hi < lo {
				t.Fatalf("slotRange(%d, %d) = %d, %d; want to start at %d", i, n, lo, hi, next)
			}
			next = hi + 1
		}
		if next != clusterSlots {
			t.Fatalf("slot ranges for %d nodes end at %d; want %d", n, next-1, clusterSlots-1)
		}
	}
}

func TestRing(t *testing.T) {
	t.Parallel()
	servers, r := StartRing(t, 3)
	if len(servers) != 3 {
		t.Fatalf("StartRing(3) returned %d servers; want 3", len(servers))
	}
	ctx := ctxT(t, 10*time.Second)
	const keys = 100
	for i := range keys {
		if err := r.Set(ctx, fmt.Sprintf("key:%d", i), i, 0).Err(); err != nil {
			t.Fatalf("SET key:%d: %v", i, err)
		}
	}
	for i := range keys {
		if got, err := r.Get(ctx, fmt.Sprintf("key:%d", i)).Int(); err != nil || got != i {
			t.Fatalf("GET key:%d = %d, %v; want %d", i, got, err, i)
		}
	}
	total := int64(0)
	for i, s := range servers {
		n, _ := s.Do(t, "DBSIZE").(int64)
		if n == 0 {
			t.Errorf("server %d (%s) holds no keys; want some", i, s.Addr())
		}
		total += n
	}
	if total != keys {
		t.Errorf("servers hold %d keys in all; want %d", total, keys)
	}
	for i, s := range servers {
		if name, addr := fmt.Sprintf("s%d", i), r.Options().Addrs[fmt.Sprintf("s%d", i)]; addr != s.Addr() {
			t.Errorf("shard %s is %q; want server %d, %s", name, addr, i, s.Addr())
		}
	}
	key := "key:0"
	shard, err := r.GetShardClientForKey(key)
	if err != nil {
		t.Fatalf("GetShardClientForKey(%q): %v", key, err)
	}
	addr := shard.Options().Addr
	for i, s := range servers {
		if got := s.Do(t, "EXISTS", key); (got == int64(1)) != (s.Addr() == addr) {
			t.Errorf("EXISTS %s on server %d (%s) = %v; the ring puts it on %s", key, i, s.Addr(), got, addr)
		}
	}
}

func TestACLUser(t *testing.T) {
	t.Parallel()
	s := Start(t, nil)
	ctx := ctxT(t, 10*time.Second)
	login := func(user, pass string) *redis.Client {
		return s.Client(t, &redis.Options{Username: user, Password: pass, MaxRetries: -1, DisableIdentity: true})
	}

	s.ACLUser(t, "app", "secret", "~*", "+@all")
	if err := login("app", "wrong").Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("PING with a wrong password: err = %v; want WRONGPASS", err)
	}
	c := login("app", "secret")
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET as app: %v", err)
	}
	// Redis 7 grants new users no channel.
	if err := c.Publish(ctx, "ch", "m").Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("PUBLISH as app without &*: err = %v; want NOPERM", err)
	}
	ps := c.Subscribe(ctx, "ch")
	if _, err := ps.Receive(ctx); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("SUBSCRIBE as app without &*: err = %v; want NOPERM", err)
	}
	_ = ps.Close()

	// Redefining the user replaces its rules.
	s.ACLUser(t, "app", "secret", "~*", "+@all", "allchannels")
	ps = c.Subscribe(ctx, "ch")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatalf("SUBSCRIBE as app with allchannels: %v", err)
	}
	if n, err := c.Publish(ctx, "ch", "m").Result(); err != nil || n != 1 {
		t.Fatalf("PUBLISH as app with allchannels = %d, %v; want 1 receiver", n, err)
	}
	if msg, err := ps.ReceiveMessage(ctx); err != nil || msg.Payload != "m" {
		t.Fatalf("message as app = %v, %v; want payload \"m\"", msg, err)
	}
}

func TestSetMaxMemory(t *testing.T) {
	t.Parallel()
	s := Start(t, nil)
	c := s.Client(t, &redis.Options{MaxRetries: -1})
	ctx := ctxT(t, 10*time.Second)

	// Any used memory is over one byte.
	s.SetMaxMemory(t, 1, "noeviction")
	got, err := c.ConfigGet(ctx, "maxmemory*").Result()
	if err != nil || got["maxmemory"] != "1" || got["maxmemory-policy"] != "noeviction" {
		t.Fatalf("CONFIG GET maxmemory* = %v, %v; want maxmemory 1, policy noeviction", got, err)
	}
	if err := c.Set(ctx, "k", "v", 0).Err(); err == nil || !strings.Contains(err.Error(), "OOM") {
		t.Fatalf("SET over maxmemory with noeviction: err = %v; want OOM", err)
	}

	// An empty policy leaves the policy alone.
	s.SetMaxMemory(t, 0, "")
	got, err = c.ConfigGet(ctx, "maxmemory*").Result()
	if err != nil || got["maxmemory"] != "0" || got["maxmemory-policy"] != "noeviction" {
		t.Fatalf("CONFIG GET maxmemory* = %v, %v; want maxmemory 0, policy noeviction", got, err)
	}
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET without maxmemory: %v", err)
	}
}
