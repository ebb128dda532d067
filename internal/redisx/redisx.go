// Package redisx is how locksmith's packages talk to Redis: one wrapper
// around a go-redis client that bounds every call by its caller's deadline,
// sorts failures into what they mean for the caller, and remembers an outage
// so that calls during it fail at once instead of each paying the client's
// dial retries.
package redisx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// Client is a go-redis client as locksmith uses it. It is safe for
// concurrent use. [Client.Close] stops its outage probes; it does not close
// the go-redis client, which belongs to the caller.
type Client struct {
	rdb redis.UniversalClient
	// Sharded: a Redis Cluster client; notifications use SPUBLISH.
	Sharded bool
	// deadlines: the client bounds each call by its ctx deadline itself
	// (go-redis ContextTimeoutEnabled), so no call needs watching.
	deadlines bool

	out outage
	bg  background
}

// New wraps rdb.
func New(rdb redis.UniversalClient) *Client {
	c := &Client{rdb: rdb}
	switch r := rdb.(type) {
	case *redis.Client:
		c.deadlines = r.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		c.Sharded = true
		c.deadlines = r.Options().ContextTimeoutEnabled
	case *redis.Ring:
		c.deadlines = r.Options().ContextTimeoutEnabled
	}
	c.out.ping = func(ctx context.Context) error { return rdb.Ping(ctx).Err() }
	return c
}

// Watched reports whether a call with ctx runs on a goroutine of its own in
// [Run]: ctx has a deadline that the client does not enforce itself.
func (c *Client) Watched(ctx context.Context) bool {
	_, ok := ctx.Deadline()
	return ok && !c.deadlines
}

// Redis returns the wrapped client.
func (c *Client) Redis() redis.UniversalClient { return c.rdb }

// PublishFlag is the scripts' ARGV flag for how to notify: "1" for SPUBLISH
// (sharded pub/sub, on a Redis Cluster), "0" for PUBLISH.
func (c *Client) PublishFlag() string {
	if c.Sharded {
		return "1"
	}
	return "0"
}

// Close waits for the work [Client.Go] started (calls whose callers gave
// up, and what follows their replies: a lock released, a slot given back),
// at most [CloseWait], then stops the outage probe, if one runs, and waits
// for it. Work started later still runs, unwaited.
func (c *Client) Close() {
	c.bg.wait(CloseWait)
	c.out.close()
}

// CloseWait bounds how long [Client.Close] waits for background work: a
// clean-up's round trip is bounded by its own timeout, but a call whose
// caller gave up is bounded only by the client's socket timeouts.
const CloseWait = 5 * time.Second

// Outages returns how many outages began since New: times a call found
// Redis unreachable after the last one had ended.
func (c *Client) Outages() uint64 { return c.out.count.Load() }

// Down reports whether Redis is known to be unreachable now.
func (c *Client) Down() bool {
	c.out.mu.Lock()
	defer c.out.mu.Unlock()
	return c.out.down
}

// SetOnOutage sets functions called when an outage begins (with the error
// that began it) and ends (with its length). Either may be nil. They run on
// the goroutine that noticed the change, outside any lock; set them before
// the first call.
func (c *Client) SetOnOutage(start func(err error), end func(d time.Duration)) {
	c.out.onStart, c.out.onEnd = start, end
}

// Run runs fn, a call on c, and returns by ctx's deadline whatever c's
// timeout options. go-redis bounds a call by its ReadTimeout (3s by default),
// not by the caller's deadline, unless the client sets ContextTimeoutEnabled.
// So when ctx has a deadline that c would not enforce, fn runs on its own
// goroutine and Run returns as soon as fn does or ctx ends; when ctx ends
// first, fn goes on in the background (bounded by the client's timeouts) and
// late, if not nil, receives its outcome, on goroutines [Client.Close]
// waits for. Otherwise fn runs on the caller's
// goroutine, saving a hand-off: a ctx that can only be cancelled (no
// deadline) then bounds the call only through the client's own timeouts.
//
// While Redis is known to be unreachable (a call found it so, and no probe
// has found it back), Run returns an error wrapping [ErrUnavailable] at once
// without calling fn; one background PING at a time checks whether it is
// back.
func Run[T any](ctx context.Context, c *Client, fn func(context.Context) (T, error), late func(T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	if err := c.out.check(); err != nil {
		return zero, err
	}
	if !c.Watched(ctx) {
		v, err := fn(ctx)
		c.out.observe(err)
		return v, err
	}
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	c.Go(func() {
		v, err := fn(ctx)
		c.out.observe(err)
		ch <- result{v, err}
	})
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		if late != nil {
			c.Go(func() {
				r := <-ch
				late(r.v, r.err)
			})
		}
		return zero, ctx.Err()
	}
}

// Class is what a failed call means for its caller.
type Class int

