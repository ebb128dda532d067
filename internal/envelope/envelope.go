// Package envelope defines how locksmith stores one cached value: the bytes a
// codec produced, wrapped with a little metadata, versioned, and optionally
// compressed. The same bytes are stored in Redis and published over pub/sub.
//
// # Wire format
//
// An encoded entry (format version 2, the one [Encode] writes) is, in order:
//
//	byte 0      magic, 0xC1
//	byte 1      format version, 2
//	byte 2      flags: bit 0 absent, bit 1 compressed; all other bits zero
//	bytes 3-6   stale window, milliseconds, uint32 big-endian
//	uvarint     created-at, Unix milliseconds (0 for the zero time)
//	uvarint     load duration, microseconds
//	uvarint     type tag length, then that many bytes
//	uvarint     replaced type tag length, then that many bytes
//	uvarint     payload length in bytes, as stored
//	payload     exactly that many bytes, ending the entry
//
// The stale window is how long the entry is kept past its fresh life: its
// Redis key lives fresh life + window, so the entry is stale once the key's
// remaining time is at most the window. It has a fixed width and place so
// that a Lua script can read it without parsing varints.
//
// The type tag names the Go type the value was written as; the replaced type
// tag, the type of an entry this one overwrote because it could not be read
// as this entry's type (see package fill). Both are at most [MaxTypeTag]
// bytes and may be empty (unknown: such an entry is not checked against
// the reader's type).
//
// Version 1, written by earlier releases, has no stale window and no type
// tags: after the flags come created-at, load duration, payload length and
// payload. Decode reads both versions.
//
// Uvarints are the encoding of [encoding/binary.AppendUvarint], and must be
// minimal (no redundant trailing zero groups).
//
// The magic byte 0xC1 can neither begin valid UTF-8 (so no JSON, no text and
// no number written by another client) nor any MessagePack value (0xC1 is the
// one code MessagePack reserves as "never used"), nor a gzip, zstd or snappy
// stream, so foreign bytes under a locksmith key are recognised at once.
//
// An absent entry is a negative-cache entry: the loader reported that the
// value does not exist. Its payload is empty and it is never compressed.
//
// A compressed payload is an S2 block (github.com/klauspost/compress/s2,
// block format, not the stream format) holding the codec's bytes; see
// compress.go for why S2 was chosen.
//
// Decode treats as corrupt, wrapping [ErrCorrupt]: any other magic byte; any
// version but 1 and 2 (a newer writer may have changed the layout); a type
// tag longer than [MaxTypeTag]; any unknown flag
// bit (a newer writer may mean something this reader would get wrong); an
// absent entry that is also compressed or has a payload; a created-at beyond
// the int64 range, or a load duration beyond what [time.Duration] holds; a
// varint that is not minimal; truncation anywhere, including inside the
// payload, and bytes after the payload (the explicit payload length is what
// makes both detectable); and a compressed payload that does not decompress
// or would decompress to more than [MaxPayload] bytes.
//
// There is no checksum: Redis and TCP already protect the bytes in transit and
// at rest, and the codecs reject malformed payloads.
package envelope

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
)

// ErrCorrupt is wrapped by every error [Decode] returns: the bytes are not a
// valid entry of a format version this package understands.
var ErrCorrupt = errors.New("locksmith: corrupt or foreign entry")

// MaxPayload is the largest payload, in bytes, that [Decode] will decompress.
// A compressed payload claiming to be larger is corrupt; this guards against
// decompression bombs. It matches the largest string Redis stores.
const MaxPayload = 512 << 20

// DefaultCompressAbove is the default compression threshold for [Encode]:
// payloads of at least 4 KiB are compressed when that makes them smaller.
// Below that, the saving is a few hundred bytes at best, which does not pay
// for the work on every read.
const DefaultCompressAbove = 4096

// MaxTypeTag is the longest type tag stored; longer ones are cut.
const MaxTypeTag = 256

// MaxStaleWindow is the longest stale window stored; longer ones are cut.
const MaxStaleWindow = math.MaxUint32 * time.Millisecond

