package codec

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// maxDepth is the deepest nesting of arrays and maps that MsgPack accepts,
// the same limit encoding/json applies. The decoder recurses once per level
// and Go cannot recover from a stack overflow, so this must be enforced before
// decoding.
const maxDepth = 10000

var (
	errTruncated = errors.New("truncated input")
	errTrailing  = errors.New("trailing bytes after value")
	errTooDeep   = errors.New("nesting too deep")
)

// checkMsgpack reports whether b holds exactly one well-formed MessagePack
// value, and appends to traps the offsets at which the decoder must not start
// reading a value (see below). It does not allocate for inputs nested less
// than 32 levels deep whose extension values need no traps.
//
// Besides the structure it checks that every declared length fits in what is
// left of the input, and that the element counts declared by all open arrays
// and maps together fit too (each element takes at least one byte). The
// decoder preallocates from declared counts and lengths (without any limit
// for map[string]any), so without this a few corrupt bytes could make it
// allocate gigabytes.
//
// Extension values need more care. Where the decoder expects a map, it skips
// an extension header and decodes the extension's data as a map, carrying on
// from wherever that ends: the data is read as MessagePack although this
// check has only verified its length. That is safe when the data is itself
// exactly one well-formed value (which is what msgpack's own extension types
// produce, and which is then checked here), and when its first byte cannot
// start a map, because the decoder then fails at once. Otherwise, for example
// for a timestamp whose first byte happens to read as a 32-bit map header, the
// offset of the data is added to traps, and [trapReader] fails the decode if
// the decoder ever reads a code byte there.
func checkMsgpack(b []byte, traps []int) ([]int, error) {
	return check(b, 0, 0, traps)
}

// check implements checkMsgpack for b, which starts at offset base of the
// whole input and is nested depth levels deep in it.
func check(b []byte, base, depth int, traps []int) ([]int, error) {
	var stackArr [32]int
	// stack holds, for each enclosing array or map, the number of its
	// elements still to read once the current one is done.
	stack := stackArr[:0]
	pending := 1 // values still to read at the current level
	need := 1    // values still to read at all levels
	i := 0
	for {
		if pending == 0 {
			if len(stack) == 0 {
				break
			}
			pending = stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			continue
		}
		if i >= len(b) {
			return traps, errTruncated
		}
		c := b[i]
		i++
		pending--
		need--

		var (
			size  int // bytes of payload that follow
			elems int // array/map elements (a map entry counts as two)
			ext   bool
			err   error
		)
		switch {
		case c <= 0x7f || c >= 0xe0: // positive and negative fixint
		case c <= 0x8f: // fixmap
			elems = 2 * int(c&0x0f)
		case c <= 0x9f: // fixarray
			elems = int(c & 0x0f)
		case c <= 0xbf: // fixstr
			size = int(c & 0x1f)
		default:
			switch c {
			case 0xc0, 0xc2, 0xc3: // nil, false, true
			case 0xc4, 0xd9: // bin 8, str 8
				size, i, err = readLen(b, i, 1)
			case 0xc5, 0xda: // bin 16, str 16
				size, i, err = readLen(b, i, 2)
			case 0xc6, 0xdb: // bin 32, str 32
				size, i, err = readLen(b, i, 4)
			case 0xc7: // ext 8: length, type, data
				size, i, err = readLen(b, i, 1)
				size, ext = size+1, true
			case 0xc8: // ext 16
				size, i, err = readLen(b, i, 2)
				size, ext = size+1, true
			case 0xc9: // ext 32
				size, i, err = readLen(b, i, 4)
				size, ext = size+1, true
			case 0xcc, 0xd0: // uint 8, int 8
				size = 1
			case 0xcd, 0xd1: // uint 16, int 16
				size = 2
			case 0xca, 0xce, 0xd2: // float 32, uint 32, int 32
				size = 4
			case 0xcb, 0xcf, 0xd3: // float 64, uint 64, int 64
				size = 8
			case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1, 2, 4, 8, 16: type, data
				size, ext = 1+1<<(c-0xd4), true
			case 0xdc: // array 16
				elems, i, err = readLen(b, i, 2)
			case 0xdd: // array 32
				elems, i, err = readLen(b, i, 4)
			case 0xde: // map 16
				elems, i, err = readLen(b, i, 2)
				elems = mapElems(elems, len(b)-i)
			case 0xdf: // map 32
				elems, i, err = readLen(b, i, 4)
				elems = mapElems(elems, len(b)-i)
			default: // 0xc1 is reserved and never used
				return traps, fmt.Errorf("invalid code 0x%02x at offset %d", c, base+i-1)
			}
		}
		if err != nil {
			return traps, err
		}
		if size > len(b)-i {
			return traps, errTruncated
		}
		if ext && size > 1 && startsMap(b[i+1]) {
			// The data is b[i+1 : i+size], after the type byte.
			n := len(traps)
			t, err := check(b[i+1:i+size], base+i+1, depth+len(stack)+1, traps)
			if err != nil {
				t = append(traps[:n], base+i+1)
			}
			traps = t
		}
		i += size
		if elems > 0 {
			// Written so that nothing overflows on 32-bit platforms:
			// need and elems are both at most len(b) here.
			if elems > len(b)-i-need {
				return traps, errTruncated
			}
			need += elems
			if depth+len(stack) >= maxDepth {
				return traps, errTooDeep
			}
			stack = append(stack, pending)
			pending = elems
		}
	}
	if i != len(b) {
		return traps, errTrailing
	}
	return traps, nil
}

// startsMap reports whether the decoder accepts c as the first byte of a map:
// nil or a map header.
func startsMap(c byte) bool {
	return c == 0xc0 || c&0xf0 == 0x80 || c == 0xde || c == 0xdf
}

// readLen reads an n-byte big-endian length at b[i:] and returns it with the
// offset just past it. A length larger than the rest of the input is an error,
// which also keeps the result within int on 32-bit platforms.
func readLen(b []byte, i, n int) (int, int, error) {
	if n > len(b)-i {
		return 0, i, errTruncated
	}
	var v uint32
	switch n {
	case 1:
		v = uint32(b[i])
	case 2:
		v = uint32(binary.BigEndian.Uint16(b[i:]))
	default:
		v = binary.BigEndian.Uint32(b[i:])
	}
	i += n
	if uint64(v) > uint64(len(b)-i) {
		return 0, i, errTruncated
	}
	return int(v), i, nil
}

// mapElems returns the number of values in a map of n entries, or, when that
// cannot fit in the remaining input, a number that is bound to fail the
// caller's check without overflowing.
func mapElems(n, remaining int) int {
	if n > remaining/2 {
		return remaining + 1
	}
	return 2 * n
}
