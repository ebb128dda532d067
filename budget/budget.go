package budget

// The Budget: its options, counters, making and closing, and what it
// tells its events handler and Logger.

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/notify"
	"github.com/locksmith-go/locksmith/internal/redisx"
	"github.com/locksmith-go/locksmith/observe"
)

var (
	// ErrClosed is returned by the methods of a [Budget] after [Budget.Close],
	// and by the Waits that were sleeping when it was called.
	ErrClosed = errors.New("budget: closed")
	// ErrRateLimited is what a [RateLimitedError] is: test for it with
	// errors.Is.
	ErrRateLimited = errors.New("budget: rate limited")
)

// Options configure a [Budget]. The zero value gives the defaults.
type Options struct {
	// Prefix is put before the budget's key and channel names. It must not
	// contain '{' or '}', which would break the hash tag.
	// default: "__locksmith:"
	Prefix string

	// BackgroundShare is the largest share of the rate that Background
	// calls take while Foreground calls wait: 0.3 lets at most 30% of the
	// calls of such a spell be background calls. It must lie in [0, 1]; 0
	// gives the default. With no foreground call waiting, background calls
	// may use the whole rate.
	// default: 0.3
	BackgroundShare float64

	// FleetSize is the number of servers sharing the budget. It only sets
	// the local limit used while Redis is unreachable: Rate/FleetSize, so
	// that the fleet as a whole stays under the limit when FleetSize is
	// right: the Limit, each limit of Also and each meter's, each at its
	// Rate/FleetSize. It must not be negative; 0 gives the default.
	// default: 1
	FleetSize int

	// Also are more limits on the same calls, each kept as its own GCRA on
	// the same slots: a call goes when every limit allows it (the X API's
	// 1 per second under 300 per 15 minutes, say). Each is a [Limit] with
	// its own Rate, Per and Burst.
	// default: none
	Also []Limit

	// Meters are limits on units other than calls, by meter name: the
	// tokens of an LLM API, GitHub's points. Each limit is a token bucket of
	// Burst units refilled at Rate units per Per; a [Budget.Reserve] of c
	// units waits until the bucket holds them (one larger than Burst waits
	// until it is full, and overdraws it). The meters named "tokens",
	// "input-tokens" and "output-tokens" are capped by the upstream's
	// headers of those names (see [Budget.Observe]). A meter's limits are
	// Limits like any other: give a tokens-per-minute limit a Burst of its
	// Rate to let a full minute's tokens go at once, as upstreams do.
	// [Budget.Wait] books no units of any meter.
	// default: none
	Meters map[string][]Limit

	// Concurrency is the most reservations ([Budget.Reserve]) in flight at
	// once across the fleet: a reservation holds one of these slots from
	// Reserve until Done or Cancel, booked with its rate slot in the same
	// round trip. When all are taken, Reserve waits in line, first come
	// first served across the fleet, and is woken over pub/sub when a slot
	// frees. With Keys, the cap is per key, and the line the pool's. While
	// Redis is unreachable each server holds at most
	// max(1, Concurrency/FleetSize). [Budget.Wait] takes no slot. It must
	// not be negative; servers sharing a budget must give the same.
	// default: 0 (no cap)
	Concurrency int

	// SlotLease is the lease of a held concurrency slot, renewed every
	// third of it while held: the slots of a server that died or lost
	// Redis come back to the fleet within it. It must be 0 (the default)
	// or at least 3ms.
	// default: 10s
	SlotLease time.Duration

	// Adaptive says that the upstream does not state its real limit (or
	// changes it under load): Limit.Rate is a ceiling, and the fleet learns
	// the rate the upstream accepts, one rate for every server, kept in
	// Redis. A 429 that states no wait (no Retry-After, no reset), or a
	// loader's [RateLimitedError] without RetryAfter, cuts the learned rate
	// to 75% instead of pausing the fleet, once per episode however many
	// servers saw one; calls the upstream accepts (2xx responses given to
	// [Budget.Observe] or [Reservation.Observe]) while demand meets the
	// learned rate raise it again, cautiously near the rate that drew the
	// 429. A 429 that states its wait pauses the fleet as without Adaptive.
	// See [Stats].Rate and the package documentation. Servers sharing a
	// budget must give the same.
	// default: false (Limit.Rate is the upstream's limit)
	Adaptive bool
	// Keys are credentials the upstream limits each on its own (tokens,
	// API keys): every limit, meter and concurrency cap applies to each
	// key, and [Budget.Reserve] books the key whose slot comes first, the
	// one [Reservation.Key] returns; a 429 observed through a reservation
	// pauses its key only, a 401 removes it (see the package
	// documentation, "Key pools"). Duplicates count once. An empty key,
	// more than 1,000 distinct keys, and Keys with Adaptive are errors.
	// Use Reserve, not Wait.
	// default: none (one budget, no key)
	Keys []string

	// Events, if not nil, sees every wait (BudgetWait), every pause
	// (Pause), every cut of the learned rate (RateCut, with Adaptive) and
	// every outage of Redis (OutageStart, OutageEnd), with Source "budget"
	// and Name the budget's name. A panic in it loses its event and is
	// logged (Logger): the wait, pause or renewal that reported it goes on.
	// default: nil
	Events observe.Handler

	// Logger, if not nil, hears what an operator must: pauses the upstream
	// asked for, cuts of the learned rate and why (with Adaptive), and
	// Redis outages (while they last, a local limiter at Rate/FleetSize
	// decides).
	// default: nil (silent)
	Logger *slog.Logger
}

