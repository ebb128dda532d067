package main

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// cmdCounter is a go-redis hook that counts the commands a client sends:
// one per processed command, and every command of a pipeline.
type cmdCounter struct {
	n atomic.Int64
}

func (c *cmdCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *cmdCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}

func (c *cmdCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// Load returns the number of commands counted so far.
func (c *cmdCounter) Load() int64 { return c.n.Load() }

// client is one go-redis client, standing for one app server, with its
// command counter.
type client struct {
	*redis.Client
	cmds *cmdCounter
}

// newClient connects a new client (its own connection pool) to addr.
func newClient(addr string) client {
	rdb := redis.NewClient(&redis.Options{
		Addr:         addr,
		DialTimeout:  5 * time.Second,
		ReadTimeout:  10 * time.Second,
		WriteTimeout: 10 * time.Second,
	})
	cc := &cmdCounter{}
	rdb.AddHook(cc)
	return client{Client: rdb, cmds: cc}
}

// roundTrips returns the commands the client has sent so far.
func (c client) roundTrips() int64 { return c.cmds.Load() }
