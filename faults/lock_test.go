package faults_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/lock"
)

// lockKey and fenceKey are the Redis keys of the lock on name and of its
// fencing counter, under the default prefix.
func lockKey(name string) string  { return lock.DefaultPrefix + "{" + name + "}" }
func fenceKey(name string) string { return lockKey(name) + ":fence" }

// newClient returns a go-redis client for addr, closed in t.Cleanup. opt may
// be nil (go-redis defaults).
func newClient(t testing.TB, addr string, opt *redis.Options) *redis.Client {
	var o redis.Options
	if opt != nil {
		o = *opt
	}
	o.Addr = addr
	c := redis.NewClient(&o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// newLocker returns a Locker closed in t.Cleanup.
func newLocker(t testing.TB, rdb redis.UniversalClient, opt *lock.Options) *lock.Locker {
	l := lock.New(rdb, opt)
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// warm takes, refreshes and releases a lock through l, so that the client's
// connection is open and the lock scripts are loaded: EVALSHA does not fall
// back to EVAL, a second round trip, from now on.
func warm(t testing.TB, ctx context.Context, l *lock.Locker) {
	t.Helper()
	lk, err := l.Obtain(ctx, "warm-up")
	if err != nil {
		t.Fatalf("warm-up Obtain: %v", err)
	}
	if err := lk.Refresh(ctx); err != nil {
		t.Fatalf("warm-up Refresh: %v", err)
	}
	if err := lk.Release(ctx); err != nil {
		t.Fatalf("warm-up Release: %v", err)
	}
}

func exists(t testing.TB, ctx context.Context, rdb *redis.Client, key string) bool {
	t.Helper()
	n, err := rdb.Exists(ctx, key).Result()
	if err != nil {
		t.Fatalf("EXISTS %s: %v", key, err)
	}
	return n == 1
}

// TestLostReplyOnAcquire: the acquire script runs on Redis, takes the lock,
// and its reply never reaches the client. Obtain returns an error, and the
// lock is not left behind: the library releases it (token-checked) long
// before its one-minute lease would have ended.
func TestLostReplyOnAcquire(t *testing.T) {
	const lease = time.Minute
	cases := []struct {
		name  string
		toxic string
		attrs map[string]int64
		// blackHole: the toxic holds replies back until it is removed,
		// once Obtain has returned.
		blackHole bool
		noRetries bool // go-redis MaxRetries -1
	}{
		// The reply is held back until the caller's ctx ends; then the
		// network heals (removing the toxic closes the connection).
		{name: "reply black-holed until the caller gives up", toxic: "timeout",
			attrs: map[string]int64{"timeout": 0}, blackHole: true},
		// The reply is lost with its connection, and the network is sound
		// again at once, while Obtain still waits: go-redis retries the
		// script on a new connection (3 retries by default).
		{name: "connection reset after the acquire ran, network back at once", toxic: "drop_once"},
		// The same with go-redis retries disabled: the script is not sent a
		// second time.
		{name: "connection reset after the acquire ran, network back at once, no go-redis retries",
			toxic: "drop_once", noRetries: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t, testTimeout)
			s := redistest.Start(t, nil)
			p := newToxi().proxy(t, s.Addr())
			opt := &redis.Options{ReadTimeout: time.Second}
			if tc.noRetries {
				opt.MaxRetries = -1
			}
			rdb := newClient(t, p.Addr(), opt)
			l := newLocker(t, rdb, &lock.Options{TTL: lease})
			direct := s.Client(t, nil)
			warm(t, ctx, l)
			calls0 := evalshaCalls(t, ctx, direct)

			name := p.toxic(t, tc.toxic, "downstream", tc.attrs)
			octx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			if tc.blackHole {
				octx, cancel = context.WithTimeout(ctx, 500*time.Millisecond)
				defer cancel()
			}
			type result struct {
				lk  *lock.Lock
				err error
			}
			r := result{}
			err := within(t, "Obtain", func() error {
				r.lk, r.err = l.Obtain(octx, "k")
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if tc.blackHole {
				p.heal(t, name)
			}
			calls := evalshaCalls(t, ctx, direct) - calls0
			if !tc.blackHole && calls < 2 && r.err == nil {
				t.Fatalf("the fault did not bite: Obtain got the first reply")
			}
			t.Logf("EVALSHA calls on Redis during Obtain: %d", calls)
			switch {
			case r.err == nil:
				// The library may recognise its own lock: then it holds it.
				t.Logf("Obtain returned the lock (token %d)", r.lk.Token())
				if err := r.lk.Release(ctx); err != nil {
					t.Fatalf("Release of the lock Obtain returned: %v", err)
				}
			case errors.Is(r.err, lock.ErrNotObtained):
				t.Fatalf("Obtain: got ErrNotObtained from a waiting Obtain: %v", r.err)
			case tc.blackHole && !errors.Is(r.err, context.DeadlineExceeded):
				t.Fatalf("Obtain with the reply black-holed: got %v; want an error wrapping DeadlineExceeded", r.err)
			default:
				t.Logf("Obtain: %v", r.err)
			}

			start := time.Now()
			deadline := start.Add(cleanupDeadline)
			for i := 0; exists(t, ctx, direct, lockKey("k")); i++ {
				if time.Now().After(deadline) || i > int(cleanupDeadline/(10*time.Millisecond)) {
					pttl, _ := direct.PTTL(ctx, lockKey("k")).Result()
					t.Fatalf("the lock is left behind: %v after Obtain returned %v, %s still exists "+
						"(PTTL %v of its %v lease); nobody will release it before the lease ends",
						cleanupDeadline, r.err, lockKey("k"), pttl, lease)
				}
				time.Sleep(10 * time.Millisecond)
			}
			t.Logf("lock key gone %v after Obtain returned", time.Since(start).Round(time.Millisecond))
			other := newLocker(t, direct, &lock.Options{TTL: lease})
			lk, err := other.TryObtain(ctx, "k")
			if err != nil {
				t.Fatalf("another client's TryObtain after the cleanup: %v", err)
			}
			if err := lk.Release(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// cleanupDeadline bounds the wait for the library's background release of an
// abandoned acquisition, itself bounded by 5s.
const cleanupDeadline = 10 * time.Second

// evalshaCalls returns how many EVALSHA commands the server has run.
func evalshaCalls(t testing.TB, ctx context.Context, rdb *redis.Client) int64 {
	t.Helper()
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(info, "cmdstat_evalsha:calls=")
	if !ok {
		return 0
	}
	n, _ := strconv.ParseInt(rest[:strings.IndexByte(rest, ',')], 10, 64)
	return n
}

// TestResetDuringRelease: the connection is reset while Release is under
// way. Release returns an error instead of hanging, and the lock is then
// either released already or expires by its lease: another client's
// Obtain succeeds within the lease. A reply lost once, the release sent
// again at once (go-redis's retry) and finding the lock gone with nobody
// taking it since, is a release: Release returns nil.
func TestResetDuringRelease(t *testing.T) {
	const lease = 2 * time.Second
	for _, tc := range []struct {
		name, toxic, stream string
		released            bool // Release returns nil
	}{
		{"reply lost, connection reset until Release returns", "reset_peer", "downstream", false},
		{"request lost, connection reset until Release returns", "reset_peer", "upstream", false},
		{"reply lost once, network back at once", "drop_once", "downstream", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t, testTimeout)
			s := redistest.Start(t, nil)
			p := newToxi().proxy(t, s.Addr())
			rdb := newClient(t, p.Addr(), &redis.Options{ReadTimeout: time.Second})
			l := newLocker(t, rdb, &lock.Options{TTL: lease})
			direct := s.Client(t, nil)
			warm(t, ctx, l)
			lk, err := l.Obtain(ctx, "r")
			if err != nil {
				t.Fatal(err)
			}
			name := p.toxic(t, tc.toxic, tc.stream, map[string]int64{"timeout": 0})
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			err = within(t, "Release", func() error { return lk.Release(rctx) })
			released := !exists(t, ctx, direct, lockKey("r"))
			p.heal(t, name)
			switch {
			case tc.released && (err != nil || !released):
				t.Fatalf("Release with its reply lost once: %v (lock released on Redis: %t); want nil, released", err, released)
			case !tc.released && err == nil:
				t.Fatalf("Release through a reset connection: got nil error")
			}
			t.Logf("Release: %v (lock released on Redis: %t)", err, released)

			start := time.Now()
			octx, cancel := context.WithTimeout(ctx, lease+3*time.Second)
			defer cancel()
			other := newLocker(t, direct, &lock.Options{TTL: lease})
			lk2, err := other.Obtain(octx, "r")
			if err != nil {
				t.Fatalf("Obtain after the failed Release, waiting up to the lease and 3s: %v", err)
			}
			if lk2.Token() <= lk.Token() {
				t.Errorf("successor token %d not above %d", lk2.Token(), lk.Token())
			}
			t.Logf("next Obtain succeeded after %v", time.Since(start).Round(time.Millisecond))
			if err := lk2.Release(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRenewalLatency: a holder's connection is slowed by latency at or above
// half the lease while Locker.Do runs its callback, and a competitor on a
// sound connection tries to take the lock all along. Either the callback
// completes with the lock held throughout (every one of its writes to the
// fenced resource accepted, none of the competitor's in between), or its ctx
// is cancelled with ErrNotHeld and Do's error wraps ErrNotHeld: never two
// holders writing unfenced.
func TestRenewalLatency(t *testing.T) {
	const lease = 600 * time.Millisecond
	cases := []struct {
		name    string
		latency int64
		streams []string
	}{
		{"replies delayed 120ms (a fifth of the lease)", 120, []string{"downstream"}},
		{"replies delayed 250ms (over a third of the lease)", 250, []string{"downstream"}},
		{"replies delayed 350ms (over half the lease)", 350, []string{"downstream"}},
		{"requests and replies delayed 350ms each", 350, []string{"upstream", "downstream"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t, testTimeout)
			s := redistest.Start(t, nil)
			p := newToxi().proxy(t, s.Addr())
			slow := newLocker(t, newClient(t, p.Addr(), nil), &lock.Options{TTL: lease, PollInterval: 50 * time.Millisecond})
			direct := s.Client(t, nil)
			fast := newLocker(t, direct, &lock.Options{TTL: lease, PollInterval: 50 * time.Millisecond})
			warm(t, ctx, slow)
			for _, st := range tc.streams {
				p.toxic(t, "latency", st, map[string]int64{"latency": tc.latency})
			}
			store := &fencedStore{}
			const holder, competitor = 1, 2

			holderDone := make(chan struct{})
			var compErr error
			var compWrites int
			compTokens := map[int64]bool{}
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { // the competitor
				defer wg.Done()
				deadline := time.Now().Add(hangTimeout)
				for i := 0; i < 1000 && time.Now().Before(deadline); i++ {
					lk, err := fast.TryObtain(ctx, "res")
					if err == nil {
						compTokens[lk.Token()] = true
						if store.write(lk.Token(), int64(100+compWrites), competitor, "competitor") {
							compWrites++
						}
						_ = lk.Release(ctx)
					} else if !errors.Is(err, lock.ErrNotObtained) {
						compErr = err
						return
					}
					select {
					case <-holderDone:
						if compWrites > 0 {
							return
						}
					default:
					}
					time.Sleep(20 * time.Millisecond)
				}
			}()

			var fnCause error
			var fnCompleted bool
			var writes, accepted int
			var tok int64
			var pttlAtLoss time.Duration
			doErr := within(t, "Do", func() error {
				return slow.Do(ctx, "res", func(fctx context.Context) error {
					// Do does not hand its Lock to the callback: the token
					// of the lock just obtained is the fencing counter's
					// value, read at once on a sound connection (nobody can
					// obtain the lock before its lease has run out).
					var err error
					if tok, err = direct.Get(ctx, fenceKey("res")).Int64(); err != nil {
						return err
					}
					tick := time.NewTicker(50 * time.Millisecond)
					defer tick.Stop()
					for i := range 20 { // 1s of work: over a lease
						select {
						case <-fctx.Done():
							fnCause = context.Cause(fctx)
							// Whether Redis still had the lock when the
							// holder gave it up.
							pttlAtLoss = direct.PTTL(ctx, lockKey("res")).Val()
							return fctx.Err()
						case <-tick.C:
						}
						writes++
						if store.write(tok, int64(i), holder, "holder") {
							accepted++
						}
					}
					fnCompleted = true
					return nil
				})
			})
			close(holderDone)
			wg.Wait()
			if compErr != nil {
				t.Fatalf("competitor: %v", compErr)
			}
			if compWrites == 0 {
				t.Fatalf("the competitor never wrote: the check had no competition")
			}
			if compTokens[tok] {
				t.Fatalf("the holder read the competitor's token %d as its own: inconclusive", tok)
			}

			// The fence must keep the two holders' accepted writes apart: no
			// accepted write of the competitor between the holder's first
			// and last accepted ones.
			log, _ := store.snapshot()
			first, last := -1, -1
			for i, op := range log {
				if op.OK && op.Proc == holder {
					if first < 0 {
						first = i
					}
					last = i
				}
			}
			for i := first + 1; first >= 0 && i < last; i++ {
				if log[i].OK && log[i].Proc == competitor {
					t.Errorf("the competitor's write (token %d) was accepted between the holder's (token %d): two holders writing unfenced", log[i].Token, tok)
					break
				}
			}
			switch {
			case fnCompleted && doErr == nil:
				if accepted != writes {
					t.Errorf("Do's callback completed believing it held the lock, yet %d of its %d writes were refused by the fence: two holders", writes-accepted, writes)
				}
				t.Logf("outcome: callback completed with the lock held throughout (%d writes accepted; competitor wrote %d times before or after)", accepted, compWrites)
			case !fnCompleted && errors.Is(fnCause, lock.ErrNotHeld) && errors.Is(doErr, lock.ErrNotHeld):
				t.Logf("outcome: callback cancelled with ErrNotHeld after %d writes (%d accepted, %d refused by the fence); "+
					"the lock's PTTL on Redis then: %v; competitor wrote %d times; Do: %v",
					writes, accepted, writes-accepted, pttlAtLoss, compWrites, doErr)
			default:
				t.Fatalf("unexpected outcome: callback completed %t, its ctx cause %v, Do returned %v", fnCompleted, fnCause, doErr)
			}
		})
	}
}

// fencedScript is a fenced resource inside Redis: a write (ARGV[3] = "w")
// of ARGV[2] to KEYS[1], or a read of it (ARGV[3] = "r"), is refused with a
// STALE error when the token ARGV[1] is lower than the highest accepted so
// far, kept in KEYS[2].
var fencedScript = redis.NewScript(`
local max = redis.call('GET', KEYS[2]) or '0'
if tonumber(ARGV[1]) < tonumber(max) then
  return redis.error_reply('STALE token ' .. ARGV[1] .. ' is below ' .. max)
end
redis.call('SET', KEYS[2], ARGV[1])
if ARGV[3] == 'w' then
  redis.call('SET', KEYS[1], ARGV[2])
  return 'OK'
end
return redis.call('GET', KEYS[1]) or ''
`)

func fencedRedis(ctx context.Context, rdb redis.Scripter, token int64, op, value string) (string, error) {
	return fencedScript.Run(ctx, rdb, []string{"resource", "resource:token"}, token, value, op).Text()
}

// TestPausedHolder: a holder in another process obtains a lock with a short
// lease, tells its fencing token, and is stopped (SIGSTOP) past its lease.
// A successor obtains the lock and writes to the fenced resources. When the
// old holder resumes it writes and reads as if it still held the lock: the
// resources refuse both by the token check, and its Release reports
// ErrNotHeld.
func TestPausedHolder(t *testing.T) {
	const lease = 500 * time.Millisecond
	ctx := ctxT(t, testTimeout)
	s := redistest.Start(t, nil)
	rdb := s.Client(t, nil)
	store := &fencedStore{}
	url := store.serve(t)
	c := startChild(t, "holder", "hold", envRedis+"="+s.Addr(), envStore+"="+url, envTTL+"="+lease.String())

	tok, err := strconv.ParseInt(strings.TrimPrefix(c.line(t), "token "), 10, 64)
	if err != nil {
		t.Fatalf("holder's first line: %v", err)
	}
	c.pause(t)
	paused := time.Now()
	// The holder, stopped, can neither renew nor release: the successor gets
	// the lock once the lease has run out.
	l := newLocker(t, rdb, &lock.Options{TTL: 10 * time.Second})
	succ, err := l.Obtain(ctx, "resource")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("holder (token %d) stopped; successor obtained the lock %v later with token %d",
		tok, time.Since(paused).Round(time.Millisecond), succ.Token())
	if succ.Token() <= tok {
		t.Fatalf("successor token %d not above the stopped holder's %d", succ.Token(), tok)
	}
	if !store.write(succ.Token(), 2, 0, "successor") {
		t.Fatal("the store refused the successor's write")
	}
	if _, err := fencedRedis(ctx, rdb, succ.Token(), "w", "successor"); err != nil {
		t.Fatalf("fenced Redis write by the successor: %v", err)
	}

	c.send(t, "go") // read when it resumes
	c.resume(t)
	got := map[string]string{}
	for range 5 {
		k, v, _ := strings.Cut(c.line(t), " ")
		got[k] = v
	}
	if err := c.wait(t, hangTimeout); err != nil {
		t.Fatal(err)
	}
	t.Logf("stale holder after SIGCONT: %v", got)
	if got["write"] != "refused" {
		t.Errorf("stale holder's write to the store: %q; want refused", got["write"])
	}
	if got["read"] != "refused" {
		t.Errorf("stale holder's read from the store: %q; want refused", got["read"])
	}
	if !strings.Contains(got["redis-write"], "STALE") {
		t.Errorf("stale holder's fenced Redis write: %q; want a STALE error", got["redis-write"])
	}
	if !strings.Contains(got["redis-read"], "STALE") {
		t.Errorf("stale holder's fenced Redis read: %q; want a STALE error", got["redis-read"])
	}
	if !strings.Contains(got["release"], lock.ErrNotHeld.Error()) {
		t.Errorf("stale holder's Release: %q; want ErrNotHeld", got["release"])
	}
	if _, v := store.snapshot(); v != 2 {
		t.Errorf("store value %d; want the successor's 2", v)
	}
	if v, err := rdb.Get(ctx, "resource").Result(); err != nil || v != "successor" {
		t.Errorf("fenced Redis value %q, %v; want the successor's", v, err)
	}
	if err := succ.Release(ctx); err != nil {
		t.Errorf("successor's Release: %v", err)
	}
}

// Environment variables passed to helper processes.
const (
	envRedis = "LOCKSMITH_FAULTS_REDIS"
	envStore = "LOCKSMITH_FAULTS_STORE"
	envTTL   = "LOCKSMITH_FAULTS_TTL"
)

// helperHold obtains the lock "resource", prints its token, waits for a line
// on stdin (it is stopped meanwhile), then uses the fenced resources and
// releases the lock, printing each outcome.
func helperHold() int {
	ttl, err := time.ParseDuration(os.Getenv(envTTL))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv(envRedis)})
	defer rdb.Close()
	l := lock.New(rdb, &lock.Options{TTL: ttl})
	defer l.Close()
	lk, err := l.Obtain(ctx, "resource")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	emit("token %d", lk.Token())
	if !bufio.NewScanner(os.Stdin).Scan() {
		return 1
	}
	outcome := func(ok bool, err error) string {
		switch {
		case err != nil:
			return "error: " + err.Error()
		case ok:
			return "accepted"
		}
		return "refused"
	}
	st := newStoreClient(os.Getenv(envStore), 1)
	ok, err := st.write(lk.Token(), 1, "stale-write")
	emit("write %s", outcome(ok, err))
	_, ok, err = st.read(lk.Token(), "stale-read")
	emit("read %s", outcome(ok, err))
	_, err = fencedRedis(ctx, rdb, lk.Token(), "w", "stale")
	emit("redis-write %s", outcome(true, err))
	_, err = fencedRedis(ctx, rdb, lk.Token(), "r", "")
	emit("redis-read %s", outcome(true, err))
	emit("release %s", outcome(true, lk.Release(ctx)))
	return 0
}
