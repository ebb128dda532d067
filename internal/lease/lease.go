// Package lease is the Redis protocol of a locksmith lease: the key names, the
// Lua scripts that acquire, renew and release it, and the keepalive that
// renews it while its holder works. Package lock and package fill both speak
// it, so a fill lock and a lock.Locker lock on the same name exclude each
// other: they are the same lock.
package lease

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrNotHeld is returned when a lease is no longer held by its holder: it
// expired, was deleted, or was taken over. lock.ErrNotHeld is this value.
var ErrNotHeld = errors.New("lock: not held")

// FenceTTL is how long a name's fencing counter lives after the last lease
// taken on it. Tokens stay increasing after it expires (they are floored by
// the server clock); the counter only guards against a server clock that
// steps back.
const FenceTTL = 24 * time.Hour

// DefaultPrefix is the default key prefix, the original locksmith one.
const DefaultPrefix = "__locksmith:"

// LockKey returns the key of the lock on name under prefix: prefix{name}. The
// hash tag puts every key of one name in one Redis Cluster slot.
func LockKey(prefix, name string) string { return prefix + "{" + name + "}" }

// FenceKey returns the key of the fencing counter for the lock key.
func FenceKey(lockKey string) string { return lockKey + ":fence" }

// ValueKey returns the key of the value guarded by the lock key.
func ValueKey(lockKey string) string { return lockKey + ":value" }

// NewToken returns a random 128-bit holder token.
func NewToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand since Go 1.24)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

var (
	//go:embed acquire.lua
	acquireLua    string
	acquireScript = redis.NewScript(acquireLua)
	//go:embed release.lua
	releaseLua    string
	releaseScript = redis.NewScript(releaseLua)
	//go:embed refresh.lua
	refreshLua    string
	refreshScript = redis.NewScript(refreshLua)
)

// Scripts lists every script, for callers that preload them (SCRIPT LOAD) so
// that no EVALSHA falls back to EVAL.
var Scripts = []*redis.Script{acquireScript, releaseScript, refreshScript}

// Client is a go-redis client as the lease protocol uses it.
type Client struct {
	rdb redis.UniversalClient
	// sharded: a Redis Cluster client; notifications use SPUBLISH.
	sharded bool
	// deadlines: the client bounds each call by its ctx deadline itself
	// (go-redis ContextTimeoutEnabled), so no call needs watching.
	deadlines bool
}

// NewClient wraps rdb.
func NewClient(rdb redis.UniversalClient) *Client {
	c := &Client{rdb: rdb}
	switch r := rdb.(type) {
	case *redis.Client:
		c.deadlines = r.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		c.sharded = true
		c.deadlines = r.Options().ContextTimeoutEnabled
	case *redis.Ring:
		c.deadlines = r.Options().ContextTimeoutEnabled
	}
	return c
}

// Get returns the string at key, and false when there is none. It returns
// by ctx's deadline as [Run] does.
func (c *Client) Get(ctx context.Context, key string) (string, bool, error) {
	type reply struct {
		s  string
		ok bool
	}
	r, err := Run(ctx, c, func(ctx context.Context) (reply, error) {
		s, err := c.rdb.Get(ctx, key).Result()
		if errors.Is(err, redis.Nil) {
			return reply{}, nil
		}
		return reply{s, err == nil}, err
	}, nil)
	return r.s, r.ok, err
}

// PublishFlag is the scripts' ARGV flag for how to notify: "1" for SPUBLISH
// (sharded pub/sub, on a Redis Cluster), "0" for PUBLISH.
func (c *Client) PublishFlag() string {
	if c.sharded {
		return "1"
	}
	return "0"
}

// Scripter returns the underlying client.
func (c *Client) Scripter() redis.Scripter { return c.rdb }

// State is the outcome of [Client.Acquire].
type State int

