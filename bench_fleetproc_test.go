package locksmith_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/fine"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// A fleet of server processes: BenchmarkFleetBatch's JoinProcesses runs
// each server in a process of its own (this test binary run again as
// TestFleetServerProcess), as a fleet's servers are: each with its own Go
// runtime, its own threads and connections, none waking on another's
// behalf. The parent starts Redis, tells every server when a round starts
// (an absolute time, reached on the fine timer, so that all start within
// microseconds) and collects each Get's latency and each loader call's
// duration.
//
// The protocol, one line each way per round, on the child's stdin and
// stdout:
//
//	parent: round NAME START_UNIX_NS      child: fleet-lats NS... ; TOOK_NS...
//	parent: quit                          (the child closes and exits)

// fleetServerEnv names the Redis address a server process uses; its
// presence makes TestFleetServerProcess one.
const (
	fleetServerEnv   = "LOCKSMITH_FLEET_SERVER_REDIS"
	fleetServerIDEnv = "LOCKSMITH_FLEET_SERVER_ID"
	fleetServersEnv  = "LOCKSMITH_FLEET_SERVERS"
)

// TestFleetServerProcess is one server of BenchmarkFleetBatch's Join/
// processes, run by it in a process of its own; run directly, it skips.
func TestFleetServerProcess(t *testing.T) {
	addr := os.Getenv(fleetServerEnv)
	if addr == "" {
		t.Skip("a server process of BenchmarkFleetBatch, started by it")
	}
	id, err1 := strconv.Atoi(os.Getenv(fleetServerIDEnv))
	servers, err2 := strconv.Atoi(os.Getenv(fleetServersEnv))
	if err1 != nil || err2 != nil || servers < 1 {
		t.Fatalf("bad %s or %s", fleetServerIDEnv, fleetServersEnv)
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	c := fill.New(rdb, nil)
	defer c.Close()
	var up upstream
	bt := fill.NewBatcher(c, up.load, &fill.BatchOptions{Window: fleetWindow, FleetWide: true, Name: "bench"})
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 1 && f[0] == "quit" {
			return
		}
		if len(f) != 3 || f[0] != "round" {
			t.Fatalf("bad line %q", in.Text())
		}
		ns, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		lats := fleetServerRound(t, bt, id, servers, servers, f[1], time.Unix(0, ns))
		// The loader calls of the round, if this server gathered it: a
		// settle follows its loader's return, so once its Gets are back
		// the round's call, if any here, has been recorded.
		up.mu.Lock()
		took := up.took
		up.took = nil
		up.mu.Unlock()
		var line strings.Builder
		line.WriteString("fleet-lats")
		for _, d := range lats {
			line.WriteString(" " + strconv.FormatInt(int64(d), 10))
		}
		line.WriteString(" ;")
		for _, d := range took {
			line.WriteString(" " + strconv.FormatInt(int64(d), 10))
		}
		fmt.Println(line.String())
	}
}

// fleetServerRound has server id of servers ask for its share of keys cold
// keys of round name (the keys k with k%servers in {id, id+1}), all at
// start, and returns each Get's latency from start.
func fleetServerRound(t *testing.T, bt *fill.Batcher[string], id, servers, keys int, name string, start time.Time) []time.Duration {
	fine.Sleep(start)
	var mu sync.Mutex
	var lats []time.Duration
	var wg sync.WaitGroup
	for k := range keys {
		if m := k % servers; m != id && m != (id+1)%servers {
			continue
		}
		key := name + ":" + strconv.Itoa(k)
		wg.Go(func() {
			v, err := bt.Get(context.Background(), key)
			d := time.Since(start)
			if err != nil || v != "v:"+key {
				t.Errorf("Get(%s): %q, %v", key, v, err)
			}
			mu.Lock()
			lats = append(lats, d)
			mu.Unlock()
		})
	}
	wg.Wait()
	return lats
}

// fleetProc is the parent's end of one server process: lines has the
// lines of its stdout, and is closed when the process closed it.
type fleetProc struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
}

// fleetRoundTimeout bounds how long a round's line from a server process
// is waited for: a server whose Gets hang fails the benchmark, not the
// test binary's whole timeout.
const fleetRoundTimeout = 30 * time.Second

