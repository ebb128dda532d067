package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// redisEnv is the Redis the fleet shares: an embedded miniredis, or a real
// server given by -redis, of which the demo only touches keys under its
// prefix.
type redisEnv struct {
	addr   string
	desc   string // for the report
	prefix string
	mini   *miniredis.Miniredis // nil on a real Redis
	admin  *redis.Client        // flushes the prefix
}

// openRedis starts the embedded Redis, or checks that the one of -redis
// answers.
func openRedis(ctx context.Context, cfg config) (*redisEnv, error) {
	e := &redisEnv{addr: cfg.redis.addr, prefix: cfg.prefix}
	if e.addr == "" {
		m, err := miniredis.Run()
		if err != nil {
			return nil, fmt.Errorf("starting the embedded Redis: %w", err)
		}
		e.mini, e.addr, e.desc = m, m.Addr(), "embedded miniredis"
	} else {
		e.desc = e.addr
	}
	e.admin = e.client()
	if err := e.admin.Ping(ctx).Err(); err != nil {
		_ = e.admin.Close()
		e.stopMini()
		return nil, fmt.Errorf("redis at %s: %w", e.addr, err)
	}
	return e, nil
}

// client returns a new client of its own, as a separate server would have.
func (e *redisEnv) client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: e.addr})
}

// flush deletes every key under the prefix.
func (e *redisEnv) flush(ctx context.Context) error {
	iter := e.admin.Scan(ctx, 0, globEscape(e.prefix)+"*", 1000).Iterator()
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

// close deletes the demo's keys from a real Redis and lets go of it, or
// stops the embedded one.
func (e *redisEnv) close(ctx context.Context) error {
	var err error
	if e.mini == nil {
		err = e.flush(ctx)
	}
	err = errors.Join(err, e.admin.Close())
	e.stopMini()
	return err
}

func (e *redisEnv) stopMini() {
	if e.mini != nil {
		e.mini.Close()
	}
}

// globEscape quotes the characters special in a SCAN MATCH pattern.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
