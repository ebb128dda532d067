// Package lock is a distributed lock on Redis: the original locksmith API,
// with token-checked release, fencing tokens, waiters woken by push instead
// of polling, and automatic renewal while a [Locker.Do] callback runs.
//
// The lock on name K is the Redis key prefix{K} holding a random 128-bit
// token with a lease (PX). Acquiring it is one round trip: one Lua script sets
// the key if it is free and issues a fencing token from the counter
// prefix{K}:fence. Releasing it is one round trip: one script deletes the key
// only if it still holds the caller's token, and publishes on the channel
// prefix{K}, which wakes every waiter on every server at once.
//
// # Fencing tokens
//
// [Lock.Token] is strictly increasing per name across all clients: it is
// max(last token + 1, the Redis server's clock in microseconds). Pass it to the
// resource the lock guards and have the resource refuse a token lower than
// the highest it has seen: then a holder that paused past its lease (a GC
// pause, a stopped VM) cannot overwrite its successor's work. The counter key
// lives for 24 hours after the last lock on the name. Should it be lost — it
// expired, was evicted, or Redis restarted without persistence — tokens still
// increase, because the server clock does, unless that clock steps back.
//
// # Redis configuration
//
// Run Redis with maxmemory-policy noeviction (or a volatile-* policy, which
// spares keys without a TTL only: locks have one, so prefer noeviction):
// an evicted lock is a lock two holders hold. Fencing tokens keep the resource
// safe even then.
package lock

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/lease"
	"github.com/locksmith-go/locksmith/internal/notify"
	"github.com/locksmith-go/locksmith/internal/redisx"
)

var (
	// ErrNotObtained is returned by [Locker.TryObtain] when the lock is held.
	ErrNotObtained = errors.New("lock: not obtained")
	// ErrNotHeld is returned when a lock is no longer held by its holder:
	// its lease ran out, or it was deleted or taken over.
	ErrNotHeld = lease.ErrNotHeld
	// ErrClosed is returned by Obtain, TryObtain and Do on a closed
	// Locker, also to calls that were waiting when it closed.
	ErrClosed = errors.New("lock: locker closed")
)

// Options configure a [Locker]. The zero value gives the original locksmith
// defaults.
type Options struct {
	// Prefix is put before every key and channel name. It must not contain
	// '{' or '}', which would break the hash tag that keeps a name's keys in
	// one Redis Cluster slot.
	// default: "__locksmith:"
	Prefix string

	// TTL is the lease: how long a lock stays held if its holder neither
	// releases nor refreshes it (a crashed server). [Locker.Do] renews it
	// every TTL/3 while its callback runs.
	// default: 120s
	TTL time.Duration

	// PollInterval is the longest a waiting [Locker.Obtain] goes without
	// checking the lock again when no notification arrives (one lost while
	// the pub/sub connection reconnected, say). It never waits longer than the
	// holder's remaining lease either.
	// default: 1s
	PollInterval time.Duration
}

// DefaultPrefix is the default key prefix, the original locksmith one,
// shared by every package of the module (fill.DefaultPrefix and
// budget.DefaultPrefix are the same).
const DefaultPrefix = redisx.DefaultPrefix

func (o *Options) withDefaults() Options {
	var opt Options
	if o != nil {
		opt = *o
	}
	if opt.Prefix == "" {
		opt.Prefix = DefaultPrefix
	}
	if opt.TTL <= 0 {
		opt.TTL = 120 * time.Second
	}
	if opt.PollInterval <= 0 {
		opt.PollInterval = time.Second
	}
	return opt
}

// Locker obtains locks. It is safe for concurrent use. It keeps one pub/sub
// connection, opened when a caller first has to wait, shared by all its
// waiters; [Locker.Close] closes it.
type Locker struct {
	rdb *redisx.Client
	opt Options
	err error // the options' error, returned by every call
	hub *notify.Hub
}

