package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
)

// mode is one way for the fleet to answer requests: its name, and how one
// app server of the fleet is built.
type mode struct {
	name      string
	doc       string // one line for -h
	newServer func(s serverEnv) appServer
}

// modes are every mode, in the order a run without -modes runs them. A new
// mode is one line here, and the appServer its newServer builds.
var modes = []mode{
	{naive, "cache-aside by hand: GET; on a miss call the API and SET; a 429 fails the request", newNaiveServer},
	{"fill", "fill.Get, whose loader calls the API; a 429 fails the load", newFillServer},
	{"fill+requests", "fill, its loads waiting for the fleet's budget of requests per minute", newFillRequestsServer},
	{"fill+tokens", "fill, its loads reserving their estimated tokens and a request in the fleet's budget of both", newFillTokensServer},
}

// naive is the name of the mode the others are compared with.
const naive = "naive"

// serverEnv is what one app server is built on: clients of its own, as a
// separate process would have. The fleet closes them after the server.
type serverEnv struct {
	cfg    config
	rdb    *redis.Client
	api    *apiClient
	prefix string // of every Redis key of the mode; deleted before each mode
}

// appServer is one server of the fleet: it answers a request for a prompt's
// completion from the cache, or from the API. A server built on a
// fill.Cache also has a method stats() fill.Stats, and one that may have a
// budget a method budgetStats() (budget.Stats, bool), which the report sums
// over the fleet.
type appServer interface {
	complete(ctx context.Context, prompt string) (Completion, error)
	// close releases what the server made of its serverEnv.
	close() error
}

// naiveServer is cache-aside by hand: GET, and on a miss call the API and SET
// the result. Nothing stops the other requests missing meanwhile, on this
// server or another, from calling the API for the same prompt.
type naiveServer struct{ serverEnv }

func newNaiveServer(s serverEnv) appServer { return &naiveServer{s} }

func (s *naiveServer) complete(ctx context.Context, prompt string) (Completion, error) {
	key := s.prefix + promptKey(prompt)
	b, err := s.rdb.Get(ctx, key).Bytes()
	switch {
	case err == nil:
		var c Completion
		if err := json.Unmarshal(b, &c); err != nil {
			return Completion{}, fmt.Errorf("decoding a cached completion: %w", err)
		}
		return c, nil
	case !errors.Is(err, redis.Nil):
		return Completion{}, fmt.Errorf("redis GET %s: %w", key, err)
	}
	c, err := s.api.complete(ctx, prompt)
	if err != nil {
		return Completion{}, err
	}
	b, err = json.Marshal(c)
	if err != nil {
		return Completion{}, err
	}
	if err := s.rdb.Set(ctx, key, b, s.cfg.ttl).Err(); err != nil {
		return Completion{}, fmt.Errorf("redis SET %s: %w", key, err)
	}
	return c, nil
}

func (s *naiveServer) close() error { return nil }

// fillServer answers with fill.Get: one API call per prompt across the
// fleet. With a budget (fill+requests, fill+tokens), every load reserves
// its cost first, and a 429 pauses the fleet while the same load waits to
// try again.
type fillServer struct {
	api    *apiClient
	cache  *fill.Cache
	budget *budget.Budget // nil in mode fill
	// estimate, if not nil, is the tokens a prompt's completion is
	// expected to use: its load reserves them (fill+tokens).
	estimate func(prompt string) int64
}

func newFillServer(s serverEnv) appServer {
	return &fillServer{api: s.api, cache: fill.New(s.rdb, &fill.Options{Prefix: s.prefix, TTL: s.cfg.ttl})}
}

// newFillRequestsServer gives the Cache the fleet's budget of requests;
// each load runs under its reservation, through which the server's API
// client reports the response.
func newFillRequestsServer(s serverEnv) appServer {
	b := budget.New(s.rdb, budgetName, requestsLimit(s.cfg), &budget.Options{Prefix: s.prefix, FleetSize: s.cfg.servers})
	return &fillServer{api: s.api, budget: b,
		cache: fill.New(s.rdb, &fill.Options{Prefix: s.prefix, TTL: s.cfg.ttl, Budget: b})}
}

