package otel_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test leaves a goroutine behind: every client,
// Cache, provider and HTTP server is closed by its test.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
