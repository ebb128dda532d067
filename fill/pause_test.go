package fill_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// pausedEnv makes the test binary run as the paused gatherer of
// TestFleetWideGathererPaused (see pausedMain) on the Redis at its value.
const pausedEnv = "LOCKSMITH_FILL_PAUSED"

// pausedWindow is the Window of the batches in TestFleetWideGathererPaused:
// long enough for the child's ten keys of a name to be handed off before
// its gatherer pops them, so that each name makes one loader call there.
const pausedWindow = 100 * time.Millisecond

// pausedKeys returns the keys prefix0..prefix(n-1).
func pausedKeys(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprint(prefix, i)
	}
	return keys
}

// pausedMain runs the test binary as a server that gathers the fleet's
// batches of two names, and is stopped (SIGSTOP) by its parent once it has
// popped a batch of each, past its lease:
//   - "mid": the keys m0..m9, whose loader call runs when the process is
//     stopped, and returns values of its own ("child:KEY") once the parent
//     writes "go" on stdin, after it resumed;
//   - "pre": the keys p0..p9, whose batch waits for its budget's one
//     concurrency slot, which the parent holds, when the process is
//     stopped: its loader call is not made yet. The parent frees the slot
//     once the process, resumed, took the gatherer's lease of "pre" anew.
//
// It prints "loading NAME N" at each loader call, "abandoned pre" when the
// gatherer of "pre" gave up a loader call for its lost lease, "got KEY
// VALUE" for each of its Gets, and, once its Caches are closed (nothing of
// theirs runs any more), "stale mid N pre N": their settles refused, and
// "given back N": the budget's reservations cancelled (pre's abandoned
// call was not made: its slot goes back).
func pausedMain(addr string) {
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	b := pausedBudget(rdb)
	release := make(chan struct{})
	go func() {
		for sc := bufio.NewScanner(os.Stdin); sc.Scan(); {
			if sc.Text() == "go" {
				close(release)
				return
			}
		}
	}()
	child := func(keys []string) map[string]string {
		m := make(map[string]string, len(keys))
		for _, k := range keys {
			m[k] = "child:" + k
		}
		return m
	}
	midDone := make(chan struct{})
	var midOnce sync.Once
	mid := fill.New(rdb, &fill.Options{LockTTL: 30 * time.Second})
	btMid := fill.NewBatcher(mid, func(_ context.Context, keys []string) (map[string]string, error) {
		say("loading mid %d", len(keys))
		<-release // whatever its ctx says: the values come back late
		defer midOnce.Do(func() { close(midDone) })
		return child(keys), nil
	}, &fill.BatchOptions{Name: "mid", Window: pausedWindow, FleetWide: true})
	abandoned := make(chan struct{}, 1)
	pre := fill.New(rdb, &fill.Options{LockTTL: 30 * time.Second, Budget: b,
		Logger: slog.New(slog.NewTextHandler(lineWatch(func(line string) {
			if strings.Contains(line, "lease lost before a batch's loader call") {
				say("abandoned pre")
				select {
				case abandoned <- struct{}{}:
				default:
				}
			}
		}), nil))})
	btPre := fill.NewBatcher(pre, func(_ context.Context, keys []string) (map[string]string, error) {
		say("loading pre %d", len(keys))
		return child(keys), nil
	}, &fill.BatchOptions{Name: "pre", Window: pausedWindow, FleetWide: true})
	var wg sync.WaitGroup
	for _, key := range pausedKeys("m", 10) {
		wg.Go(func() {
			v, err := btMid.Get(ctx, key)
			say("got %s %s", key, answer(v, err))
		})
	}
	for _, key := range pausedKeys("p", 10) {
		wg.Go(func() {
			v, err := btPre.Get(ctx, key)
			say("got %s %s", key, answer(v, err))
		})
	}
	wg.Wait()
	for what, ch := range map[string]<-chan struct{}{"the loader call of mid to return": midDone, "pre's call to be abandoned": abandoned} {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			say("timeout: waited for %s", what)
		}
	}
	_ = mid.Close()
	_ = pre.Close()
	_ = b.Close()
	say("stale mid %d pre %d", mid.Stats().StaleStores, pre.Stats().StaleStores)
	say("given back %d", b.Stats().GivenBack)
}

// lineWatch is an io.Writer that hands each Write, a log line, to fn.
type lineWatch func(line string)

func (w lineWatch) Write(p []byte) (int, error) {
	w(string(p))
	return len(p), nil
}

