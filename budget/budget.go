package budget

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"math"
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

// Limit is the upstream's rate limit: at most Burst calls at once after a
// quiet spell, and Rate calls per Per after that. In any window of length Per
// the budget lets through at most Rate+Burst-1 calls.
type Limit struct {
	// Rate is how many calls are allowed per Per. It must be positive.
	Rate int
	// Per is the period of Rate.
	// default: 1s
	Per time.Duration
	// Burst is how many calls may start at once after a quiet spell.
	// default: 1
	Burst int
}

// DefaultPrefix is the default key prefix, the original locksmith one: the
// same constant as lock.DefaultPrefix.
const DefaultPrefix = redisx.DefaultPrefix

// maxAhead is how far ahead of now any instant of a budget may lie: a longer
// burst window or pause is refused, and a field of the budget's hash further
// ahead is corrupt.
const maxAhead = 10 * 365 * 24 * time.Hour

func (l Limit) withDefaults() Limit {
	if l.Per == 0 {
		l.Per = time.Second
	}
	if l.Burst == 0 {
		l.Burst = 1
	}
	return l
}

// Validate returns an error when l cannot be used: Rate not positive, Per or
// Burst negative, more than one call per microsecond, or a burst window
// (Burst-1 emission intervals) longer than ten years. A zero Per or Burst
// takes its default.
func (l Limit) Validate() error {
	if err := l.check(); err != nil {
		return errors.New("budget: " + err.Error())
	}
	return nil
}

func (l Limit) check() error {
	switch {
	case l.Rate <= 0:
		return fmt.Errorf("limit rate %d: want more than 0", l.Rate)
	case l.Per < 0:
		return fmt.Errorf("limit period %v: want 0 (1s) or more", l.Per)
	case l.Burst < 0:
		return fmt.Errorf("limit burst %d: want 0 (1) or more", l.Burst)
	}
	l = l.withDefaults()
	t := interval(l)
	switch {
	case l.Per/time.Duration(l.Rate) < time.Microsecond:
		return fmt.Errorf("limit %d per %v: more than one call per microsecond", l.Rate, l.Per)
	case t > maxAhead || int64(l.Burst-1) > int64(maxAhead/t):
		return fmt.Errorf("limit %d per %v, burst %d: the burst window exceeds %v", l.Rate, l.Per, l.Burst, maxAhead)
	}
	return nil
}

// interval returns the emission interval Per/Rate, rounded up to a whole
// microsecond, the budget's unit: rounding up never lets more calls through.
func interval(l Limit) time.Duration {
	us := l.Per.Nanoseconds() / int64(l.Rate) / 1000
	if time.Duration(us*1000)*time.Duration(l.Rate) < l.Per {
		us++
	}
	return time.Duration(us) * time.Microsecond
}

// Priority says how a call waits for the budget.
type Priority int

const (
	// Foreground is a call that a caller waits for. Foreground calls are
	// served in booking order and never wait behind more than the horizon
	// of background calls (see the package documentation).
	Foreground Priority = iota
	// Background is a call nobody waits for: a refresh or a prefetch. It
	// yields to foreground calls.
	Background
)

// String returns "foreground" or "background".
func (p Priority) String() string {
	switch p {
	case Foreground:
		return "foreground"
	case Background:
		return "background"
	}
	return "Priority(" + strconv.Itoa(int(p)) + ")"
}

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
	// right. It must not be negative; 0 gives the default.
	// default: 1
	FleetSize int

	// Observer, if not nil, sees every wait (BudgetWait), every pause
	// (Pause) and every outage of Redis (OutageStart, OutageEnd), with
	// Source "budget" and Name the budget's name.
	// default: nil
	Observer observe.Observer

	// Logger, if not nil, hears what an operator must: pauses the upstream
	// asked for, and Redis outages (while they last, a local limiter at
	// Rate/FleetSize decides).
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
	return opt
}