// newFillTokensServer gives the Cache the fleet's budget of requests and
// tokens (see tokensMeter); each load reserves a request and its prompt's
// estimated tokens (fill.WithCost), and the server's API client reports
// through the reservation the response and the tokens the call used
// (Reservation.Spent), which the budget settles against the estimate.
func newFillTokensServer(s serverEnv) appServer {
	b := budget.New(s.rdb, budgetName, requestsLimit(s.cfg), &budget.Options{Prefix: s.prefix, FleetSize: s.cfg.servers,
		Meters: map[string][]budget.Limit{meterTokens: {tokensMeter(s.cfg)}}})
	api := *s.api
	api.meterTokens = true
	model, e := s.cfg.tokenModel(), s.cfg.estimateError
	return &fillServer{api: &api, budget: b,
		cache:    fill.New(s.rdb, &fill.Options{Prefix: s.prefix, TTL: s.cfg.ttl, Budget: b}),
		estimate: func(prompt string) int64 { return model.estimate(prompt, e) }}
}

func (s *fillServer) complete(ctx context.Context, prompt string) (Completion, error) {
	var opts []fill.Option
	if s.estimate != nil {
		opts = append(opts, fill.WithCost(budget.Cost{Meters: map[string]int64{meterTokens: s.estimate(prompt)}}))
	}
	return fill.Get(ctx, s.cache, promptKey(prompt), func(ctx context.Context) (Completion, error) {
		return s.api.complete(ctx, prompt)
	}, opts...)
}

func (s *fillServer) close() error {
	err := s.cache.Close()
	if s.budget != nil {
		err = errors.Join(err, s.budget.Close())
	}
	return err
}

func (s *fillServer) stats() fill.Stats { return s.cache.Stats() }

func (s *fillServer) budgetStats() (budget.Stats, bool) {
	if s.budget == nil {
		return budget.Stats{}, false
	}
	return s.budget.Stats(), true
}

// budgetName is the name of the fleet's budget: every server of a mode
// makes a budget.Budget of this name under the mode's prefix, and so shares
// one.
const budgetName = "completion-api"

// requestsLimit is the budget's limit on requests: the API's RPM, per the
// API's minute. Its burst is 1: calls go evenly, one every minute/rpm, and
// the API's bucket, a minute's worth, is never spent.
func requestsLimit(cfg config) budget.Limit {
	return budget.Limit{Rate: int(cfg.rpm), Per: cfg.minute}
}

// meterTokens is the name of the budget's meter of tokens: the one
// OpenAI's x-ratelimit-remaining-tokens headers cap.
const meterTokens = "tokens"

// tokensMeter is the budget's limit on tokens: the API's TPM, per the API's
// minute, with a burst of half of it. The API's bucket holds a whole
// minute's worth; the other half is the margin for what the budget cannot
// know before the answers: calls in flight that use more tokens than
// their estimate (up to twice as many, at -estimate-error 0.5), and calls
// that reach the API later than their slot, bunched.
// The budget's grain is a microsecond: a TPM of more than one token per
// microsecond of -minute, as good as none, is metered at one.
func tokensMeter(cfg config) budget.Limit {
	rate := min(cfg.tpm, cfg.minute.Microseconds())
	return budget.Limit{Rate: int(rate), Per: cfg.minute, Burst: int(max(rate/2, 1))}
}

// fillStats are the fill.Stats of a whole fleet.
type fillStats struct {
	Hits         uint64 `json:"hits"`
	Misses       uint64 `json:"misses"`
	Loads        uint64 `json:"loads"`
	LocalMerges  uint64 `json:"local_merges"`
	RemoteMerges uint64 `json:"remote_merges"`
	LoadErrors   uint64 `json:"load_errors"`
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
	Pauses    uint64  `json:"pauses"`      // for a 429, or nothing remaining before the API's reset
	// Overshoots are 429s the budget took for arrival jitter: it spaced
	// the fleet's calls further apart instead of pausing it.
	Overshoots uint64 `json:"overshoots"`
	PullDowns  uint64 `json:"pull_downs"` // by the API's remaining count
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
		t.Overshoots += st.Overshoots
		t.PullDowns += st.PullDowns
	}
	if !found {
		return nil
	}
	return &t
}