const (
	magic   = 0xC1
	version = 2
	// versionLegacy has no stale window and no type tags.
	versionLegacy = 1

	flagAbsent     = 1 << 0
	flagCompressed = 1 << 1
	knownFlags     = flagAbsent | flagCompressed

	headerLen = 3
	windowLen = 4
	// minLen is the shortest possible entry of either version: a version
	// 1 header and three one-byte uvarints.
	minLen = headerLen + 3
)

// Entry is one stored value.
type Entry struct {
	// Absent marks a negative-cache entry: the loader said "not found".
	// Payload is empty.
	Absent bool

	// CreatedAt is when the value was loaded. It is stored with
	// millisecond precision; a time before the Unix epoch, including the
	// zero Time, is stored as 0 and decodes as the zero Time. Decoded
	// times are in UTC.
	CreatedAt time.Time

	// LoadDuration is how long the value took to get: the loader, and
	// fill's waits for it (a budget's slot, after a 429). It is stored
	// with microsecond precision; negative durations are stored as 0.
	LoadDuration time.Duration

	// StaleWindow is how long the entry is kept past its fresh life. It
	// is stored with millisecond precision, at most [MaxStaleWindow].
	StaleWindow time.Duration

	// Type names the Go type the value was written as; empty when
	// unknown. Replaced names the type of an entry this one overwrote
	// because it could not be read as Type. Each is at most [MaxTypeTag]
	// bytes.
	Type, Replaced string

	// Payload is the codec's bytes, uncompressed. Decode leaves it nil
	// when it is empty.
	Payload []byte
}

// Window returns the stale window of an encoded entry, read from its fixed
// place, without decoding the rest; 0 for a version 1 entry or bytes that
// are not an entry. It takes the entry as bytes or as the string Redis
// returned, without copying either.
func Window[B ~string | ~[]byte](b B) time.Duration {
	if len(b) < headerLen+windowLen || b[0] != magic || b[1] != version {
		return 0
	}
	ms := uint32(b[3])<<24 | uint32(b[4])<<16 | uint32(b[5])<<8 | uint32(b[6])
	return time.Duration(ms) * time.Millisecond
}

// Encode appends the encoded entry to dst and returns it. Payloads of at least
// compressAbove bytes are compressed (compressAbove <= 0 disables compression)
// when that actually makes them smaller; the compressed flag records it.
//
// The payload of an absent entry is not written. Payloads larger than
// [MaxPayload] are never compressed.
func Encode(dst []byte, e Entry, compressAbove int) []byte {
	var flags byte
	payload := e.Payload
	if e.Absent {
		flags |= flagAbsent
		payload = nil
	}

	var createdAt uint64
	if !e.CreatedAt.IsZero() {
		if ms := e.CreatedAt.UnixMilli(); ms > 0 {
			createdAt = uint64(ms)
		}
	}
	var loadDuration uint64
	if e.LoadDuration > 0 {
		loadDuration = uint64(e.LoadDuration / time.Microsecond)
	}

	var window uint32
	if e.StaleWindow > 0 {
		window = uint32(min(e.StaleWindow, MaxStaleWindow) / time.Millisecond)
	}

	start := len(dst)
	dst = append(dst, magic, version, flags)
	dst = binary.BigEndian.AppendUint32(dst, window)
	dst = binary.AppendUvarint(dst, createdAt)
	dst = binary.AppendUvarint(dst, loadDuration)
	dst = appendTag(dst, e.Type)
	dst = appendTag(dst, e.Replaced)

	if compressAbove > 0 && len(payload) >= compressAbove && len(payload) <= MaxPayload {
		out, ok := appendCompressed(dst, payload)
		if ok {
			out[start+2] |= flagCompressed
			return out
		}
		dst = out // same bytes, maybe more capacity
	}
	dst = binary.AppendUvarint(dst, uint64(len(payload)))
	return append(dst, payload...)
}

