package fill

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"time"

	"github.com/locksmith-go/locksmith/internal/redisx"
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

// jittered returns d give or take half of it, at random: waits that began
// together end apart.
func jittered(d time.Duration) time.Duration {
	return d/2 + time.Duration(rand.Int64N(int64(d)+1))
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

// safely calls the codec function f, turning a panic into an error and
// logging it with its stack: codecs run on goroutines of the Cache (flights,
// refreshes, batches), where a panic would end the process.
func (c *Cache) safely(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			c.log("the codec panicked", "panic", r, "stack", string(debug.Stack()))
			err = fmt.Errorf("the codec panicked: %v", r)
		}
	}()
	return f()
}

// encode gives v's payload and the value the callers get: v as the codec
// returns it, as every other server decodes it.
func (c *Cache) encode(key string, o ops, v any) (payload []byte, val any, err error) {
	err = c.safely(func() error {
		var err error
		if payload, err = c.opt.Codec.Marshal(v); err == nil {
			val, err = o.decode(payload)
		}
		return err
	})
	if err != nil {
		err = fmt.Errorf("fill: %s: a %s value does not survive the codec: %w", redisx.Quote(key), o.typ, err)
	}
	return payload, val, err
}
