package codec

import (
	"errors"
	"io"
)

var errExtAsMap = errors.New("extension value where a map is expected")

// trapReader reads a byte slice for the msgpack decoder, which uses it
// through io.Reader for bulk data and io.ByteScanner for code bytes. It fails
// ReadByte at the offsets in traps, where checkMsgpack found extension data
// that the decoder must not parse as a map (see checkMsgpack).
type trapReader struct {
	b     []byte
	pos   int
	traps []int // ascending offsets
}

func (r *trapReader) reset(b []byte, traps []int) {
	r.b, r.pos, r.traps = b, 0, traps
}

func (r *trapReader) Read(p []byte) (int, error) {
	if r.pos >= len(r.b) {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := copy(p, r.b[r.pos:])
	r.pos += n
	return n, nil
}

func (r *trapReader) ReadByte() (byte, error) {
	if r.pos >= len(r.b) {
		return 0, io.EOF
	}
	if len(r.traps) > 0 {
		for len(r.traps) > 0 && r.traps[0] < r.pos {
			r.traps = r.traps[1:]
		}
		if len(r.traps) > 0 && r.traps[0] == r.pos {
			return 0, errExtAsMap
		}
	}
	c := r.b[r.pos]
	r.pos++
	return c, nil
}

func (r *trapReader) UnreadByte() error {
	if r.pos == 0 {
		return errors.New("codec: UnreadByte at beginning of input")
	}
	r.pos--
	return nil
}
