// Package fill is a cache-aside on Redis with single flight across a whole
// fleet: when a key is missing, one caller on one server runs the loader, and
// every other caller, on that server or any other, gets its result the moment
// it exists.
//
// [Get] first merges the callers of one process on one flight per key. The
// flight reads the value, or claims the key's lock if there is none, in one
// round trip (one Lua script). The claimer runs the loader, with the lock's
// lease renewed while it runs, then stores the value, releases the lock and
// publishes the value on the key's channel in one more round trip. Flights on
// other servers that found the lock held wait on that channel and take the
// value from the message. A hit costs one round trip, a miss two plus the
// loader.
//
// The fill lock is a [lock] lock: a fill and a lock.Locker.Do on the same name
// and prefix exclude each other.
//
// # Keys
//
// For a key K under prefix P: the value is P{K}:value, the lock P{K}, and
// notifications go on the channel P{K}. A fill takes no fencing token: its
// store is checked against its lock token inside Redis, in the same script,
// so it needs no counter key beside each value.
//
// # Failures
//
// A loader error is not cached: the lock is released and the failure
// published, so every waiter returns it at once instead of each calling the
// upstream in turn. An error wrapping [ErrNotFound] is cached as an absence
// for Options.NegativeTTL. A loader panic is re-raised in every caller of the
// process, as x/sync/singleflight does. When Redis cannot be reached, Get runs
// the loader anyway (the in-process merge still holds) unless
// Options.FailClosed is set. Entries that cannot be decoded are counted and
// treated as misses, never served.
package fill

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/codec"
	"github.com/locksmith-go/locksmith/internal/envelope"
	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/notify"
)

var (
	// ErrNotFound, wrapped by a loader's error, has the absence of the value
	// cached for Options.NegativeTTL; later calls return an error wrapping
	// ErrNotFound without loading.
	ErrNotFound = errors.New("fill: not found")
	// ErrLoadFailed is wrapped by the error a caller gets when the loader
	// failed or panicked on another server while this one waited for it.
	ErrLoadFailed = errors.New("fill: load failed on another server")
	// ErrClosed is returned by Get on a closed Cache.
	ErrClosed = errors.New("fill: cache closed")
)

// Options configure a [Cache]. The zero value gives the defaults.
type Options struct {
	// Prefix is put before every key and channel name; it must not contain
	// '{' or '}'. Use the same prefix as a lock.Locker for fills and locks
	// to exclude each other.
	// default: "__locksmith:"
	Prefix string

	// TTL is how long a value stays cached.
	// default: 1h
	TTL time.Duration

	// LockTTL is the fill lock's lease. It is renewed every LockTTL/3 while
	// the loader runs, so it only bounds how long other servers wait for a
	// server that crashed mid-load.
	// default: 120s
	LockTTL time.Duration

	// Codec turns values into bytes.
	// default: codec.MsgPack
	Codec codec.Codec

	// NegativeTTL is how long an absence (a loader error wrapping
	// ErrNotFound) stays cached.
	// default: 1m
	NegativeTTL time.Duration

	// Jitter shortens every TTL by a random fraction up to Jitter, so keys
	// filled together do not expire together. 0 gives the default; a
	// negative value disables it.
	// default: 0.1
	Jitter float64

	// LoadTimeout bounds a flight: the loader runs on a context detached
	// from its callers (one caller giving up does not cancel the others'
	// load) that ends after LoadTimeout. It guards against a loader that
	// hangs; the fill lock is renewed until then.
	// default: 10m
	LoadTimeout time.Duration

	// PollInterval is the longest a flight waiting on another server goes
	// without looking at the key again when no notification arrives.
	// default: 1s
	PollInterval time.Duration

	// PublishLimit is the largest encoded value sent in the notification to
	// waiting servers; larger values are announced, and waiters read them
	// with one GET. A negative value never sends values.
	// default: 64 KiB
	PublishLimit int

	// CompressAbove compresses encoded values of at least this many bytes
	// when that makes them smaller. A negative value disables compression.
	// default: 4 KiB
	CompressAbove int

	// ReadFirst reads a value with a plain GET before the read-or-claim
	// script: a hit then costs the server what a GET costs (no Lua), and a
	// miss costs one more round trip (three, plus the loader). For keys
	// read far more often than they are filled.
	// default: false (a hit one round trip, a miss two)
	ReadFirst bool

	// FailClosed makes Get return the Redis error when Redis cannot be
	// reached, instead of running the loader without the fleet-wide lock.
	// default: false (fail open)
	FailClosed bool
}

