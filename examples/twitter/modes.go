package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/httpfill"
)

// mode is one way for the fleet to answer requests: its name, and how one
// app server of the fleet is built.
type mode struct {
	name      string
	doc       string // one line for -h
	newServer func(s serverEnv) appServer
	extra     bool // run only when -modes names it
}

// modes are every mode, in the order a run without -modes runs them. A new
// mode is one line here, and the appServer its newServer builds.
var modes = []mode{
	{naive, "cache-aside by hand: GET; on a miss call the API and SET", newNaiveServer, false},
	{"fill", "fill.Get, whose loader calls the API", newFillServer, false},
	{"fill+budget", "fill, its loads waiting for the fleet's budget of API calls", newFillBudgetServer, false},
	{batchMode, "a fleet-wide fill.Batcher with the budget: up to 100 users per API call", newFillBatchServer, false},
	{"httpfill", "the plain API call, through an http.Client on httpfill's Transport, with the budget", newHTTPFillServer, false},
	{concMode, "fill+budget whose budget also caps the fleet's calls in flight at -api-concurrency", newFillConcServer, true},
	{adaptiveMode, "fill+budget, the budget learning the API's real limit under -rate (budget.Options.Adaptive);\n" +
		"run by default with -hidden-limit only", newFillAdaptiveServer, true},
}

// adaptiveMode is the name of the mode whose budget learns the API's limit:
// a run without -modes runs it, and only it with fill+budget, when the API
// hides its limit (-hidden-limit).
const adaptiveMode = "fill+adaptive"

// naive is the name of the mode the others are compared with.
const naive = "naive"

// batchMode is the name of the mode whose API calls are for many users.
const batchMode = "fill+batch"

// concMode is the name of the mode whose budget caps the calls in flight
// (budget.Options.Concurrency).
const concMode = "fill+conc"

// batchName names the fleet's batches of timelines: every server's Batcher
// has it, so that they share one gatherer.
const batchName = "timelines"

// serverEnv is what one app server is built on: clients of its own, as a
// separate process would have. The fleet closes them after the server.
type serverEnv struct {
	cfg    config
	rdb    *redis.Client
	api    *apiClient
	prefix string // of every Redis key of the mode; deleted before each mode
}

// appServer is one server of the fleet: it answers a request for a user's
// timeline from the cache, or from the API. A server built on a fill.Cache
// also has a method stats() fill.Stats, one that may have a budget a method
// budgetStats() (budget.Stats, bool), and one that caches under its HTTP
// client a method clientRequests() int64, which the report sums over the
// fleet.
type appServer interface {
	timeline(ctx context.Context, id uint64) (Timeline, error)
	// close releases what the server made of its serverEnv.
	close() error
}

// naiveServer is cache-aside by hand: GET, and on a miss call the API and SET
// the result. Nothing stops the other requests missing meanwhile, on this
// server or another, from calling the API for the same user.
type naiveServer struct{ serverEnv }

func newNaiveServer(s serverEnv) appServer { return &naiveServer{s} }

func (s *naiveServer) timeline(ctx context.Context, id uint64) (Timeline, error) {
	key := s.prefix + timelineKey(id)
	b, err := s.rdb.Get(ctx, key).Bytes()
	switch {
	case err == nil:
		return decodeTimeline(b)
	case !errors.Is(err, redis.Nil):
		return Timeline{}, fmt.Errorf("redis GET %s: %w", key, err)
	}
	b, err = s.api.timeline(ctx, id)
	if err != nil {
		return Timeline{}, err
	}
	if err := s.rdb.Set(ctx, key, b, s.cfg.ttl).Err(); err != nil {
		return Timeline{}, fmt.Errorf("redis SET %s: %w", key, err)
	}
	return decodeTimeline(b)
}

func (s *naiveServer) close() error { return nil }

// fillServer answers with fill.Get: one API call per user across the fleet.
// With a budget (fill+budget), every load waits for its slot first, and a
// 429 pauses the fleet while the same load waits to try again.
type fillServer struct {
	api    *apiClient
	cache  *fill.Cache
	budget *budget.Budget // nil in mode fill
	learns bool           // the budget learns the API's limit (fill+adaptive)
}

