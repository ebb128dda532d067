package main

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
	"github.com/redis/rueidis/rueidisaside"
)

const asideSettings = "rueidisaside.NewClient(ClientOption{ClientOption: rueidis.ClientOption{InitAddress: addr}}), " +
	"ClientTTL 10s and the SET NX GET lock (defaults); Client.Get(ctx, 1m, key, fn): a missing key is locked " +
	"with a placeholder for the TTL (1m), waiters are woken by client-side-caching invalidation (RESP3 tracking), " +
	"hits are read from the client-side cache in memory; merges callers in-process, then across servers"

// asideFill is one server's rueidisaside client: a rueidis client of its
// own, with its own connection and client-side cache.
type asideFill struct {
	c      rueidisaside.CacheAsideClient
	sent   *atomic.Int64
	prefix string
}

// openAside connects a rueidisaside client to the Redis at addr.
func openAside(addr, prefix string) (filler, error) {
	sent := new(atomic.Int64)
	c, err := rueidisaside.NewClient(rueidisaside.ClientOption{
		ClientOption: rueidis.ClientOption{InitAddress: []string{addr}},
		ClientBuilder: func(opt rueidis.ClientOption) (rueidis.Client, error) {
			c, err := rueidis.NewClient(opt)
			if err != nil {
				return nil, err
			}
			return &countingClient{Client: c, sent: sent}, nil
		},
	})
	if err != nil {
		return nil, err
	}
	return &asideFill{c: c, sent: sent, prefix: prefix}, nil
}

func (f *asideFill) get(ctx context.Context, key string, load func(context.Context) (string, error)) (string, error) {
	return f.c.Get(ctx, valueTTL, f.prefix+key, func(ctx context.Context, _ string) (string, error) {
		return load(ctx)
	})
}

func (f *asideFill) roundTrips() int64        { return f.sent.Load() }
func (f *asideFill) stats() map[string]uint64 { return nil }

// close deletes the client's liveness marker and closes its rueidis client.
func (f *asideFill) close() { f.c.Close() }

// countingClient counts what a rueidis client sends to Redis: each command
// sent with Do (rueidisaside's lock, Lua scripts and liveness marker), and
// each DoCache not answered from the client-side cache, which is one write
// of CLIENT CACHING YES, MULTI, PTTL, GET, EXEC. rueidisaside calls Redis in
// no other way.
type countingClient struct {
	rueidis.Client
	sent *atomic.Int64
}

func (c *countingClient) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	c.sent.Add(1)
	return c.Client.Do(ctx, cmd)
}

func (c *countingClient) DoCache(ctx context.Context, cmd rueidis.Cacheable, ttl time.Duration) rueidis.RedisResult {
	r := c.Client.DoCache(ctx, cmd, ttl)
	if !r.IsCacheHit() {
		c.sent.Add(1)
	}
	return r
}
