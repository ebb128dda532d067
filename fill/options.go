package fill

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/codec"
	"github.com/locksmith-go/locksmith/internal/envelope"
	"github.com/locksmith-go/locksmith/internal/redisx"
	"github.com/locksmith-go/locksmith/observe"
)

// DefaultPrefix is the default key prefix, the original locksmith one. It
// is lock.DefaultPrefix too (one constant), so fills and locks exclude each
// other by default.
const DefaultPrefix = redisx.DefaultPrefix

// Options configure a [Cache]. The zero value gives the defaults.
type Options struct {
	// Prefix is put before every key and channel name; it must not contain
	// '{' or '}'. Use the same prefix as a lock.Locker for fills and locks
	// to exclude each other.
	// default: "__locksmith:"
	Prefix string

	// TTL is how long a value stays fresh: served as a hit without a
	// refresh.
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
	// from its callers' cancellation (one caller giving up does not cancel
	// the others' load; the first caller's values, trace spans among them,
	// are kept) that ends after LoadTimeout. It guards against a loader that
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

	// ReadFirst always reads a value with a plain GET before the
	// read-or-claim script: a hit then costs the server what a GET costs
	// (no Lua), and a miss costs one more round trip (three, plus the
	// loader). A GET cannot tell a fresh value from a stale one, so with
	// StaleWhileRevalidate, StaleIfError or EarlyRefresh a GET that finds a
	// value still runs the script.
	// default: false: a Cache reads by GET first on its own while nine
	// reads in ten or more of late found a fresh value (hot keys), and by
	// the script otherwise (a hit one round trip, a miss two)
	ReadFirst bool

	// FailClosed makes Get return the Redis error when Redis cannot be
	// reached or cannot serve now (a failover, a restart), instead of
	// running the loader without the fleet-wide lock.
	// default: false (fail open)
	FailClosed bool

	// Budget, if not nil, is the upstream's rate budget: every load
	// reserves its cost first (budget.Budget.Reserve: Foreground;
	// refreshes Background; one call unless WithCost says more), within its
	// callers' patience: a load nobody waits for any more is not started,
	// and its reservation is cancelled. The loader runs with the
	// reservation in its ctx (budget.FromContext), where it reports what
	// the call really spent (Reservation.Spent) and, with a pool of keys
	// (budget.Options.Keys), reads the credential to call with
	// (Reservation.Key); the reservation is done when the loader returns,
	// whatever it returned. With the budget's Concurrency, the load holds
	// a slot while it runs, under the slot's lease: the loader's ctx ends,
	// with cause budget.ErrSlotLost, if the slot is lost.
	// A loader error wrapping budget.ErrRateLimited pauses the budget (its
	// reservation's key, with a pool) for its RetryAfter (a budget with
	// Options.Adaptive cuts its learned rate for one without), and the same
	// flight, still holding the fill lock,
	// loads again when the budget allows; it fails, with an error wrapping
	// budget.ErrRateLimited, only when every caller has given up or
	// LoadTimeout passes. A load that returns a value counts, for an
	// Adaptive budget, as a call the upstream accepted.
	// default: nil (loads are not rate limited)
	Budget *budget.Budget

	// StaleWhileRevalidate serves a value for up to this long past its TTL
	// while exactly one server, fleet-wide, refreshes it in the background:
	// the round trip that reads the stale value also claims its refresh.
	// The Get returns the stale value at once. A value older than TTL +
	// StaleWhileRevalidate is never served (unless StaleIfError, longer,
	// applies while refreshes fail).
	// default: 0 (a value past its TTL is a miss)
	StaleWhileRevalidate time.Duration

	// StaleIfError serves a value for up to this long past its TTL while
	// refreshes fail (the loader errs, or the upstream rate-limits): the
	// Get that refreshes waits for the refresh, and gets the old value if
	// it fails. Failed refreshes back off exponentially (from 1s, capped at
	// a minute and at the window), fleet-wide: during the back-off every
	// server serves the old value without calling the upstream.
	// default: 0
	StaleIfError time.Duration

	// EarlyRefresh refreshes a value before its TTL runs out, in the
	// background, with a probability that rises as expiry nears and with
	// the time its load took (XFetch, Vattani et al., VLDB 2015, β = 1),
	// so a hot key is seldom seen expired. Still one refresher fleet-wide;
	// deciding to try costs one more round trip, rarely. The more often a
	// key is read, the earlier it is refreshed (about δ·ln(reads per δ)
	// before expiry, δ the load's duration), but never before half its TTL
	// has passed: at most two loads per TTL.
	// default: false
	EarlyRefresh bool

	// Local, if not nil, keeps decoded values in process memory too: a
	// local hit costs no round trip. Every store and Delete anywhere in the
	// fleet evicts the other servers' copies by push. See [LocalOptions].
	// default: nil (off)
	Local *LocalOptions

	// Events, if not nil, sees every hit, miss, load, wait and outage;
	// the module github.com/locksmith-go/locksmith/otel turns them into
	// OpenTelemetry metrics and spans.
	// default: nil
	Events observe.Handler

	// Logger, if not nil, hears what an operator must: outages and their
	// end, failing open, leases lost mid-load, rate limiting, pub/sub
	// refused.
	// default: nil (silent)
	Logger *slog.Logger
}

