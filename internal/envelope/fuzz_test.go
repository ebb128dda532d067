package envelope

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/klauspost/compress/s2"
)

func FuzzDecode(f *testing.F) {
	for _, b := range validEncodings() {
		f.Add(b)
	}
	for _, b := range corruptEncodings() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if claimedSize(b) > 1<<20 {
			// Decode allocates the claimed size before it can tell
			// whether the block is genuine; at up to MaxPayload per
			// input that would slow fuzzing to a crawl. The size
			// guard itself is covered by TestCorrupt.
			t.Skip("claims a large decompressed size")
		}
		e, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if e.Absent && len(e.Payload) != 0 {
			t.Fatalf("absent entry with a %d-byte payload", len(e.Payload))
		}
		// An entry that decodes must survive re-encoding, with and
		// without compression.
		for _, compressAbove := range []int{0, 1, DefaultCompressAbove} {
			enc := Encode(nil, e, compressAbove)
			e2, err := Decode(enc)
			if err != nil {
				t.Fatalf("re-encoded entry (compressAbove %d) does not decode: %v", compressAbove, err)
			}
			if !entriesEqual(e, e2) {
				t.Fatalf("re-encoded entry (compressAbove %d) decodes to %+v, want %+v", compressAbove, summary(e2), summary(e))
			}
			// The encoding is canonical: an uncompressed entry of the
			// current version re-encodes to the very same bytes.
			if compressAbove == 0 && b[1] == version && b[2]&flagCompressed == 0 && !bytes.Equal(enc, b) {
				t.Fatalf("re-encoded as % x, was % x", enc, b)
			}
		}
	})
}

// claimedSize returns the decompressed size that b claims if it looks like a
// compressed entry, or 0.
func claimedSize(b []byte) int {
	if len(b) < headerLen || b[0] != magic || b[2]&flagCompressed == 0 {
		return 0
	}
	rest := b[headerLen:]
	fields := 3 // created-at, load duration, payload length
	if b[1] == version {
		if len(rest) < windowLen {
			return 0
		}
		rest = rest[windowLen:]
		fields = 5 // and the type tags' lengths
	}
	for i := range fields {
		v, n := binary.Uvarint(rest)
		if n <= 0 {
			return 0
		}
		rest = rest[n:]
		if b[1] == version && (i == 2 || i == 3) { // a tag's bytes
			if v > uint64(len(rest)) {
				return 0
			}
			rest = rest[v:]
		}
	}
	n, err := s2.DecodedLen(rest)
	if err != nil {
		return 0
	}
	return n
}