func (o *Options) withDefaults() Options {
	var opt Options
	if o != nil {
		opt = *o
	}
	if opt.Prefix == "" {
		opt.Prefix = lease.DefaultPrefix
	}
	if opt.TTL <= 0 {
		opt.TTL = time.Hour
	}
	if opt.LockTTL <= 0 {
		opt.LockTTL = 120 * time.Second
	}
	if opt.Codec == nil {
		opt.Codec = codec.MsgPack
	}
	if opt.NegativeTTL <= 0 {
		opt.NegativeTTL = time.Minute
	}
	switch {
	case opt.Jitter == 0:
		opt.Jitter = 0.1
	case opt.Jitter < 0:
		opt.Jitter = 0
	case opt.Jitter > 1:
		opt.Jitter = 1
	}
	if opt.LoadTimeout <= 0 {
		opt.LoadTimeout = 10 * time.Minute
	}
	if opt.PollInterval <= 0 {
		opt.PollInterval = time.Second
	}
	if opt.PublishLimit == 0 {
		opt.PublishLimit = 64 << 10
	}
	switch {
	case opt.CompressAbove == 0:
		opt.CompressAbove = envelope.DefaultCompressAbove
	case opt.CompressAbove < 0:
		opt.CompressAbove = 0
	}
	return opt
}

// Option changes one [Get] call. When calls merge, the options of the call
// that started the flight apply.
type Option func(*call)

type call struct {
	ttl, negativeTTL time.Duration
}

// WithTTL caches this call's value for d instead of Options.TTL.
func WithTTL(d time.Duration) Option {
	return func(c *call) {
		if d > 0 {
			c.ttl = d
		}
	}
}

// WithNegativeTTL caches this call's absence for d instead of
// Options.NegativeTTL.
func WithNegativeTTL(d time.Duration) Option {
	return func(c *call) {
		if d > 0 {
			c.negativeTTL = d
		}
	}
}

// Stats are a Cache's counters since New.
type Stats struct {
	Hits         uint64 // values (or cached absences) read from Redis
	Misses       uint64 // flights that found no value in Redis
	Loads        uint64 // loader calls
	LocalMerges  uint64 // calls that joined a flight already running in this process
	RemoteMerges uint64 // flights that took another server's result instead of loading
	LoadErrors   uint64 // loader calls that failed (not with ErrNotFound) or panicked
	Corrupt      uint64 // entries in Redis or in notifications that could not be decoded
	RedisErrors  uint64 // failed Redis calls
	StaleStores  uint64 // loaded values not stored: the lease was lost or the key deleted meanwhile
}

type counters struct {
	hits, misses, loads, localMerges, remoteMerges atomic.Uint64
	loadErrors, corrupt, redisErrors, staleStores  atomic.Uint64
}

// Cache is a fleet-wide single-flight cache on one Redis. It is safe for
// concurrent use. It keeps one pub/sub connection, opened when a flight first
// waits on another server; [Cache.Close] closes it.
type Cache struct {
	rdb    *lease.Client
	opt    Options
	hub    *notify.Hub
	base   context.Context // parent of every flight; cancelled by Close
	cancel context.CancelFunc
	stats  counters

	mu      sync.Mutex // guards flights and closed
	flights map[flightKey]*flight
	closed  bool
	wg      sync.WaitGroup // running flights
}

// New returns a Cache on rdb, which may be a *redis.Client, a
// *redis.ClusterClient or a failover client. A nil opt gives the defaults.
func New(rdb redis.UniversalClient, opt *Options) *Cache {
	base, cancel := context.WithCancel(context.Background())
	return &Cache{
		rdb:     lease.NewClient(rdb),
		opt:     opt.withDefaults(),
		hub:     notify.New(rdb),
		base:    base,
		cancel:  cancel,
		flights: make(map[flightKey]*flight),
	}
}

// Close cancels the loads in progress, waits for them to return, and closes
// the pub/sub connection. Get then returns [ErrClosed].
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	return c.hub.Close()
}

// Stats returns the Cache's counters.
func (c *Cache) Stats() Stats {
	s := &c.stats
	return Stats{
		Hits: s.hits.Load(), Misses: s.misses.Load(), Loads: s.loads.Load(),
		LocalMerges: s.localMerges.Load(), RemoteMerges: s.remoteMerges.Load(),
		LoadErrors: s.loadErrors.Load(), Corrupt: s.corrupt.Load(),
		RedisErrors: s.redisErrors.Load(), StaleStores: s.staleStores.Load(),
	}
}

