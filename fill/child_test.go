package fill_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// gathererEnv makes the test binary run as a gatherer (see helperMain) on
// the Redis at its value instead of running tests.
const gathererEnv = "LOCKSMITH_FILL_GATHERER"

// helperMain runs the test binary as a server of a fleet that gathers the
// keys k0..k9 with a FleetWide Batcher whose loader never returns, telling
// its parent "loading N" on stdout at each loader call, until it is
// killed; it reports false when the binary is to run its tests.
func helperMain() bool {
	if addr := os.Getenv(pausedEnv); addr != "" {
		pausedMain(addr)
		return true
	}
	addr := os.Getenv(gathererEnv)
	if addr == "" {
		return false
	}
	c := fill.New(redis.NewClient(&redis.Options{Addr: addr}), &fill.Options{LockTTL: 30 * time.Second})
	bt := fill.NewBatcher(c, func(ctx context.Context, keys []string) (map[string]string, error) {
		fmt.Printf("loading %d\n", len(keys))
		select {}
	}, &fill.BatchOptions{Name: "users", Window: 10 * time.Millisecond, FleetWide: true})
	for i := range 10 {
		go func() { _, _ = bt.Get(context.Background(), fmt.Sprint("k", i)) }()
	}
	select {}
}

// TestFleetWideGathererKilled: the gatherer is a process of its own,
// killed with SIGKILL while its loader call runs: another server takes
// over once its lease runs out, and loads every key once.
func TestFleetWideGathererKilled(t *testing.T) {
	s := redistest.Start(t, nil)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), gathererEnv+"="+s.Addr())
	redistest.KillWithParent(cmd)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		for sc := bufio.NewScanner(stdout); sc.Scan(); {
			lines <- sc.Text()
		}
	}()
	ctx := redistest.Context(t, 30*time.Second)
	select {
	case line := <-lines:
		if !strings.HasPrefix(line, "loading ") {
			t.Fatalf("the gatherer said %q", line)
		}
	case <-ctx.Done():
		t.Fatal("the gatherer's loader was not called")
	}
	live, liveLoads, _ := fleetBatchers(t, []redis.UniversalClient{s.Client(t, nil), s.Client(t, nil)},
		&fill.Options{LockTTL: 30 * time.Second}, fill.BatchOptions{Name: "users", Window: 10 * time.Millisecond}, 0)
	done := make(chan struct{})
	go func() {
		defer close(done)
		getAll(t, ctx, live, keyList(20))
	}()
	// Ten keys the gatherer has popped, ten more queued or popped.
	rdb := s.Client(t, nil)
	redistest.WaitFor(t, "the others' keys handed off", func() bool {
		return rdb.SCard(ctx, "__locksmith:{batch:users}:loading").Val()+
			rdb.ZCard(ctx, "__locksmith:{batch:users}:queue").Val() >= 20
	})
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed = true
	_ = cmd.Wait()
	<-done
	calls, loaded := fleetLoads(liveLoads)
	checkOnce(t, loaded, 20)
	t.Logf("the successor loaded %d keys in %d calls", len(loaded), calls)
}
