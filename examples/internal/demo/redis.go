// Package demo holds what the example programs share: the Redis their fleet
// runs on, the loop that sends their requests, and their progress line.
package demo

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// Redis is the Redis a demo's fleet shares: an embedded miniredis, or a
// real server given by -redis, of which the demo only touches keys under
// its prefix.
type Redis struct {
	Addr   string // host:port
	Desc   string // for the report: the address, or "embedded miniredis"
	prefix string
	mini   *miniredis.Miniredis // nil on a real Redis
	admin  *redis.Client        // flushes the prefix
}

// Embedded reports whether the Redis is the embedded miniredis.
func (e *Redis) Embedded() bool { return e.mini != nil }

// OpenRedis starts the embedded Redis when addr is empty, or checks that
// the one at addr answers. The demo's keys live under prefix.
func OpenRedis(ctx context.Context, addr, prefix string) (*Redis, error) {
	e := &Redis{Addr: addr, prefix: prefix}
	if e.Addr == "" {
		m, err := miniredis.Run()
		if err != nil {
			return nil, fmt.Errorf("starting the embedded Redis: %w", err)
		}
		e.mini, e.Addr, e.Desc = m, m.Addr(), "embedded miniredis"
	} else {
		e.Desc = e.Addr
	}
	e.admin = e.Client()
	if err := e.admin.Ping(ctx).Err(); err != nil {
		_ = e.admin.Close()
		e.stopMini()
		return nil, fmt.Errorf("redis at %s: %w", e.Addr, err)
	}
	return e, nil
}

// Client returns a new client of its own, as a separate server would have.
func (e *Redis) Client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: e.Addr})
}

// Flush deletes every key under the prefix.
func (e *Redis) Flush(ctx context.Context) error {
	iter := e.admin.Scan(ctx, 0, GlobEscape(e.prefix)+"*", 1000).Iterator()
	var batch []string
	del := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := e.admin.Del(ctx, batch...).Err()
		batch = batch[:0]
		return err
	}
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 500 {
			if err := del(); err != nil {
				return fmt.Errorf("deleting the keys under %q: %w", e.prefix, err)
			}
		}
	}
	if err := errors.Join(iter.Err(), del()); err != nil {
		return fmt.Errorf("deleting the keys under %q: %w", e.prefix, err)
	}
	return nil
}

// Close deletes the demo's keys from a real Redis and lets go of it, or
// stops the embedded one.
func (e *Redis) Close(ctx context.Context) error {
	var err error
	if e.mini == nil {
		err = e.Flush(ctx)
	}
	err = errors.Join(err, e.admin.Close())
	e.stopMini()
	return err
}

func (e *Redis) stopMini() {
	if e.mini != nil {
		e.mini.Close()
	}
}

// GlobEscape quotes the characters special in a SCAN MATCH pattern.
func GlobEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
