package budget

// Unstated limits (Options.Adaptive): the fleet learns the rate the
// upstream accepts, one rate in the budget's hash (adaptive.lua), cut by a
// 429 that states no wait and raised by the calls the upstream accepts,
// which each server reports in batches.

import (
	"context"
	_ "embed"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/redisx"
	"github.com/locksmith-go/locksmith/observe"
)

//go:embed adaptive.lua
var adaptiveLua string

var adaptiveScript = redis.NewScript(adaptiveLua)

// The learned rate's constants (see adaptive.lua).
const (
	// learnKeep is the share of the rate a cut keeps: the multiplicative
	// decrease of AIMD (TCP CUBIC's β is 0.7: a cut a little less deep
	// kept more of a limit that steps, for as few 429s, in
	// BenchmarkBudgetAdaptive).
	learnKeep = 0.75
	// learnCalls is U: the calls the upstream accepts, while the fleet
	// paces at the learned rate, that bring the rate back to where it was
	// cut. An episode costs a 429, and a few more of the calls in flight
	// when it came; it lasts about U calls at a steady limit, which keeps
	// the 429s under 1% of the calls; a fleet whose limit tripled finds it
	// in about 3U calls. (A limit of 100 calls/s, in a bucket 20 calls
	// deep, stepping every minute between 50 and 150: 0.83–0.89% of the
	// calls refused, 90–92% of the limit used, 20–23s to 85% of a raised
	// limit; see BenchmarkBudgetAdaptive.)
	learnCalls = 512
	// learnCredit: without a refusal, every learnCredit learned intervals
	// of time count as one call accepted, so the rate drifts back up to the
	// ceiling, probing again, when nothing was refused for a long while
	// (about 100 times what the calls would take).
	learnCredit = 100
	// learnFloor: the learned rate stays above the ceiling over learnFloor.
	learnFloor = 1000
	// reportEvery is how many accepted calls a server gathers before it
	// reports them, in one round trip off the caller's path: a fleet spends
	// one round trip per reportEvery calls on learning.
	reportEvery = 16
	// cutSpacing is the least time between two cuts for 429s whose slot is
	// unknown (Budget.Observe after a Wait, not a Reservation), or two
	// learned intervals if longer: a 429 that soon after a cut is taken for
	// the same episode. Reservations need no such guess: a 429 for a call
	// booked before the cut is old news.
	cutSpacing = 250 * time.Millisecond
)

// learner is what a server knows of the fleet's learned rate.
type learner struct {
	lt       atomic.Int64 // the learned interval as last heard, µs; 0 for the ceiling
	accepted atomic.Int64 // calls accepted not yet reported
	busy     atomic.Bool  // a report is under way
}

// rate returns the rate in force, in calls per Per (Stats.Rate).
func (b *Budget) rate() float64 {
	lt := b.learner.lt.Load()
	if lt <= b.t {
		return float64(b.lim.Rate)
	}
	return float64(b.lim.Per.Microseconds()) / float64(lt)
}

// learnArgs returns adaptive.lua's ARGV for mode, before the mode's own.
func (b *Budget) learnArgs(mode string) []any {
	return []any{mode, b.t, b.tau, maxAhead.Microseconds(), learnFloor * b.t,
		learnKeep, learnCalls, learnCredit}
}

// adapt applies to an Adaptive budget what a response says of its learned
// rate, and reports whether it was the whole of what the response says: a
// 429 that states no wait cuts the rate, and pauses nothing; a call the
// upstream accepted counts toward raising it.
func (b *Budget) adapt(ctx context.Context, f feedback, status int) (bool, error) {
	switch {
	case status == http.StatusTooManyRequests && !f.metered && (f.unstated || f.pause <= 0 && !f.pull):
		return true, b.cut(ctx, "observe", f.slot, "a 429 that states no wait (no Retry-After, no reset)")
	case status >= 200 && status < 300:
		b.accept(ctx)
	}
	return false, nil
}