// answer is a Get's value, or its error.
func answer(v string, err error) string {
	if err != nil {
		return "error: " + err.Error()
	}
	return v
}

// pausedBudget is the budget of the loads of "pre" (see pausedMain): one
// concurrency slot.
func pausedBudget(rdb redis.UniversalClient) *budget.Budget {
	return budget.New(rdb, "paused", budget.Limit{Rate: 1000}, &budget.Options{Concurrency: 1})
}

// TestFleetWideGathererPaused: the fleet's gatherer is a process of its
// own, stopped (SIGSTOP) past its lease with a batch loading ("mid") and a
// batch waiting for its budget slot ("pre"): the other servers take over
// once its lease runs out and load every key once, its keys included; when
// it resumes, it makes no loader call for the batch it had not sent (its
// lease was lost meanwhile, although it took the lease anew since), and the
// values its late call returns are not stored (the fencing tokens refuse
// its settles): Redis holds the successors' values.
// The call it had made before it stopped is an upstream call the fleet
// cannot take back.
func TestFleetWideGathererPaused(t *testing.T) {
	s := redistest.Start(t, nil)
	b := pausedBudget(s.Client(t, nil))
	t.Cleanup(func() { _ = b.Close() })
	ctx := redistest.Context(t, 30*time.Second)
	slot, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), pausedEnv+"="+s.Addr())
	redistest.KillWithParent(cmd)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := false
	t.Cleanup(func() {
		if !exited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		for sc := bufio.NewScanner(stdout); sc.Scan(); {
			lines <- sc.Text()
		}
	}()
	var said []string
	next := func(what string) string {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("the child exited before %s; it said %q", what, said)
			}
			said = append(said, line)
			return line
		case <-ctx.Done():
			t.Fatalf("the child did not say %s; it said %q", what, said)
		}
		return ""
	}
	for loading := 0; loading < 10; {
		line := next("its loader call of mid")
		n, ok := strings.CutPrefix(line, "loading mid ")
		k, err := strconv.Atoi(n)
		if !ok || err != nil {
			t.Fatalf("the child said %q; want %q", line, "loading mid 10")
		}
		loading += k
	}
	called := len(said) // the loader calls before the child stopped
	rdb := s.Client(t, nil)
	redistest.WaitFor(t, "pre's batch popped", func() bool {
		return rdb.SCard(ctx, "__locksmith:{batch:pre}:loading").Val() == 10
	})
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "the child stopped", func() bool {
		stopped, known := redistest.ProcessStopped(cmd.Process.Pid)
		return stopped || !known
	})

	clients := []redis.UniversalClient{s.Client(t, nil), s.Client(t, nil)}
	opt := &fill.Options{LockTTL: 30 * time.Second}
	liveMid, midLoads, _ := fleetBatchers(t, clients, opt, fill.BatchOptions{Name: "mid", Window: pausedWindow}, 0)
	livePre, preLoads, _ := fleetBatchers(t, clients, opt, fill.BatchOptions{Name: "pre", Window: pausedWindow}, 0)
	start := time.Now()
	var wg sync.WaitGroup
	wg.Go(func() { getAll(t, ctx, liveMid, pausedKeys("m", 20)) })
	wg.Go(func() { getAll(t, ctx, livePre, pausedKeys("p", 20)) })
	wg.Wait()
	t.Logf("the successors served every key %v after the child stopped", time.Since(start).Round(time.Millisecond))
	for name, loads := range map[string][]*batchLoader{"mid": midLoads, "pre": preLoads} {
		calls, loaded := fleetLoads(loads)
		t.Logf("%s: the successors loaded %d keys in %d calls", name, len(loaded), calls)
		checkOnce(t, loaded, 20)
	}
	if stopped, known := redistest.ProcessStopped(cmd.Process.Pid); known && !stopped {
		t.Fatal("the child ran before the successors were done: not a pause past its lease")
	}

	gatherer := "__locksmith:{batch:pre}:gatherer"
	redistest.WaitFor(t, "pre's successor to quit", func() bool { return rdb.Exists(ctx, gatherer).Val() == 0 })
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprintln(stdin, "go"); err != nil {
		t.Fatal(err)
	}
	// Resumed, the child takes the lease of "pre" anew (nobody holds it):
	// its batch, popped under the lease it lost, must still not go.
	redistest.WaitFor(t, "the child to take pre's lease anew", func() bool { return rdb.Exists(ctx, gatherer).Val() == 1 })
	if err := slot.Done(ctx); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case line, ok := <-lines:
			if ok {
				said = append(said, line)
				continue
			}
		case <-ctx.Done():
			t.Fatalf("the child did not exit; it said %q", said)
		}
		break
	}
	exited = true
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the child: %v; it said %q", err, said)
	}
	var got []string
	givenBack := false
	for i, line := range said {
		switch {
		case strings.HasPrefix(line, "loading mid ") && i < called:
		case strings.HasPrefix(line, "got "):
			got = append(got, line)
			f := strings.Fields(line)
			if len(f) != 3 || f[2] != "v:"+f[1] {
				t.Errorf("the child's Get: %q; want the successors' value", line)
			}
		case line == "abandoned pre", line == "stale mid 10 pre 0":
		case strings.HasPrefix(line, "given back "):
			givenBack = true
			if n, _ := strconv.Atoi(strings.TrimPrefix(line, "given back ")); n < 1 {
				t.Errorf("the child said %q: the reservation of pre's abandoned call was not given back", line)
			}
		default:
			t.Errorf("the child said %q", line)
		}
	}
	if !givenBack {
		t.Error("the child did not say how many reservations it gave back")
	}
	for _, want := range []string{"abandoned pre", "stale mid 10 pre 0"} {
		if !slices.Contains(said, want) {
			t.Errorf("the child did not say %q: its late settles were not all refused, or pre's call not abandoned; it said %q", want, said)
		}
	}
	if len(got) != 20 {
		t.Errorf("the child's Gets: %d answered; want 20", len(got))
	}
	// Redis holds the successors' values: the late call stored nothing.
	c := newCache(t, s.Client(t, nil), nil)
	for _, key := range append(pausedKeys("m", 20), pausedKeys("p", 20)...) {
		v, err := fill.Get(ctx, c, key, func(context.Context) (string, error) {
			return "", errors.New("not cached")
		})
		if err != nil || v != "v:"+key {
			t.Errorf("%s in Redis: %q, %v; want %q", key, v, err, "v:"+key)
		}
	}
}

