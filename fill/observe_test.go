package fill_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
	"github.com/locksmith-go/locksmith/observe"
)

// recorder collects events.
type recorder struct {
	mu     sync.Mutex
	events []observe.Event
}

func (r *recorder) Handle(_ context.Context, e observe.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) kinds() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ks []string
	for _, e := range r.events {
		ks = append(ks, e.Kind.String())
	}
	return ks
}

// TestObserver: the hook sees misses, loads, hits, remote waits and
// failures, with the key and the cache's prefix.
func TestObserver(t *testing.T) {
	m, rdb := redistest.Mini(t)
	var ra, rb recorder
	a := newCache(t, rdb, &fill.Options{Events: &ra})
	b := newCache(t, redistest.Client(t, m.Addr()), &fill.Options{Events: &rb})
	ctx := redistest.Context(t, 20*time.Second)
	started, open := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		_, err := fill.Get(ctx, a, "k", func(context.Context) (int, error) { close(started); <-open; return 1, nil })
		first <- err
	}()
	<-started
	res := make(chan error, 1)
	go func() {
		_, err := fill.Get(ctx, b, "k", func(context.Context) (int, error) { return 2, nil })
		res <- err
	}()
	redistest.WaitFor(t, "b waits", func() bool { return b.Stats().Misses == 1 })
	close(open)
	if err := <-res; err != nil {
		t.Fatal(err)
	}
	// b has the value from the message before a's flight has returned; a
	// Get on a before then would join that flight and see no hit.
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if v, err := fill.Get(ctx, a, "k", func(context.Context) (int, error) { return 3, nil }); err != nil || v != 1 {
		t.Fatalf("hit: got %v, %v; want the cached 1", v, err)
	}
	if _, err := fill.Get(ctx, a, "bad", func(context.Context) (int, error) { return 0, errors.New("boom") }); err == nil {
		t.Fatal("failing load: got no error")
	}
	want := "miss load hit miss load"
	if got := strings.Join(ra.kinds(), " "); got != want {
		t.Errorf("leader's events: %s; want %s", got, want)
	}
	if got := strings.Join(rb.kinds(), " "); got != "miss wait_remote" {
		t.Errorf("follower's events: %s", got)
	}
	ra.mu.Lock()
	last := ra.events[len(ra.events)-1]
	ra.mu.Unlock()
	if last.Key != "bad" || last.Err == nil || last.Source != "fill" || last.Name != fill.DefaultPrefix {
		t.Errorf("failed load event: %+v", last)
	}
}

// TestLogger: outages and their end reach the Logger, once each.
func TestLogger(t *testing.T) {
	s := redistest.Start(t, nil)
	var buf redistest.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	c := newCache(t, s.Client(t, nil), &fill.Options{Logger: log})
	ctx := redistest.Context(t, 30*time.Second)
	s.Kill(t)
	for i := range 20 {
		if _, err := fill.Get(ctx, c, "k", func(context.Context) (int, error) { return i, nil }); err != nil {
			t.Fatalf("Get %d with Redis away: %v; want a fail-open load", i, err)
		}
	}
	s.Restart(t)
	redistest.WaitFor(t, "Redis back", func() bool { return strings.Contains(buf.String(), "reachable again") })
	out := buf.String()
	if n := strings.Count(out, "redis unreachable"); n != 1 {
		t.Errorf("outage logged %d times:\n%s", n, out)
	}
	if n := strings.Count(out, "loading without the fleet-wide lock"); n != 1 {
		t.Errorf("fail-open logged %d times:\n%s", n, out)
	}
}