// Stats are a Budget's counters since New, for this server only.
type Stats struct {
	Waits     uint64        // Waits that returned nil: calls let through
	WaitTotal time.Duration // the time those Waits took, in total
	WaitMax   time.Duration // the longest of them
	Refused   uint64        // Waits refused at once: their slot lay past the ctx deadline
	Abandoned uint64        // Waits whose ctx ended while they slept on a slot or a place in line
	GivenBack uint64        // slots (and background places) of abandoned Waits given back to the budget
	ComeBacks uint64        // times a background Wait was told to come back later (horizon or share)
	Rebooked  uint64        // sleeping Waits that booked again because a pause began before their slot

	PausesRateLimited uint64 // pauses for a 429 (or GitHub's 403), from Observe or PauseFor
	PausesExhausted   uint64 // pauses for remaining 0 on a response that succeeded, from Observe
	PausesRequested   uint64 // pauses from PauseUntil
	PullDowns         uint64 // Observes whose remaining count capped the budget (set or lowered the cap)
	// Overshoots counts 429s taken for arrival jitter: instead of a pause
	// for Retry-After, the slack between paced slots grew and the fleet's
	// schedule was respaced (see [Budget.Observe]).
	Overshoots uint64

	LocalWaits  uint64 // Waits decided by the local limiter because Redis was unreachable
	LocalPauses uint64 // pauses kept in this process only because Redis was unreachable
	Errors      uint64 // Redis calls that failed other than for an outage

	// LimitConflicts counts bookings that found the budget last booked by a
	// server with another limit (another Rate/Per or Burst under the same
	// name): the fleet keeps whichever limit each booking brings, so the
	// servers must agree. The first is logged.
	LimitConflicts uint64
}

type counters struct {
	waits, waitTotal, waitMax                     atomic.Int64
	refused, abandoned, givenBack, comeBacks      atomic.Uint64
	rebooked, rateLimited, exhausted, requested   atomic.Uint64
	pullDowns, localWaits, localPauses, redisErrs atomic.Uint64
	limitConflicts, overshoots                    atomic.Uint64
}

// Stats returns the Budget's counters.
func (b *Budget) Stats() Stats {
	s := &b.stats
	return Stats{
		Waits: uint64(s.waits.Load()), WaitTotal: time.Duration(s.waitTotal.Load()),
		WaitMax: time.Duration(s.waitMax.Load()), Refused: s.refused.Load(),
		Abandoned: s.abandoned.Load(), GivenBack: s.givenBack.Load(), ComeBacks: s.comeBacks.Load(),
		Rebooked: s.rebooked.Load(), PausesRateLimited: s.rateLimited.Load(),
		PausesExhausted: s.exhausted.Load(), PausesRequested: s.requested.Load(),
		PullDowns: s.pullDowns.Load(), LocalWaits: s.localWaits.Load(),
		LocalPauses: s.localPauses.Load(), Errors: s.redisErrs.Load(),
		LimitConflicts: s.limitConflicts.Load(), Overshoots: s.overshoots.Load(),
	}
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
	// "T:tau"; toldConflict, that another server's was logged.
	sig          string
	toldConflict atomic.Bool

	rdb      *redisx.Client
	hub      *notify.Shared
	listener *notify.Listener
	local    *localLimiter // while Redis is unreachable
	// lost counts the times pub/sub messages may have been lost (the
	// connection broke or was replaced): a Wait that slept across one
	// reads the pause before it goes.
	lost atomic.Uint64

	// What this server knows of the budget, for when Redis loses it or is
	// unreachable: the latest tat it set or learned and its latest slot, in
	// µs of the Redis clock, and how far the Redis clock is ahead of this
	// process's (µs), as of the latest booking or pause.
	mineTAT, mineSlot, clock atomic.Int64

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
	localPause time.Time     // end of a pause kept locally while Redis was unreachable
	paused     chan struct{} // closed, and replaced, when either grows
	closed     bool

	// onBook, set by tests only, sees every booking, with the ctx of its
	// Wait.
	onBook func(context.Context, booking, Priority)
}

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
	b.tb = int64(math.Ceil(float64(b.t) / b.opt.BackgroundShare))
	b.horizon = min(max(2*b.t, horizonMin.Microseconds()), horizonMax.Microseconds())
	n := b.opt.FleetSize
	tl := time.Duration(b.t*int64(n)) * time.Microsecond
	b.local = &localLimiter{t: tl, tau: time.Duration(max(1, b.lim.Burst/n)-1) * tl}
	b.paused = make(chan struct{})
	b.base, b.cancel = context.WithCancel(context.Background())
	b.rdb = redisx.New(rdb)
	b.rdb.SetOnOutage(func(err error) {
		b.log("redis unreachable; a local limiter at Rate/FleetSize decides", "err", err)
		b.event(context.Background(), observe.Event{Kind: observe.OutageStart, Err: err})
	}, func(d time.Duration) {
		b.log("redis reachable again", "outage", d)
		b.event(context.Background(), observe.Event{Kind: observe.OutageEnd, Duration: d})
	})
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
	default:
		if err = limit.check(); err == nil {
			err = redisx.CheckPrefix(b.opt.Prefix)
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
// given back first (each round trip bounded by a second). Close does not
// close rdb, which belongs to the caller. Close is idempotent.
func (b *Budget) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.done)
	b.mu.Unlock()
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