//go:embed delete.lua
var deleteLua string
var deleteScript = redis.NewScript(deleteLua)

// Delete removes key's value and breaks any fill of it in progress: a load
// that started before Delete cannot store its value after it. Waiting
// servers look again (and one of them loads afresh).
func (c *Cache) Delete(ctx context.Context, key string) error {
	lockKey := lease.LockKey(c.opt.Prefix, key)
	_, err := lease.Run(ctx, c.rdb, func(ctx context.Context) (any, error) {
		return deleteScript.Run(ctx, c.rdb.Scripter(), []string{lockKey, lease.ValueKey(lockKey)},
			c.rdb.PublishFlag(), msgDeleted).Result()
	}, nil)
	if err != nil {
		c.stats.redisErrors.Add(1)
		return fmt.Errorf("fill: delete %s: %w", lease.Quote(key), err)
	}
	return nil
}

// PanicError is what a caller of [Get] panics with when the loader panicked:
// the loader's panic value and the stack where it panicked.
type PanicError struct {
	Value any
	Stack []byte
}

func (p *PanicError) Error() string {
	return fmt.Sprintf("fill: loader panicked: %v\n\n%s", p.Value, p.Stack)
}

// Unwrap returns the panic value when it is an error.
func (p *PanicError) Unwrap() error {
	err, _ := p.Value.(error)
	return err
}

// errGoexit is the flight's outcome when the loader called runtime.Goexit.
var errGoexit = errors.New("fill: loader called runtime.Goexit")

// flightKey tells flights apart by key and by the type loaded: two calls for
// one key with different types each decode their own value.
type flightKey struct {
	key string
	typ reflect.Type
}

type flight struct {
	done    chan struct{} // closed when out is set
	waiters int           // callers still waiting; guarded by Cache.mu
	out     outcome
}

// outcome is how a flight or a load ended.
type outcome struct {
	val      any
	err      error
	panicked *PanicError
}

// ops are the typed operations of one Get call, erased to any so the flight
// machinery is not generic.
type ops struct {
	load   func(context.Context) (any, error)
	decode func([]byte) (any, error)
}

// Get returns the value cached for key, or runs load to make it, once across
// every Cache on the same Redis and prefix. Each caller waits with its own
// ctx: a caller that gives up gets ctx.Err() and leaves the flight running
// for the others. load runs on a context detached from the callers, bounded
// by Options.LoadTimeout and cancelled if the fill lock's lease is lost.
//
// A loader error reaches every caller waiting for it (here as the loader's
// own error value, on other servers wrapped in [ErrLoadFailed]); an error
// wrapping [ErrNotFound] is also cached for Options.NegativeTTL. A loader
// panic is re-raised in every caller in this process as a *[PanicError];
// when every caller has given up by then, it is re-raised on the flight's own
// goroutine, as an unrecovered panic in any goroutine would be: a panic is
// never swallowed.
func Get[T any](ctx context.Context, c *Cache, key string, load func(ctx context.Context) (T, error), opts ...Option) (T, error) {
	var zero T
	if load == nil {
		return zero, errors.New("fill: Get called with a nil loader")
	}
	cl := call{ttl: c.opt.TTL, negativeTTL: c.opt.NegativeTTL}
	for _, o := range opts {
		o(&cl)
	}
	fk := flightKey{key: key, typ: reflect.TypeFor[T]()}
	f, leader, err := c.join(fk)
	if err != nil {
		return zero, err
	}
	if leader {
		cdc := c.opt.Codec
		o := ops{
			load: func(ctx context.Context) (any, error) { return load(ctx) },
			decode: func(b []byte) (any, error) {
				var v T
				err := cdc.Unmarshal(b, &v)
				return v, err
			},
		}
		c.start(ctx, f, fk, cl, o)
	}
	select {
	case <-f.done:
	case <-ctx.Done():
		c.mu.Lock()
		select {
		case <-f.done:
			c.mu.Unlock()
		default:
			f.waiters--
			c.mu.Unlock()
			return zero, ctx.Err()
		}
	}
	if f.out.panicked != nil {
		panic(f.out.panicked)
	}
	if f.out.err != nil {
		return zero, f.out.err
	}
	v, _ := f.out.val.(T)
	return v, nil
}

