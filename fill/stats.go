package fill

import "sync/atomic"

// Stats are a Cache's counters since New.
type Stats struct {
	Hits          uint64 // values (or cached absences) read from Redis, fresh
	LocalHits     uint64 // values served from the in-process tier
	StaleHits     uint64 // values served past their TTL (StaleWhileRevalidate, StaleIfError)
	Misses        uint64 // flights that found no usable value in Redis
	Loads         uint64 // loader calls, refreshes included
	Refreshes     uint64 // background and early refreshes started
	RefreshErrors uint64 // refreshes whose loader failed
	LocalMerges   uint64 // calls that joined a flight already running in this process
	RemoteMerges  uint64 // flights that took another server's result instead of loading
	LoadErrors    uint64 // loader calls that failed (not with ErrNotFound) or panicked
	RateLimited   uint64 // loader calls that returned a budget.RateLimitedError
	Corrupt       uint64 // entries in Redis or in notifications that could not be decoded, or of another type
	TypeConflicts uint64 // reads refused because the key holds another live type
	RedisErrors   uint64 // failed Redis calls
	FailOpens     uint64 // loads run without the fleet-wide lock because Redis was unavailable
	Outages       uint64 // times Redis was found unreachable after it had answered
	StaleStores   uint64 // loaded values not stored: the lease was lost or the key deleted meanwhile
	StoreErrors   uint64 // values Redis refused to store (out of memory); waiters were told at once
	NotifyErrors  uint64 // notifications Redis refused to publish or subscribe (ACL): waiters poll
	Invalidations uint64 // in-process copies dropped because another server replaced or deleted them
	LocalClears   uint64 // times the in-process tier was emptied: its pub/sub connection broke or was replaced
}

type counters struct {
	hits, localHits, staleHits, misses, loads, refreshes, refreshErrors atomic.Uint64
	localMerges, remoteMerges, loadErrors, rateLimited, corrupt         atomic.Uint64
	typeConflicts, redisErrors, failOpens, staleStores, storeErrors     atomic.Uint64
	notifyErrors, invalidations, localClears                            atomic.Uint64
}

// Stats returns the Cache's counters; a nil *Cache has none.
func (c *Cache) Stats() Stats {
	if c == nil {
		return Stats{}
	}
	s := &c.stats
	return Stats{
		Hits: s.hits.Load(), LocalHits: s.localHits.Load(), StaleHits: s.staleHits.Load(),
		Misses: s.misses.Load(), Loads: s.loads.Load(), Refreshes: s.refreshes.Load(),
		RefreshErrors: s.refreshErrors.Load(), LocalMerges: s.localMerges.Load(),
		RemoteMerges: s.remoteMerges.Load(), LoadErrors: s.loadErrors.Load(),
		RateLimited: s.rateLimited.Load(), Corrupt: s.corrupt.Load(),
		TypeConflicts: s.typeConflicts.Load(), RedisErrors: s.redisErrors.Load(),
		FailOpens: s.failOpens.Load(), Outages: c.rdb.Outages(), StaleStores: s.staleStores.Load(),
		StoreErrors: s.storeErrors.Load(), NotifyErrors: s.notifyErrors.Load() + c.hub.Errors(),
		Invalidations: s.invalidations.Load(), LocalClears: s.localClears.Load(),
	}
}