func (o *Options) withDefaults() Options {
	var opt Options
	if o != nil {
		opt = *o
	}
	if opt.Prefix == "" {
		opt.Prefix = DefaultPrefix
	}
	if opt.BackgroundShare == 0 {
		opt.BackgroundShare = 0.3
	}
	if opt.FleetSize == 0 {
		opt.FleetSize = 1
	}
	if opt.SlotLease == 0 {
		opt.SlotLease = defaultSlotLease
	}
	return opt
}

// inFlight returns the concurrency slots this server holds.
func (b *Budget) inFlight() int {
	if b.conc == nil {
		return 0
	}
	return int(b.conc.out.Load())
}

// Budget is one upstream rate limit shared by every server that creates a
// Budget of the same name and prefix on the same Redis. It is safe for
// concurrent use. It hears of pauses on the pub/sub connection that every
// Budget and fill.Cache made on the same Redis client shares; the last of
// them to close closes it.
type Budget struct {
	name string
	key  string // P{name}:budget: the hash, and the channel of pauses
	lim  Limit
	opt  Options
	err  error // the configuration is unusable: every call returns it

	// The limit in the scripts' unit, µs: the emission interval, the burst
	// tolerance, the background interval while foreground calls wait, and
	// the horizon.
	t, tau, tb, horizon int64
	// sig is the limit as the wait script compares it across servers,
	// "T:tau", then " field=T:tau" for each extra dimension; toldConflict,
	// that another server's was logged.
	sig          string
	toldConflict atomic.Bool
	// dims are the extra dimensions: Also's limits, then each meter's by
	// name; waitWant is what a Wait books.
	dims     []dim
	waitWant want
	// boxed holds the wait script's arguments that never change, boxed
	// once rather than at every booking.
	boxed struct{ t, tau, tb, horizon, ahead, sig, halfLife any }

	rdb      *redisx.Client
	hub      *notify.Shared
	listener *notify.Listener
	local    *localLimiter // while Redis is unreachable
	conc     *conc         // the concurrency slots; nil without Options.Concurrency
	learner  learner       // the learned rate, with Options.Adaptive
	pool     *pool         // the keys; nil without Options.Keys
	// lost counts the times pub/sub messages may have been lost (the
	// connection broke or was replaced): a Wait that slept across one
	// reads the pause before it goes.
	lost atomic.Uint64

	// What this server knows of the budget, for when Redis loses it or is
	// unreachable: the latest tat it set or learned and its latest slot, in
	// µs of the Redis clock, and how far the Redis clock is ahead of this
	// process's (µs), as of the latest booking or pause.
	mineTAT, mineSlot, clock atomic.Int64
	// backs counts the ends of outages of Redis: a call sleeping on a
	// local slot when it changes books again in Redis.
	backs atomic.Int64
	lead  leadClock // the lead slots are slept by (clock.go)
	// fine: a slot's last fineWindow is slept on the operating system's
	// fine timer, because the limit has no burst tolerance to absorb a
	// late wake (see clock.go).
	fine bool

	base   context.Context // parent of pause reads; cancelled by Close
	cancel context.CancelFunc
	done   chan struct{} // closed by Close
	wg     sync.WaitGroup
	stats  counters

	mu      sync.Mutex // guards the fields below
	pauseAt int64      // end of the latest pause heard of, µs of the Redis clock
	// respacedAt is when the schedule was last respaced after an
	// overshoot (µs of the Redis clock): slots booked before then are
	// booked again.
	respacedAt int64
	// respaces are the latest moves of the schedule heard of (respaces
	// and shifts), in order of instant; forgotRespaces is the latest of
	// those dropped to keep them few; moves counts those heard of, in any
	// order, for sleeping Waits to move their slots again.
	respaces       []respace
	moves          int64
	forgotRespaces int64
	localPause     time.Time     // end of a pause kept locally while Redis was unreachable
	paused         chan struct{} // closed, and replaced, when either grows
	// keysGone is closed, and replaced, when a key of the pool is removed
	// (Options.Keys): callers in line for a concurrency slot look again.
	keysGone chan struct{}
	closed   bool
}

