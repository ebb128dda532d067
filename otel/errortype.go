package otel

import (
	"context"
	"errors"
	"io"
	"net"

	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"

	"github.com/locksmith-go/locksmith/budget"
	"github.com/locksmith-go/locksmith/fill"
)

// The error.type values of the errors locksmith knows.
const (
	errTimeout     = "timeout"      // a deadline ran out (context.DeadlineExceeded, a net timeout)
	errCanceled    = "canceled"     // context.Canceled
	errClosed      = "closed"       // fill.ErrClosed
	errRateLimited = "rate_limited" // budget.ErrRateLimited: the upstream said 429
	errTypeConfl   = "type_conflict"
	errLoadFailed  = "load_failed" // fill.ErrLoadFailed
	errNetwork     = "network"     // Redis (or the upstream) could not be reached
)

// errorType returns the error.type of err, which has low cardinality: the
// value of an ErrorType() string method in err's chain, as semconv
// specifies; else the name of one of the conditions above; else the
// concrete type of err beneath fmt.Errorf wrappers (semconv.ErrorType),
// such as "*net/url.Error".
func errorType(err error) string {
	var own interface{ ErrorType() string }
	if errors.As(err, &own) {
		if t := own.ErrorType(); t != "" {
			return t
		}
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return errTimeout
	case errors.Is(err, context.Canceled):
		return errCanceled
	case errors.Is(err, fill.ErrClosed):
		return errClosed
	case errors.Is(err, budget.ErrRateLimited):
		return errRateLimited
	case errors.Is(err, fill.ErrTypeConflict):
		return errTypeConfl
	case errors.Is(err, fill.ErrLoadFailed):
		return errLoadFailed
	case errors.As(err, &ne):
		if ne.Timeout() {
			return errTimeout
		}
		return errNetwork
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return errNetwork
	}
	return semconv.ErrorType(err).Value.AsString()
}

// isAbsent reports whether a load's err says the value is absent: an
// outcome that is cached, not a failure.
func isAbsent(err error) bool { return err != nil && errors.Is(err, fill.ErrNotFound) }