func newFillServer(s serverEnv) appServer {
	return &fillServer{api: s.api, cache: fill.New(s.rdb, &fill.Options{Prefix: s.prefix, TTL: s.cfg.ttl})}
}

func newFillBudgetServer(s serverEnv) appServer { return newFillBudgeted(s, newBudget(s)) }

// newFillConcServer is fill+budget whose budget also caps the fleet's
// calls in flight at the API's cap: each load holds one of
// -api-concurrency slots, fleet-wide, while it calls the API.
// With -tokens the cap is per token, as the API's.
func newFillConcServer(s serverEnv) appServer {
	opt := budgetOptions(s)
	opt.Concurrency = s.cfg.apiConcurrency
	return newFillBudgeted(s, budget.New(s.rdb, budgetName, budgetLimit(s.cfg), opt))
}

// newFillBudgeted is a fillServer whose loads wait for b, and report every
// response to it.
func newFillBudgeted(s serverEnv, b *budget.Budget) appServer {
	api := *s.api
	api.budget = b
	return &fillServer{api: &api, budget: b,
		cache: fill.New(s.rdb, &fill.Options{Prefix: s.prefix, TTL: s.cfg.ttl, Budget: b})}
}

// newFillAdaptiveServer is fill+budget whose budget takes -rate for a
// ceiling, and learns the rate the API accepts: a 429 that says nothing
// more cuts it, the calls the API answers raise it again.
func newFillAdaptiveServer(s serverEnv) appServer {
	b := budget.New(s.rdb, budgetName, budgetLimit(s.cfg),
		&budget.Options{Prefix: s.prefix, FleetSize: s.cfg.servers, Adaptive: true})
	api := *s.api
	api.budget = b
	return &fillServer{api: &api, budget: b, learns: true,
		cache: fill.New(s.rdb, &fill.Options{Prefix: s.prefix, TTL: s.cfg.ttl, Budget: b})}
}

func (s *fillServer) timeline(ctx context.Context, id uint64) (Timeline, error) {
	return fill.Get(ctx, s.cache, timelineKey(id), func(ctx context.Context) (Timeline, error) {
		b, err := s.api.timeline(ctx, id)
		if err != nil {
			return Timeline{}, err
		}
		return decodeTimeline(b)
	})
}

func (s *fillServer) close() error { return errors.Join(s.cache.Close(), closeBudget(s.budget)) }

func (s *fillServer) stats() fill.Stats { return s.cache.Stats() }

func (s *fillServer) budgetStats() (budget.Stats, bool) { return statsOf(s.budget) }

func (s *fillServer) learnedStats() (budget.Stats, bool) {
	if !s.learns {
		return budget.Stats{}, false
	}
	return statsOf(s.budget)
}

// batchServer answers with a FleetWide fill.Batcher: the users missing
// from the cache that any server of the fleet is asked for go to the API
// together, up to maxBatch per call of GET /users/timelines, sent by the
// fleet's one gatherer, each call waiting for one slot of the fleet's
// budget.
type batchServer struct {
	batcher *fill.Batcher[Timeline]
	cache   *fill.Cache
	budget  *budget.Budget
}

func newFillBatchServer(s serverEnv) appServer {
	b := newBudget(s)
	api := *s.api
	api.budget = b
	cache := fill.New(s.rdb, &fill.Options{Prefix: s.prefix, TTL: s.cfg.ttl, Budget: b})
	load := func(ctx context.Context, keys []string) (map[string]Timeline, error) {
		ids := make([]uint64, len(keys))
		for i, k := range keys {
			id, err := strconv.ParseUint(strings.TrimPrefix(k, timelinePrefix), 10, 63)
			if err != nil {
				return nil, fmt.Errorf("key %q is not a timeline's", k)
			}
			ids[i] = id
		}
		tls, err := api.timelines(ctx, ids)
		if err != nil {
			return nil, err
		}
		m := make(map[string]Timeline, len(tls))
		for _, tl := range tls {
			m[timelineKey(tl.UserID)] = tl
		}
		return m, nil
	}
	bt := fill.NewBatcher(cache, load, &fill.BatchOptions{MaxSize: maxBatch, Window: s.cfg.window,
		FleetWide: true, Name: batchName})
	return &batchServer{batcher: bt, cache: cache, budget: b}
}

