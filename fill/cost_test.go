package fill_test

import (
	"context"
	"fmt"
	"runtime/metrics"
	"strings"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// What a hit and a miss cost: the commands their scripts run, and the
// goroutines they start.

// commandCalls returns how many times the server ran cmd (from scripts
// too), from INFO commandstats.
func commandCalls(t *testing.T, s *redistest.Server, cmd string) int64 {
	t.Helper()
	info, _ := s.Do(t, "INFO", "commandstats").(string)
	for _, line := range strings.Split(info, "\r\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_"+cmd+":calls="); ok {
			var v int64
			fmt.Sscan(rest[:strings.IndexByte(rest, ',')], &v)
			return v
		}
	}
	return 0
}

// TestMissCommands: a miss on a key that never had a value, in a fleet
// without a local tier, runs only what it needs: the value's GET, the
// lock's SET and DEL, the value's SET, the waiters' PUBLISH; no stamp, no
// invalidation, no DEL of a failure marker or back-off that cannot exist.
func TestMissCommands(t *testing.T) {
	s := redistest.Start(t, nil)
	c := newCache(t, s.Client(t, nil), nil)
	ctx := redistest.Context(t, 20*time.Second)
	cmds := []string{"get", "set", "del", "publish", "exists"}
	before := map[string]int64{}
	for _, cmd := range cmds {
		before[cmd] = commandCalls(t, s, cmd)
	}
	if _, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) { return 1, nil }); err != nil {
		t.Fatal(err)
	}
	// GET: the value and the fleet's local-tier flag at the claim, the
	// lock's holder at the store; EXISTS: the flag, at the store.
	want := map[string]int64{"get": 3, "set": 2, "del": 1, "publish": 1, "exists": 1}
	for _, cmd := range cmds {
		if n := commandCalls(t, s, cmd) - before[cmd]; n != want[cmd] {
			t.Errorf("a miss ran %s %d times; want %d", strings.ToUpper(cmd), n, want[cmd])
		}
	}
}

// TestMissStartsNoGoroutine: a miss whose caller's ctx cannot end runs on
// the caller's goroutine from start to end.
func TestMissStartsNoGoroutine(t *testing.T) {
	s := redistest.Start(t, nil)
	c := newCache(t, s.Client(t, nil), nil)
	ctx := context.Background()
	load := func(context.Context) (int, error) { return 1, nil }
	if _, err := fill.Get(ctx, c, "warm-up", load); err != nil {
		t.Fatal(err)
	}
	created := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	metrics.Read(created)
	before := created[0].Value.Uint64()
	const misses = 200
	for i := range misses {
		if _, err := fill.Get(ctx, c, fmt.Sprint("k", i), load); err != nil {
			t.Fatal(err)
		}
	}
	metrics.Read(created)
	// A few for the process's own (the client's pool, timers); not one a miss.
	if n := created[0].Value.Uint64() - before; n >= misses/4 {
		t.Errorf("%d misses started %d goroutines; want none of their own", misses, n)
	}
}