// New returns a Locker on rdb, which may be a *redis.Client, a
// *redis.ClusterClient, a failover (Sentinel) client or a *redis.Ring. A nil
// opt gives the defaults. Options that cannot work (a Prefix with '{' or
// '}') make every call return an error saying why.
func New(rdb redis.UniversalClient, opt *Options) *Locker {
	l := &Locker{rdb: redisx.New(rdb), opt: opt.withDefaults(), hub: notify.New(rdb, nil)}
	if err := redisx.CheckPrefix(l.opt.Prefix); err != nil {
		l.err = fmt.Errorf("lock: %w", err)
	}
	return l
}

// Close closes the Locker's pub/sub connection. Calls waiting in Obtain or
// Do return [ErrClosed] at once, and later ones fail with it. Locks already
// obtained stay valid and can still be refreshed and released. Releases
// going on in the background, and the clean-up of acquisitions whose
// callers gave up, are waited for first, at most 5 s.
func (l *Locker) Close() error {
	err := l.hub.Close()
	l.rdb.Close()
	return err
}

// Lock is a held lock.
type Lock struct {
	l     *Locker
	name  string
	key   string
	token string
	fence int64
	since time.Time // when the request that acquired it was sent
	// released: a Release succeeded: later ones report ErrNotHeld without
	// asking Redis, which would find the lock gone and nobody else's
	// since, as it does for a lost reply tried again.
	released atomic.Bool
}

// Obtain obtains the lock on key, waiting until it is free or ctx ends. The
// empty key is a valid name. Waiters are woken by the holder's release on any
// server, within a round trip or two.
//
// A Redis error (unreachable, a key of the wrong type at the lock's name, out
// of memory) is returned at once, wrapped; when ctx ends, the error wraps
// ctx.Err().
func (l *Locker) Obtain(ctx context.Context, key string) (*Lock, error) {
	return l.obtain(ctx, key, true)
}

// TryObtain obtains the lock on key if it is free, and returns
// [ErrNotObtained] at once if it is held.
func (l *Locker) TryObtain(ctx context.Context, key string) (*Lock, error) {
	return l.obtain(ctx, key, false)
}

func (l *Locker) obtain(ctx context.Context, name string, wait bool) (*Lock, error) {
	if l.err != nil {
		return nil, l.err
	}
	select {
	case <-l.hub.Done():
		return nil, ErrClosed
	default:
	}
	key := lease.LockKey(l.opt.Prefix, name)
	token := lease.NewToken()
	var lk *Lock
	err := l.hub.Await(ctx, key, func() (notify.Step, error) {
		sent := time.Now()
		r, err := lease.Acquire(ctx, l.rdb, key, token, l.opt.TTL)
		switch {
		case redisx.Classify(err) == redisx.Saturated && ctx.Done() != nil:
			// The pool had no connection free: Redis is up, so wait
			// within ctx instead of failing.
			return notify.Step{Wait: saturatedWait}, nil
		case err != nil:
			return notify.Step{}, err
		case r.State == lease.Acquired:
			lk = &Lock{l: l, name: name, key: key, token: token, fence: r.N, since: sent}
			return notify.Step{Done: true}, nil
		case !wait:
			return notify.Step{}, ErrNotObtained
		}
		return notify.Step{Wait: min(lease.PTTL(r.N), l.opt.PollInterval)}, nil
	}, nil)
	switch {
	case errors.Is(err, ErrNotObtained):
		return nil, err
	case errors.Is(err, notify.ErrClosed):
		return nil, fmt.Errorf("%w: obtain %s", ErrClosed, redisx.Quote(name))
	case err != nil:
		return nil, fmt.Errorf("lock: obtain %s: %w", redisx.Quote(name), err)
	}
	return lk, nil
}

// saturatedWait is how long a call waits before trying again when the
// client's connection pool had no free connection.
const saturatedWait = 10 * time.Millisecond

