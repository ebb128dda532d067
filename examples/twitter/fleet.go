package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/fill"
)

// appServer is one server of the fleet: it answers a request for a user's
// timeline from the cache, or from the API.
type appServer interface {
	timeline(ctx context.Context, id uint64) (Timeline, error)
	close() error
}

// newServerFunc builds one app server on its own Redis client and API client.
type newServerFunc func(rdb *redis.Client, api *apiClient) appServer

// naiveServer is cache-aside by hand: GET, and on a miss call the API and SET
// the result. Nothing stops the other requests missing meanwhile, on this
// server or another, from calling the API for the same user.
type naiveServer struct {
	rdb    *redis.Client
	api    *apiClient
	prefix string
	ttl    time.Duration
}

func (s *naiveServer) timeline(ctx context.Context, id uint64) (Timeline, error) {
	key := s.prefix + "timeline:" + strconv.FormatUint(id, 10)
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
	if err := s.rdb.Set(ctx, key, b, s.ttl).Err(); err != nil {
		return Timeline{}, fmt.Errorf("redis SET %s: %w", key, err)
	}
	return decodeTimeline(b)
}

func (s *naiveServer) close() error {
	s.api.close()
	return s.rdb.Close()
}

// fillServer answers with fill.Get: one API call per user across the fleet.
type fillServer struct {
	rdb   *redis.Client
	cache *fill.Cache
	api   *apiClient
}

func (s *fillServer) timeline(ctx context.Context, id uint64) (Timeline, error) {
	return fill.Get(ctx, s.cache, "timeline:"+strconv.FormatUint(id, 10), func(ctx context.Context) (Timeline, error) {
		b, err := s.api.timeline(ctx, id)
		if err != nil {
			return Timeline{}, err
		}
		return decodeTimeline(b)
	})
}

func (s *fillServer) close() error {
	err := s.cache.Close()
	s.api.close()
	return errors.Join(err, s.rdb.Close())
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

// fillTotals sums the fill.Stats of every server; nil when none uses fill.
func fillTotals(servers []appServer) *fillStats {
	var t fillStats
	found := false
	for _, s := range servers {
		fs, ok := s.(*fillServer)
		if !ok {
			continue
		}
		found = true
		st := fs.cache.Stats()
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

// outcome is what the fleet saw of a request sequence.
type outcome struct {
	latencies []time.Duration // of every request issued, failed ones included
	failed    int
	firstErr  error // of the failed requests, the first to fail
}

// drive sends ids[i] to servers[i%len(servers)], at most concurrency at a
// time, each request bounded by timeout. It stops issuing requests when ctx
// is done and returns once every request issued has finished. done counts
// finished requests as they finish.
func drive(ctx context.Context, servers []appServer, ids []uint64, concurrency int, timeout time.Duration, done *atomic.Int64) outcome {
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		mu      sync.Mutex // guards out
		out     outcome
		workers = min(concurrency, len(ids))
	)
	for range workers {
		wg.Go(func() {
			var lat []time.Duration
			var failed []error
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(ids) {
					break
				}
				d, err := request(ctx, servers[i%len(servers)], ids[i], timeout)
				lat = append(lat, d)
				if err != nil {
					failed = append(failed, err)
				}
				done.Add(1)
			}
			mu.Lock()
			defer mu.Unlock()
			out.latencies = append(out.latencies, lat...)
			out.failed += len(failed)
			if out.firstErr == nil && len(failed) > 0 {
				out.firstErr = failed[0]
			}
		})
	}
	wg.Wait()
	return out
}

// request sends one request and times it.
func request(ctx context.Context, s appServer, id uint64, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	_, err := s.timeline(ctx, id)
	return time.Since(start), err
}

// progress writes "mode done/total" on w every interval, overwriting the
// line, until the returned function is called; that function clears the
// line and returns once nothing more will be written.
func progress(w io.Writer, mode string, total int, done *atomic.Int64, interval time.Duration) (stop func()) {
	line := func() string {
		return fmt.Sprintf("%-5s %*d/%d requests", mode, len(strconv.Itoa(total)), done.Load(), total)
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			fmt.Fprint(w, "\r"+line())
			select {
			case <-t.C:
			case <-quit:
				return
			}
		}
	})
	return func() {
		close(quit)
		wg.Wait()
		fmt.Fprint(w, "\r"+strings.Repeat(" ", len(line()))+"\r")
	}
}
