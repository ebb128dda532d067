package fill

import (
	"context"
	"math/rand/v2"
	"runtime/debug"
	"time"
)

func (c *Cache) jitter(ttl time.Duration) time.Duration {
	if c.opt.Jitter <= 0 {
		return ttl
	}
	span := int64(float64(ttl) * c.opt.Jitter)
	if span <= 0 {
		return ttl
	}
	return ttl - time.Duration(rand.Int64N(span+1))
}

// limitText shortens an error text sent to other servers.
func limitText(s string) string {
	const limit = 1 << 10
	if len(s) > limit {
		return s[:limit] + "…"
	}
	return s
}

// protect calls load, turning a panic into a *PanicError that keeps the
// stack. runtime.Goexit is not stopped: it unwinds through the caller's
// deferred calls.
func protect(ctx context.Context, load func(context.Context) (any, error)) (out outcome) {
	returned := false
	defer func() {
		if !returned {
			if r := recover(); r != nil {
				out = outcome{panicked: &PanicError{Value: r, Stack: debug.Stack()}}
			}
		}
	}()
	out.val, out.err = load(ctx)
	returned = true
	return out
}
