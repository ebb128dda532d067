package faults_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/lock"
)

// The mutual-exclusion run: mutexProcs processes of mutexGoroutines
// goroutines increment a counter in a fencedStore under one lock, while
// faults are injected for mutexRun.
const (
	mutexProcs      = 3
	mutexGoroutines = 4
	mutexRun        = 12 * time.Second
	// mutexLastHold bounds a hold begun just before the run's deadline:
	// Obtain's 5 s, a read and a write of up to 10 s each, Release's 5 s.
	mutexLastHold = 30 * time.Second
	mutexLease    = 500 * time.Millisecond
	mutexPause    = 900 * time.Millisecond // a stopped holder outlives its lease
	mutexMaxHolds = 200                    // per goroutine
	mutexWork     = 30 * time.Millisecond  // between a hold's read and its write
)

// More environment variables of the helper processes.
const (
	envProc     = "LOCKSMITH_FAULTS_PROC"
	envDeadline = "LOCKSMITH_FAULTS_DEADLINE"
)

// hold is one goroutine's turn with the lock, as its process saw it. Times
// are wall-clock Unix nanoseconds, comparable across processes on one host.
type hold struct {
	Proc, G, I int
	Careful    bool   // refreshes the lock before writing, and skips the write if lost
	Err        string // Obtain failed
	Token      int64
	Start, End int64 // from the lock obtained to its last use of the store
	ReadCall   int64 `json:",omitempty"`
	ReadRet    int64 `json:",omitempty"`
	Read       int64
	ReadOK     bool
	ReadErr    string `json:",omitempty"`
	WriteCall  int64  `json:",omitempty"`
	WriteRet   int64  `json:",omitempty"`
	WriteOK    bool
	WriteErr   string `json:",omitempty"`
	Skipped    bool   // a careful holder found its lock lost and did not write
	Release    string // the error of Release, if any
}

func (h *hold) opID(kind string) string { return fmt.Sprintf("%d-%d-%d-%s", h.Proc, h.G, h.I, kind) }

