package httpfill

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// rwBody is a writable response body, as a 101 Switching Protocols
// response has.
type rwBody struct {
	io.Reader
	w      bytes.Buffer
	closed bool
}

func (b *rwBody) Write(p []byte) (int, error) { return b.w.Write(p) }
func (b *rwBody) Close() error                { b.closed = true; return nil }

// TestClosingBody: the body of a pass-through under a concurrency slot
// stops watching the slot once closed, and stays writable when it was.
func TestClosingBody(t *testing.T) {
	stops := 0
	stop := func() { stops++ }
	rw := &rwBody{Reader: strings.NewReader("up")}
	body := closing(rw, stop)
	w, ok := body.(io.Writer)
	if !ok {
		t.Fatalf("%T is not writable; want it to be, as the body it wraps", body)
	}
	if _, err := w.Write([]byte("ping")); err != nil || rw.w.String() != "ping" {
		t.Errorf("Write: %v, wrote %q; want ping", err, rw.w.String())
	}
	if b, err := io.ReadAll(body); err != nil || string(b) != "up" {
		t.Errorf("read %q, %v; want up", b, err)
	}
	if stops != 0 {
		t.Errorf("stop called %d times before Close; want 0", stops)
	}
	if err := body.Close(); err != nil || !rw.closed || stops != 1 {
		t.Errorf("Close: %v, body closed %v, stop called %d times; want nil, true, 1", err, rw.closed, stops)
	}

	plain := closing(io.NopCloser(strings.NewReader("x")), stop)
	if _, ok := plain.(io.Writer); ok {
		t.Errorf("%T is writable; want it read-only, as the body it wraps", plain)
	}
	if err := plain.Close(); err != nil || stops != 2 {
		t.Errorf("Close: %v, stop called %d times in all; want nil, 2", err, stops)
	}
	if got := closing(nil, stop); got != nil || stops != 3 {
		t.Errorf("closing(nil) = %v, stop called %d times in all; want nil, 3", got, stops)
	}
}
