package fill

import (
	"testing"
	"time"
)

// TestGatherAhead: a pop is sent a moving average of its round trips and
// a quarter more ahead of when it is due, never more than a quarter of the
// Window (a Redis that paused once does not cut the batches short), and not
// at all before the first pop.
func TestGatherAhead(t *testing.T) {
	g := &gatherer[string]{b: &batch[string]{opt: BatchOptions{Window: 8 * time.Millisecond}}}
	if d := g.ahead(); d != 0 {
		t.Fatalf("ahead before any pop: %v; want 0", d)
	}
	g.sampleRTT(400 * time.Microsecond)
	if d := g.ahead(); d != 500*time.Microsecond {
		t.Errorf("ahead after a 400µs pop: %v; want 500µs", d)
	}
	g.sampleRTT(800 * time.Microsecond) // average (3×400 + 800) / 4 = 500
	if d := g.ahead(); d != 625*time.Microsecond {
		t.Errorf("ahead after pops of 400µs, 800µs: %v; want 625µs", d)
	}
	g.sampleRTT(5 * time.Second) // a pause
	if d := g.ahead(); d != 2*time.Millisecond {
		t.Errorf("ahead after a 5s pop: %v; want the cap, 2ms", d)
	}
}
