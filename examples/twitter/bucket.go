package main

import (
	"math"
	"sync"
	"time"
)

// tokenBucket holds up to burst tokens and gains rate tokens per second; a
// call takes one.
type tokenBucket struct {
	rate  float64
	burst float64

	mu     sync.Mutex // guards tokens, last, and rate once the API serves
	tokens float64
	last   time.Time
}

func newTokenBucket(rate float64, burst int) *tokenBucket {
	return &tokenBucket{rate: rate, burst: float64(burst), tokens: float64(burst)}
}

// quota is what a call found in the bucket.
type quota struct {
	ok     bool          // it took a token
	wait   time.Duration // until the next token, when not ok
	tokens float64       // left after it
}

// take takes a token at now if there is one.
func (b *tokenBucket) take(now time.Time) quota {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	var q quota
	if b.tokens >= 1 {
		b.tokens--
		q.ok = true
	} else {
		q.wait = b.duration(1 - b.tokens)
	}
	q.tokens = b.tokens
	return q
}

// setRate makes the bucket gain rate tokens per second from now on.
func (b *tokenBucket) setRate(now time.Time, rate float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last, b.rate = now, rate
}

// duration is how long the bucket takes to gain tokens.
func (b *tokenBucket) duration(tokens float64) time.Duration {
	return time.Duration(math.Ceil(tokens / b.rate * float64(time.Second)))
}
