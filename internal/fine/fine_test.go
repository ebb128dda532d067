package fine

import (
	"slices"
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

// BenchmarkLateness: how late a wait of Window ends, with Sleep and with a
// Go timer (time.Sleep), each after 5 ms idle as a pop or slot comes after
// a pause. Reports the p50 and p90 of each in µs.
func BenchmarkLateness(b *testing.B) {
	late := func(sleep func(time.Time)) (p50, p90 float64) {
		over := make([]time.Duration, 0, b.N)
		for range b.N {
			time.Sleep(5 * time.Millisecond)
			deadline := time.Now().Add(Window)
			sleep(deadline)
			over = append(over, time.Since(deadline))
		}
		slices.Sort(over)
		us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
		return us(over[len(over)/2]), us(over[len(over)*9/10])
	}
	fine50, fine90 := late(Sleep)
	go50, go90 := late(func(t time.Time) { time.Sleep(time.Until(t)) })
	b.ReportMetric(fine50, "p50-late-µs")
	b.ReportMetric(fine90, "p90-late-µs")
	b.ReportMetric(go50, "timer-p50-late-µs")
	b.ReportMetric(go90, "timer-p90-late-µs")
	b.ReportMetric(0, "ns/op")
}
