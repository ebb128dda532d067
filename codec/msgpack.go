package codec

import (
	"bytes"
	"fmt"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
)

// maxPooledSize bounds the buffers that are kept for reuse: an encoder whose
// buffer grew beyond it, or a decoder that decoded an input larger than it
// (its internal scratch buffer grows to the longest string it read), is left
// to the garbage collector so that one huge value does not pin memory in the
// pools.
const maxPooledSize = 256 << 10

// msgpackCodec implements [MsgPack].
type msgpackCodec struct{}

// encoderState is a reusable encoder writing into its own buffer.
type encoderState struct {
	buf bytes.Buffer
	enc *msgpack.Encoder
}

var encoderPool = sync.Pool{
	New: func() any {
		s := new(encoderState)
		s.enc = msgpack.NewEncoder(&s.buf)
		s.enc.SetCustomStructTag("json")
		return s
	},
}

// decoderState is a reusable decoder reading from its own trapReader, which
// implements io.ByteScanner so the decoder reads it without extra buffering.
type decoderState struct {
	r     trapReader
	traps []int // scratch for checkMsgpack
	dec   *msgpack.Decoder
}

var decoderPool = sync.Pool{
	New: func() any {
		s := new(decoderState)
		s.dec = msgpack.NewDecoder(&s.r)
		s.dec.SetCustomStructTag("json")
		return s
	},
}

func (msgpackCodec) Marshal(v any) ([]byte, error) {
	s := encoderPool.Get().(*encoderState)
	s.buf.Reset()
	if err := s.enc.Encode(v); err != nil {
		// Not returned to the pool: its state after a failed encode is
		// not worth reasoning about, and errors are rare.
		return nil, fmt.Errorf("codec: msgpack: %w", err)
	}
	// One exact-size copy: the caller owns the result and the (usually
	// larger) buffer goes back to the pool.
	out := bytes.Clone(s.buf.Bytes())
	if s.buf.Cap() <= maxPooledSize {
		encoderPool.Put(s)
	}
	return out, nil
}

func (msgpackCodec) Unmarshal(data []byte, v any) (err error) {
	s := decoderPool.Get().(*decoderState)
	traps, err := checkMsgpack(data, s.traps[:0])
	if err != nil {
		decoderPool.Put(s)
		return fmt.Errorf("codec: msgpack: %w", err)
	}
	s.traps = traps
	defer func() {
		// The check above rules out the inputs known to upset the
		// decoder; this is the last line of defence for the ones that are
		// not known (and for panicking DecodeMsgpack methods), because a
		// corrupt cache entry must never take the process down.
		if p := recover(); p != nil {
			err = fmt.Errorf("codec: msgpack: panic while decoding: %v", p)
		}
	}()
	s.r.reset(data, traps)
	s.dec.ResetReader(&s.r) // keeps the struct tag and flags
	err = s.dec.Decode(v)
	s.r.reset(nil, nil) // do not retain the caller's buffer
	if err != nil {
		// A decoder that failed part-way may hold recording state
		// (DecodeRaw) that ResetReader does not clear; drop it.
		return fmt.Errorf("codec: msgpack: %w", err)
	}
	if len(data) <= maxPooledSize {
		decoderPool.Put(s)
	}
	return nil
}
