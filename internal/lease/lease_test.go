package lease

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/internal/redisx"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestParseAcquire(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply any
		want  Result
		ok    bool
	}{
		{"held", []any{int64(0), int64(1500)}, Result{State: held, N: 1500}, true},
		{"acquired", []any{int64(1), int64(42)}, Result{State: Acquired, N: 42}, true},
		{"a string", "bytes", Result{}, false},
		{"nil", nil, Result{}, false},
		{"number", int64(1), Result{}, false},
		{"short", []any{int64(1)}, Result{}, false},
		{"long", []any{int64(1), int64(2), int64(3)}, Result{}, false},
		{"bad state", []any{int64(7), int64(1)}, Result{}, false},
		{"state as string", []any{"1", int64(1)}, Result{}, false},
		{"state 2", []any{int64(2), int64(1)}, Result{}, false},
		{"acquired with string", []any{int64(1), "x"}, Result{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseAcquire(tc.reply)
			if (err == nil) != tc.ok || got != tc.want {
				t.Errorf("got %+v, %v; want %+v, ok=%v", got, err, tc.want, tc.ok)
			}
		})
	}
}

func TestParseRelease(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply any
		want  Release
		ok    bool
	}{
		{"not ours", int64(0), Release{}, true},
		{"released", int64(1), Release{Released: true}, true},
		{"released, not published", []any{int64(1), "NOPERM no channel"}, Release{Released: true}, true},
		{"gone, nobody took it since", int64(2), Release{Released: true, Gone: true}, true},
		{"three", int64(3), Release{}, false},
		{"not ours with error", []any{int64(0), "x"}, Release{}, false},
		{"nil", nil, Release{}, false},
	} {
		got, err := parseRelease(tc.reply)
		if (err == nil) != tc.ok || got.Released != tc.want.Released {
			t.Errorf("%s: got %+v, %v; want %+v, ok=%v", tc.name, got, err, tc.want, tc.ok)
		}
		if tc.name == "released, not published" && (got.NotifyErr == nil || got.NotifyErr.Error() != "NOPERM no channel") {
			t.Errorf("%s: NotifyErr = %v", tc.name, got.NotifyErr)
		}
	}
}

// TestReleaseWithoutChannelPermission: an ACL user without channel
// permissions releases its lease; the refused PUBLISH is reported as such,
// not as a failed release.
func TestReleaseWithoutChannelPermission(t *testing.T) {
	s := redistest.Start(t, nil)
	s.Do(t, "ACL", "SETUSER", "nochan", "on", ">pw", "~*", "+@all", "resetchannels")
	c := redisx.New(s.Client(t, &redis.Options{Username: "nochan", Password: "pw"}))
	ctx := redistest.Context(t, 10*time.Second)
	token := NewToken()
	if r, err := Acquire(ctx, c, "{k}", token, time.Minute); err != nil || r.State != Acquired {
		t.Fatalf("Acquire: %+v, %v", r, err)
	}
	r, err := releaseLease(ctx, c, "{k}", token, Message(Released, ""))
	if err != nil || !r.Released || r.NotifyErr == nil {
		t.Fatalf("Release: got %+v, %v; want released with a notify error", r, err)
	}
	if n := s.Do(t, "EXISTS", "{k}"); n != int64(0) {
		t.Fatal("lock still held")
	}
}

func TestParseFlag(t *testing.T) {
	for reply, want := range map[any]bool{int64(0): false, int64(1): true} {
		if got, err := parseFlag(reply); err != nil || got != want {
			t.Errorf("parseFlag(%v): got %v, %v", reply, got, err)
		}
	}
	for _, bad := range []any{nil, int64(2), int64(-1), "1", []any{int64(1)}} {
		if _, err := parseFlag(bad); err == nil {
			t.Errorf("parseFlag(%v): got nil error", bad)
		}
	}
}

