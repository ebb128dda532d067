package fine

import (
	"testing"
	"time"
)

// TestSleep: Sleep returns at its deadline, never before it, and at once
// for a deadline already past.
func TestSleep(t *testing.T) {
	for _, d := range []time.Duration{-time.Millisecond, 0, 200 * time.Microsecond, 2 * time.Millisecond} {
		deadline := time.Now().Add(d)
		Sleep(deadline)
		if now := time.Now(); now.Before(deadline) {
			t.Fatalf("Sleep(%v from now) returned %v early", d, deadline.Sub(now))
		}
	}
}
