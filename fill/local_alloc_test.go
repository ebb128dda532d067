package fill_test

import (
	"context"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/fill"
	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestLocalHitAllocs: a local hit allocates nothing.
func TestLocalHitAllocs(t *testing.T) {
	if testing.CoverMode() != "" {
		t.Skip("coverage counters allocate")
	}
	s := redistest.Start(t, nil)
	// MaxStaleness is long, so that a heartbeat late on a loaded machine
	// does not send a Get to Redis in the middle of the count.
	c := localFleet(t, s, 1, 30*time.Second)[0]
	ctx := redistest.Context(t, 20*time.Second)
	type value struct {
		ID   int
		Name string
		Tags []string
	}
	want := value{ID: 7, Name: "ada", Tags: []string{"a", "b"}}
	load := func(context.Context) (value, error) { return want, nil }
	hit := func() {
		if _, err := fill.Get(ctx, c, "v", load); err != nil {
			t.Fatal(err)
		}
	}
	redistest.WaitFor(t, "a local hit", func() bool {
		before := c.Stats().LocalHits
		hit()
		return c.Stats().LocalHits > before
	})
	const runs = 1000
	var allocs float64
	redistest.WaitFor(t, "a count over local hits only", func() bool {
		before := c.Stats().LocalHits
		allocs = testing.AllocsPerRun(runs, hit)
		return c.Stats().LocalHits-before == runs+1 // AllocsPerRun's warm-up call, then the runs
	})
	if allocs != 0 {
		t.Errorf("a local hit allocates %v times; want 0", allocs)
	}
}