// FuzzParseAcquire feeds the reply parser every shape a Redis reply can
// take: it must return a result or an error, never panic.
func FuzzParseAcquire(f *testing.F) {
	f.Add(uint8(2), int64(0), int64(1500), "")
	f.Add(uint8(2), int64(1), int64(42), "")
	f.Add(uint8(3), int64(2), int64(0), "value")
	f.Add(uint8(0), int64(0), int64(0), "")
	f.Add(uint8(1), int64(9), int64(0), "x")
	f.Fuzz(func(t *testing.T, shape uint8, a, b int64, s string) {
		var reply any
		switch shape % 6 {
		case 0:
			reply = nil
		case 1:
			reply = []any{a}
		case 2:
			reply = []any{a, b}
		case 3:
			reply = []any{a, s}
		case 4:
			reply = []any{s, b, a}
		case 5:
			reply = s
		}
		r, err := parseAcquire(reply)
		if err == nil && (r.State < held || r.State > Acquired) {
			t.Fatalf("accepted state %d", r.State)
		}
		_, _ = parseFlag(reply)
		if rel, err := parseRelease(reply); err == nil && !rel.Released && rel.NotifyErr != nil {
			t.Fatalf("accepted a notify error without a release: %+v", rel)
		}
	})
}

func TestQuote(t *testing.T) {
	if got := redisx.Quote("a\x00"); got != `"a\x00"` {
		t.Errorf("got %s", got)
	}
	long := make([]byte, 1000)
	if got := redisx.Quote(string(long)); len(got) > 400 {
		t.Errorf("long name quoted to %d bytes", len(got))
	}
}

func TestKeeper(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	c := redisx.New(rdb)
	ctx := context.Background()
	const ttl = 300 * time.Millisecond
	acquire := func(key string) (string, time.Time) {
		token, since := NewToken(), time.Now()
		r, err := Acquire(ctx, c, key, token, ttl)
		if err != nil || r.State != Acquired {
			t.Fatalf("Acquire: %+v, %v", r, err)
		}
		return token, since
	}
	t.Run("renews", func(t *testing.T) {
		token, since := acquire("{renew}")
		k := Keep(c, "{renew}", token, ttl, since, nil)
		deadline := time.Now().Add(4 * ttl)
		for time.Now().Before(deadline) {
			if v, _ := rdb.Get(ctx, "{renew}").Result(); v != token {
				t.Fatalf("lease lost while kept: key holds %q", v)
			}
			time.Sleep(ttl / 10)
		}
		if err := k.Stop(); err != nil {
			t.Fatalf("Stop: %v", err)
		}
	})
	t.Run("reports loss", func(t *testing.T) {
		token, since := acquire("{lose}")
		lost := make(chan struct{})
		k := Keep(c, "{lose}", token, ttl, since, func() { close(lost) })
		if err := rdb.Del(ctx, "{lose}").Err(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-lost:
		case <-time.After(10 * time.Second):
			t.Fatal("loss not reported")
		}
		if err := k.Stop(); !errors.Is(err, ErrNotHeld) {
			t.Fatalf("Stop: got %v; want ErrNotHeld", err)
		}
	})
	t.Run("gives up when Redis stalls past the lease", func(t *testing.T) {
		token, since := acquire("{stall}")
		lost := make(chan struct{})
		k := Keep(c, "{stall}", token, ttl, since, func() { close(lost) })
		s.Pause(t)
		select {
		case <-lost:
		case <-time.After(10 * time.Second):
			t.Error("loss not reported while Redis was stalled")
		}
		s.Resume(t)
		if err := k.Stop(); !errors.Is(err, ErrNotHeld) {
			t.Fatalf("Stop: got %v; want ErrNotHeld", err)
		}
	})
}

