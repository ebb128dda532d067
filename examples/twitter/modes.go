package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/httpfill"
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
	{naive, "cache-aside by hand: GET; on a miss call the API and SET", newNaiveServer},
	{"fill", "fill.Get, whose loader calls the API", newFillServer},
	{"httpfill", "the plain API call, through an http.Client whose Transport is httpfill's", newHTTPFillServer},
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

// appServer is one server of the fleet: it answers a request for a user's
// timeline from the cache, or from the API. A server built on a fill.Cache
// also has a method stats() fill.Stats, and one that caches under its HTTP
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
type fillServer struct {
	api   *apiClient
	cache *fill.Cache
}

func newFillServer(s serverEnv) appServer {
	return &fillServer{api: s.api, cache: fill.New(s.rdb, &fill.Options{Prefix: s.prefix, TTL: s.cfg.ttl})}
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

func (s *fillServer) close() error { return s.cache.Close() }

func (s *fillServer) stats() fill.Stats { return s.cache.Stats() }

// httpfillServer makes naive's API call without naive's cache, through an
// http.Client whose Transport is httpfill's: the fleet-wide merge and cache
// happen under the HTTP client, over real HTTP to the API.
type httpfillServer struct {
	api      *apiClient
	cache    *fill.Cache
	requests atomic.Int64 // sent through the HTTP client
}

func newHTTPFillServer(s serverEnv) appServer {
	cache := fill.New(s.rdb, &fill.Options{Prefix: s.prefix})
	hc := &http.Client{
		Timeout:   s.api.hc.Timeout,
		Transport: httpfill.New(cache, &httpfill.Options{Base: s.api.hc.Transport, TTL: s.cfg.ttl}),
	}
	return &httpfillServer{api: &apiClient{hc: hc, base: s.api.base}, cache: cache}
}

func (s *httpfillServer) timeline(ctx context.Context, id uint64) (Timeline, error) {
	s.requests.Add(1)
	b, err := s.api.timeline(ctx, id)
	if err != nil {
		return Timeline{}, err
	}
	return decodeTimeline(b)
}

func (s *httpfillServer) close() error { return s.cache.Close() }

func (s *httpfillServer) stats() fill.Stats { return s.cache.Stats() }

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

// timelineKey is the cache key of user id's timeline, under a mode's prefix.
func timelineKey(id uint64) string { return "timeline:" + strconv.FormatUint(id, 10) }

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