var (
	//go:embed wait.lua
	waitLua    string
	waitScript = redis.NewScript(waitLua)
	//go:embed giveback.lua
	givebackLua    string
	givebackScript = redis.NewScript(givebackLua)
)

// Wait returns when this call may go to the upstream: at once while the
// budget has room, else at the slot it booked. Booking is one round trip, and
// the slot is Wait's to keep: callers are served in booking order across the
// fleet, Background calls yielding to Foreground ones (see the package
// documentation).
//
// When ctx has a deadline and the slot lies past it, Wait books nothing and
// returns at once an error wrapping context.DeadlineExceeded. When ctx ends
// while Wait sleeps, Wait returns ctx.Err() at once and gives the slot back
// if no call booked after it. A ctx already ended returns ctx.Err() without
// a round trip. When Redis is unreachable, a local limiter decides (see
// [Options].FleetSize); a Redis error reply (a key of another type at the
// budget's name, say) is returned, wrapped.
func (b *Budget) Wait(ctx context.Context, p Priority) error {
	if err := b.check(); err != nil {
		return err
	}
	if p != Foreground && p != Background {
		return fmt.Errorf("budget: wait %s: unknown priority %d", redisx.Quote(b.name), int(p))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	start := time.Now()
	err := b.wait(ctx, p)
	d := time.Since(start)
	if err == nil {
		s := &b.stats
		s.waits.Add(1)
		s.waitTotal.Add(int64(d))
		for m := s.waitMax.Load(); int64(d) > m && !s.waitMax.CompareAndSwap(m, int64(d)); m = s.waitMax.Load() {
		}
	}
	b.event(ctx, observe.Event{Kind: observe.BudgetWait, Duration: d, Err: err, Background: p == Background})
	return err
}

// booking is the wait script's reply.
type booking struct {
	kind  int64 // booked, refused or comeBack
	wait  time.Duration
	slot  int64  // booked: the slot; comeBack: the place in line
	tat   int64  // booked: the tat the booking set
	gated bool   // booked: a background call passed the share gate
	other string // booked: the limit of the previous booking, when another server's differs
	bg    bool
	place bool // comeBack: slot is a place in the line
	local bool // a slot of the local limiter, in µs of this process's clock
}

const (
	booked   = 0
	refused  = 1
	comeBack = 2
)

func (b *Budget) wait(ctx context.Context, p Priority) error {
	var place int64
	for {
		if err := b.sleepLocalPause(ctx); err != nil {
			return err
		}
		// A pause announced before the subscription was confirmed, or
		// while messages were lost, is read before going.
		listening, lost := b.listening(), b.lost.Load()
		r, err := b.book(ctx, p, place)
		if err != nil {
			if redisx.Outage(err) {
				return b.waitLocal(ctx, p)
			}
			return b.fail(ctx, "wait", err)
		}
		switch r.kind {
		case refused:
			b.stats.refused.Add(1)
			return fmt.Errorf("budget: wait %s: the next slot, %v away, lies past the deadline: %w",
				redisx.Quote(b.name), r.wait, context.DeadlineExceeded)
		case comeBack:
			b.stats.comeBacks.Add(1)
			place = r.slot
			if err := b.sleep(ctx, r.wait, nil); err != nil {
				b.abandon(r, err)
				return err
			}
			continue
		}
		if r.other != "" {
			b.limitConflict(r.other)
		}
		b.learn(r)
		if b.onBook != nil {
			b.onBook(ctx, r, p)
		}
		if r.wait <= 0 {
			return nil
		}
		booked := r.slot - r.wait.Microseconds() // the Redis clock at the booking
		rebook := func(at, respaced int64) bool { return at > r.slot || respaced > booked }
		err = b.sleep(ctx, r.wait, rebook)
		if err == nil && (!listening || b.lost.Load() != lost) {
			// Pub/sub did not work all along (refused, not confirmed yet,
			// or Redis was away): a pause another server began meanwhile
			// may not have been heard. Read it before going.
			if at, respaced, rerr := b.readPause(); rerr == nil && rebook(at, respaced) {
				b.heard(at, respaced)
				err = errPaused
			}
		}
		switch {
		case errors.Is(err, errPaused):
			// A pause began before the slot: the script puts the new
			// booking after it.
			b.stats.rebooked.Add(1)
			place = 0
			continue
		case err != nil:
			b.abandon(r, err)
			return err
		}
		return nil
	}
}

// limitConflict counts a booking that found the budget last booked with
// another limit, other ("T:tau" in µs), and logs the first.
func (b *Budget) limitConflict(other string) {
	b.stats.limitConflicts.Add(1)
	if b.toldConflict.Swap(true) {
		return
	}
	b.log("servers disagree on the budget's limit: each booking brings its own, so the fleet's limit is not kept",
		"ours", describeLimit(b.sig), "theirs", describeLimit(other))
}

// describeLimit tells a limit given as "T:tau" (µs) in words.
func describeLimit(sig string) string {
	ts, taus, ok := strings.Cut(sig, ":")
	t, err1 := strconv.ParseInt(ts, 10, 64)
	tau, err2 := strconv.ParseInt(taus, 10, 64)
	if !ok || err1 != nil || err2 != nil || t <= 0 {
		return strconv.Quote(sig)
	}
	return fmt.Sprintf("a call every %v, burst %d", time.Duration(t)*time.Microsecond, tau/t+1)
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

// book runs the wait script. When ctx ends before its reply arrives, a slot
// it booked is given back in the background.
func (b *Budget) book(ctx context.Context, p Priority, place int64) (booking, error) {
	patience := int64(-1)
	if dl, ok := ctx.Deadline(); ok {
		patience = max(0, time.Until(dl).Microseconds())
	}
	prio := "0"
	if p == Background {
		prio = "1"
	}
	return redisx.Run(ctx, b.rdb, func(ctx context.Context) (booking, error) {
		v, err := waitScript.Run(ctx, b.rdb.Redis(), []string{b.key}, b.t, b.tau, prio, patience,
			b.tb, b.horizon, place, maxAhead.Microseconds(), b.sig, b.mineTAT.Load(), b.knownRespace(), slackHalfLife(b.t)).Result()
		if err != nil {
			return booking{}, err
		}
		r, err := parseBooking(v)
		r.bg = p == Background
		return r, err
	}, func(r booking, err error) {
		if err == nil && r.kind != refused {
			b.giveBack(r)
		}
	})
}

func parseBooking(v any) (booking, error) {
	a, ok := v.([]any)
	if !ok || len(a) < 2 {
		return booking{}, fmt.Errorf("unexpected wait reply %v (%T)", v, v)
	}
	var other string
	if len(a) == 6 {
		// The limit another server booked with, or 0.
		other, _ = a[5].(string)
		a = a[:5]
	}
	n := make([]int64, len(a))
	for i, x := range a {
		if n[i], ok = x.(int64); !ok {
			return booking{}, fmt.Errorf("unexpected wait reply %v (%T)", v, x)
		}
	}
	r := booking{kind: n[0], wait: time.Duration(n[1]) * time.Microsecond}
	switch {
	case r.kind == booked && len(n) == 5:
		r.slot, r.tat, r.gated, r.other = n[2], n[3], n[4] == 1, other
	case r.kind == comeBack && len(n) == 3:
		r.slot, r.place = n[2], n[2] > 0
	case r.kind != refused:
		return booking{}, fmt.Errorf("unexpected wait reply %v", v)
	}
	return r, nil
}

// errPaused is sleep's error when a pause began before the slot.
var errPaused = errors.New("paused")

// sleep sleeps for d, until ctx ends (returning ctx.Err()), the Budget is
// closed (ErrClosed), or, when paused is not nil, paused reports true for
// the end of the pause heard of and the instant the schedule was last
// respaced (errPaused).
func (b *Budget) sleep(ctx context.Context, d time.Duration, paused func(at, respaced int64) bool) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		b.mu.Lock()
		at, respaced, ch := b.pauseAt, b.respacedAt, b.paused
		b.mu.Unlock()
		if paused != nil && paused(at, respaced) {
			return errPaused
		}
		select {
		case <-timer.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-b.done:
			return ErrClosed
		case <-ch:
		}
	}
}