// helperMutex is one process of the mutual-exclusion run: goroutines that
// take the lock "counter" in turn until the deadline, and under it read the
// counter from the store and write it back incremented, with their fencing
// token. Each hold is printed as a JSON line.
func helperMutex() int {
	proc, _ := strconv.Atoi(os.Getenv(envProc))
	ns, _ := strconv.ParseInt(os.Getenv(envDeadline), 10, 64)
	deadline := time.Unix(0, ns)
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv(envRedis)})
	defer rdb.Close()
	l := lock.New(rdb, &lock.Options{TTL: mutexLease, PollInterval: 100 * time.Millisecond})
	defer l.Close()
	st := newStoreClient(os.Getenv(envStore), proc)
	defer st.hc.CloseIdleConnections()

	var wg sync.WaitGroup
	for g := range mutexGoroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < mutexMaxHolds && time.Now().Before(deadline); i++ {
				h := &hold{Proc: proc, G: g, I: i, Careful: g%2 == 1}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				lk, err := l.Obtain(ctx, "counter")
				if err != nil {
					h.Err = err.Error()
				} else {
					h.Token = lk.Token()
					h.use(st, func() bool { return lk.Refresh(ctx) == nil })
					if err := lk.Release(ctx); err != nil {
						h.Release = err.Error()
					}
				}
				cancel()
				b, _ := json.Marshal(h)
				emit("%s", b)
				if h.Err != "" {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	return 0
}

// use reads the counter, works, and writes it back incremented, unless the
// read is refused or, for a careful holder, held reports the lock lost.
func (h *hold) use(st *storeClient, held func() bool) {
	h.Start = time.Now().UnixNano()
	defer func() { h.End = time.Now().UnixNano() }()
	h.ReadCall = time.Now().UnixNano()
	v, ok, err := st.read(h.Token, h.opID("r"))
	h.ReadRet = time.Now().UnixNano()
	h.Read, h.ReadOK = v, ok
	if err != nil {
		h.ReadErr = err.Error()
	}
	if !ok {
		return
	}
	time.Sleep(mutexWork)
	if h.Careful && !held() {
		h.Skipped = true
		return
	}
	h.WriteCall = time.Now().UnixNano()
	ok, err = st.write(h.Token, v+1, h.opID("w"))
	h.WriteRet = time.Now().UnixNano()
	h.WriteOK = ok
	if err != nil {
		h.WriteErr = err.Error()
	}
}

// counterOp is an operation of the linearizability model: a hold's fenced
// read-modify-write (its read and write both accepted), or a lone read (its
// write refused, skipped or lost).
type counterOp struct {
	Incr bool
	From int64 // for Incr: the value read, and from+1 written
}

// counterModel is a register incremented by holds: an increment from v is
// legal only in state v; a read of v only in state v.
var counterModel = porcupine.Model{
	Init: func() any { return int64(0) },
	Step: func(state, input, output any) (bool, any) {
		s, in := state.(int64), input.(counterOp)
		if in.Incr {
			return in.From == s, s + 1
		}
		return output.(int64) == s, s
	},
	DescribeOperation: func(input, output any) string {
		if in := input.(counterOp); in.Incr {
			return fmt.Sprintf("incr %d->%d", in.From, in.From+1)
		}
		return fmt.Sprintf("read %d", output)
	},
}

// TestMutualExclusionUnderFaults: 3 processes x 4 goroutines increment a
// counter in a fenced store under one lock, while their holders are stopped
// past their lease (SIGSTOP), their connections to Redis are slowed or reset
// (toxiproxy), and Redis restarts empty once. Stopped holders wake up
// believing they still hold the lock, alongside their successors: such
// unfenced overlaps must happen (else the faults did not bite). The fenced
// store must refuse every stale operation, so that the accepted ones stay
// linearizable (checked by porcupine): no fenced violation.
func TestMutualExclusionUnderFaults(t *testing.T) {
	ctx := ctxT(t, testTimeout)
	s := redistest.Start(t, nil)
	x := newToxi()
	store := &fencedStore{}
	url := store.serve(t)
	begin := time.Now()
	deadline := begin.Add(mutexRun)
	var proxies []*proxy
	var children []*child
	for i := range mutexProcs {
		p := x.proxy(t, s.Addr())
		proxies = append(proxies, p)
		children = append(children, startChild(t, fmt.Sprint("mutex", i), "mutex",
			envRedis+"="+p.Addr(), envStore+"="+url, envProc+"="+strconv.Itoa(i),
			envDeadline+"="+strconv.FormatInt(deadline.UnixNano(), 10)))
	}

	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0))
	faults := map[string]int{}
	restarted := false
	// Every other fault stops a holder, so that every run has stale holders.
	for n := 0; n < 100 && time.Now().Add(mutexPause).Before(deadline); n++ {
		a := 0
		if n%2 == 1 {
			a = 5 + rng.IntN(5)
		}
		switch {
		case a < 5:
			// Stop the process that read last: most likely it is between
			// its read and its write.
			p := store.lastReader()
			if p < 0 {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			children[p].pause(t)
			time.Sleep(mutexPause)
			children[p].resume(t)
			faults["SIGSTOP past the lease"]++
		case a < 7:
			p := proxies[rng.IntN(len(proxies))]
			name := p.toxic(t, "latency", "downstream", map[string]int64{"latency": 150, "jitter": 50})
			time.Sleep(600 * time.Millisecond)
			p.heal(t, name)
			faults["latency 150±50ms for 600ms"]++
		case a < 9:
			p := proxies[rng.IntN(len(proxies))]
			name := p.toxic(t, "reset_peer", "downstream", map[string]int64{"timeout": 0})
			time.Sleep(100 * time.Millisecond)
			p.heal(t, name)
			faults["connection reset"]++
		default:
			time.Sleep(300 * time.Millisecond)
		}
		if !restarted && time.Since(begin) > mutexRun/2 {
			s.Restart(t)
			restarted = true
			faults["Redis restart (empty)"]++
		}
		time.Sleep(time.Duration(50+rng.IntN(150)) * time.Millisecond)
	}

	var holds []*hold
	for _, c := range children {
		if err := c.wait(t, mutexLastHold+hangTimeout); err != nil {
			t.Fatal(err)
		}
		for l := range c.lines {
			h := &hold{}
			if err := json.Unmarshal([]byte(l), h); err != nil {
				t.Fatalf("%s: %v in %q", c.name, err, l)
			}
			holds = append(holds, h)
		}
	}
	log, final := store.snapshot()
	end := time.Now().UnixNano()
	if ctx.Err() != nil {
		t.Fatal("the run outlasted its bound")
	}
	rep := analyse(holds, log, final, end)
	t.Logf("seed %d; faults injected: %v", seed, faults)
	t.Logf("holds: %d taken (%d by careful holders), %d completed (read and write accepted), %d Obtain errors; %d store operations",
		rep.taken, rep.careful, rep.completed, rep.obtainErrs, len(log))
	t.Logf("unfenced overlaps: %d pairs of holds that both believed they held the lock, involving %d stale holds; "+
		"%d stale operations refused by the fence; %d writes skipped by careful holders whose Refresh failed",
		rep.overlaps, rep.staleHolds, rep.refused, rep.skipped)
	t.Logf("fenced violations: %d (stale tokens accepted %d, duplicate tokens %d, wrong increments %d, porcupine %s); counter %d, accepted writes %d",
		rep.violations(), rep.staleAccepted, rep.dupTokens, rep.badIncr, rep.linearizable, final, rep.acceptedWrites)
	if rep.taken == 0 || rep.completed == 0 {
		t.Fatalf("no hold completed")
	}
	if rep.overlaps == 0 {
		t.Errorf("no unfenced overlap: the faults did not bite, the run proves nothing")
	}
	if rep.violations() != 0 {
		t.Errorf("fenced violations: %d", rep.violations())
	}
	for _, e := range rep.examples {
		t.Log(e)
	}
}