// The outcomes of [Client.Acquire].
const (
	Held     State = 0 // someone else holds the lease; N is its remaining PTTL in ms
	Acquired State = 1 // the caller holds the lease; N is its fencing token
	Found    State = 2 // the guarded value exists; Value holds it
)

// Result is the reply of the acquire script.
type Result struct {
	State State
	N     int64
	Value string
}

// Acquire takes the lease on lockKey for token, or, when valueKey is not
// empty and holds a value, returns that value instead. With fence, it also
// issues a fencing token from the counter [FenceKey]; without, the token is
// 0 and the counter is left alone (a holder whose writes are token-checked
// in Redis itself needs none). It returns when Redis
// answers or ctx's deadline passes, whatever the client's timeout options
// (see [Run]). When the script may have taken the lease but the caller does
// not learn of it (ctx ended, connection lost), the lease is released in the
// background, token-checked, so no lock is left behind that nobody releases.
func (c *Client) Acquire(ctx context.Context, lockKey, valueKey, token string, ttl time.Duration, fence bool) (Result, error) {
	keys := []string{lockKey, FenceKey(lockKey)}
	if valueKey != "" {
		keys = append(keys, valueKey)
	}
	issue := "0"
	if fence {
		issue = "1"
	}
	return Run(ctx, c, func(ctx context.Context) (Result, error) {
		v, err := acquireScript.Run(ctx, c.rdb, keys, token, ms(ttl), ms(FenceTTL), issue).Result()
		if err != nil {
			if mayHaveRun(err) {
				go c.cleanup(lockKey, token)
			}
			return Result{}, err
		}
		return ParseAcquire(v)
	}, func(r Result, err error) {
		if err == nil && r.State == Acquired {
			c.cleanup(lockKey, token)
		}
	})
}

// CleanupTimeout bounds the background release of a lease whose acquisition
// the caller gave up on.
const CleanupTimeout = 5 * time.Second

func (c *Client) cleanup(lockKey, token string) {
	ctx, cancel := context.WithTimeout(context.Background(), CleanupTimeout)
	defer cancel()
	_, _ = c.release(ctx, lockKey, token, Released, "", nil, 0)
}

// mayHaveRun reports whether a failed call may still have run on the server:
// any failure but an error reply from Redis.
func mayHaveRun(err error) bool {
	var re redis.Error
	return !errors.As(err, &re) && !errors.Is(err, redis.ErrClosed)
}

// Released is the message published when a lease is released with nothing
// else to say.
const Released = "r"

// Release releases the lease on lockKey if token still holds it and publishes
// msg on the name's channel. When valueKey is not empty, it also stores value
// there with valueTTL, in the same step. It reports false, having written
// nothing, when the lease was no longer token's.
func (c *Client) Release(ctx context.Context, lockKey, token, msg, valueKey string, value []byte, valueTTL time.Duration) (bool, error) {
	return Run(ctx, c, func(ctx context.Context) (bool, error) {
		return c.release(ctx, lockKey, token, msg, valueKey, value, valueTTL)
	}, nil)
}