// abandon gives back, in the background, what a Wait that ends with err
// had booked: its slot, or its place in the background line.
func (b *Budget) abandon(r booking, err error) {
	if errors.Is(err, ErrClosed) {
		return
	}
	b.stats.abandoned.Add(1)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		b.giveBack(r)
	}()
}

// giveBackTimeout bounds the round trip that gives a slot back, and so
// Close, which waits for the give-backs under way.
const giveBackTimeout = time.Second

// giveBack runs the give-back script for r. Close does not cut it short:
// the slot goes back to the fleet even when this server shuts down.
func (b *Budget) giveBack(r booking) {
	if r.kind == comeBack && !r.place {
		return // standing by: nothing booked
	}
	ctx, cancel := context.WithTimeout(context.Background(), giveBackTimeout)
	defer cancel()
	args := []any{"slot", r.tat, b.t, r.slot, 0}
	if r.place {
		args = []any{"place", r.slot, b.t}
	} else if r.bg {
		args[4] = b.tb
	}
	n, err := redisx.Run(ctx, b.rdb, func(ctx context.Context) (int64, error) {
		return givebackScript.Run(ctx, b.rdb.Redis(), []string{b.key}, args...).Int64()
	}, nil)
	if err == nil && n == 1 {
		b.stats.givenBack.Add(1)
		if !r.place {
			b.mineTAT.CompareAndSwap(r.tat, r.tat-b.t)
		}
	}
}

