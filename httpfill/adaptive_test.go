package httpfill_test

import (
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/httpfill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestAdaptiveBare429: through the Transport, a 429 that says nothing more
// cuts an Adaptive budget's learned rate, once per episode, and pauses
// nothing: the load is retried at once, on the slower schedule.
func TestAdaptiveBare429(t *testing.T) {
	var n atomic.Int32
	u := newUpstream(t, false, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) <= 2 {
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		hello(w, r)
	})
	_, rdb := redistest.Mini(t)
	b := budget.New(rdb, "api", budget.Limit{Rate: 100}, &budget.Options{Adaptive: true})
	t.Cleanup(func() { _ = b.Close() })
	c := newClient(u, newCache(t, rdb, &fill.Options{Budget: b}), &httpfill.Options{Budget: b})
	if r := mustDo(t, c, http.MethodGet, u.url("/a")); r.resp.StatusCode != http.StatusOK || r.body != "hello" {
		t.Errorf("GET: %d %q; want 200 hello once the upstream serves again", r.resp.StatusCode, r.body)
	}
	wantCalls(t, u, 3)
	// Each retry was booked after the cut before it: two episodes.
	if st := b.Stats(); st.RateCuts != 2 || st.PausesRateLimited != 0 || st.Rate > 56.26 {
		t.Errorf("budget: RateCuts %d, PausesRateLimited %d, Rate %v; want 2, 0, 56.25", st.RateCuts, st.PausesRateLimited, st.Rate)
	}
}