func (c *Cache) join(fk flightKey) (f *flight, leader bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, false, ErrClosed
	}
	if f := c.flights[fk]; f != nil {
		f.waiters++
		c.stats.localMerges.Add(1)
		return f, false, nil
	}
	f = &flight{done: make(chan struct{}), waiters: 1}
	c.flights[fk] = f
	c.wg.Add(1)
	return f, true, nil
}

// start runs a new flight. Its caller makes the first round trip itself,
// which is the whole flight on a hit: a hit costs no hand-off between
// goroutines. The rest (a wait for another server, or a load) runs on a
// goroutine of the flight's own, detached from the caller, unless the
// caller's ctx cannot end: then the caller runs it too.
func (c *Cache) start(ctx context.Context, f *flight, fk flightKey, cl call, o ops) {
	token := lease.NewToken()
	l := c.look(ctx, fk.key, token, o)
	switch {
	case l.err != nil && ctx.Err() != nil:
		// This caller gave up mid-call; the others have not. A fresh token:
		// the abandoned call may yet take the lock, and its clean-up must
		// not release the flight's.
		go c.fly(f, fk, cl, o, nil)
	case l.err == nil && l.r.State == lease.Found:
		c.stats.hits.Add(1)
		c.wg.Done()
		c.land(f, fk, outcome{val: l.val, err: l.valErr})
	case ctx.Done() == nil:
		c.fly(f, fk, cl, o, &l)
	default:
		go c.fly(f, fk, cl, o, &l)
	}
}

// fly runs one flight to its outcome and hands it to the waiting callers.
// first, if not nil, is the outcome of the flight's first round trip.
func (c *Cache) fly(f *flight, fk flightKey, cl call, o ops, first *look) {
	defer c.wg.Done()
	ctx, cancel := context.WithTimeout(c.base, c.opt.LoadTimeout)
	defer cancel()
	var out outcome
	returned := false
	defer func() {
		if !returned {
			out = outcome{err: errGoexit}
		}
		c.land(f, fk, out)
	}()
	out = c.fill(ctx, fk.key, cl, o, first)
	returned = true
}

// land hands a flight's outcome to its callers.
func (c *Cache) land(f *flight, fk flightKey, out outcome) {
	c.mu.Lock()
	if c.flights[fk] == f {
		delete(c.flights, fk)
	}
	f.out = out
	waiters := f.waiters
	close(f.done)
	c.mu.Unlock()
	if out.panicked != nil && waiters == 0 {
		// Nobody is left to re-raise it: never swallow a panic.
		panic(out.panicked)
	}
}

// look is one read-or-claim round trip for a flight, and what it found.
type look struct {
	token  string
	sent   time.Time // when the request was sent: the lease runs from then
	r      lease.Result
	err    error
	val    any   // the decoded value, when r.State is Found
	valErr error // ErrNotFound for a cached absence
}

// look reads key's value or claims its lock. A value that cannot be decoded
// is never served: the lock is claimed regardless of it, and the load
// overwrites it.
func (c *Cache) look(ctx context.Context, key, token string, o ops) look {
	lockKey := lease.LockKey(c.opt.Prefix, key)
	read := lease.ValueKey(lockKey)
	if c.opt.ReadFirst {
		l := look{token: token, sent: time.Now()}
		v, ok, err := c.rdb.Get(ctx, read)
		if err != nil {
			l.err = err
			return l
		}
		if ok {
			l.r = lease.Result{State: lease.Found, Value: v}
			l.val, l.valErr = c.decode(v, o)
			if !errors.Is(l.valErr, envelope.ErrCorrupt) {
				return l
			}
			read = ""
		}
	}
	for {
		l := look{token: token, sent: time.Now()}
		l.r, l.err = c.rdb.Acquire(ctx, lockKey, read, token, c.opt.LockTTL, false)
		if l.err == nil && l.r.State == lease.Found {
			l.val, l.valErr = c.decode(l.r.Value, o)
			if errors.Is(l.valErr, envelope.ErrCorrupt) {
				read = ""
				continue
			}
		}
		return l
	}
}

// Message kinds published on a key's channel. A value message carries the
// stored entry after its kind byte; an error message carries the error text.
const (
	msgValue   = 'v'
	msgFilled  = 'f' // stored, too large to publish: read it
	msgError   = 'e'
	msgPanic   = 'p'
	msgDeleted = "d"
)