// message hears a pause begun on any server: its end, and the instant the
// schedule was respaced if it was (see pause.lua). It runs on the hub's
// reader, and must not block.
func (b *Budget) message(m string) {
	ends, respaced, _ := strings.Cut(m, " ")
	at, err := strconv.ParseInt(ends, 10, 64)
	rs, rerr := strconv.ParseInt(respaced, 10, 64)
	if err != nil || respaced != "" && rerr != nil {
		// Not a pause's end: the hub's word (notify.Wake) that messages
		// may have been lost. Sleeping Waits read the pause before going.
		b.lost.Add(1)
		return
	}
	b.heard(at, rs)
}

// listening reports whether the budget's subscription is confirmed: a
// pause announced now reaches this server.
func (b *Budget) listening() bool {
	select {
	case <-b.listener.Ready():
		return true
	default:
		return false
	}
}

// readPause reads the end of the pause in the budget's hash, and when the
// schedule was last respaced.
func (b *Budget) readPause() (at, respaced int64, err error) {
	ctx, cancel := context.WithTimeout(b.base, giveBackTimeout)
	defer cancel()
	v, err := redisx.Run(ctx, b.rdb, func(ctx context.Context) ([]any, error) {
		return b.rdb.Redis().HMGet(ctx, b.key, "pause", "rs").Result()
	}, nil)
	if err != nil {
		return 0, 0, err
	}
	n := func(x any) int64 {
		s, _ := x.(string)
		i, _ := strconv.ParseInt(s, 10, 64)
		return i
	}
	return n(v[0]), n(v[1]), nil
}