func (s *batchServer) timeline(ctx context.Context, id uint64) (Timeline, error) {
	return s.batcher.Get(ctx, timelineKey(id))
}

func (s *batchServer) close() error { return errors.Join(s.cache.Close(), closeBudget(s.budget)) }

func (s *batchServer) stats() fill.Stats { return s.cache.Stats() }

func (s *batchServer) budgetStats() (budget.Stats, bool) { return statsOf(s.budget) }

// httpfillServer makes naive's API call without naive's cache, through an
// http.Client whose Transport is httpfill's: the fleet-wide merge and cache
// happen under the HTTP client, over real HTTP to the API.
type httpfillServer struct {
	api      *apiClient
	cache    *fill.Cache
	budget   *budget.Budget
	requests atomic.Int64 // sent through the HTTP client
}

// newHTTPFillServer gives the Cache the fleet's budget, which the
// Transport takes too: loads wait for it, every response is observed, and
// a 429 pauses the fleet while the same load waits to try again.
func newHTTPFillServer(s serverEnv) appServer {
	b := newBudget(s)
	cache := fill.New(s.rdb, &fill.Options{Prefix: s.prefix, Budget: b})
	hc := &http.Client{
		Timeout: s.api.hc.Timeout,
		Transport: httpfill.New(cache, &httpfill.Options{Base: s.api.hc.Transport, TTL: s.cfg.ttl,
			// With -tokens, each upstream request goes with the token its
			// reservation was booked on.
			Authorize: func(req *http.Request, token string) { req.Header.Set("Authorization", "Bearer "+token) }}),
	}
	return &httpfillServer{api: &apiClient{hc: hc, base: s.api.base}, cache: cache, budget: b}
}

func (s *httpfillServer) timeline(ctx context.Context, id uint64) (Timeline, error) {
	s.requests.Add(1)
	b, err := s.api.timeline(ctx, id)
	if err != nil {
		return Timeline{}, err
	}
	return decodeTimeline(b)
}

func (s *httpfillServer) close() error { return errors.Join(s.cache.Close(), closeBudget(s.budget)) }

func (s *httpfillServer) stats() fill.Stats { return s.cache.Stats() }

func (s *httpfillServer) budgetStats() (budget.Stats, bool) { return statsOf(s.budget) }

func (s *httpfillServer) clientRequests() int64 { return s.requests.Load() }

// clientTotal sums the requests sent through the HTTP client of the servers
// that count them (those of a mode that caches under the client); 0 when
// none does.
func clientTotal(servers []appServer) int64 {
	var n int64
	for _, s := range servers {
		if c, ok := s.(interface{ clientRequests() int64 }); ok {
			n += c.clientRequests()
		}
	}
	return n
}

// timelinePrefix starts the cache key of every timeline.
const timelinePrefix = "timeline:"

// timelineKey is the cache key of user id's timeline, under a mode's prefix.
func timelineKey(id uint64) string { return timelinePrefix + strconv.FormatUint(id, 10) }

// budgetName is the name of the fleet's budget of API calls: every server
// of a mode makes a budget.Budget of this name under the mode's prefix, and
// so shares one.
const budgetName = "twitter-api"

// newBudget returns server s's handle on the fleet's budget of API calls.
// With -tokens, the budget's keys are the app's tokens: each is limited on
// its own, as the API limits it.
func newBudget(s serverEnv) *budget.Budget {
	return budget.New(s.rdb, budgetName, budgetLimit(s.cfg), budgetOptions(s))
}

// budgetOptions are the budget's options for s: with -tokens, a pool of
// the app tokens.
func budgetOptions(s serverEnv) *budget.Options {
	opt := &budget.Options{Prefix: s.prefix, FleetSize: s.cfg.servers}
	if s.cfg.tokens > 0 {
		opt.Keys = appTokens(s.cfg.tokens)
	}
	return opt
}

