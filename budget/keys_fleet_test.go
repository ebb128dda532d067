package budget_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// keyedAPI is a fake upstream that limits each credential on its own, as
// the X API limits each user token: a token bucket of rate calls per
// second and burst per key. A key can be revoked (every call answers 401)
// or rate-limited for a while (every call answers 429 with Retry-After).
type keyedAPI struct {
	rate, burst float64

	mu      sync.Mutex // guards the fields below
	buckets map[string]*apiBucket
	revoked map[string]bool
	limited map[string]time.Time
	retry   string // the Retry-After of a limited key's 429s
	ok      map[string][]time.Time
	refused map[string]int // 429s
	denied  map[string]int // 401s
}

type apiBucket struct {
	tokens float64
	last   time.Time
}

func newKeyedAPI(rate, burst float64) *keyedAPI {
	return &keyedAPI{rate: rate, burst: burst, buckets: map[string]*apiBucket{}, revoked: map[string]bool{},
		limited: map[string]time.Time{}, ok: map[string][]time.Time{}, refused: map[string]int{}, denied: map[string]int{}}
}

// call is one call with key: its status and header.
func (a *keyedAPI) call(key string) (int, http.Header) {
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	h := http.Header{}
	if a.revoked[key] {
		a.denied[key]++
		return http.StatusUnauthorized, h
	}
	if a.limited[key].After(now) {
		a.refused[key]++
		h.Set("Retry-After", a.retry)
		return http.StatusTooManyRequests, h
	}
	b := a.buckets[key]
	if b == nil {
		b = &apiBucket{tokens: a.burst, last: now}
		a.buckets[key] = b
	}
	b.tokens = min(a.burst, b.tokens+now.Sub(b.last).Seconds()*a.rate)
	b.last = now
	if b.tokens < 1 {
		a.refused[key]++
		h.Set("Retry-After", "1")
		return http.StatusTooManyRequests, h
	}
	b.tokens--
	a.ok[key] = append(a.ok[key], now)
	return http.StatusOK, h
}

// okBetween counts key's calls answered 200 within [from, to).
func (a *keyedAPI) okBetween(key string, from, to time.Time) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, at := range a.ok[key] {
		if !at.Before(from) && at.Before(to) {
			n++
		}
	}
	return n
}

// counts returns the 429s and 401s of key.
func (a *keyedAPI) counts(key string) (refused, denied int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.refused[key], a.denied[key]
}

// callers has goroutines goroutines on each budget reserve a call, make it
// with its key and report the response through the reservation, until ctx
// ends. Errors other than ctx's and ErrNoKeys fail the test.
func callers(t *testing.T, ctx context.Context, wg *sync.WaitGroup, api *keyedAPI, buds []*budget.Budget, goroutines int) {
	for _, b := range buds {
		for range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					r, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
					switch {
					case ctx.Err() != nil:
						return
					case errors.Is(err, budget.ErrNoKeys):
						time.Sleep(time.Millisecond)
						continue
					case err != nil:
						t.Errorf("Reserve: %v", err)
						return
					}
					status, h := api.call(r.Key())
					if err := r.Observe(ctx, h, status); err != nil && ctx.Err() == nil {
						t.Errorf("Observe(%d): %v", status, err)
					}
					_ = r.Done(ctx)
				}
			}()
		}
	}
}