// heard records that a pause ends at at and that the schedule was
// respaced at respaced (µs of the Redis clock; 0 for not), and wakes the
// sleeping Waits to look.
func (b *Budget) heard(at, respaced int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if respaced > b.respacedAt {
		// The fleet's schedule started again at respaced: what this
		// server remembers of the old one must not push it back out
		// (wait.lua takes the greater of the two).
		for m := b.mineTAT.Load(); m > respaced+b.t+b.tau && !b.mineTAT.CompareAndSwap(m, respaced+b.t+b.tau); m = b.mineTAT.Load() {
		}
	}
	if at > b.pauseAt || respaced > b.respacedAt {
		b.pauseAt = max(b.pauseAt, at)
		b.respacedAt = max(b.respacedAt, respaced)
		close(b.paused)
		b.paused = make(chan struct{})
	}
}

// knownRespace is the latest respace of the schedule this server has heard
// of (µs of the Redis clock), or 0.
func (b *Budget) knownRespace() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.respacedAt
}

// Paused reports whether the fleet is paused now, as far as this server
// has heard: by a 429 or remaining 0 observed, or by [Budget.PauseUntil], on
// any server. A caller that gives up on a Wait while it is paused is held
// up by the upstream's rate limit, not by a slow upstream.
func (b *Budget) Paused() bool {
	if b.check() != nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	return b.pauseAt > now.UnixMicro()+b.clock.Load() || b.localPause.After(now)
}

// pauseLocally keeps a pause in this process while Redis is unreachable.
func (b *Budget) pauseLocally(until time.Time) {
	b.stats.localPauses.Add(1)
	b.mu.Lock()
	defer b.mu.Unlock()
	if until.After(b.localPause) {
		b.localPause = until
		close(b.paused)
		b.paused = make(chan struct{})
	}
}

// sleepLocalPause sleeps until the end of a pause kept locally.
func (b *Budget) sleepLocalPause(ctx context.Context) error {
	for {
		b.mu.Lock()
		d := time.Until(b.localPause)
		b.mu.Unlock()
		if d <= 0 {
			return nil
		}
		if dl, ok := ctx.Deadline(); ok && time.Now().Add(d).After(dl) {
			b.stats.refused.Add(1)
			return fmt.Errorf("budget: wait %s: paused for %v, past the deadline: %w",
				redisx.Quote(b.name), d, context.DeadlineExceeded)
		}
		if err := b.sleep(ctx, d, nil); err != nil {
			return err
		}
	}
}