// Decode parses b. Payload may alias b when not compressed. Errors wrap
// [ErrCorrupt].
func Decode(b []byte) (Entry, error) {
	if len(b) < minLen {
		if len(b) > 0 && b[0] != magic {
			return Entry{}, corrupt("bad magic byte")
		}
		return Entry{}, corrupt("truncated header")
	}
	if b[0] != magic {
		return Entry{}, corrupt("bad magic byte")
	}
	v := b[1]
	if v != version && v != versionLegacy {
		return Entry{}, corrupt("unknown format version")
	}
	flags := b[2]
	if flags&^knownFlags != 0 {
		return Entry{}, corrupt("unknown flags")
	}
	absent := flags&flagAbsent != 0
	compressed := flags&flagCompressed != 0
	if absent && compressed {
		return Entry{}, corrupt("absent entry marked compressed")
	}

	rest := b[headerLen:]
	var window uint32
	if v == version {
		if len(rest) < windowLen {
			return Entry{}, corrupt("truncated header")
		}
		window = binary.BigEndian.Uint32(rest)
		rest = rest[windowLen:]
	}
	createdAt, rest, ok := uvarint(rest)
	if !ok || createdAt > math.MaxInt64 {
		return Entry{}, corrupt("bad created-at")
	}
	loadDuration, rest, ok := uvarint(rest)
	if !ok || loadDuration > math.MaxInt64/uint64(time.Microsecond) {
		return Entry{}, corrupt("bad load duration")
	}
	var typ, replaced string
	if v == version {
		if typ, rest, ok = tag(rest); !ok {
			return Entry{}, corrupt("bad type tag")
		}
		if replaced, rest, ok = tag(rest); !ok {
			return Entry{}, corrupt("bad replaced type tag")
		}
	}
	size, rest, ok := uvarint(rest)
	if !ok {
		return Entry{}, corrupt("bad payload length")
	}
	if size != uint64(len(rest)) {
		if size > uint64(len(rest)) {
			return Entry{}, corrupt("truncated payload")
		}
		return Entry{}, corrupt("trailing bytes after payload")
	}

	e := Entry{
		Absent:       absent,
		LoadDuration: time.Duration(loadDuration) * time.Microsecond,
		StaleWindow:  time.Duration(window) * time.Millisecond,
		Type:         typ,
		Replaced:     replaced,
	}
	if createdAt != 0 {
		e.CreatedAt = time.UnixMilli(int64(createdAt)).UTC()
	}
	switch {
	case len(rest) == 0:
		if compressed {
			return Entry{}, corrupt("empty compressed payload")
		}
	case absent:
		return Entry{}, corrupt("absent entry with a payload")
	case compressed:
		p, err := decompress(rest)
		if err != nil {
			return Entry{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		if len(p) > 0 {
			e.Payload = p
		}
	default:
		e.Payload = rest[:len(rest):len(rest)]
	}
	return e, nil
}

// appendTag appends a type tag, cut to MaxTypeTag bytes.
func appendTag(dst []byte, t string) []byte {
	if len(t) > MaxTypeTag {
		t = t[:MaxTypeTag]
	}
	dst = binary.AppendUvarint(dst, uint64(len(t)))
	return append(dst, t...)
}

// tag reads a type tag from the start of b.
func tag(b []byte) (string, []byte, bool) {
	n, rest, ok := uvarint(b)
	if !ok || n > MaxTypeTag || n > uint64(len(rest)) {
		return "", nil, false
	}
	return string(rest[:n]), rest[n:], true
}

// uvarint reads a minimally encoded uvarint from the start of b and returns
// it with the rest of b.
func uvarint(b []byte) (uint64, []byte, bool) {
	v, n := binary.Uvarint(b)
	if n <= 0 || (n > 1 && b[n-1] == 0) {
		return 0, nil, false
	}
	return v, b[n:], true
}

func corrupt(detail string) error {
	return &corruptError{detail}
}

// corruptError is ErrCorrupt with a detail, without the cost of fmt on paths
// that may see a lot of junk.
type corruptError struct{ detail string }

func (e *corruptError) Error() string { return ErrCorrupt.Error() + ": " + e.detail }
func (e *corruptError) Unwrap() error { return ErrCorrupt }