// TestAcquireRetried: a client that retries an acquire whose reply was lost
// (go-redis does, by default) gets the lease it already took, not "held".
func TestAcquireRetried(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := redisx.New(rdb)
	ctx := context.Background()
	token := NewToken()
	first, err := Acquire(ctx, c, "{k}", token, time.Minute)
	if err != nil || first.State != Acquired {
		t.Fatalf("first: %+v, %v", first, err)
	}
	again, err := Acquire(ctx, c, "{k}", token, time.Minute)
	if err != nil || again != first {
		t.Fatalf("retried: got %+v, %v; want %+v", again, err, first)
	}
	other, err := Acquire(ctx, c, "{k}", NewToken(), time.Minute)
	if err != nil || other.State != held {
		t.Fatalf("another holder: got %+v, %v; want held", other, err)
	}
}

// TestKeeperThroughReadOnly: a transient error reply (READONLY while a
// failover is under way) does not count as a lost lease: the keeper tries
// again until the lease has really run out.
func TestKeeperThroughReadOnly(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := s.Client(t, &redis.Options{MaxRetries: -1})
	renewals := &renewalReplies{key: "{ro}"}
	rdb.AddHook(renewals)
	c := redisx.New(rdb)
	ctx := redistest.Context(t, 20*time.Second)
	const ttl = 900 * time.Millisecond
	token, since := NewToken(), time.Now()
	if r, err := Acquire(ctx, c, "{ro}", token, ttl); err != nil || r.State != Acquired {
		t.Fatalf("Acquire: %+v, %v", r, err)
	}
	lost := make(chan struct{})
	k := Keep(c, "{ro}", token, ttl, since, func() { close(lost) })
	// A replica of a master that cannot be reached answers READONLY to
	// every write, as a demoted master does during a failover.
	s.Do(t, "REPLICAOF", "127.0.0.1", "1")
	redistest.WaitFor(t, "a renewal refused with READONLY", func() bool {
		ro, _ := renewals.counts()
		return ro > 0
	})
	_, okBefore := renewals.counts()
	s.Do(t, "REPLICAOF", "NO", "ONE")
	select {
	case <-lost:
		t.Fatal("lease reported lost on a READONLY reply")
	default:
	}
	redistest.WaitFor(t, "a renewal accepted after the failover", func() bool {
		_, ok := renewals.counts()
		return ok > okBefore
	})
	if pttl := rdb.PTTL(ctx, "{ro}").Val(); pttl < ttl/2 {
		t.Errorf("PTTL %v after a renewal; want about %v", pttl, ttl)
	}
	if err := k.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
}

// renewalReplies counts the replies to scripts run on key (renewals, once
// the lease is acquired): READONLY refusals, and successes.
type renewalReplies struct {
	key          string
	mu           sync.Mutex // guards readOnly and ok
	readOnly, ok int
}

func (h *renewalReplies) counts() (readOnly, ok int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.readOnly, h.ok
}

func (h *renewalReplies) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *renewalReplies) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		args := cmd.Args()
		if (cmd.Name() == "evalsha" || cmd.Name() == "eval") && len(args) > 3 && args[3] == h.key {
			h.mu.Lock()
			switch {
			case err == nil:
				h.ok++
			case strings.HasPrefix(err.Error(), "READONLY"):
				h.readOnly++
			}
			h.mu.Unlock()
		}
		return err
	}
}
func (h *renewalReplies) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// acquireAll starts a redis-server and takes n leases of ttl on keys
// {tag}:i, acquired at since.
func acquireAll(t *testing.T, tag string, n int, ttl time.Duration) (s *redistest.Server, rdb *redis.Client, c *redisx.Client,
	keys, tokens []string, since time.Time) {
	s = redistest.Start(t, nil)
	rdb = s.Client(t, nil)
	c = redisx.New(rdb)
	keys, tokens = make([]string, n), make([]string, n)
	since = time.Now()
	for i := range keys {
		keys[i], tokens[i] = fmt.Sprintf("{%s}:%d", tag, i), NewToken()
		if r, err := Acquire(context.Background(), c, keys[i], tokens[i], ttl); err != nil || r.State != Acquired {
			t.Fatalf("Acquire: %+v, %v", r, err)
		}
	}
	return s, rdb, c, keys, tokens, since
}

