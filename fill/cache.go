package fill

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/budgetctx"
	"github.com/locksmith-go/locksmith/internal/flight"
	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/notify"
	"github.com/locksmith-go/locksmith/internal/redisx"
	"github.com/locksmith-go/locksmith/observe"
)

// Cache is a fleet-wide single-flight cache on one Redis. It is safe for
// concurrent use. It shares one pub/sub connection with every Cache and
// budget.Budget on the same Redis client, opened when a flight first waits
// on another server (or at once with a local tier); the last of them to
// close closes it.
type Cache struct {
	rdb     *redisx.Client
	opt     Options
	err     error          // the options' error, returned by every call
	hub     *notify.Shared // shared with the Budgets and Caches on rdb
	flights *flight.Group[flightKey]
	base    context.Context // ends, with cause ErrClosed, at Close
	cancel  context.CancelCauseFunc
	stats   counters
	local   *local // nil when off

	invalChannel string // where stores and deletes announce themselves
	flagKey      string // the fleet's local-tier flag on a plain Redis, else "" (see local.lua)
	// The fleet's local-tier flag on a Cluster, whose scripts cannot read
	// it, else "": stores and deletes publish invalidations unless a read
	// of it, sent within flagTrust, found it missing (see invalTo).
	clusterFlag   string
	flagMissingAt atomic.Int64 // Unix ns when the latest read that found the flag missing was sent, or 0
	flagReading   atomic.Bool  // a read of the flag is under way
	// The claim script's arguments that never change: the lease, the stale
	// windows and whether a PTTL is wanted, boxed once (a call boxes none).
	lockTTLArg, swrArg, sieArg, pttlArg any
	// answered is how often, of late, a read found a value a plain GET
	// could serve (fresh, no stale window), in millionths: a decaying
	// average that decides whether reads go by GET first (see look).
	answered atomic.Int64
	// polls holds a token for each look a waiting flight makes only
	// because its PollInterval passed (see waiter.step): half the client's
	// pool at most, so that however many flights wait, the loads they wait
	// for (claims, pops, settles) still find a connection.
	polls chan struct{}

	mu         sync.Mutex // guards closed and wg.Add
	closed     bool
	wg         sync.WaitGroup // flights and refreshes running
	failedOpen bool           // a fail-open was logged in this outage; guarded by mu
}

// New returns a Cache on rdb, which may be a *redis.Client, a
// *redis.ClusterClient, a failover (Sentinel) client or a *redis.Ring. A nil
// opt gives the defaults. New cannot fail: a nil rdb, or options that
// cannot work (a Prefix with '{' or '}'), make every call return an error
// saying why, wrapping [ErrInvalid].
func New(rdb redis.UniversalClient, opt *Options) *Cache {
	o, err := opt.withDefaults()
	if isNil(rdb) {
		rdb = nil // a nil *redis.Client in the interface, too
		err = errors.Join(fmt.Errorf("%w: nil Redis client", ErrInvalid), err)
	}
	c := &Cache{
		rdb:          redisx.New(rdb),
		opt:          o,
		err:          err,
		flights:      flight.New[flightKey](),
		invalChannel: o.Prefix + "invalidate",
		lockTTLArg:   lease.Millis(o.LockTTL),
		swrArg:       lease.Millis(o.StaleWhileRevalidate),
		sieArg:       lease.Millis(o.StaleIfError),
		pttlArg:      "0",
	}
	if rdb != nil {
		c.polls = make(chan struct{}, max(1, redisx.PoolSize(rdb)/2))
	}
	switch rdb.(type) {
	case *redis.Client:
		c.flagKey = o.Prefix + "local"
	case *redis.ClusterClient:
		// A Cluster's scripts cannot read one key for the whole fleet:
		// there, stores and deletes are always ordered, and published
		// unless the flag was found missing of late. On a Ring they are
		// always ordered and published.
		c.clusterFlag = o.Prefix + "local"
	}
	switch {
	case o.EarlyRefresh:
		c.pttlArg = "2" // the PTTL and the server's clock (see storedTTL)
	case o.Local != nil:
		c.pttlArg = "1"
	}
	c.base, c.cancel = context.WithCancelCause(context.Background())
	hopt := &notify.Options{OnError: func(err error) {
		c.log("pub/sub refused; waiters poll every PollInterval", "err", err)
	}}
	if o.Local != nil {
		// Copies are served only while a heartbeat came back within
		// MaxStaleness: send several per MaxStaleness.
		hopt.Heartbeat = min(200*time.Millisecond, o.Local.MaxStaleness/4)
	}
	c.hub = notify.Share(rdb, hopt)
	c.rdb.SetOnOutage(func(err error) {
		c.log("redis unreachable", "err", err)
		c.event(context.Background(), observe.Event{Kind: observe.OutageStart, Err: err})
	}, func(d time.Duration) {
		c.mu.Lock()
		c.failedOpen = false
		c.mu.Unlock()
		c.log("redis reachable again", "outage", d)
		c.event(context.Background(), observe.Event{Kind: observe.OutageEnd, Duration: d})
	})
	if o.Local != nil && err == nil {
		c.local = newLocal(c, *o.Local)
	}
	return c
}

// isNil reports whether rdb is nil, or a nil pointer in the interface.
func isNil(rdb redis.UniversalClient) bool {
	if rdb == nil {
		return true
	}
	v := reflect.ValueOf(rdb)
	return v.Kind() == reflect.Pointer && v.IsNil()
}

// errNilCache is what calls on a nil *Cache return.
var errNilCache = fmt.Errorf("%w: nil *fill.Cache", ErrInvalid)

// check returns the error every call of c returns, if any: c is nil, or
// New was given what cannot work.
func (c *Cache) check() error {
	if c == nil {
		return errNilCache
	}
	return c.err
}

// Close ends the loads and waits in progress and waits for them to return,
// then closes the pub/sub connection. A load ended by Close releases its
// fill lock without a failure, so waiters on other servers look again and
// one of them loads; callers in this process get [ErrClosed]. The locks of
// claims whose callers gave up are given back first, waited for at most
// 5 s. Get then returns ErrClosed. Close of a nil *Cache does nothing.
func (c *Cache) Close() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.flights.Close()
	c.cancel(ErrClosed)
	c.wg.Wait()
	if c.local != nil {
		c.local.close()
	}
	err := c.hub.Close()
	c.rdb.Close()
	return err
}

// enter registers work that Close waits for; false once closed.
func (c *Cache) enter() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	return true
}

// closing reports whether the Cache is closing, for work on ctx (a
// flight's): Close ended c.base, which ends ctx with cause ErrClosed on a
// goroutine of its own, a moment later.
func (c *Cache) closing(ctx context.Context) bool {
	return c.base.Err() != nil || context.Cause(ctx) == ErrClosed
}

// flightContext returns the context a flight's work runs on: the caller's
// values without its cancellation, ended by Close (cause ErrClosed) and
// after LoadTimeout.
func (c *Cache) flightContext(caller context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(caller))
	stop := context.AfterFunc(c.base, func() { cancel(ErrClosed) })
	tctx, tcancel := context.WithTimeout(ctx, c.opt.LoadTimeout)
	return tctx, func() {
		tcancel()
		stop()
		cancel(nil)
	}
}

func init() {
	budgetctx.CacheBudget = func(c any) *budget.Budget {
		if c, _ := c.(*Cache); c != nil {
			return c.opt.Budget
		}
		return nil
	}
}
