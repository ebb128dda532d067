package envelope

// Compression: S2 (github.com/klauspost/compress/s2, block format), encoded
// with s2.EncodeBetter.
//
// Chosen by BenchmarkCompress (compress_bench_test.go) against zstd
// (github.com/klauspost/compress/zstd, EncodeAll/DecodeAll with a shared
// encoder and decoder) on deterministic timelines of user records (ids,
// handles, names, free text, URLs, counters, timestamps) encoded as JSON and as
// MessagePack. Measured on the development machine (AMD EPYC, 2 cores shared
// with other work, Go 1.26, klauspost/compress v1.20.4, -cpu=1,
// -benchtime=200ms; figures varied by about 10% between runs). Ratio is
// original size / compressed size; decode includes allocating the output, as
// Decode does.
//
//	                      ratio    encode    decode
//	json 16 KiB
//	  s2                  2.31      20 µs    7.6 µs
//	  s2 better           2.61      51 µs    7.9 µs
//	  zstd fastest        3.13      82 µs     29 µs
//	  zstd default        3.33     119 µs     31 µs
//	msgpack 16 KiB
//	  s2                  2.15      23 µs    8.3 µs
//	  s2 better           2.43      54 µs    8.4 µs
//	  zstd fastest        2.73      90 µs     34 µs
//	  zstd default        2.89     126 µs     35 µs
//	json 256 KiB
//	  s2                  2.79     511 µs    234 µs
//	  s2 better           3.07     991 µs    220 µs
//	  zstd fastest        3.76    1451 µs    382 µs
//	  zstd default        4.03    1872 µs    343 µs
//	msgpack 256 KiB
//	  s2                  2.57     572 µs    252 µs
//	  s2 better           2.78    1057 µs    237 µs
//	  zstd fastest        3.24    1588 µs    418 µs
//	  zstd default        3.49    1932 µs    398 µs
//
// Decoding runs on every cache hit in every process, so it matters most. S2
// decodes 16 KiB payloads about 4 times as fast as zstd and 256 KiB payloads
// about 1.6 times as fast. On a 10 Gbit/s LAN, sending 16 KiB takes about
// 13 µs: S2 saves about 8 µs of transfer and spends 8 µs decoding, while zstd
// saves 9 µs and spends 30; on 1 Gbit/s both save far more than they cost and
// S2 still comes out ahead. zstd's output is 16 to 24% smaller than S2's
// (better) output, which is the price of that: some Redis memory, for values
// that expire anyway.
//
// Among S2 encoders, EncodeBetter makes output 8 to 12% smaller than Encode at
// the same decoding speed. It takes 2 to 2.5 times as long to encode, but
// encoding happens once per load, next to a loader that usually takes
// milliseconds.
//
// S2 has a simple guard against decompression bombs: the decoded length is at
// the start of the block and is checked against MaxPayload before anything is
// allocated. Unlike zstd, though, S2 allocates the claimed length before
// decoding, so a forged block can cost an allocation of up to MaxPayload bytes
// before it is found corrupt (as can a genuine block, which S2 can shrink by a
// factor of a million: this is inherent in accepting compressed payloads of
// up to MaxPayload). S2 blocks carry no checksum; see the package comment.

import (
	"encoding/binary"
	"errors"
	"slices"

	"github.com/klauspost/compress/s2"
)

var errTooLarge = errors.New("compressed payload would decompress to more than MaxPayload bytes")

// appendCompressed appends to dst the uvarint length and the compressed form
// of src, if that is smaller than src, and returns the result and true.
// Otherwise it returns dst with its contents unchanged (but perhaps with more
// capacity) and false.
func appendCompressed(dst, src []byte) ([]byte, bool) {
	maxLen := s2.MaxEncodedLen(len(src))
	if maxLen < 0 {
		return dst, false
	}
	// Compress past room for the longest possible length prefix, then
	// move the block down behind the actual prefix.
	room := uvarintLen(uint64(maxLen))
	base := len(dst)
	dst = slices.Grow(dst, room+maxLen)
	block := s2.EncodeBetter(dst[base+room:base+room+maxLen], src)
	if len(block) >= len(src) {
		return dst, false
	}
	dst = binary.AppendUvarint(dst, uint64(len(block)))
	n := copy(dst[len(dst):len(dst)+len(block)], block) // may overlap: copy is memmove
	return dst[:len(dst)+n], true
}

// decompress returns the decompressed form of src, a compressed payload.
func decompress(src []byte) ([]byte, error) {
	n, err := s2.DecodedLen(src)
	if err != nil {
		return nil, err
	}
	if n > MaxPayload {
		return nil, errTooLarge
	}
	return s2.Decode(nil, src)
}

// uvarintLen returns the length of the uvarint encoding of v.
func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}