// LocalOptions configure the in-process tier of a [Cache].
type LocalOptions struct {
	// Size is the most values kept in memory; the tier evicts by
	// W-TinyLFU (otter) beyond it.
	// default: 10000
	Size int

	// MaxStaleness bounds how long after a value was replaced or deleted
	// anywhere in the fleet this server may still serve its old copy,
	// whatever happens to the pub/sub connection that carries the
	// invalidations: the tier serves a copy only while the connection has
	// proven, within MaxStaleness, that it delivers (a heartbeat published
	// through Redis came back); otherwise Get reads Redis. Invalidations
	// normally arrive within a millisecond. On a Ring, which forwards no
	// message between shards, there are no heartbeats: a copy is served
	// for at most MaxStaleness after it was read.
	// default: 1s
	MaxStaleness time.Duration
}

// Option changes one [Get] call. When calls merge, the options of the call
// that started the flight apply.
type Option interface {
	apply(*callOptions)
}

type callOptions struct {
	ttl, negativeTTL time.Duration
	batch            *BatchOptions // GetMany's, from WithBatchOptions
	cost             budget.Cost   // a load's estimate, from WithCost
}

// callOptions returns the options of a call given opts.
func (c *Cache) callOptions(opts []Option) callOptions {
	cl := callOptions{ttl: c.opt.TTL, negativeTTL: c.opt.NegativeTTL}
	for _, o := range opts {
		o.apply(&cl)
	}
	return cl
}

type optionFunc func(*callOptions)

func (f optionFunc) apply(c *callOptions) { f(c) }

// WithTTL caches this call's value for d instead of Options.TTL.
func WithTTL(d time.Duration) Option {
	return optionFunc(func(c *callOptions) {
		if d > 0 {
			c.ttl = d
		}
	})
}

// WithCost gives the budget what this call's load is expected to spend:
// its estimate, which the load reserves before it calls the upstream (see
// Options.Budget). A loader that learns what the call really spent (an LLM
// response's usage.total_tokens, say) reports it to the reservation, which
// it reads with budget.FromContext(ctx): Reservation.Spent. With GetMany, c
// is the cost of one loader call (of each key's, with
// BatchOptions.CostPerKey). A cost the budget cannot book (a meter it does
// not have, negative figures) fails the load.
// default: one call, no meter
func WithCost(c budget.Cost) Option {
	return optionFunc(func(cl *callOptions) { cl.cost = c })
}

// WithBatchOptions sets the options of a [GetMany] call's batches; a
// single-key Get has no batch, and ignores it. (A [Batcher] takes its
// BatchOptions in [NewBatcher].)
func WithBatchOptions(o *BatchOptions) Option {
	return optionFunc(func(c *callOptions) { c.batch = o })
}

// WithNegativeTTL caches this call's absence for d instead of
// Options.NegativeTTL.
func WithNegativeTTL(d time.Duration) Option {
	return optionFunc(func(c *callOptions) {
		if d > 0 {
			c.negativeTTL = d
		}
	})
}

// Back-off of failing refreshes (StaleIfError), fleet-wide.
const (
	backoffBase = time.Second
	backoffCap  = time.Minute
)

func (o *Options) withDefaults() (Options, error) {
	var opt Options
	if o != nil {
		opt = *o
	}
	if opt.Prefix == "" {
		opt.Prefix = DefaultPrefix
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
	opt.StaleWhileRevalidate = max(opt.StaleWhileRevalidate, 0)
	opt.StaleIfError = max(opt.StaleIfError, 0)
	if l := opt.Local; l != nil {
		local := *l
		if local.Size <= 0 {
			local.Size = 10000
		}
		if local.MaxStaleness <= 0 {
			local.MaxStaleness = time.Second
		}
		opt.Local = &local
	}
	var errs []error
	if err := redisx.CheckPrefix(opt.Prefix); err != nil {
		errs = append(errs, err)
	}
	if w := max(opt.StaleWhileRevalidate, opt.StaleIfError); w > envelope.MaxStaleWindow {
		errs = append(errs, fmt.Errorf("stale window %v is longer than %v", w, envelope.MaxStaleWindow))
	}
	if len(errs) > 0 {
		return opt, fmt.Errorf("%w: bad options: %w", ErrInvalid, errors.Join(errs...))
	}
	return opt, nil
}

// window is how long entries are kept past their TTL.
func (o *Options) window() time.Duration {
	return max(o.StaleWhileRevalidate, o.StaleIfError)
}

// ttlOverride is where SetTTL leaves a loader's TTL.
type ttlOverride struct {
	mu  sync.Mutex
	set bool
	ttl time.Duration
}

type ttlKey struct{}

// SetTTL, called by a loader with the ctx it was given, sets how long the
// value it is loading stays fresh, instead of the Cache's TTL (or WithTTL):
// for a value whose source says how long it is good for, such as an HTTP
// response's Cache-Control max-age. A ttl of 0 or less means the value is
// not stored at all: the callers waiting for it, here and on other servers,
// still get it, and the next Get loads again. With GetMany and Batcher the
// TTL applies to every key of the loader call. Called with any other ctx,
// SetTTL does nothing.
func SetTTL(ctx context.Context, ttl time.Duration) {
	if o, ok := ctx.Value(ttlKey{}).(*ttlOverride); ok {
		o.mu.Lock()
		o.set, o.ttl = true, ttl
		o.mu.Unlock()
	}
}

// get returns the TTL set, if any.
func (o *ttlOverride) get() (time.Duration, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ttl, o.set
}
