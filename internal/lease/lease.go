// Package lease is the Redis protocol of a locksmith lease: the key names,
// the Lua scripts that acquire, renew and release it, the messages published
// on a name's channel, and the keepalive that renews a lease while its holder
// works. Package lock speaks it, and package fill's own scripts keep its
// rules (a lease is the key P{K} holding its holder's random token with a
// PX; only that token renews or releases it), so a fill lock and a
// lock.Locker lock on the same name exclude each other: they are the same
// lock.
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

	"github.com/locksmith-go/locksmith/internal/redisx"
)

// ErrNotHeld is returned when a lease is no longer held by its holder: it
// expired, was deleted, or was taken over. lock.ErrNotHeld is this value.
var ErrNotHeld = errors.New("lock: not held")

// fenceTTL is how long a name's fencing counter lives after the last lease
// taken on it. Tokens stay increasing after it expires (they are floored by
// the server clock); the counter only guards against a server clock that
// steps back.
const fenceTTL = 24 * time.Hour

// LockKey returns the key of the lock on name under prefix: prefix{name}
// (see [redisx.Key] for the names that need an escape). Every other key of
// the name appends a suffix to it, and it is also the name's channel.
func LockKey(prefix, name string) string { return redisx.Key(prefix, name) }

// fenceKey returns the key of the fencing counter for the lock key.
func fenceKey(lockKey string) string { return lockKey + ":fence" }

// ValueKey returns the key of the value guarded by the lock key.
func ValueKey(lockKey string) string { return lockKey + ":value" }

// NewToken returns a random 128-bit holder token.
func NewToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand since Go 1.24)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Kind is the first byte of a message published on a name's channel; what
// follows depends on it.
type Kind byte

// The kinds of message published on a name's channel. A waiter that does
// not know a kind looks at the key again.
const (
	Released Kind = 'r' // the lease was released; nothing more to say
	Value    Kind = 'v' // a value was stored; the stored entry follows
	Filled   Kind = 'f' // a value was stored, too large to publish: read it
	Failed   Kind = 'e' // the holder's load failed; the error text follows
	Panicked Kind = 'p' // the holder's load panicked; the panic's text follows
	Deleted  Kind = 'd' // the value was deleted
)

// Message returns a message of kind k with body.
func Message(k Kind, body string) string { return string(rune(k)) + body }

