package fill

import (
	"errors"
	"fmt"

	"github.com/locksmith-go/locksmith/internal/redisx"
)

var (
	// ErrNotFound, wrapped by a loader's error, has the absence of the value
	// cached for Options.NegativeTTL; later calls return an error wrapping
	// ErrNotFound, naming the key, without loading.
	ErrNotFound = errors.New("fill: not found")
	// ErrLoadFailed is wrapped by the error a caller gets when the loader
	// failed or panicked on another server while this one waited for it.
	ErrLoadFailed = errors.New("fill: load failed on another server")
	// ErrClosed is returned by Get on a closed Cache, and by calls that
	// were waiting for a load the closing Cache ran.
	ErrClosed = errors.New("fill: cache closed")
	// ErrTypeConflict is wrapped by a [TypeConflictError].
	ErrTypeConflict = errors.New("fill: a key is read as two types")
	// ErrInvalid is wrapped by the error every call of a Cache returns
	// when [New] was given what cannot work (a nil client, options that
	// cannot work), and by calls on a nil *Cache.
	ErrInvalid = errors.New("fill: invalid cache")
)

// errNotStarted is returned by a loader call not made because its Cache
// began to close (see [Cache.loader]): [Cache.load] tells it apart from a
// call that was made, and returns ErrClosed.
var errNotStarted = fmt.Errorf("%w", ErrClosed)

// notCalled reports whether err, a loader call's, says that the call was
// not made: the Cache was closing, or a gatherer lost its lease first.
func notCalled(err error) bool { return err == errNotStarted || err == errAbandoned }

// notFound is the error of a cached absence of key: it names the key and
// wraps ErrNotFound.
func notFound(key string) error { return &notFoundError{key} }

type notFoundError struct{ key string }

func (e *notFoundError) Error() string { return "fill: " + redisx.Quote(e.key) + ": not found" }
func (e *notFoundError) Unwrap() error { return ErrNotFound }

// PanicError is what a caller of [Get] panics with when the loader panicked:
// the loader's panic value and the stack where it panicked.
type PanicError struct {
	Value any
	Stack []byte
}

func (p *PanicError) Error() string {
	return fmt.Sprintf("fill: loader panicked: %v\n\n%s", p.Value, p.Stack)
}

// Unwrap returns the panic value when it is an error.
func (p *PanicError) Unwrap() error {
	err, _ := p.Value.(error)
	return err
}

// TypeConflictError is returned when a key's entry was written as one Go
// type and is read as another, while servers reading it as the first type
// are still live: the entry replaced one of the reader's type. Types are
// told apart by the tag each entry carries (package path and type name),
// not by whether the codec manages to decode one into the other: a codec
// that decodes leniently (a struct into another with no field in common,
// giving a zero value) never makes an entry of another type a hit.
// Reloading would have the two types overwrite each other on every read,
// each time calling the upstream; instead, the reader gets this error until
// the entry expires or is deleted. (An entry of another type that did not
// replace the reader's type, such as one left by an older release of the
// program or a type renamed, is reloaded once, as a schema change should
// be; an entry of the reader's own type with fields added or missing
// decodes.) Reading a key as an interface type checks no tag.
type TypeConflictError struct {
	Key    string
	Stored string // the type the entry was written as
	Read   string // the type it was read as
}

func (e *TypeConflictError) Error() string {
	return fmt.Sprintf("fill: %s is stored as %s and read as %s by live servers; use one type per key",
		redisx.Quote(e.Key), e.Stored, e.Read)
}

// Unwrap returns ErrTypeConflict.
func (e *TypeConflictError) Unwrap() error { return ErrTypeConflict }

// errGoexit is the flight's outcome when the loader called runtime.Goexit.
var errGoexit = errors.New("fill: loader called runtime.Goexit")