// TestFleetWideGathererRetakesOwnLease: a gatherer whose lease ran out
// while its batch waited for its budget slot, and that nobody took over,
// takes the lease anew with its batch still on the loading list: the batch
// is still its own, and goes when the slot comes, without being given up
// and loaded again.
func TestFleetWideGathererRetakesOwnLease(t *testing.T) {
	s := redistest.Start(t, nil)
	b := pausedBudget(s.Client(t, nil))
	t.Cleanup(func() { _ = b.Close() })
	ctx := redistest.Context(t, 20*time.Second)
	slot, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
	if err != nil {
		t.Fatal(err)
	}
	own := pausedBudget(s.Client(t, nil))
	t.Cleanup(func() { _ = own.Close() })
	var abandoned atomic.Int32
	bts, loaders, _ := fleetBatchers(t, []redis.UniversalClient{s.Client(t, nil)}, &fill.Options{Budget: own,
		Logger: slog.New(slog.NewTextHandler(lineWatch(func(line string) {
			if strings.Contains(line, "lease lost before a batch's loader call") {
				abandoned.Add(1)
			}
		}), nil))}, fill.BatchOptions{Name: "pre", Window: 10 * time.Millisecond}, 0)
	done := make(chan struct{})
	go func() {
		defer close(done)
		getAll(t, ctx, bts, pausedKeys("p", 10))
	}()
	rdb := s.Client(t, nil)
	redistest.WaitFor(t, "the batch popped", func() bool {
		return rdb.SCard(ctx, "__locksmith:{batch:pre}:loading").Val() == 10
	})
	// The lease runs out, as if the gatherer had paused past it; the
	// gatherer's next pop takes it anew.
	gatherer := "__locksmith:{batch:pre}:gatherer"
	rdb.Del(ctx, gatherer)
	redistest.WaitFor(t, "the lease taken anew", func() bool { return rdb.Exists(ctx, gatherer).Val() == 1 })
	if err := slot.Done(ctx); err != nil {
		t.Fatal(err)
	}
	<-done
	calls, loaded := fleetLoads(loaders)
	checkOnce(t, loaded, 10)
	if calls != 1 || abandoned.Load() != 0 {
		t.Errorf("%d loader calls, %d given up; want 1 and none: the batch stayed the gatherer's", calls, abandoned.Load())
	}
}