// testHookBooked, set by tests only (as net/http's testHook variables are),
// sees every booking of every Budget, on the goroutine of the Wait that
// booked it and with its ctx.
var testHookBooked func(*Budget, context.Context, booking, Priority)

// New returns the budget called name on rdb, limited to limit. Servers that
// use the same name and prefix on the same Redis share one budget, and must
// give it the same limit (a booking that finds another server's limit is
// counted in Stats.LimitConflicts, and the first logged). rdb may be a
// *redis.Client, a *redis.ClusterClient or a failover client; a nil opt
// gives the defaults.
//
// New cannot fail: when limit, name or opt cannot be used (see
// [Limit.Validate]; name must not be empty, the prefix must not contain '{'
// or '}'), every method of the Budget returns the error.
func New(rdb redis.UniversalClient, name string, limit Limit, opt *Options) *Budget {
	b := &Budget{name: name, lim: limit.withDefaults(), opt: opt.withDefaults(), done: make(chan struct{})}
	b.key = redisx.Key(b.opt.Prefix, name) + ":budget"
	if b.err = b.validate(rdb, limit); b.err != nil {
		b.closed = true
		close(b.done)
		return b
	}
	t := interval(b.lim)
	b.t = t.Microseconds()
	b.tau = int64(b.lim.Burst-1) * b.t
	b.sig = strconv.FormatInt(b.t, 10) + ":" + strconv.FormatInt(b.tau, 10)
	b.dims = dimsOf(b.opt)
	for _, d := range b.dims {
		b.sig += " " + d.field + "=" + strconv.FormatInt(d.t, 10) + ":" + strconv.FormatInt(d.tau, 10)
	}
	b.waitWant = b.wantOf(Cost{})
	// A late wake matters where the burst tolerance cannot absorb it; the
	// fine timer blocks a thread, so it serves slots at least its window
	// apart: at most about one thread at a time.
	b.lead.base = time.Now()
	b.fine = b.tau < 2*fineWindow.Microseconds() && b.t >= fineWindow.Microseconds()
	b.tb = int64(math.Ceil(float64(b.t) / b.opt.BackgroundShare))
	b.horizon = min(max(2*b.t, horizonMin.Microseconds()), horizonMax.Microseconds())
	k := &b.boxed
	k.t, k.tau, k.tb, k.horizon, k.ahead, k.sig, k.halfLife = b.t, b.tau, b.tb, b.horizon,
		maxAhead.Microseconds(), b.sig, slackHalfLife(b.t)
	b.local = newLocalLimiter(b.lim, b.dims, b.opt.FleetSize)
	if len(b.opt.Keys) > 0 {
		b.pool = newPool(b)
	}
	b.paused, b.keysGone = make(chan struct{}), make(chan struct{})
	b.base, b.cancel = context.WithCancel(context.Background())
	b.rdb = redisx.New(rdb)
	b.rdb.SetOnOutage(func(err error) {
		b.log("redis unreachable; a local limiter at Rate/FleetSize decides", "err", err)
		b.event(context.Background(), observe.Event{Kind: observe.OutageStart, Err: err})
	}, func(d time.Duration) {
		b.log("redis reachable again", "outage", d)
		b.event(context.Background(), observe.Event{Kind: observe.OutageEnd, Duration: d})
		// Calls sleeping on a local slot book again in Redis (see
		// waitLocalOn).
		b.backs.Add(1)
		b.wakeSleepers()
	})
	if b.opt.Concurrency > 0 {
		// Before the listener: its messages read b.conc.
		b.conc = newConc(b)
		b.wg.Add(1)
		go b.renewLoop()
	}
	b.hub = notify.Share(rdb, nil)
	b.listener = b.hub.Listen(b.key, b.message)
	return b
}

// The horizon, how far ahead a background call books, is 2·T within
// [horizonMin, horizonMax]. Two intervals keep a background queue that does
// not run dry between a caller's come-back and its booking at high rates.
// horizonMin covers a round trip and a timer's wake-up, so that a background
// caller coming back at its place is not late for the slot it was meant to
// book. horizonMax bounds what a foreground call waits behind background
// calls at slow rates, where 2·T would be long.
const (
	horizonMin = 10 * time.Millisecond
	horizonMax = 100 * time.Millisecond
)