// TestKeepAll: the leases of KeepAll are renewed together, one pipelined
// call per renewal for every one still held: a lease stopped drops out of
// the next, a lease lost is told at Stop, the others held throughout.
func TestKeepAll(t *testing.T) {
	const ttl, n = 300 * time.Millisecond, 40
	s, rdb, c, keys, tokens, since := acquireAll(t, "all", n, ttl)
	ctx := redistest.Context(t, 20*time.Second)
	calls := &refreshCalls{}
	rdb.AddHook(calls)
	// Redis knows no script: the first renewal meets NOSCRIPT, and goes
	// again by EVAL.
	s.Do(t, "SCRIPT", "FLUSH")
	ks := KeepAll(c, keys, tokens, ttl, since, nil)
	// Three renewals (the first in two calls): the leases outlive their
	// first ttl.
	redistest.WaitFor(t, "3 renewals", func() bool { return len(calls.get()) >= 4 })
	for i, key := range keys {
		if v := rdb.Get(ctx, key).Val(); v != tokens[i] {
			t.Fatalf("%s holds %q after 3 renewals; want its token", key, v)
		}
	}
	for _, m := range calls.get() {
		if m != n {
			t.Fatalf("renewals carried %v leases; want %d each, in one call", calls.get(), n)
		}
	}
	// Half stopped: they drop out of the next renewals (a renewal under
	// way when a lease is stopped has counted before Stop returns).
	for _, k := range ks[1:20] {
		if err := k.Stop(); err != nil {
			t.Fatalf("Stop of a lease held: %v", err)
		}
	}
	seen := len(calls.get())
	redistest.WaitFor(t, "a renewal after the stops", func() bool { return len(calls.get()) > seen })
	if got := calls.get()[seen]; got != 21 {
		t.Fatalf("the renewal after 19 of 40 leases stopped carried %d; want 21", got)
	}
	// One lost: found so by a renewal, and dropped from the ones after.
	seen = len(calls.get())
	if err := rdb.Del(ctx, keys[0]).Err(); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "a renewal without the lease deleted", func() bool { return slices.Contains(calls.get()[seen:], 20) })
	for _, m := range calls.get()[seen:] {
		if m != 20 && m != 21 {
			t.Fatalf("renewals around a lease lost carried %v; want 21 (with it), then 20", calls.get()[seen:])
		}
	}
	if err := ks[0].Stop(); !errors.Is(err, ErrNotHeld) {
		t.Errorf("Stop of the lease deleted: %v; want ErrNotHeld", err)
	}
	for _, k := range ks[20:] {
		if err := k.Stop(); err != nil {
			t.Errorf("Stop of a lease held: %v", err)
		}
	}
	if single := calls.singles(); single != 0 {
		t.Errorf("%d renewals sent alone; want every one in the set's call", single)
	}
	if e := calls.evals(); e != n {
		t.Errorf("%d renewals sent by EVAL; want %d, the first renewal's, once", e, n)
	}
}

// refreshCalls counts the refresh scripts each pipeline carries, and
// those sent alone.
type refreshCalls struct {
	mu     sync.Mutex // guards pipes, single and eval
	pipes  []int
	single int
	eval   int // by EVAL, in pipelines
}

func (h *refreshCalls) evals() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.eval
}

func (h *refreshCalls) get() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.pipes)
}

func (h *refreshCalls) singles() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.single
}

func isRefresh(cmd redis.Cmder) bool {
	_, ok := IsRenewal(cmd)
	return ok
}

func (h *refreshCalls) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *refreshCalls) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if isRefresh(cmd) {
			h.mu.Lock()
			h.single++
			h.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}
func (h *refreshCalls) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		m, e := 0, 0
		for _, cmd := range cmds {
			if isRefresh(cmd) {
				m++
				if cmd.Name() == "eval" {
					e++
				}
			}
		}
		if m > 0 {
			h.mu.Lock()
			h.pipes = append(h.pipes, m)
			h.eval += e
			h.mu.Unlock()
		}
		return next(ctx, cmds)
	}
}