// startFleetProcs starts n server processes on s, stopped when b ends.
func startFleetProcs(b *testing.B, s *redistest.Server, n int) []*fleetProc {
	procs := make([]*fleetProc, n)
	for i := range procs {
		cmd := exec.Command(os.Args[0], "-test.run=^TestFleetServerProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), fleetServerEnv+"="+s.Addr(), fleetServerIDEnv+"="+strconv.Itoa(i), fleetServersEnv+"="+strconv.Itoa(n))
		cmd.Stderr = os.Stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			b.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		p := &fleetProc{cmd: cmd, in: in, lines: make(chan string, 16)}
		go func() {
			defer close(p.lines)
			sc := bufio.NewScanner(out)
			sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
			for sc.Scan() {
				p.lines <- sc.Text()
			}
		}()
		procs[i] = p
		b.Cleanup(func() {
			_, _ = io.WriteString(p.in, "quit\n")
			_ = p.in.Close()
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					b.Errorf("server process %d: %v", i, err)
				}
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-done
				b.Errorf("server process %d did not exit within 10s of quit", i)
			}
		})
	}
	return procs
}

// fleetProcRound runs one round named name on every process, starting
// lead after now, and returns the latencies of every Get and the durations
// of every loader call of the fleet.
func fleetProcRound(b *testing.B, procs []*fleetProc, name string, lead time.Duration) (lats, took []time.Duration) {
	start := time.Now().Add(lead).UnixNano()
	for _, p := range procs {
		if _, err := fmt.Fprintf(p.in, "round %s %d\n", name, start); err != nil {
			b.Fatal(err)
		}
	}
	timeout := time.NewTimer(fleetRoundTimeout)
	defer timeout.Stop()
	for i, p := range procs {
		for {
			var text string
			select {
			case l, ok := <-p.lines:
				if !ok {
					b.Fatalf("server process %d ended during round %s", i, name)
				}
				text = l
			case <-timeout.C:
				b.Fatalf("server process %d: no reply to round %s within %v", i, name, fleetRoundTimeout)
			}
			line, ok := strings.CutPrefix(text, "fleet-lats")
			if !ok {
				continue // the test framework's own output
			}
			l, t, _ := strings.Cut(line, ";")
			for _, f := range strings.Fields(l) {
				ns, _ := strconv.ParseInt(f, 10, 64)
				lats = append(lats, time.Duration(ns))
			}
			for _, f := range strings.Fields(t) {
				ns, _ := strconv.ParseInt(f, 10, 64)
				took = append(took, time.Duration(ns))
			}
			break
		}
	}
	return lats, took
}

// fleetProcBatchRounds is fleetBatchRounds's Join with each server in a
// process of its own: b.N rounds of servers cold keys, each asked for by
// two servers, all at the round's start.
func fleetProcBatchRounds(b *testing.B, servers int) {
	s := redistest.Start(b, nil)
	procs := startFleetProcs(b, s, servers)
	c0 := fill.New(s.Client(b, nil), nil)
	defer c0.Close()
	// The lead leaves each process time to read the line and start
	// waiting on the fine timer.
	const lead = 5 * time.Millisecond
	fleetProcRound(b, procs, "fleetp:warm-up", lead)
	if _, err := fill.Get(context.Background(), c0, "fleetp:rtt", func(context.Context) (string, error) { return "x", nil }); err != nil {
		b.Fatal(err)
	}
	rtt := hitRTT(b, c0, "fleetp:rtt", 0)
	colds := hitRTTs(b, c0, "fleetp:rtt", coldIdle, 50)
	coldPub := publishAfterIdle(b, s, coldIdle)
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	var lats, took []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Each Get checks its value. A round's keys go out in one loader
		// call unless a server woke so late that its keys missed the
		// batch (calls/round counts them).
		l, t := fleetProcRound(b, procs, fmt.Sprintf("fleetp:%s:%d", run, i), lead)
		lats, took = append(lats, l...), append(took, t...)
		b.StopTimer()
		colds = append(colds, hitRTTs(b, c0, "fleetp:rtt", coldIdle, 1)...)
		b.StartTimer()
	}
	b.StopTimer()
	coldRTT := median(colds)
	if len(took) == 0 {
		b.Fatal("no loader call")
	}
	b.ReportMetric(float64(len(took))/float64(b.N), "calls/round")
	reportOver(b, lats, took, rtt, coldRTT, coldPub)
}