func (b *Budget) validate(rdb redis.UniversalClient, limit Limit) error {
	var err error
	switch {
	case rdb == nil:
		err = errors.New("nil Redis client")
	case b.name == "":
		err = errors.New("empty name")
	case b.opt.BackgroundShare < 0 || b.opt.BackgroundShare > 1 || math.IsNaN(b.opt.BackgroundShare):
		err = fmt.Errorf("background share %v: want a value in [0, 1]", b.opt.BackgroundShare)
	case b.opt.FleetSize < 0:
		err = fmt.Errorf("fleet size %d: want 0 (1) or more", b.opt.FleetSize)
	case b.opt.Concurrency < 0:
		err = fmt.Errorf("concurrency %d: want 0 (no cap) or more", b.opt.Concurrency)
	case b.opt.SlotLease < 3*time.Millisecond:
		err = fmt.Errorf("slot lease %v: want 0 (10s) or at least 3ms", b.opt.SlotLease)
	default:
		if err = limit.check(); err == nil {
			err = redisx.CheckPrefix(b.opt.Prefix)
		}
		if err == nil {
			err = checkKeys(b.opt)
		}
	}
	for i, l := range b.opt.Also {
		if err == nil {
			if err = l.check(); err != nil {
				err = fmt.Errorf("limit %d of Also: %w", i, err)
			}
		}
	}
	for name, ls := range b.opt.Meters {
		if err != nil {
			break
		}
		if name == "" || strings.ContainsAny(name, " =") {
			err = fmt.Errorf("meter %q: want a name without spaces or '='", name)
		}
		for i, l := range ls {
			if err == nil {
				if err = l.check(); err != nil {
					err = fmt.Errorf("meter %q[%d]: %w", name, i, err)
				}
			}
		}
	}
	if err != nil {
		return fmt.Errorf("budget: %s: %w", redisx.Quote(b.name), err)
	}
	return nil
}

// Close stops listening for pauses, and closes the shared pub/sub
// connection if no other Budget or fill.Cache on rdb uses it. Waits
// that are sleeping return [ErrClosed] at once, keeping their slots; later
// calls return ErrClosed. Slots being given back by Waits that gave up are
// given back first (each round trip bounded by a second), and the bookings
// of Waits that gave up before their reply came are waited for, to give
// their slots back, at most 5 s in all. With
// Options.Concurrency, Close frees this server's concurrency slots and
// places in line at once, in one round trip bounded by a second: the
// contexts of its reservations still open end with [ErrSlotLost]. Close
// does not close rdb, which belongs to the caller. Close is idempotent.
func (b *Budget) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.done)
	b.mu.Unlock()
	if b.conc != nil {
		b.closeConc()
	}
	b.cancel()
	b.listener.Close()
	b.wg.Wait()
	err := b.hub.Close()
	b.rdb.Close()
	return err
}

// check returns the error every call returns before it starts: the
// configuration's, or ErrClosed.
func (b *Budget) check() error {
	if b.err != nil {
		return b.err
	}
	if b.rdb == nil {
		return errors.New("budget: a Budget must be made with New")
	}
	select {
	case <-b.done:
		return ErrClosed
	default:
		return nil
	}
}

// fail returns err, from a Redis call of op, as the caller sees it: ctx's
// own error when ctx ended, else wrapped, counted, and explained when the
// budget's key holds another type.
func (b *Budget) fail(ctx context.Context, op string, err error) error {
	if cerr := ctx.Err(); cerr != nil && redisx.Classify(err) == redisx.Canceled {
		return cerr
	}
	b.stats.redisErrs.Add(1)
	if strings.Contains(err.Error(), "WRONGTYPE") {
		return fmt.Errorf("budget: %s %s: key %s holds another type than a budget's hash: %w",
			op, redisx.Quote(b.name), redisx.Quote(b.key), err)
	}
	return fmt.Errorf("budget: %s %s: %w", op, redisx.Quote(b.name), err)
}

// event reports e to the events handler (Options.Events), if any.
func (b *Budget) event(ctx context.Context, e observe.Event) {
	if b.opt.Events == nil {
		return
	}
	e.Source, e.Name = "budget", b.name
	defer func() {
		if r := recover(); r != nil {
			b.log("the events handler panicked; its event is lost", "kind", e.Kind.String(), "panic", r,
				"stack", string(debug.Stack()))
		}
	}()
	b.opt.Events.Handle(ctx, e)
}

// log tells the Logger, if any, something an operator must hear.
func (b *Budget) log(msg string, args ...any) {
	if b.opt.Logger != nil {
		b.opt.Logger.Warn("locksmith/budget: "+msg, append(args, "budget", b.name)...)
	}
}