// budgetLimit is the budget's limit for the API of cfg: the API's rate,
// with a burst of 1. The budget then lets calls go evenly, one every
// 1/rate, and never spends the API's burst, which is left whole as a
// margin: a call reaches the API some time after its slot (the HTTP
// client, a new connection, the scheduler on a busy machine), and calls
// held up that way can arrive together. Up to (burst-1)/rate of such delay
// (180 ms with the defaults) draws no 429. A budget with the API's own
// burst, or that less one, let the first calls through at once, and those
// calls, held up a few milliseconds while the servers dialled the API,
// drew a 429 in about one run in three with -keys 2000. The cost is the
// burst: a run of no more distinct users than -burst takes up to
// (burst-1)/rate longer than it would need.
func budgetLimit(cfg config) budget.Limit {
	// budget.Limit counts whole calls per period: n calls per n/rate
	// seconds, rounded up so that the budget is never the faster.
	n := max(1, int(math.Round(cfg.rate)))
	per := time.Duration(math.Ceil(float64(n) / cfg.rate * float64(time.Second)))
	return budget.Limit{Rate: n, Per: per, Burst: 1}
}

// statsOf returns b's counters, and whether there is a b.
func statsOf(b *budget.Budget) (budget.Stats, bool) {
	if b == nil {
		return budget.Stats{}, false
	}
	return b.Stats(), true
}

// closeBudget closes b, if any.
func closeBudget(b *budget.Budget) error {
	if b == nil {
		return nil
	}
	return b.Close()
}

// fillStats are the fill.Stats of a whole fleet.
type fillStats struct {
	Hits         uint64 `json:"hits"`
	Misses       uint64 `json:"misses"`
	Loads        uint64 `json:"loads"`
	LocalMerges  uint64 `json:"local_merges"`
	RemoteMerges uint64 `json:"remote_merges"`
	LoadErrors   uint64 `json:"load_errors"`
	Corrupt      uint64 `json:"corrupt"`
	RedisErrors  uint64 `json:"redis_errors"`
	StaleStores  uint64 `json:"stale_stores"`
}

// fillTotals sums the fill.Stats of the servers that have them (those of a
// mode built on a fill.Cache); nil when none has.
func fillTotals(servers []appServer) *fillStats {
	var t fillStats
	found := false
	for _, s := range servers {
		fs, ok := s.(interface{ stats() fill.Stats })
		if !ok {
			continue
		}
		found = true
		st := fs.stats()
		t.Hits += st.Hits
		t.Misses += st.Misses
		t.Loads += st.Loads
		t.LocalMerges += st.LocalMerges
		t.RemoteMerges += st.RemoteMerges
		t.LoadErrors += st.LoadErrors
		t.Corrupt += st.Corrupt
		t.RedisErrors += st.RedisErrors
		t.StaleStores += st.StaleStores
	}
	if !found {
		return nil
	}
	return &t
}

// budgetStats are the budget.Stats of a whole fleet.
type budgetStats struct {
	Waits     uint64  `json:"waits"`       // calls let through
	WaitMaxMs float64 `json:"wait_max_ms"` // the longest of those waits
	Pauses    uint64  `json:"pauses"`      // for a 429, or no call remaining before the API's reset
	PullDowns uint64  `json:"pull_downs"`  // by the API's remaining count
	// LocalWaits were decided by a local limiter: Redis was unreachable.
	LocalWaits uint64 `json:"local_waits"`
	// RateCuts are the cuts of the learned rate (fill+adaptive).
	RateCuts uint64 `json:"rate_cuts,omitempty"`
}

// budgetTotals sums the budget.Stats of the servers that have a budget;
// nil when none has.
func budgetTotals(servers []appServer) *budgetStats {
	var t budgetStats
	found := false
	for _, s := range servers {
		bs, ok := s.(interface{ budgetStats() (budget.Stats, bool) })
		if !ok {
			continue
		}
		st, ok := bs.budgetStats()
		if !ok {
			continue
		}
		found = true
		t.Waits += st.Waits
		t.WaitMaxMs = max(t.WaitMaxMs, millis(st.WaitMax))
		t.Pauses += st.PausesRateLimited + st.PausesExhausted + st.PausesRequested
		t.PullDowns += st.PullDowns
		t.LocalWaits += st.LocalWaits
		t.RateCuts += st.RateCuts
	}
	if !found {
		return nil
	}
	return &t
}
