package lease

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Keeper renews a lease every third of its length while its holder works,
// and tells the holder as soon as the lease is known lost.
type Keeper struct {
	c     *Client
	key   string
	token string
	ttl   time.Duration

	onLost func()
	lost   chan struct{} // closed when the lease is lost
	cause  error         // why; written before lost is closed
	stop   chan struct{}
	done   chan struct{}
}

// Keep starts renewing the lease on lockKey held by token. since is when the
// acquire request was sent: the lease is assumed to end ttl after it unless a
// renewal succeeds. onLost, if not nil, is called once, on the Keeper's
// goroutine, when the lease is lost. The caller must call [Keeper.Stop].
func Keep(c *Client, lockKey, token string, ttl time.Duration, since time.Time, onLost func()) *Keeper {
	k := &Keeper{
		c:      c,
		key:    lockKey,
		token:  token,
		ttl:    ttl,
		onLost: onLost,
		lost:   make(chan struct{}),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	go k.run(since)
	return k
}

// Lost is closed as soon as the lease is known lost.
func (k *Keeper) Lost() <-chan struct{} { return k.lost }

// Stop stops renewing and returns the reason the lease was lost, wrapping
// [ErrNotHeld], or nil when it was held throughout.
func (k *Keeper) Stop() error {
	close(k.stop)
	<-k.done
	select {
	case <-k.lost:
		return k.cause
	default:
		return nil
	}
}

func (k *Keeper) run(since time.Time) {
	defer close(k.done)
	every := k.ttl / 3
	retry := max(k.ttl/12, time.Millisecond)
	// The lease surely ends ttl after the request that last set it was sent.
	end := since.Add(k.ttl)
	wait := every
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var lastErr error
	for {
		select {
		case <-k.stop:
			return
		case <-timer.C:
		}
		sent := time.Now()
		if !sent.Before(end) {
			k.fail(fmt.Errorf("%w: lease on %s ran out before it could be renewed (last error: %v)", ErrNotHeld, k.key, lastErr))
			return
		}
		ctx, cancel := context.WithDeadline(context.Background(), end)
		ok, err := k.c.Refresh(ctx, k.key, k.token, k.ttl)
		cancel()
		switch {
		case err == nil && ok:
			end = sent.Add(k.ttl)
			lastErr = nil
			wait = every
		case err == nil:
			k.fail(fmt.Errorf("%w: lease on %s was taken or deleted", ErrNotHeld, k.key))
			return
		default:
			var re redis.Error
			if errors.As(err, &re) {
				// The key was replaced by something that is not our lock.
				k.fail(fmt.Errorf("%w: renewing %s: %w", ErrNotHeld, k.key, err))
				return
			}
			lastErr = err
			wait = min(retry, time.Until(end))
		}
		timer.Reset(max(wait, 0))
	}
}

func (k *Keeper) fail(err error) {
	k.cause = err
	close(k.lost)
	if k.onLost != nil {
		k.onLost()
	}
}