// The classes of [Classify].
const (
	// OK: no error.
	OK Class = iota
	// Canceled: the caller's ctx ended.
	Canceled
	// Unreachable: Redis could not be reached: a refused or failed dial, a
	// connection reset or closed mid-call, a read that timed out on a
	// server that does not answer, or an outage remembered by [Run].
	Unreachable
	// Transient: an error reply that says the server cannot serve the call
	// now but will (READONLY, LOADING, MASTERDOWN, CLUSTERDOWN, TRYAGAIN,
	// NOREPLICAS, max number of clients; BUSY, a script of another client
	// running past its time): a failover or a restart under way, or a
	// server held up.
	Transient
	// Saturated: the client's connection pool had no free connection in
	// time. Redis is up; the call may be tried again.
	Saturated
	// Reply: any other error reply (WRONGTYPE, OOM, NOPERM, a script
	// error): trying again does not help.
	Reply
	// Closed: the go-redis client was closed.
	Closed
	// Other: anything else.
	Other
)

// Classify says what err means for the caller of a Redis call.
func Classify(err error) Class {
	if err == nil {
		// Before the targets below, which escape: a call that succeeded
		// allocates nothing here.
		return OK
	}
	var re redis.Error
	var op *net.OpError
	var ne net.Error
	switch {
	case errors.Is(err, ErrUnavailable):
		return Unreachable
	case errors.Is(err, redis.ErrClosed):
		return Closed
	case errors.Is(err, redis.ErrPoolTimeout), errors.Is(err, redis.ErrPoolExhausted):
		return Saturated
	case redis.IsReadOnlyError(err), redis.IsLoadingError(err), redis.IsMasterDownError(err),
		redis.IsClusterDownError(err), redis.IsTryAgainError(err), redis.IsNoReplicasError(err),
		redis.IsMaxClientsError(err), busy(err):
		return Transient
	case errors.As(err, &re):
		return Reply
	case errors.As(err, &op) && op.Op == "dial":
		// Before the ctx check: a dial bounded by its DialTimeout wraps
		// context.DeadlineExceeded.
		return Unreachable
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return Canceled
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE), errors.As(err, &ne):
		return Unreachable
	}
	return Other
}

// busy reports whether err is a BUSY reply: Redis runs another client's
// script past its time limit, and serves nothing else until it ends or is
// killed (not BUSYKEY).
func busy(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && strings.HasPrefix(re.Error(), "BUSY ")
}

// Outage reports whether err means Redis cannot serve calls now, so that a
// caller's failure policy (fail open or closed) applies: [Unreachable] or
// [Transient].
func Outage(err error) bool {
	switch Classify(err) {
	case Unreachable, Transient:
		return true
	}
	return false
}

// MayHaveRun reports whether a failed call may still have run on the server:
// any failure but an error reply, a closed client, an outage remembered by
// [Run] or a pool that gave no connection.
func MayHaveRun(err error) bool {
	if err == nil {
		return true
	}
	var re redis.Error
	switch {
	case errors.As(err, &re), errors.Is(err, redis.ErrClosed), errors.Is(err, ErrUnavailable),
		errors.Is(err, redis.ErrPoolTimeout), errors.Is(err, redis.ErrPoolExhausted):
		return false
	}
	return true
}

// ErrUnavailable is wrapped by the error of a call that [Run] did not make
// because Redis is known to be unreachable.
var ErrUnavailable = errors.New("redis unavailable")

// DownError is the error of a call not made during an outage. It wraps
// [ErrUnavailable] and the error that began the outage.
type DownError struct {
	Since time.Time // when the outage began
	Err   error     // the failure that began it
}

func (e *DownError) Error() string {
	return "redis unavailable since " + e.Since.Format(time.RFC3339Nano) + " (" +
		strconv.FormatInt(time.Since(e.Since).Milliseconds(), 10) + "ms): " + e.Err.Error()
}

// Unwrap returns ErrUnavailable and the failure that began the outage.
func (e *DownError) Unwrap() []error { return []error{ErrUnavailable, e.Err} }

// Outage probing: the first probe runs probeMin after the outage began; each
// failed probe doubles the pause, up to probeMax. A probe is one PING bounded
// by probeTimeout.
const (
	probeMin     = 50 * time.Millisecond
	probeMax     = 200 * time.Millisecond
	probeTimeout = time.Second
)

// outage remembers that Redis is unreachable. While it is, calls fail at
// once, and one probe at a time, in the background, checks whether it is
// back.
type outage struct {
	ping     func(context.Context) error
	onStart  func(error)
	onEnd    func(time.Duration)
	count    atomic.Uint64
	downFlag atomic.Bool // mirrors down, for a check without the lock
	probes   sync.WaitGroup

	mu      sync.Mutex // guards the fields below
	down    bool
	since   time.Time
	cause   error
	pause   time.Duration // before the next probe
	probing bool
	timer   *time.Timer
	closed  bool
}