// ParseMessage splits a message into its kind and body. The empty payload
// (notify.Wake, never published) gives kind 0.
func ParseMessage(p string) (Kind, string) {
	if p == "" {
		return 0, ""
	}
	return Kind(p[0]), p[1:]
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

// State is the outcome of [Acquire].
type State int

// The outcomes of [Acquire].
const (
	held     State = 0 // someone else holds the lease; N is its remaining PTTL in ms
	Acquired State = 1 // the caller holds the lease; N is its fencing token
)

// Result is the reply of the acquire script.
type Result struct {
	State State
	N     int64
}

// Acquire takes the lease on lockKey for token and issues a fencing token
// from the counter [fenceKey]. It returns when Redis answers or ctx's
// deadline passes, whatever the client's timeout options (see [redisx.Run]).
// When the script may have taken the lease but the caller does not learn of
// it (ctx ended, connection lost), the lease is released in the background,
// token-checked, so no lock is left behind that nobody releases.
func Acquire(ctx context.Context, c *redisx.Client, lockKey, token string, ttl time.Duration) (Result, error) {
	keys := []string{lockKey, fenceKey(lockKey)}
	return redisx.Run(ctx, c, func(ctx context.Context) (Result, error) {
		v, err := acquireScript.Run(ctx, c.Redis(), keys, token, ms(ttl), ms(fenceTTL)).Result()
		if err != nil {
			if redisx.MayHaveRun(err) {
				c.Go(func() { Cleanup(c, lockKey, token) })
			}
			return Result{}, err
		}
		return parseAcquire(v)
	}, func(r Result, err error) {
		if err == nil && r.State == Acquired {
			Cleanup(c, lockKey, token)
		}
	})
}

// CleanupTimeout bounds a clean-up call that runs after its caller has gone
// or its ctx has ended: releasing an abandoned acquisition, or a release
// asked for with a ctx that had already ended.
const CleanupTimeout = 5 * time.Second

// Cleanup releases the lease on lockKey if token holds it, on a context of
// its own bounded by [CleanupTimeout].
func Cleanup(c *redisx.Client, lockKey, token string) {
	ctx, cancel := context.WithTimeout(context.Background(), CleanupTimeout)
	defer cancel()
	_, _ = ReleaseRetrying(ctx, c, lockKey, token, Message(Released, ""))
}

// Release is the outcome of a release.
type Release struct {
	// Released: the lease was ours and is released. False: it was not
	// ours (expired, deleted or taken over), and nothing was written.
	Released bool
	// Gone: a lease with a fencing token was no longer there, and nobody
	// took it since its holder did (see [ReleaseFenced]); Released is true.
	Gone bool
	// NotifyErr, when not nil, is why the message could not be published
	// (an ACL user without channel permissions, say): the lease is
	// released, but waiters learn of it only when they next look.
	NotifyErr error
}

// releaseLease releases the lease on lockKey if token still holds it and
// publishes msg on the name's channel, in one round trip.
func releaseLease(ctx context.Context, c *redisx.Client, lockKey, token, msg string) (Release, error) {
	return redisx.Run(ctx, c, func(ctx context.Context) (Release, error) {
		return release(ctx, c, lockKey, token, 0, msg)
	}, nil)
}

// ReleaseRetrying is [releaseLease], tried again while a failure leaves it
// unknown whether the release ran (a connection lost mid-call) or Redis is
// briefly unable to serve it (a failover), until it succeeds or ctx ends: a
// release lost to a network blip would otherwise keep every waiter waiting
// until the lease runs out. When a retry finds the lease no longer ours
// after such a failure, an earlier try most likely ran, and it reports
// released. Each try runs on the caller's goroutine, bounded by the client's
// own timeouts; ctx bounds the retries.
func ReleaseRetrying(ctx context.Context, c *redisx.Client, lockKey, token, msg string) (Release, error) {
	return ReleaseFenced(ctx, c, lockKey, token, 0, msg)
}

// ReleaseFenced is [ReleaseRetrying] for a lease acquired with fencing
// token fence (by [Acquire]; 0 for none). A lease found gone while its
// fencing counter still holds fence was released by an earlier try whose
// reply was lost — go-redis sends a call again by itself after a lost
// connection (its MaxRetries), unseen here — or ran out with nobody taking
// it since: it is reported released and Gone, not lost.
func ReleaseFenced(ctx context.Context, c *redisx.Client, lockKey, token string, fence int64, msg string) (Release, error) {
	return Retry(ctx, func(ctx context.Context, retried bool) (Release, error) {
		r, err := release(ctx, c, lockKey, token, fence, msg)
		if err == nil && retried {
			r.Released = true
		}
		return r, err
	})
}

// Retry calls try until it succeeds, fails for good, or ctx ends. It tries
// again after a failure that may not have run or did not run for a passing
// reason: a lost connection, a transient error reply, a saturated pool. try
// runs on a ctx without ctx's cancellation, so a call under way is never cut
// off mid-way; retried tells it whether an earlier try failed.
func Retry[T any](ctx context.Context, try func(ctx context.Context, retried bool) (T, error)) (T, error) {
	backoff := 5 * time.Millisecond
	for retried := false; ; retried = true {
		v, err := try(context.WithoutCancel(ctx), retried)
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return v, err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return v, err
		case <-t.C:
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

func retryable(err error) bool {
	switch redisx.Classify(err) {
	case redisx.Reply, redisx.Closed, redisx.Canceled:
		return false
	}
	return true
}

func release(ctx context.Context, c *redisx.Client, lockKey, token string, fence int64, msg string) (Release, error) {
	keys, args := []string{lockKey}, []any{token, c.PublishFlag(), msg}
	if fence != 0 {
		keys, args = append(keys, fenceKey(lockKey)), append(args, strconv.FormatInt(fence, 10))
	}
	v, err := releaseScript.Run(ctx, c.Redis(), keys, args...).Result()
	if err != nil {
		return Release{}, err
	}
	return parseRelease(v)
}

// parseRelease parses the reply of a script that releases a lease: 0 (not
// ours), 1 (released and published), {1, error text} (released; the
// publish failed), or 2 (gone, nobody took it since: see ReleaseFenced).
func parseRelease(v any) (Release, error) {
	switch v := v.(type) {
	case int64:
		if v == 0 || v == 1 || v == 2 {
			return Release{Released: v != 0, Gone: v == 2}, nil
		}
	case []any:
		if len(v) == 2 {
			n, ok1 := v[0].(int64)
			s, ok2 := v[1].(string)
			if ok1 && ok2 && n == 1 {
				return Release{Released: true, NotifyErr: errors.New(s)}, nil
			}
		}
	}
	return Release{}, fmt.Errorf("lease: unexpected release reply %v (%T)", v, v)
}

// Refresh extends the lease on lockKey to ttl if token still holds it.
func Refresh(ctx context.Context, c *redisx.Client, lockKey, token string, ttl time.Duration) (bool, error) {
	return redisx.Run(ctx, c, func(ctx context.Context) (bool, error) {
		v, err := refreshScript.Run(ctx, c.Redis(), []string{lockKey}, token, ms(ttl)).Result()
		if err != nil {
			return false, err
		}
		return parseFlag(v)
	}, nil)
}

// parseAcquire parses the acquire script's reply.
func parseAcquire(v any) (Result, error) {
	a, ok := v.([]any)
	if !ok || len(a) != 2 {
		return Result{}, fmt.Errorf("lease: unexpected acquire reply %T", v)
	}
	st, ok := a[0].(int64)
	if !ok {
		return Result{}, fmt.Errorf("lease: unexpected acquire state %T", a[0])
	}
	switch State(st) {
	case held, Acquired:
		n, ok := a[1].(int64)
		if !ok {
			return Result{}, fmt.Errorf("lease: unexpected acquire number %T", a[1])
		}
		return Result{State: State(st), N: n}, nil
	}
	return Result{}, fmt.Errorf("lease: unexpected acquire state %d", st)
}

// parseFlag parses the 0-or-1 reply of the refresh script.
func parseFlag(v any) (bool, error) {
	n, ok := v.(int64)
	if !ok || (n != 0 && n != 1) {
		return false, fmt.Errorf("lease: unexpected reply %v (%T)", v, v)
	}
	return n == 1, nil
}

// Millis returns d in whole milliseconds, for a script's ARGV.
func Millis(d time.Duration) string { return ms(d) }

func ms(d time.Duration) string {
	return strconv.FormatInt(d.Milliseconds(), 10)
}

// PTTL converts a PTTL in milliseconds, as a script returns it, to a
// duration, clamped so that a key with a huge TTL (a foreign key, say)
// cannot overflow time.Duration.
func PTTL(msec int64) time.Duration {
	const maxMs = int64(100 * 365 * 24 * time.Hour / time.Millisecond)
	return time.Duration(min(max(msec, 0), maxMs)) * time.Millisecond
}
