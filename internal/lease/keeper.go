package lease

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/locksmith-go/locksmith/internal/redisx"
)

// Keeper renews a lease every third of its length while its holder works,
// and tells the holder as soon as the lease is known lost. It runs on a
// timer: a holder done before the first renewal costs no goroutine. The
// Keepers of [KeepAll] share one timer, stopped with the last of them, and
// one call per renewal.
type Keeper struct {
	c      *redisx.Client
	key    string
	token  string
	ttl    time.Duration
	onLost func()
	set    *keepSet // nil: the Keeper renews alone, on timer

	mu      sync.Mutex // guards the fields below
	until   context.Context
	timer   *time.Timer
	stopped bool
	end     time.Time // the lease surely ends then, unless renewed
	next    time.Time // a set's Keeper: when its next renewal is due
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

// KeepAll is [Keep] for the leases on lockKeys[i] held by tokens[i], all
// acquired by requests sent at since (or later), onLost(i), if onLost is
// not nil, telling the loss of lease i: one timer renews the leases due
// (within a twelfth of a lease of each other) in one pipelined call, so
// that the leases of a batch of thousands of keys cost one call per
// renewal rather than one each, sent at the same instant. Each lease takes
// its own reply: one whose renewal failed is tried again sooner, without
// the others. Each Keeper is stopped on its own; a Stop waits for the
// set's renewal under way, if the Keeper is in it.
func KeepAll(c *redisx.Client, lockKeys, tokens []string, ttl time.Duration, since time.Time, onLost func(i int)) []*Keeper {
	if len(lockKeys) == 0 {
		return nil
	}
	s := &keepSet{c: c, ttl: ttl, keepers: make([]*Keeper, len(lockKeys)), left: len(lockKeys)}
	for i, key := range lockKeys {
		k := &Keeper{c: c, key: key, token: tokens[i], ttl: ttl, set: s, end: since.Add(ttl), next: since.Add(ttl / 3)}
		if onLost != nil {
			k.onLost = func() { onLost(i) }
		}
		s.keepers[i] = k
	}
	s.mu.Lock()
	s.timer = time.AfterFunc(time.Until(since.Add(ttl/3)), s.renew)
	s.mu.Unlock()
	return s.keepers
}

// keepSet is the Keepers of one KeepAll.
type keepSet struct {
	c       *redisx.Client
	ttl     time.Duration
	keepers []*Keeper

	mu    sync.Mutex // guards timer and left
	timer *time.Timer
	left  int // Keepers not stopped: the last one stops the timer, which lets go of them all
}

// stopped counts a Keeper of s stopped.
func (s *keepSet) stopped() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.left--; s.left == 0 {
		s.timer.Stop()
	}
}

// Stop stops renewing, waits for a renewal under way, and returns the reason
// the lease was lost, wrapping [ErrNotHeld], or nil when it was held
// throughout.
func (k *Keeper) Stop() error {
	k.mu.Lock()
	first := !k.stopped
	k.stopped = true
	if k.set == nil {
		k.timer.Stop()
	}
	k.mu.Unlock()
	if first && k.set != nil {
		k.set.stopped()
	}
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
	sent := time.Now()
	end, _, ok := k.due(sent, 0)
	if !ok {
		return
	}
	ctx, cancel := context.WithDeadline(context.Background(), end)
	held, err := Refresh(ctx, k.c, k.key, k.token, k.ttl)
	cancel()
	if next, again := k.renewed(sent, held, err); again {
		k.mu.Lock()
		if !k.stopped {
			k.timer.Reset(next)
		}
		k.mu.Unlock()
	}
}

// renew renews the leases of s due (within a twelfth of a lease: leases
// taken together stay together) in one pipelined call (on a Cluster, one
// per node), and sets the timer for the next one due: a lease whose
// renewal failed is tried again sooner, alone.
func (s *keepSet) renew() {
	sent := time.Now()
	var live []*Keeper
	var end, wake time.Time // the latest end of those renewed; the earliest renewal of the others
	for _, k := range s.keepers {
		e, later, ok := k.due(sent, s.ttl/12)
		switch {
		case ok:
			live = append(live, k)
			if e.After(end) {
				end = e
			}
		case !later.IsZero() && (wake.IsZero() || later.Before(wake)):
			wake = later
		}
	}
	if len(live) > 0 {
		ctx, cancel := context.WithDeadline(context.Background(), end)
		cmds, err := redisx.Run(ctx, s.c, func(ctx context.Context) ([]*redis.Cmd, error) {
			return s.send(ctx, live)
		}, nil)
		cancel()
		for i, k := range live {
			// Each lease by its own reply: on a Cluster, a node that
			// answers with an error (LOADING, READONLY) fails its
			// leases' renewals only. One that cannot be reached starts
			// the client's outage, which fails every call until it ends.
			held, kerr := false, err
			if cmds != nil {
				var v any
				if v, kerr = cmds[i].Result(); kerr == nil {
					held, kerr = parseFlag(v)
				}
			}
			if d, ok := k.renewed(sent, held, kerr); ok {
				if at := time.Now().Add(d); wake.IsZero() || at.Before(wake) {
					wake = at
				}
			}
		}
	}
	s.mu.Lock()
	if !wake.IsZero() && s.left > 0 {
		s.timer.Reset(max(time.Until(wake), 0))
	}
	s.mu.Unlock()
}