// cut cuts the fleet's learned rate for a 429 (why) of a call booked for
// slot (µs of the Redis clock; 0 when unknown), once per episode: a 429 for
// a call booked before the latest cut changes nothing. While Redis is
// unreachable this server's local limiter slows down instead.
func (b *Budget) cut(ctx context.Context, op string, slot int64, why string) error {
	args := append(b.learnArgs("cut"), slot, cutSpacing.Microseconds(), b.rdb.PublishFlag())
	v, err := redisx.Run(ctx, b.rdb, func(ctx context.Context) ([]int64, error) {
		return adaptiveScript.Run(ctx, b.rdb.Redis(), []string{b.key}, args...).Int64Slice()
	}, nil)
	if err == nil && len(v) != 6 {
		err = fmt.Errorf("unexpected reply %v", v)
	}
	switch {
	case err != nil && redisx.Outage(err):
		old := max(b.learner.lt.Load(), b.t)
		b.setLearned(min(int64(math.Ceil(float64(old)/learnKeep)), learnFloor*b.t))
		b.cutMade(ctx, old, why+"; Redis unreachable: this server only")
		return nil
	case err != nil:
		return b.fail(ctx, op, err)
	}
	b.setLearned(v[2])
	if v[0] == 1 {
		b.heard(v[5], v[3], v[4])
		b.cutMade(ctx, v[1], why)
	}
	return nil
}

// cutMade counts, logs and reports a cut this server made from the learned
// interval old (µs) to the one it learned now.
func (b *Budget) cutMade(ctx context.Context, old int64, why string) {
	b.stats.rateCuts.Add(1)
	now := b.rate()
	b.event(ctx, observe.Event{Kind: observe.RateCut, Rate: now})
	b.log("upstream refused a call: cutting the fleet's learned rate",
		"from", b.describeRate(float64(b.lim.Per.Microseconds())/float64(max(old, b.t))),
		"to", b.describeRate(now), "why", why)
}

// describeRate tells a rate in calls per Per in words.
func (b *Budget) describeRate(r float64) string {
	return strconv.FormatFloat(r, 'g', 4, 64) + " per " + b.lim.Per.String()
}

// accept counts a call the upstream accepted toward raising the learned
// rate: when ctx carries its reservation, once, and only when it was booked
// with a wait (demand met the rate); any when not (adaptive.lua then checks
// that the fleet paces at the rate). Every reportEvery of them go to Redis
// in one round trip, off the caller's path.
func (b *Budget) accept(ctx context.Context) {
	if r := FromContext(ctx); r != nil && r.b == b && (!r.accept() || r.r.local || r.r.wait <= 0) {
		return
	}
	if b.learner.accepted.Add(1) < reportEvery || b.learner.busy.Swap(true) {
		return
	}
	b.later(func() {
		for {
			_ = b.report()
			b.learner.busy.Store(false)
			// The calls accepted while the report was on its way found it
			// busy: a whole batch of them goes now, not at the next accept
			// (which may be long in coming).
			if b.learner.accepted.Load() < reportEvery || b.learner.busy.Swap(true) {
				return
			}
		}
	})
}

// accept marks the reservation's call accepted, and reports whether it
// was not already.
func (r *Reservation) accept() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	was := r.accepted
	r.accepted = true
	return !was
}

// report sends the accepted calls gathered to Redis, which raises the
// learned rate for them, and learns the rate in force.
func (b *Budget) report() error {
	n := b.learner.accepted.Swap(0)
	if n <= 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(b.base, giveBackTimeout)
	defer cancel()
	args := append(b.learnArgs("grow"), n)
	v, err := redisx.Run(ctx, b.rdb, func(ctx context.Context) ([]int64, error) {
		return adaptiveScript.Run(ctx, b.rdb.Redis(), []string{b.key}, args...).Int64Slice()
	}, nil)
	switch {
	case err != nil && redisx.Outage(err):
		return nil
	case err != nil:
		return b.fail(ctx, "report", err)
	case len(v) != 6:
		return b.fail(ctx, "report", fmt.Errorf("unexpected reply %v", v))
	}
	b.setLearned(v[2])
	return nil
}

// heardCut records the learned interval another server's cut announced
// (µs, as the message's last field).
func (b *Budget) heardCut(s string) {
	lt, err := strconv.ParseInt(s, 10, 64)
	if err != nil || lt < b.t || lt > learnFloor*b.t {
		return
	}
	b.setLearned(lt)
}

// setLearned records the learned interval lt (µs), and has the local
// limiter, which decides while Redis is unreachable, keep to it too.
func (b *Budget) setLearned(lt int64) {
	if lt <= b.t {
		lt = 0
	}
	if b.learner.lt.Swap(lt) == lt {
		return
	}
	// The latest value, should another call have set one meanwhile.
	b.local.pace(time.Duration(max(b.learner.lt.Load(), b.t))*time.Microsecond, b.opt.FleetSize)
}

// pace sets the interval of the local limiter's Limit to t, for a server
// of a fleet of n: n·t, the burst as it was.
func (l *localLimiter) pace(t time.Duration, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	g := &l.lims[0]
	burst := g.tau / g.t
	g.t = t * time.Duration(n)
	g.tau = burst * g.t
}