// Do obtains the lock on key, runs fn, and releases the lock, whatever fn
// does: returns, fails or panics (the panic goes on after the release). While
// fn runs, the lease is renewed every TTL/3; fn's ctx is cancelled as soon as
// the lease is known lost, and Do's error then wraps [ErrNotHeld], joined with
// fn's own error.
func (l *Locker) Do(ctx context.Context, key string, fn func(ctx context.Context) error) (err error) {
	lk, err := l.Obtain(ctx, key)
	if err != nil {
		return err
	}
	fctx, cancel := context.WithCancelCause(ctx)
	keeper := lease.Keep(l.rdb, lk.key, lk.token, l.opt.TTL, lk.since, func() { cancel(ErrNotHeld) })
	defer func() {
		cancel(nil)
		if lost := keeper.Stop(); lost != nil {
			err = errors.Join(err, lost)
			return
		}
		if rerr := lk.releaseDetached(ctx); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	return fn(fctx)
}

// releaseDetached releases the lock even when ctx has ended, but returns by
// ctx: a release still under way then goes on in the background, bounded by
// [lease.CleanupTimeout].
func (k *Lock) releaseDetached(ctx context.Context) error {
	done := make(chan error, 1)
	k.l.rdb.Go(func() { done <- k.release(ctx) })
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return nil
	}
}

// Release releases the lock and wakes its waiters. It returns [ErrNotHeld]
// when the lock is no longer held by this Lock and another may have held it
// since (its lease ran out, or it was deleted, and it was taken again), or
// when this Lock was released already; it never deletes a successor's lock.
// A lock found gone that nobody took since this Lock did (its fencing
// counter unchanged) is reported released: an earlier try of this release
// ran and its reply was lost (go-redis sends a call again by itself after a
// lost connection), or the lease ran out with nobody else taking it.
//
// Release is clean-up, so it runs even when ctx has already ended (a
// deferred Release with a request's ctx, after the client went away): it
// then has [CleanupTimeout] of its own. When ctx ends during the call,
// Release returns ctx's error and the release goes on in the background for
// up to CleanupTimeout. A release whose reply is lost, or that meets a
// failover, is tried again within that time. When the lock is released but
// its waiters could not be notified (an ACL user without channel
// permissions), Release returns nil: the lock is free, and waiters find it
// free when they next look, within Options.PollInterval.
func (k *Lock) Release(ctx context.Context) error {
	if ctx.Err() != nil || !k.l.rdb.Watched(ctx) {
		// Ended already (clean-up: its own timeout), or a ctx the client
		// bounds itself or cannot bound (no deadline): on this goroutine.
		return k.release(ctx)
	}
	done := make(chan error, 1)
	k.l.rdb.Go(func() { done <- k.release(ctx) })
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("lock: release %s: %w (going on in the background)", redisx.Quote(k.name), ctx.Err())
	}
}

// CleanupTimeout is how long Release, and Do's release, may take when their
// ctx has already ended or ends during the call.
const CleanupTimeout = 5 * time.Second

func (k *Lock) release(ctx context.Context) error {
	if k.released.Load() {
		return fmt.Errorf("%w: release %s: released already", ErrNotHeld, redisx.Quote(k.name))
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), CleanupTimeout)
	defer cancel()
	r, err := lease.ReleaseFenced(rctx, k.l.rdb, k.key, k.token, k.fence, lease.Message(lease.Released, ""))
	switch {
	case err != nil:
		return fmt.Errorf("lock: release %s: %w", redisx.Quote(k.name), err)
	case !r.Released:
		return fmt.Errorf("%w: release %s", ErrNotHeld, redisx.Quote(k.name))
	case k.released.Swap(true) && r.Gone:
		// Another Release of this Lock released it meanwhile.
		return fmt.Errorf("%w: release %s: released already", ErrNotHeld, redisx.Quote(k.name))
	}
	return nil
}

// Refresh extends the lease to the Locker's TTL from now. It returns
// [ErrNotHeld] when the lock is no longer held by this Lock.
func (k *Lock) Refresh(ctx context.Context) error {
	ok, err := lease.Refresh(ctx, k.l.rdb, k.key, k.token, k.l.opt.TTL)
	if err != nil {
		return fmt.Errorf("lock: refresh %s: %w", redisx.Quote(k.name), err)
	}
	if !ok {
		return fmt.Errorf("%w: refresh %s", ErrNotHeld, redisx.Quote(k.name))
	}
	return nil
}

// Token returns the lock's fencing token: strictly increasing per name
// across all clients (see the package documentation).
func (k *Lock) Token() int64 { return k.fence }

// Key returns the name the lock was obtained on.
func (k *Lock) Key() string { return k.name }