// IsRenewal reports whether cmd renews a lease, alone or in a pipeline,
// and returns the lock's key; tests count renewals with it.
func IsRenewal(cmd redis.Cmder) (string, bool) {
	args := cmd.Args()
	if len(args) < 4 {
		return "", false
	}
	switch cmd.Name() {
	case "eval":
		if args[1] != refreshLua {
			return "", false
		}
	case "evalsha":
		if args[1] != refreshScript.Hash() {
			return "", false
		}
	default:
		return "", false
	}
	key, _ := args[3].(string)
	return key, true
}

// send sends the renewals of live in one pipeline, by EVALSHA; those that
// meet NOSCRIPT (Redis restarted, or its scripts were flushed) go again by
// EVAL, in one more. Each command carries its own outcome, a failed
// call's too (go-redis sets the call's error on every command without
// one); the error returned is the call's, for the outage watch.
func (s *keepSet) send(ctx context.Context, live []*Keeper) ([]*redis.Cmd, error) {
	run := func(idx []int, eval bool) ([]*redis.Cmd, error) {
		pipe := s.c.Redis().Pipeline()
		cmds := make([]*redis.Cmd, len(idx))
		for j, i := range idx {
			k := live[i]
			if eval {
				cmds[j] = refreshScript.Eval(ctx, pipe, []string{k.key}, k.token, ms(s.ttl))
			} else {
				cmds[j] = refreshScript.EvalSha(ctx, pipe, []string{k.key}, k.token, ms(s.ttl))
			}
		}
		_, err := pipe.Exec(ctx)
		if err != nil && redisx.Classify(err) == redisx.Reply {
			err = nil // a lease's, not the call's
		}
		return cmds, err
	}
	all := make([]int, len(live))
	for i := range all {
		all[i] = i
	}
	cmds, err := run(all, false)
	var again []int
	for i, cmd := range cmds {
		if redisx.IsNoScript(cmd.Err()) {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		more, _ := run(again, true)
		for j, i := range again {
			cmds[i] = more[j]
		}
	}
	return cmds, err
}

// due reports whether k's lease is to be renewed by a call sent at sent
// (a set's Keeper: if its renewal is due within window), and until when
// it surely holds; one that surely ran out is lost (the holder told). A
// Keeper due is running until renewed says how it went. A set's Keeper
// kept but not due returns when it is, later.
func (k *Keeper) due(sent time.Time, window time.Duration) (end, later time.Time, ok bool) {
	k.mu.Lock()
	if k.stopped || k.cause != nil || k.until != nil && k.until.Err() != nil {
		k.mu.Unlock()
		return time.Time{}, time.Time{}, false
	}
	if k.set != nil && sent.Add(window).Before(k.next) {
		next := k.next
		k.mu.Unlock()
		return time.Time{}, next, false
	}
	k.running.Add(1) // Stop waits for the holder to be told, too
	end, lastErr := k.end, k.lastErr
	k.mu.Unlock()
	if !sent.Before(end) {
		defer k.running.Done()
		k.fail(fmt.Errorf("%w: lease on %s ran out before it could be renewed (last error: %v)", ErrNotHeld, k.key, lastErr))
		return time.Time{}, time.Time{}, false
	}
	return end, time.Time{}, true
}

// renewed takes the outcome of the renewal due sent at sent (held, or
// err), and returns when to renew again, or false for never (the lease is
// lost).
func (k *Keeper) renewed(sent time.Time, held bool, err error) (time.Duration, bool) {
	defer k.running.Done()
	switch {
	case err == nil && !held:
		k.fail(fmt.Errorf("%w: lease on %s was taken or deleted", ErrNotHeld, k.key))
		return 0, false
	case redisx.Classify(err) == redisx.Reply:
		// The key was replaced by something that is not our lock. A
		// transient reply (READONLY, LOADING: a failover or restart under
		// way) is not this: it is tried again until the lease runs out.
		k.fail(fmt.Errorf("%w: renewing %s: %w", ErrNotHeld, k.key, err))
		return 0, false
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var next time.Duration
	if err == nil {
		// Renew a third of a lease after the last renewal was sent, not
		// after its reply: slow replies must not eat into the lease.
		k.end, k.lastErr = sent.Add(k.ttl), nil
		next = max(time.Until(sent.Add(k.ttl/3)), 0)
	} else {
		// Try again soon, and give up when the lease has surely run out.
		k.lastErr = err
		next = max(min(k.ttl/12, time.Until(k.end)), time.Millisecond)
	}
	k.next = time.Now().Add(next)
	return next, true
}

func (k *Keeper) fail(err error) {
	k.mu.Lock()
	k.cause = err
	k.mu.Unlock()
	if k.onLost != nil {
		k.onLost()
	}
}