// ReleaseRetrying is [Client.Release], tried again while a failure leaves it
// unknown whether the release ran (a connection lost mid-call), until it
// succeeds or ctx ends: a release lost to a network blip would otherwise keep
// every waiter waiting until the lease runs out. When a retry finds the lease
// no longer ours after such a failure, an earlier try most likely ran, and it
// reports true. Each try runs on the caller's goroutine, bounded by the
// client's own timeouts; ctx bounds the retries.
func (c *Client) ReleaseRetrying(ctx context.Context, lockKey, token, msg, valueKey string, value []byte, valueTTL time.Duration) (bool, error) {
	backoff := 5 * time.Millisecond
	for retried := false; ; retried = true {
		ok, err := c.release(context.WithoutCancel(ctx), lockKey, token, msg, valueKey, value, valueTTL)
		if err == nil {
			return ok || retried, nil
		}
		if !mayHaveRun(err) || ctx.Err() != nil {
			return false, err
		}
		select {
		case <-ctx.Done():
			return false, err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

func (c *Client) release(ctx context.Context, lockKey, token, msg, valueKey string, value []byte, valueTTL time.Duration) (bool, error) {
	shard := c.PublishFlag()
	var v any
	var err error
	if valueKey == "" {
		v, err = releaseScript.Run(ctx, c.rdb, []string{lockKey}, token, shard, msg).Result()
	} else {
		ttl := ms(max(valueTTL, time.Millisecond))
		v, err = releaseScript.Run(ctx, c.rdb, []string{lockKey, valueKey}, token, shard, msg, value, ttl).Result()
	}
	if err != nil {
		return false, err
	}
	return ParseFlag(v)
}

// Refresh extends the lease on lockKey to ttl if token still holds it.
func (c *Client) Refresh(ctx context.Context, lockKey, token string, ttl time.Duration) (bool, error) {
	return Run(ctx, c, func(ctx context.Context) (bool, error) {
		v, err := refreshScript.Run(ctx, c.rdb, []string{lockKey}, token, ms(ttl)).Result()
		if err != nil {
			return false, err
		}
		return ParseFlag(v)
	}, nil)
}

// ParseAcquire parses the acquire script's reply.
func ParseAcquire(v any) (Result, error) {
	if s, ok := v.(string); ok {
		return Result{State: Found, Value: s}, nil
	}
	a, ok := v.([]any)
	if !ok || len(a) != 2 {
		return Result{}, fmt.Errorf("lease: unexpected acquire reply %T", v)
	}
	st, ok := a[0].(int64)
	if !ok {
		return Result{}, fmt.Errorf("lease: unexpected acquire state %T", a[0])
	}
	switch State(st) {
	case Held, Acquired:
		n, ok := a[1].(int64)
		if !ok {
			return Result{}, fmt.Errorf("lease: unexpected acquire number %T", a[1])
		}
		return Result{State: State(st), N: n}, nil
	}
	return Result{}, fmt.Errorf("lease: unexpected acquire state %d", st)
}

// ParseFlag parses the 0-or-1 reply of the release and refresh scripts.
func ParseFlag(v any) (bool, error) {
	n, ok := v.(int64)
	if !ok || (n != 0 && n != 1) {
		return false, fmt.Errorf("lease: unexpected reply %v (%T)", v, v)
	}
	return n == 1, nil
}

func ms(d time.Duration) string {
	return strconv.FormatInt(d.Milliseconds(), 10)
}

// Run runs fn, a call on c, and returns by ctx's deadline whatever c's
// timeout options. go-redis bounds a call by its ReadTimeout (3s by default),
// not by the caller's deadline, unless the client sets ContextTimeoutEnabled.
// So when ctx has a deadline that c would not enforce, fn runs on its own
// goroutine and Run returns as soon as fn does or ctx ends; when ctx ends
// first, fn goes on in the background (bounded by the client's timeouts) and
// late, if not nil, receives its outcome. Otherwise fn runs on the caller's
// goroutine, saving a hand-off: a ctx that can only be cancelled (no
// deadline) then bounds the call only through the client's own timeouts.
func Run[T any](ctx context.Context, c *Client, fn func(context.Context) (T, error), late func(T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	if _, ok := ctx.Deadline(); !ok || c.deadlines {
		return fn(ctx)
	}
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := fn(ctx)
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		if late != nil {
			go func() {
				r := <-ch
				late(r.v, r.err)
			}()
		}
		return zero, ctx.Err()
	}
}

// Quote quotes a name for an error message, shortening a long one.
func Quote(name string) string {
	const limit = 64
	if len(name) <= limit {
		return strconv.Quote(name)
	}
	return strconv.Quote(name[:limit]) + "… (" + strconv.Itoa(len(name)) + " bytes)"
}