// report is the analysis of a mutual-exclusion run.
type report struct {
	taken, careful, completed, obtainErrs int
	overlaps, staleHolds                  int
	refused, skipped                      int
	staleAccepted, dupTokens, badIncr     int
	acceptedWrites                        int
	linearizable                          porcupine.CheckResult
	examples                              []string
}

func (r *report) violations() int {
	n := r.staleAccepted + r.dupTokens + r.badIncr
	if r.linearizable != porcupine.Ok {
		n++
	}
	return n
}

// analyse checks a run: the store's own log is the truth about which
// operations took effect; the holds give their timing.
func analyse(holds []*hold, log []storeOp, final, end int64) *report {
	r := &report{}
	byID := map[string]storeOp{}
	for _, op := range log {
		byID[op.ID] = op
		if !op.OK {
			r.refused++
			continue
		}
		if op.Token < op.MaxWas {
			r.staleAccepted++
		}
		if op.Write {
			r.acceptedWrites++
		}
	}
	tokens := map[int64]int{}
	var taken []*hold
	var history []porcupine.Operation
	for _, h := range holds {
		if h.Err != "" {
			r.obtainErrs++
			continue
		}
		if h.Token == 0 {
			continue
		}
		r.taken++
		if h.Careful {
			r.careful++
		}
		if h.Skipped {
			r.skipped++
		}
		taken = append(taken, h)
		tokens[h.Token]++
		rd, readOK := byID[h.opID("r")]
		wr, wrote := byID[h.opID("w")]
		if !readOK || !rd.OK {
			continue
		}
		// An operation whose reply was lost took effect at some unknown
		// time before the end of the run.
		ret := func(t int64) int64 {
			if t == 0 {
				return end
			}
			return t
		}
		if wrote && wr.OK {
			r.completed++
			if wr.Value != rd.Value+1 {
				r.badIncr++
			}
			history = append(history, porcupine.Operation{ClientId: h.Proc*mutexGoroutines + h.G,
				Input: counterOp{Incr: true, From: rd.Value}, Call: h.ReadCall, Return: ret(h.WriteRet)})
			continue
		}
		history = append(history, porcupine.Operation{ClientId: h.Proc*mutexGoroutines + h.G,
			Input: counterOp{}, Output: rd.Value, Call: h.ReadCall, Return: ret(h.ReadRet)})
	}
	for tok, n := range tokens {
		if n > 1 {
			r.dupTokens += n - 1
			r.examples = append(r.examples, fmt.Sprintf("token %d issued to %d holds", tok, n))
		}
	}
	// Unfenced overlaps: two holds whose [Start, End] intervals intersect.
	// The earlier of the two is the stale one: it started first and was
	// still at work when its successor started.
	sort.Slice(taken, func(i, j int) bool { return taken[i].Start < taken[j].Start })
	for i, a := range taken {
		stale := false
		for _, b := range taken[i+1:] {
			if b.Start > a.End {
				break
			}
			r.overlaps++
			stale = true
			if len(r.examples) < 5 {
				r.examples = append(r.examples, fmt.Sprintf("overlap: p%d/g%d token %d [read ok %t, write ok %t] and p%d/g%d token %d [read ok %t, write ok %t], %v apart",
					a.Proc, a.G, a.Token, a.ReadOK, a.WriteOK, b.Proc, b.G, b.Token, b.ReadOK, b.WriteOK, time.Duration(b.Start-a.Start)))
			}
		}
		if stale {
			r.staleHolds++
		}
	}
	r.linearizable = porcupine.CheckOperationsTimeout(counterModel, history, 20*time.Second)
	if int64(r.acceptedWrites) != final {
		r.badIncr++
		r.examples = append(r.examples, fmt.Sprintf("counter %d after %d accepted writes", final, r.acceptedWrites))
	}
	return r
}