// waitLocal is Wait while Redis is unreachable: a local limiter at
// Rate/FleetSize decides. Background calls book no further ahead than the
// horizon, as with Redis; there is no background share. The local limiter
// goes on from this server's latest slot in Redis, one local interval
// after it, not with a full burst: its calls booked there still go.
func (b *Budget) waitLocal(ctx context.Context, p Priority) error {
	b.stats.localWaits.Add(1)
	horizon := time.Duration(b.horizon) * time.Microsecond
	for {
		if err := b.sleepLocalPause(ctx); err != nil {
			return err
		}
		if s := b.mineSlot.Load(); s > 0 {
			b.local.seed(time.UnixMicro(s - b.clock.Load()).Add(b.local.t))
		}
		now := time.Now()
		slot, tat := b.local.reserve(now)
		d := slot.Sub(now)
		if dl, ok := ctx.Deadline(); ok && slot.After(dl) {
			b.local.cancel(tat)
			b.stats.refused.Add(1)
			return fmt.Errorf("budget: wait %s (local limit, Redis unreachable): the next slot, %v away, lies past the deadline: %w",
				redisx.Quote(b.name), d, context.DeadlineExceeded)
		}
		if p == Background && d > horizon {
			b.local.cancel(tat)
			b.stats.comeBacks.Add(1)
			if err := b.sleep(ctx, d-horizon, nil); err != nil {
				return err
			}
			continue
		}
		// Back on Redis, this server brings the slot: the call goes, and
		// the next may follow T later, without a burst.
		b.know(slot.UnixMicro()+b.clock.Load()+b.t+b.tau, 0)
		if b.onBook != nil {
			b.onBook(ctx, booking{slot: slot.UnixMicro(), wait: d, local: true}, p)
		}
		if d <= 0 {
			return nil
		}
		b.mu.Lock()
		pause := b.localPause
		b.mu.Unlock()
		err := b.sleep(ctx, d, func(int64, int64) bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			return b.localPause.After(pause)
		})
		switch {
		case errors.Is(err, errPaused):
			b.local.cancel(tat)
			b.stats.rebooked.Add(1)
			continue
		case err != nil:
			b.local.cancel(tat)
			if !errors.Is(err, ErrClosed) {
				b.stats.abandoned.Add(1)
			}
			return err
		}
		return nil
	}
}

// learn records what a booking in Redis tells this server: the tat it set,
// its slot, and the Redis clock's lead on this process's.
func (b *Budget) learn(r booking) {
	// A booking made before a respace this server has heard of belongs to
	// the old schedule: its tat must not push the new one back out. (The
	// reply and the respace's message come on different connections, in
	// either order; heard lowers what was learned before.)
	if r.slot-r.wait.Microseconds() >= b.knownRespace() {
		b.know(r.tat, r.slot)
	}
	b.clock.Store(r.slot - time.Now().Add(r.wait).UnixMicro())
}

// know raises what this server knows of the budget to tat and slot (µs of
// the Redis clock; 0 for unknown).
func (b *Budget) know(tat, slot int64) {
	for m := b.mineTAT.Load(); tat > m && !b.mineTAT.CompareAndSwap(m, tat); m = b.mineTAT.Load() {
	}
	for m := b.mineSlot.Load(); slot > m && !b.mineSlot.CompareAndSwap(m, slot); m = b.mineSlot.Load() {
	}
}

// localLimiter is GCRA on this process's clock, with emission interval t
// and burst tolerance tau: the budget of one server while Redis is
// unreachable.
type localLimiter struct {
	t, tau time.Duration

	mu  sync.Mutex // guards tat
	tat time.Time
}

// reserve books the next slot from now, and returns it and the tat the
// booking set.
func (l *localLimiter) reserve(now time.Time) (slot, tat time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	slot = now
	if s := l.tat.Add(-l.tau); s.After(slot) {
		slot = s
	}
	if slot.After(l.tat) {
		l.tat = slot
	}
	l.tat = l.tat.Add(l.t)
	return slot, l.tat
}

// cancel gives back the booking that set tat, when no booking came after
// it.
func (l *localLimiter) cancel(tat time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.tat.Equal(tat) {
		l.tat = tat.Add(-l.t)
	}
}

// seed makes the next slot no earlier than at.
func (l *localLimiter) seed(at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if at = at.Add(l.tau); at.After(l.tat) {
		l.tat = at
	}
}

// event reports e to the Observer, if any.
func (b *Budget) event(ctx context.Context, e observe.Event) {
	if b.opt.Observer == nil {
		return
	}
	e.Source, e.Name = "budget", b.name
	b.opt.Observer.Observe(ctx, e)
}

// log tells the Logger, if any, something an operator must hear.
func (b *Budget) log(msg string, args ...any) {
	if b.opt.Logger != nil {
		b.opt.Logger.Warn("locksmith/budget: "+msg, append(args, "budget", b.name)...)
	}
}
