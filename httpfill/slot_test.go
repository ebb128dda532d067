package httpfill_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/httpfill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestUpstreamUnderSlotLease: with a budget's Concurrency, every upstream
// request of a Transport (a load, a background refresh, a pass-through)
// runs under its concurrency slot's lease: when the slot is lost, the
// request's ctx ends with budget.ErrSlotLost, as a fill load's does, since
// the fleet may give the slot to another call.
func TestUpstreamUnderSlotLease(t *testing.T) {
	redistest.Require(t)
	tests := []struct {
		name string
		// send sends the requests until ctx ends, the last of which
		// blocks upstream.
		send func(ctx context.Context, c *http.Client, url string)
		// before is how many requests the upstream answers before the
		// one that blocks.
		before int32
	}{
		{"load", func(ctx context.Context, c *http.Client, url string) { do(ctx, c, http.MethodGet, url) }, 0},
		{"pass-through", func(ctx context.Context, c *http.Client, url string) { do(ctx, c, http.MethodPost, url) }, 0},
		{"refresh", func(ctx context.Context, c *http.Client, url string) {
			// Served the stale value at once, while the refresh runs.
			for ctx.Err() == nil {
				do(ctx, c, http.MethodGet, url)
			}
		}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := redistest.Start(t, nil)
			b := budget.New(s.Client(t, nil), "slots", budget.Limit{Rate: 1000},
				&budget.Options{Concurrency: 1, SlotLease: 300 * time.Millisecond})
			t.Cleanup(func() { _ = b.Close() })
			cache := newCache(t, s.Client(t, nil), &fill.Options{StaleWhileRevalidate: time.Minute})
			quit := make(chan struct{})
			t.Cleanup(func() { close(quit) })
			started := make(chan struct{}, 1)
			causes := make(chan error, 1)
			var calls atomic.Int32
			base := roundTripFunc(func(r *http.Request) (*http.Response, error) {
				if calls.Add(1) <= tt.before {
					return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("v1")), Request: r}, nil
				}
				started <- struct{}{}
				select {
				case <-r.Context().Done():
					causes <- context.Cause(r.Context())
					return nil, r.Context().Err()
				case <-quit:
					return nil, errors.New("the test ended")
				}
			})
			c := &http.Client{Transport: httpfill.New(cache, &httpfill.Options{Base: base, Budget: b, TTL: time.Millisecond})}
			ctx := redistest.Context(t, 10*time.Second)
			sctx, stop := context.WithCancel(ctx)
			defer stop()
			go tt.send(sctx, c, "http://upstream.test/a")
			select {
			case <-started:
			case <-ctx.Done():
				t.Fatal("the upstream request was not sent")
			}
			if got := b.Stats().InFlight; got != 1 {
				t.Fatalf("InFlight = %d while the request runs; want 1", got)
			}
			// The fleet no longer holds the slot: the next renewal finds it
			// gone.
			s.Do(t, "DEL", "__locksmith:{slots}:budget:slots")
			select {
			case err := <-causes:
				if !errors.Is(err, budget.ErrSlotLost) {
					t.Errorf("the request's ctx ended with cause %v; want budget.ErrSlotLost", err)
				}
			case <-ctx.Done():
				t.Fatal("the upstream request's ctx did not end when its slot was lost")
			}
		})
	}
}

// TestPassThroughBodyAfterDone: a pass-through's reservation is done once
// Base returns, freeing its concurrency slot, and its body is still read
// afterwards: the request's ctx does not end with the reservation.
func TestPassThroughBodyAfterDone(t *testing.T) {
	s := redistest.Start(t, nil)
	b := budget.New(s.Client(t, nil), "slots", budget.Limit{Rate: 1000}, &budget.Options{Concurrency: 1})
	t.Cleanup(func() { _ = b.Close() })
	gate := make(chan struct{})
	u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-gate
		_, _ = io.WriteString(w, "the body")
	})
	c := newClient(u, newCache(t, s.Client(t, nil), nil), &httpfill.Options{Budget: b})
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, u.url("/p"), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if got := b.Stats().InFlight; got != 0 {
		t.Errorf("InFlight = %d once the response came; want 0: the reservation is done", got)
	}
	close(gate)
	if body, err := io.ReadAll(resp.Body); err != nil || string(body) != "the body" {
		t.Errorf("body read after Done: %q, %v; want %q", body, err, "the body")
	}
}
