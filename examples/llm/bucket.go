package main

import (
	"math"
	"time"
)

// bucket is one limit: it holds up to limit units, and gains limit units per
// minute.
type bucket struct {
	limit  int64
	minute time.Duration
	level  float64
	last   time.Time
}

func newBucket(limit int64, minute time.Duration) *bucket {
	return &bucket{limit: limit, minute: minute, level: float64(limit)}
}

// refill adds what the bucket gained up to now.
func (b *bucket) refill(now time.Time) {
	if !b.last.IsZero() && now.After(b.last) {
		gained := float64(now.Sub(b.last)) / float64(b.minute) * float64(b.limit)
		b.level = min(float64(b.limit), b.level+gained)
	}
	if now.After(b.last) {
		b.last = now
	}
}

// take takes n units if the bucket holds them.
func (b *bucket) take(n int64) bool {
	if b.level < float64(n) {
		return false
	}
	b.level -= float64(n)
	return true
}

// until is how long the bucket takes to hold n units, rounded up to a
// millisecond.
func (b *bucket) until(n int64) time.Duration {
	return b.duration(float64(n) - b.level)
}

// state returns the limit, the whole units left, and the time until the
// bucket is full.
func (b *bucket) state() (limit, left int64, reset time.Duration) {
	return b.limit, int64(math.Floor(b.level)), b.duration(float64(b.limit) - b.level)
}

// duration is how long the bucket takes to gain units, rounded up to a
// millisecond; 0 for none.
func (b *bucket) duration(units float64) time.Duration {
	if units <= 0 {
		return 0
	}
	d := time.Duration(math.Ceil(units * float64(b.minute) / float64(b.limit)))
	return (d + time.Millisecond - 1).Truncate(time.Millisecond)
}
