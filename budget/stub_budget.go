// Package budget is a placeholder for the fleet-wide rate budget.
package budget

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Priority orders calls.
type Priority int

// Priorities.
const (
	Foreground Priority = iota
	Background
)

// Budget is a rate budget.
type Budget struct{}

// Wait waits for a slot.
func (b *Budget) Wait(ctx context.Context, p Priority) error { return ctx.Err() }

// Observe reads headers.
func (b *Budget) Observe(ctx context.Context, h http.Header, status int) error { return nil }

// PauseUntil pauses.
func (b *Budget) PauseUntil(ctx context.Context, t time.Time) error { return nil }

// ErrRateLimited is the target.
var ErrRateLimited = errors.New("budget: rate limited")

// RateLimitedError is a 429.
type RateLimitedError struct{ RetryAfter time.Duration }

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("budget: rate limited, retry after %v", e.RetryAfter)
}

// Is matches ErrRateLimited.
func (e *RateLimitedError) Is(target error) bool { return target == ErrRateLimited }