// TestKeysFleet: three servers, each a client of its own, spread calls over
// three keys of an upstream that limits each key. When the upstream
// rate-limits one key for a while, the calls go on the others at their full
// rate; when it revokes another (401), every server drops it within a
// second; once every key is removed, Reserve fails with ErrNoKeys on every
// server.
func TestKeysFleet(t *testing.T) {
	s := redistest.Start(t, nil)
	const rate, servers, goroutines = 40, 3, 4
	keys := []string{"tok-0", "tok-1", "tok-2"}
	api := newKeyedAPI(rate, 2)
	api.retry = "2"
	l := budget.Limit{Rate: rate}
	var buds []*budget.Budget
	for range servers {
		buds = append(buds, newBudget(t, s.Client(t, nil), "fleet-keys", l, &budget.Options{Keys: keys}))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	callers(t, ctx, &wg, api, buds, goroutines)

	time.Sleep(300 * time.Millisecond)
	limitedAt := time.Now()
	api.mu.Lock()
	api.limited["tok-0"] = limitedAt.Add(2 * time.Second)
	api.mu.Unlock()
	time.Sleep(300 * time.Millisecond)
	revokedAt := time.Now()
	api.mu.Lock()
	api.revoked["tok-1"] = true
	api.mu.Unlock()
	redistest.WaitFor(t, "every server to drop the revoked key", func() bool {
		for _, b := range buds {
			if b.Stats().Keys != 2 {
				return false
			}
		}
		return true
	})
	if d := time.Since(revokedAt); d > time.Second {
		t.Errorf("the revoked key was dropped by every server %v after the upstream revoked it; want within 1s", d)
	}
	time.Sleep(500 * time.Millisecond)
	end := time.Now()

	// While tok-0 is paused and tok-1 revoked, tok-2 alone serves, at its
	// own rate: not stalled behind the others.
	from := revokedAt.Add(100 * time.Millisecond)
	if n, want := api.okBetween("tok-2", from, end), int(0.7*rate*end.Sub(from).Seconds()); n < want {
		t.Errorf("tok-2 served %d calls in the %v the others were out; want at least %d (70%% of its rate)", n, end.Sub(from), want)
	}
	if n := api.okBetween("tok-0", limitedAt.Add(100*time.Millisecond), end); n != 0 {
		t.Errorf("tok-0 served %d calls while the upstream limited it; want 0", n)
	}
	// A call already on its way when the 429 or the 401 came was refused
	// too; no other.
	if refused, _ := api.counts("tok-0"); refused < 1 || refused > servers*goroutines {
		t.Errorf("tok-0 drew %d 429s; want between 1 and %d (the calls on their way)", refused, servers*goroutines)
	}
	if _, denied := api.counts("tok-1"); denied < 1 || denied > servers*goroutines {
		t.Errorf("tok-1 drew %d 401s; want between 1 and %d (the calls on their way)", denied, servers*goroutines)
	}
	for _, k := range []string{"tok-1", "tok-2"} {
		if refused, _ := api.counts(k); refused != 0 {
			t.Errorf("%s drew %d 429s; want 0", k, refused)
		}
	}

	// Every key removed: a clear error on every server, within a second.
	for _, k := range []string{"tok-0", "tok-2"} {
		if err := buds[0].Remove(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	removedAt := time.Now()
	redistest.WaitFor(t, "every server to have no key", func() bool {
		for _, b := range buds {
			if b.Stats().Keys != 0 {
				return false
			}
		}
		return true
	})
	if d := time.Since(removedAt); d > time.Second {
		t.Errorf("every server had no key %v after the last Remove; want within 1s", d)
	}
	for i, b := range buds {
		if _, err := b.Reserve(ctx, budget.Foreground, budget.Cost{}); !errors.Is(err, budget.ErrNoKeys) {
			t.Errorf("server %d: Reserve with no key left: %v; want an error wrapping ErrNoKeys", i, err)
		}
	}
}

// TestKeysSleeperMoves: a caller sleeping on a slot of a key that another
// server hears a 429 for books again, at once, on another key.
func TestKeysSleeperMoves(t *testing.T) {
	s := redistest.Start(t, nil)
	keys := []string{"tok-a", "tok-b"}
	l := budget.Limit{Rate: 1}
	a := newBudget(t, s.Client(t, nil), "sleeper-keys", l, &budget.Options{Keys: keys})
	b := newBudget(t, s.Client(t, nil), "sleeper-keys", l, &budget.Options{Keys: keys})
	ctx := redistest.Context(t, 10*time.Second)
	// Each key's slot taken on a: the next caller, on b, sleeps a second on
	// one of them.
	held := map[string]*budget.Reservation{}
	for range 2 {
		r, err := a.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err != nil {
			t.Fatal(err)
		}
		held[r.Key()] = r
	}
	var booked []budget.Booking
	var mu sync.Mutex
	budget.OnBook(b, func(k budget.Booking) {
		mu.Lock()
		booked = append(booked, k)
		mu.Unlock()
	})
	done := lineUp(t, ctx, nil, b)
	redistest.WaitFor(t, "a sleeper on b", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(booked) == 1
	})
	// A 429 for the sleeper's key, heard from the other server.
	mu.Lock()
	first := keys[booked[0].Key-1]
	mu.Unlock()
	if err := held[first].Observe(ctx, rateLimited("4"), http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "the sleeper to book again", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(booked) == 2
	})
	r := <-done
	if r == nil {
		return
	}
	if r.Key() == first {
		t.Fatalf("the sleeper went on %s, paused by a 429; want the other key", first)
	}
	if n := b.Stats().Rebooked; n != 1 {
		t.Fatalf("Stats().Rebooked = %d; want 1", n)
	}
}

// TestKeysCluster: on a Redis Cluster, a pool's booking, its key's pause
// heard by another server (sharded pub/sub) and a removal work: every key
// of the pool lies in the budget's slot.
func TestKeysCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	keys := []string{"tok-a", "tok-b"}
	l := budget.Limit{Rate: 1}
	a := newBudget(t, c.Client(t, nil), "cluster-keys", l, &budget.Options{Keys: keys})
	b := newBudget(t, c.Client(t, nil), "cluster-keys", l, &budget.Options{Keys: keys})
	var mu sync.Mutex
	var booked []budget.Booking
	budget.OnBook(b, func(k budget.Booking) {
		mu.Lock()
		booked = append(booked, k)
		mu.Unlock()
	})
	ctx := redistest.Context(t, 20*time.Second)
	held := map[string]*budget.Reservation{}
	for range 2 {
		r, err := a.Reserve(ctx, budget.Foreground, budget.Cost{})
		if err != nil {
			t.Fatal(err)
		}
		held[r.Key()] = r
	}
	if len(held) != 2 {
		t.Fatalf("keys booked: %v; want both", held)
	}
	done := make(chan error, 1)
	go func() {
		_, err := b.Reserve(ctx, budget.Foreground, budget.Cost{})
		done <- err
	}()
	redistest.WaitFor(t, "a sleeper on b", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(booked) == 1
	})
	mu.Lock()
	sleepsOn := keys[booked[0].Key-1]
	mu.Unlock()
	if err := held[sleepsOn].Observe(ctx, rateLimited("60"), http.StatusTooManyRequests); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "the sleeper to book again", func() bool { return b.Stats().Rebooked == 1 })
	if err := a.Remove(ctx, sleepsOn); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "b to hear of the removal", func() bool { return b.Stats().Keys == 1 })
	if err := <-done; err != nil {
		t.Fatalf("the sleeper's Reserve: %v", err)
	}
}
