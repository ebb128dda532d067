package lease

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/locksmith-go/locksmith/internal/redisx"
)

// Keeper renews a lease every third of its length while its holder works,
// and tells the holder as soon as the lease is known lost. It runs on a
// timer: a holder done before the first renewal costs no goroutine.
type Keeper struct {
	c      *redisx.Client
	key    string
	token  string
	ttl    time.Duration
	onLost func()

	mu      sync.Mutex // guards the fields below
	until   context.Context
	timer   *time.Timer
	stopped bool
	end     time.Time // the lease surely ends then, unless renewed
	lastErr error     // the last renewal's failure, if it failed
	cause   error     // why the lease was lost; nil while held
	running sync.WaitGroup
}

// Keep starts renewing the lease on lockKey held by token. since is when the
// acquire request was sent: the lease is assumed to end ttl after it unless a
// renewal succeeds. onLost, if not nil, is called once, on the Keeper's
// goroutine, when the lease is lost. The caller must call [Keeper.Stop].
func Keep(c *redisx.Client, lockKey, token string, ttl time.Duration, since time.Time, onLost func()) *Keeper {
	k := &Keeper{c: c, key: lockKey, token: token, ttl: ttl, onLost: onLost, end: since.Add(ttl)}
	k.mu.Lock()
	k.timer = time.AfterFunc(time.Until(since.Add(ttl/3)), k.renew)
	k.mu.Unlock()
	return k
}

// Stop stops renewing, waits for a renewal under way, and returns the reason
// the lease was lost, wrapping [ErrNotHeld], or nil when it was held
// throughout.
func (k *Keeper) Stop() error {
	k.mu.Lock()
	k.stopped = true
	k.timer.Stop()
	k.mu.Unlock()
	k.running.Wait()
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cause
}

// Until makes k stop renewing once ctx ends (the holder's time is up,
// whether or not it is done): the lease then runs out unless the holder
// stops k and releases it first. It returns k.
func (k *Keeper) Until(ctx context.Context) *Keeper {
	k.mu.Lock()
	k.until = ctx
	k.mu.Unlock()
	return k
}

func (k *Keeper) renew() {
	k.mu.Lock()
	if k.stopped || k.cause != nil || k.until != nil && k.until.Err() != nil {
		k.mu.Unlock()
		return
	}
	k.running.Add(1)
	end, lastErr := k.end, k.lastErr
	k.mu.Unlock()
	defer k.running.Done()

	sent := time.Now()
	if !sent.Before(end) {
		k.fail(fmt.Errorf("%w: lease on %s ran out before it could be renewed (last error: %v)", ErrNotHeld, k.key, lastErr))
		return
	}
	ctx, cancel := context.WithDeadline(context.Background(), end)
	ok, err := Refresh(ctx, k.c, k.key, k.token, k.ttl)
	cancel()
	switch {
	case err == nil && !ok:
		k.fail(fmt.Errorf("%w: lease on %s was taken or deleted", ErrNotHeld, k.key))
		return
	case redisx.Classify(err) == redisx.Reply:
		// The key was replaced by something that is not our lock. A
		// transient reply (READONLY, LOADING: a failover or restart under
		// way) is not this: it is tried again until the lease runs out.
		k.fail(fmt.Errorf("%w: renewing %s: %w", ErrNotHeld, k.key, err))
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	// Renew a third of a lease after the last renewal was sent, not after
	// its reply: slow replies must not eat into the lease.
	next := time.Until(sent.Add(k.ttl / 3))
	if err == nil {
		k.end, k.lastErr = sent.Add(k.ttl), nil
	} else {
		// Try again soon, and give up when the lease has surely run out.
		k.lastErr = err
		next = max(min(k.ttl/12, time.Until(k.end)), time.Millisecond)
	}
	if !k.stopped {
		k.timer.Reset(max(next, 0))
	}
}

func (k *Keeper) fail(err error) {
	k.mu.Lock()
	k.cause = err
	k.mu.Unlock()
	if k.onLost != nil {
		k.onLost()
	}
}