// fill reads key's value, or loads it, or waits for another server's load.
// first, if not nil, is the outcome of the flight's first round trip.
func (c *Cache) fill(ctx context.Context, key string, cl call, o ops, first *look) outcome {
	lockKey := lease.LockKey(c.opt.Prefix, key)
	token := lease.NewToken()
	if first != nil {
		token = first.token
	}
	// Callers wait with their own ctx, and the flight's waits below honour
	// ctx, so a Redis call needs no bound beyond the client's own timeouts:
	// calling it on this goroutine saves a hand-off per round trip.
	rctx := context.WithoutCancel(ctx)
	var (
		val       any
		valErr    error
		claimed   bool
		since     time.Time
		firstLook = true
	)
	err := c.hub.Await(ctx, lockKey, func() (notify.Step, error) {
		var l look
		if first != nil {
			l, first = *first, nil
		} else {
			l = c.look(rctx, key, token, o)
		}
		since = l.sent
		if l.err != nil {
			return notify.Step{}, l.err
		}
		switch l.r.State {
		case lease.Found:
			if firstLook {
				c.stats.hits.Add(1)
			} else {
				c.stats.remoteMerges.Add(1)
			}
			val, valErr = l.val, l.valErr
			return notify.Step{Done: true}, nil
		case lease.Acquired:
			if firstLook {
				c.stats.misses.Add(1)
			}
			claimed = true
			// Claimed after waiting: the holder may have just failed, and
			// its failure, published before this claim, is to be shared
			// rather than loaded again.
			return notify.Step{Done: true, Confirm: !firstLook}, nil
		}
		if firstLook {
			c.stats.misses.Add(1)
			firstLook = false
		}
		return notify.Step{Wait: min(time.Duration(l.r.N)*time.Millisecond, c.opt.PollInterval)}, nil
	}, func(p string) (bool, error) {
		if p == "" {
			return false, nil
		}
		switch p[0] {
		case msgValue:
			v, err := c.decode(p[1:], o)
			if errors.Is(err, envelope.ErrCorrupt) {
				return false, nil
			}
			val, valErr = v, err
		case msgError, msgPanic:
			valErr = fmt.Errorf("%w: %s: %s", ErrLoadFailed, lease.Quote(key), p[1:])
		default:
			return false, nil // released, deleted or reconnected: look again
		}
		c.stats.remoteMerges.Add(1)
		return true, nil
	})
	if errors.Is(err, notify.ErrOvertaken) {
		// A message published before the claim settled the flight: give
		// the lock back and take the message's outcome.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lease.CleanupTimeout)
		defer cancel()
		c.release(rctx, lockKey, token, lease.Released, "", nil, 0)
		return outcome{val: val, err: valErr}
	}
	switch {
	case err == nil && claimed:
		return c.lead(ctx, key, lockKey, token, since, cl, o)
	case err == nil:
		return outcome{val: val, err: valErr}
	case ctx.Err() != nil:
		return outcome{err: fmt.Errorf("fill: %s: %w", lease.Quote(key), err)}
	}
	c.stats.redisErrors.Add(1)
	var re redis.Error
	if c.opt.FailClosed || errors.As(err, &re) {
		// An error reply (a key of the wrong type, out of memory, ...) is
		// not an outage: loading would not make it go away.
		return outcome{err: fmt.Errorf("fill: %s: %w", lease.Quote(key), err)}
	}
	// Fail open: Redis is unreachable; load without the fleet-wide lock.
	c.stats.loads.Add(1)
	out := protect(ctx, o.load)
	if out.err != nil || out.panicked != nil {
		c.stats.loadErrors.Add(1)
	}
	return out
}

// decode turns a stored entry into a value. Foreign or corrupt bytes, or
// bytes the codec cannot read into the caller's type, give an error wrapping
// envelope.ErrCorrupt, counted.
func (c *Cache) decode(s string, o ops) (any, error) {
	e, err := envelope.Decode([]byte(s))
	if err != nil {
		c.stats.corrupt.Add(1)
		return nil, err
	}
	if e.Absent {
		return nil, ErrNotFound
	}
	v, err := o.decode(e.Payload)
	if err != nil {
		c.stats.corrupt.Add(1)
		return nil, fmt.Errorf("%w: %w", envelope.ErrCorrupt, err)
	}
	return v, nil
}

// errLeaseLost is the cause of a loader's ctx cancellation when the fill
// lock's lease was lost.
var errLeaseLost = fmt.Errorf("fill: %w: the fill lock was lost during the load", lease.ErrNotHeld)