func (o *outage) check() error {
	if !o.downFlag.Load() {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.down || o.closed {
		// Closed: no probe will end the outage; calls made after Close
		// (a closed Locker's locks are still refreshed) go to Redis and
		// find out for themselves.
		return nil
	}
	return &DownError{Since: o.since, Err: o.cause}
}

// observe records a call's outcome: an unreachable Redis begins an outage;
// anything that shows Redis answering ends one.
func (o *outage) observe(err error) {
	switch Classify(err) {
	case Unreachable:
		if errors.Is(err, ErrUnavailable) {
			return
		}
		o.begin(err)
	case Canceled, Other, Closed:
		// Says nothing about Redis.
	default:
		if o.downFlag.Load() {
			o.end()
		}
	}
}

func (o *outage) begin(err error) {
	o.mu.Lock()
	if o.down || o.closed {
		o.mu.Unlock()
		return
	}
	o.down, o.since, o.cause, o.pause = true, time.Now(), err, probeMin
	o.downFlag.Store(true)
	o.count.Add(1)
	o.schedule()
	onStart := o.onStart
	o.mu.Unlock()
	if onStart != nil {
		onStart(err)
	}
}

func (o *outage) end() {
	o.mu.Lock()
	if !o.down {
		o.mu.Unlock()
		return
	}
	o.down = false
	o.downFlag.Store(false)
	d := time.Since(o.since)
	if o.probing && o.timer != nil && o.timer.Stop() {
		// The probe never started: account for it here, so that the
		// next outage schedules one (and close does not wait for it).
		o.probing = false
		o.probes.Done()
	}
	onEnd := o.onEnd
	o.mu.Unlock()
	if onEnd != nil {
		onEnd(d)
	}
}

// schedule arms the next probe. o.mu must be held.
func (o *outage) schedule() {
	if o.probing || o.closed {
		return
	}
	o.probing = true
	o.probes.Add(1)
	o.timer = time.AfterFunc(o.pause, o.probe)
}

func (o *outage) probe() {
	defer o.probes.Done()
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	err := o.ping(ctx)
	cancel()
	o.mu.Lock()
	o.probing = false
	if !o.down || o.closed {
		o.mu.Unlock()
		return
	}
	if err != nil && Classify(err) != Reply {
		o.cause = err
		o.pause = min(2*o.pause, probeMax)
		o.schedule()
		o.mu.Unlock()
		return
	}
	o.mu.Unlock()
	o.end()
}

func (o *outage) close() {
	o.mu.Lock()
	o.closed = true
	if o.probing && o.timer != nil && o.timer.Stop() {
		// The probe never started: account for it here.
		o.probing = false
		o.probes.Done()
	}
	o.mu.Unlock()
	o.probes.Wait()
}

// Quote quotes a name for an error message, shortening a long one.
func Quote(name string) string {
	const limit = 64
	if len(name) <= limit {
		return strconv.Quote(name)
	}
	return strconv.Quote(name[:limit]) + "… (" + strconv.Itoa(len(name)) + " bytes)"
}

// keyEscape leads the hash tag of a name whose tag would otherwise be empty
// or would begin with keyEscape itself. It cannot begin UTF-8 text, so a
// textual name never needs it.
const keyEscape = "\xff"

// DefaultPrefix is the key prefix of every package by default, the original
// locksmith one: lock, fill and budget define theirs as this one, so a fill
// and a lock on the same name exclude each other by default.
const DefaultPrefix = "__locksmith:"

// Key returns the base key of name under prefix: prefix{name}. Every key and
// channel of one name appends a suffix to it, so they share the hash tag and
// one Redis Cluster slot. A name whose tag would be empty (the empty name, or
// one beginning with '}') or that begins with the byte 0xFF gets 0xFF put
// before it, so that every name has a non-empty tag and distinct names keep
// distinct keys.
func Key(prefix, name string) string {
	if name == "" || name[0] == '}' || name[0] == keyEscape[0] {
		return prefix + "{" + keyEscape + name + "}"
	}
	return prefix + "{" + name + "}"
}

// CheckPrefix returns an error when prefix cannot be used: a '{' or '}' in
// it would break the hash tag that keeps a name's keys in one slot.
func CheckPrefix(prefix string) error {
	for i := 0; i < len(prefix); i++ {
		if prefix[i] == '{' || prefix[i] == '}' {
			return fmt.Errorf("prefix %s contains %q: keys of one name would not share a hash tag", strconv.Quote(prefix), prefix[i])
		}
	}
	return nil
}

// IsNoScript reports whether err is Redis's NOSCRIPT: the server does not
// know the script (it restarted, or its scripts were flushed), and an
// EVALSHA of it is to be sent again once loaded, or by EVAL.
func IsNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// PoolSize returns the size of rdb's connection pool (per node on a
// Cluster or a Ring), its options' default filled in; 10 per CPU when rdb's
// type does not say.
func PoolSize(rdb redis.UniversalClient) int {
	n := 0
	switch r := rdb.(type) {
	case *redis.Client:
		n = r.Options().PoolSize
	case *redis.ClusterClient:
		n = r.Options().PoolSize
	case *redis.Ring:
		n = r.Options().PoolSize
	}
	if n <= 0 {
		n = 10 * runtime.GOMAXPROCS(0)
	}
	return n
}
