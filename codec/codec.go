// Package codec turns the values returned by locksmith loaders into bytes and
// back.
//
// A [Codec] is used for every value that locksmith stores in Redis or
// publishes to other processes, so the bytes it produces may be read by a
// different process, a different build of the program, or a different
// language. Implementations must therefore be safe for concurrent use, must
// return a slice the caller owns from Marshal, and must report malformed,
// truncated or foreign input from Unmarshal as an error rather than panicking.
//
// Two codecs are provided: [MsgPack], the compact and fast default, and
// [JSON], for interoperability with tools and services written in other
// languages.
package codec

// Codec encodes values to bytes and decodes them back.
//
// Implementations must be safe for concurrent use by multiple goroutines.
type Codec interface {
	// Marshal returns the encoding of v. The returned slice belongs to the
	// caller; the codec does not retain or reuse it.
	Marshal(v any) ([]byte, error)

	// Unmarshal decodes data into the value pointed to by v. It returns an
	// error, and never panics, when data is malformed, truncated, was not
	// produced by this codec, or does not fit v. Unmarshal does not retain
	// data after it returns, so the caller may reuse the buffer.
	Unmarshal(data []byte, v any) error
}

// MsgPack is the default codec. It encodes values as MessagePack using
// github.com/vmihailenco/msgpack/v5.
//
// Struct fields are named by their `msgpack` tag, or by their `json` tag when
// they have no `msgpack` tag, or by their Go field name when they have
// neither, so types written for encoding/json work unchanged (including
// "omitempty" and "-"). A [time.Time] keeps its instant with nanosecond
// precision but not its location: compare decoded times with [time.Time.Equal].
//
// Unmarshal checks that data holds exactly one well-formed MessagePack value,
// with no trailing bytes, no length that runs past the end of the input and
// no nesting deeper than 10000 levels, before decoding it. This keeps corrupt
// or hostile input from causing huge allocations or exhausting the stack, and
// makes foreign data (for example JSON text, whose first byte is also a valid
// MessagePack integer) an error instead of a silently wrong value.
var MsgPack Codec = msgpackCodec{}

// JSON is a codec that uses encoding/json, for values that must be readable
// by other languages and tools.
//
// It follows the rules of [encoding/json.Marshal] and
// [encoding/json.Unmarshal]; in particular, numbers decoded into an
// interface value become float64, and []byte is encoded as base64 text.
var JSON Codec = jsonCodec{}