// lead runs the loader as the key's claimer, then stores its outcome and
// releases the lock in one round trip, notifying the waiting servers.
func (c *Cache) lead(ctx context.Context, key, lockKey, token string, since time.Time, cl call, o ops) outcome {
	c.stats.loads.Add(1)
	lctx, cancel := context.WithCancelCause(ctx)
	keeper := lease.Keep(c.rdb, lockKey, token, c.opt.LockTTL, since, func() { cancel(errLeaseLost) })
	returned := false
	// The store must happen even when the flight's ctx has run out.
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), lease.CleanupTimeout)
	defer scancel()
	defer func() {
		if !returned { // runtime.Goexit in the loader
			cancel(nil)
			_ = keeper.Stop()
			c.release(sctx, lockKey, token, string(msgPanic)+errGoexit.Error(), "", nil, 0)
		}
	}()
	start := time.Now()
	out := protect(lctx, o.load)
	took := time.Since(start)
	lost := keeper.Stop()
	cancel(nil)
	returned = true

	valueKey := lease.ValueKey(lockKey)
	switch {
	case out.panicked != nil:
		c.stats.loadErrors.Add(1)
		c.release(sctx, lockKey, token, string(msgPanic)+limitText(fmt.Sprint(out.panicked.Value)), "", nil, 0)
		return out
	case errors.Is(out.err, ErrNotFound):
		entry := envelope.Encode(nil, envelope.Entry{Absent: true, CreatedAt: start, LoadDuration: took}, 0)
		c.store(sctx, lockKey, token, valueKey, entry, c.jitter(cl.negativeTTL))
		return out
	case out.err != nil:
		c.stats.loadErrors.Add(1)
		c.release(sctx, lockKey, token, string(msgError)+limitText(out.err.Error()), "", nil, 0)
		return out
	}
	payload, err := c.opt.Codec.Marshal(out.val)
	if err != nil {
		c.stats.loadErrors.Add(1)
		err = fmt.Errorf("fill: encoding the value of %s: %w", lease.Quote(key), err)
		c.release(sctx, lockKey, token, string(msgError)+limitText(err.Error()), "", nil, 0)
		return outcome{err: err}
	}
	if lost != nil {
		// The value goes to the callers; a successor may be storing a newer one.
		c.stats.staleStores.Add(1)
		return out
	}
	entry := envelope.Encode(nil, envelope.Entry{CreatedAt: start, LoadDuration: took, Payload: payload}, c.opt.CompressAbove)
	c.store(sctx, lockKey, token, valueKey, entry, c.jitter(cl.ttl))
	return out
}

// store stores entry, releases the lock and notifies, in one round trip.
func (c *Cache) store(ctx context.Context, lockKey, token, valueKey string, entry []byte, ttl time.Duration) {
	msg := string(msgFilled)
	if len(entry) <= c.opt.PublishLimit {
		msg = string(msgValue) + string(entry)
	}
	c.release(ctx, lockKey, token, msg, valueKey, entry, ttl)
}

func (c *Cache) release(ctx context.Context, lockKey, token, msg, valueKey string, value []byte, ttl time.Duration) {
	ok, err := c.rdb.ReleaseRetrying(ctx, lockKey, token, msg, valueKey, value, ttl)
	switch {
	case err != nil:
		c.stats.redisErrors.Add(1)
	case !ok:
		c.stats.staleStores.Add(1)
	}
}

func (c *Cache) jitter(ttl time.Duration) time.Duration {
	if c.opt.Jitter <= 0 {
		return ttl
	}
	span := int64(float64(ttl) * c.opt.Jitter)
	if span <= 0 {
		return ttl
	}
	return ttl - time.Duration(rand.Int64N(span+1))
}

// limitText shortens an error text sent to other servers.
func limitText(s string) string {
	const limit = 1 << 10
	if len(s) > limit {
		return s[:limit] + "…"
	}
	return s
}

// protect calls load, turning a panic into a *PanicError that keeps the
// stack. runtime.Goexit is not stopped: it unwinds through the caller's
// deferred calls.
func protect(ctx context.Context, load func(context.Context) (any, error)) (out outcome) {
	returned := false
	defer func() {
		if !returned {
			if r := recover(); r != nil {
				out = outcome{panicked: &PanicError{Value: r, Stack: debug.Stack()}}
			}
		}
	}()
	out.val, out.err = load(ctx)
	returned = true
	return out
}
