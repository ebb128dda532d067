package budget

import (
	"sync/atomic"
	"time"
)

// Stats are a Budget's counters since New, for this server only.
type Stats struct {
	Waits     uint64        // Waits (and Reserves) that returned nil: calls let through
	WaitTotal time.Duration // the time those Waits took, in total
	WaitMax   time.Duration // the longest of them
	Refused   uint64        // Waits refused at once: their slot lay past the ctx deadline
	Abandoned uint64        // Waits whose ctx ended while they slept on a slot or a place in line
	GivenBack uint64        // slots (and background places) of abandoned Waits and cancelled reservations given back to the budget
	ComeBacks uint64        // times a background Wait was told to come back later (horizon or share)
	Rebooked  uint64        // sleeping Waits that booked again because a pause began before their slot
	Stretched uint64        // sleeping Waits whose slot moved with a stretch of the schedule after an overshoot, or past a call that left late, without a round trip
	// Late counts calls this server let through late enough, where the
	// limit has no burst tolerance, to move the fleet's schedule after
	// them on: the upstream counts the next call from
	// this one's arrival.
	Late uint64

	PausesRateLimited uint64 // pauses for a 429 (or GitHub's 403), from Observe or PauseFor
	PausesExhausted   uint64 // pauses for remaining 0 on a response that succeeded, from Observe
	PausesRequested   uint64 // pauses from PauseUntil
	PullDowns         uint64 // Observes whose remaining count capped the budget or a meter (set or lowered a cap)
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

	// InFlight is the concurrency slots this server holds now: its
	// reservations not yet done or cancelled (with Options.Concurrency).
	InFlight int

	// Rate is the rate in force, in calls per Per of the Limit: Limit.Rate,
	// or with Options.Adaptive the rate the fleet learned, as this server
	// last heard it (from its own cuts and reports, and the cuts other
	// servers announce).
	Rate float64
	// RateCuts counts the cuts of the learned rate this server made (with
	// Options.Adaptive): 429s that came once per episode, not the old news
	// of an episode another server or an earlier 429 already cut for.
	RateCuts uint64
	// Keys is the keys of this server's Options.Keys not removed from
	// the pool, as far as it has heard ([Budget.Remove]). 0 without Keys.
	Keys int
}

type counters struct {
	waits, waitTotal, waitMax                     atomic.Int64
	refused, abandoned, givenBack, comeBacks      atomic.Uint64
	rebooked, rateLimited, exhausted, requested   atomic.Uint64
	stretched, late                               atomic.Uint64
	pullDowns, localWaits, localPauses, redisErrs atomic.Uint64
	limitConflicts, overshoots, rateCuts          atomic.Uint64
}

// Stats returns the Budget's counters.
func (b *Budget) Stats() Stats {
	s := &b.stats
	return Stats{
		Waits: uint64(s.waits.Load()), WaitTotal: time.Duration(s.waitTotal.Load()),
		WaitMax: time.Duration(s.waitMax.Load()), Refused: s.refused.Load(),
		Abandoned: s.abandoned.Load(), GivenBack: s.givenBack.Load(), ComeBacks: s.comeBacks.Load(),
		Rebooked: s.rebooked.Load(), Stretched: s.stretched.Load(), Late: s.late.Load(), PausesRateLimited: s.rateLimited.Load(),
		PausesExhausted: s.exhausted.Load(), PausesRequested: s.requested.Load(),
		PullDowns: s.pullDowns.Load(), LocalWaits: s.localWaits.Load(),
		LocalPauses: s.localPauses.Load(), Errors: s.redisErrs.Load(),
		LimitConflicts: s.limitConflicts.Load(), Overshoots: s.overshoots.Load(),
		InFlight: b.inFlight(), Rate: b.rate(), RateCuts: s.rateCuts.Load(), Keys: b.liveKeys(),
	}
}