// TestKeepAllStopReleases: the last of a KeepAll's Keepers to stop stops
// the set's timer, which would otherwise hold every Keeper (and what their
// holders' onLost closures reach, a batch's values) until its first
// renewal, LockTTL/3 later.
func TestKeepAllStopReleases(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c := redisx.New(rdb)
	ks := KeepAll(c, []string{"{a}", "{b}"}, []string{NewToken(), NewToken()}, time.Minute, time.Now(), func(int) {})
	for _, k := range ks {
		if err := k.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	_ = ks[0].Stop() // twice: counted once
	s := ks[0].set
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.timer.Stop() {
		t.Error("the set's timer still pending once every Keeper stopped")
	}
	if s.left != 0 {
		t.Errorf("%d Keepers left; want 0", s.left)
	}
}

// TestKeepAllOneLeaseFails: each lease of a KeepAll is renewed by its own
// reply: one that fails (LOADING, as a Cluster node restarting answers for
// its keys only) fails that lease alone, which is lost once it surely ran
// out; the others, renewed by the same call, are held throughout.
func TestKeepAllOneLeaseFails(t *testing.T) {
	const ttl, n = 300 * time.Millisecond, 10
	_, rdb, c, keys, tokens, since := acquireAll(t, "one", n, ttl)
	ctx := redistest.Context(t, 20*time.Second)
	// An error reply as Redis gives it (go-redis types them).
	loadingErr := rdb.Eval(ctx, "return redis.error_reply('LOADING Redis is loading the dataset in memory')", nil).Err()
	if redisx.Classify(loadingErr) != redisx.Transient {
		t.Fatalf("%v: not a transient reply", loadingErr)
	}
	loading := &failRenewal{key: keys[0], err: loadingErr}
	rdb.AddHook(loading)
	lost := make(chan int, n)
	ks := KeepAll(c, keys, tokens, ttl, since, func(i int) { lost <- i })
	// Renewed once, all together; lease 0's renewals fail from then on.
	redistest.WaitFor(t, "a first renewal", func() bool { return renewedSince(ks, since) })
	loading.armed.Store(true)
	select {
	case i := <-lost:
		if i != 0 {
			t.Fatalf("lease %d lost; want only the one whose renewal failed, 0", i)
		}
	case <-ctx.Done():
		t.Fatal("the lease whose renewals failed was never lost")
	}
	// The others are renewed still, by calls sent since.
	lostAt := time.Now()
	redistest.WaitFor(t, "the other leases renewed since", func() bool { return renewedSince(ks[1:], lostAt) })
	select {
	case i := <-lost:
		t.Fatalf("lease %d lost too; want only 0", i)
	default:
	}
	for i, k := range ks {
		err := k.Stop()
		if i == 0 && !errors.Is(err, ErrNotHeld) || i > 0 && err != nil {
			t.Errorf("Stop of lease %d: %v", i, err)
		}
	}
	for i, key := range keys[1:] {
		if v := rdb.Get(ctx, key).Val(); v != tokens[i+1] {
			t.Errorf("%s holds %q; want its token, renewed", key, v)
		}
	}
}

// renewedSince reports whether every lease of ks was renewed by a call sent
// after at: each ends a lease after at, at the earliest.
func renewedSince(ks []*Keeper, at time.Time) bool {
	for _, k := range ks {
		k.mu.Lock()
		end := k.end
		k.mu.Unlock()
		if !end.After(at.Add(k.ttl)) {
			return false
		}
	}
	return true
}

// failRenewal reports the renewal of key, in a pipeline, as failed with
// err after it ran.
type failRenewal struct {
	key   string
	err   error
	armed atomic.Bool
}

func (h *failRenewal) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *failRenewal) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *failRenewal) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			if key, ok := IsRenewal(cmd); ok {
				if key == h.key && h.armed.Load() {
					cmd.SetErr(h.err)
					if err == nil {
						err = h.err
					}
				}
			}
		}
		return err
	}
}
