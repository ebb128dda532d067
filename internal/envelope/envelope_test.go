package envelope

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
)

var (
	created      = time.Date(2024, 6, 1, 12, 34, 56, 789_654_321, time.FixedZone("CEST", 2*3600))
	compressible = timeline(64<<10, json.Marshal)
)

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// entriesEqual compares entries as Decode returns them.
func entriesEqual(a, b Entry) bool {
	return a.Absent == b.Absent &&
		a.CreatedAt.Equal(b.CreatedAt) && a.CreatedAt.IsZero() == b.CreatedAt.IsZero() &&
		a.LoadDuration == b.LoadDuration &&
		a.StaleWindow == b.StaleWindow && a.Type == b.Type && a.Replaced == b.Replaced &&
		bytes.Equal(a.Payload, b.Payload)
}

func mustDecode(t testing.TB, b []byte) Entry {
	t.Helper()
	e, err := Decode(b)
	if err != nil {
		t.Fatalf("Decode(%x): %v", b[:min(len(b), 64)], err)
	}
	return e
}

func TestRoundTrip(t *testing.T) {
	cases := []struct {
		name           string
		in             Entry
		compressAbove  int
		wantCompressed bool
	}{
		{"absent", Entry{Absent: true, CreatedAt: created, LoadDuration: 1500 * time.Microsecond}, DefaultCompressAbove, false},
		{"absent zero", Entry{Absent: true}, DefaultCompressAbove, false},
		{"empty payload", Entry{CreatedAt: created, LoadDuration: time.Millisecond}, DefaultCompressAbove, false},
		{"small", Entry{CreatedAt: created, LoadDuration: 42 * time.Microsecond, Payload: []byte("hello")}, DefaultCompressAbove, false},
		{"small below threshold", Entry{CreatedAt: created, Payload: compressible[:DefaultCompressAbove-1]}, DefaultCompressAbove, false},
		{"at threshold", Entry{CreatedAt: created, Payload: compressible[:DefaultCompressAbove]}, DefaultCompressAbove, true},
		{"large compressible", Entry{CreatedAt: created, LoadDuration: 3 * time.Second, Payload: compressible}, DefaultCompressAbove, true},
		{"large compressible, compression off", Entry{CreatedAt: created, Payload: compressible}, 0, false},
		{"large compressible, negative threshold", Entry{CreatedAt: created, Payload: compressible}, -1, false},
		{"large incompressible", Entry{CreatedAt: created, Payload: randomBytes(256 << 10)}, DefaultCompressAbove, false},
		{"tiny threshold, incompressible", Entry{Payload: []byte("abc")}, 1, false},
		{"zeros", Entry{CreatedAt: created, Payload: make([]byte, 1<<20)}, 1, true},
		{"zero time and duration", Entry{Payload: []byte{0}}, DefaultCompressAbove, false},
		{"long load", Entry{CreatedAt: created, LoadDuration: 100 * 24 * time.Hour, Payload: []byte("x")}, DefaultCompressAbove, false},
		{"far future", Entry{CreatedAt: time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC), Payload: []byte("x")}, DefaultCompressAbove, false},
		{"stale window and types", Entry{CreatedAt: created, StaleWindow: 90 * time.Second, Type: "main.User", Replaced: "int", Payload: []byte("x")}, DefaultCompressAbove, false},
		{"absent with type", Entry{Absent: true, StaleWindow: time.Hour, Type: "main.User"}, DefaultCompressAbove, false},
		{"compressed with type", Entry{CreatedAt: created, StaleWindow: time.Millisecond, Type: "[]string", Payload: compressible}, DefaultCompressAbove, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			prefix := []byte("prefix")
			enc := Encode(bytes.Clone(prefix), tc.in, tc.compressAbove)
			if !bytes.HasPrefix(enc, prefix) {
				t.Fatalf("Encode did not append to dst")
			}
			enc = enc[len(prefix):]
			if got := enc[2]&flagCompressed != 0; got != tc.wantCompressed {
				t.Errorf("compressed = %v, want %v", got, tc.wantCompressed)
			}
			if tc.wantCompressed && len(enc) >= len(tc.in.Payload) {
				t.Errorf("compressed entry is %d bytes for a %d-byte payload", len(enc), len(tc.in.Payload))
			}
			if !tc.wantCompressed && !tc.in.Absent && len(enc) > len(tc.in.Payload)+len(tc.in.Type)+len(tc.in.Replaced)+minLen+windowLen+4*binary.MaxVarintLen64 {
				t.Errorf("uncompressed entry is %d bytes for a %d-byte payload", len(enc), len(tc.in.Payload))
			}

			got := mustDecode(t, enc)
			want := tc.in
			if want.Absent {
				want.Payload = nil
			}
			if !want.CreatedAt.IsZero() {
				want.CreatedAt = want.CreatedAt.Truncate(time.Millisecond)
			}
			want.LoadDuration = want.LoadDuration.Truncate(time.Microsecond)
			want.StaleWindow = want.StaleWindow.Truncate(time.Millisecond)
			if got := Window(enc); got != want.StaleWindow {
				t.Errorf("Window = %v, want %v", got, want.StaleWindow)
			}
			if !entriesEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", summary(got), summary(want))
			}
			if got.CreatedAt.Location() != time.UTC {
				t.Errorf("CreatedAt location %v, want UTC", got.CreatedAt.Location())
			}
			if len(got.Payload) == 0 && got.Payload != nil {
				t.Errorf("empty payload is non-nil")
			}
		})
	}
}

type entrySummary struct {
	Absent         bool
	CreatedAt      time.Time
	LoadDuration   time.Duration
	StaleWindow    time.Duration
	Type, Replaced string
	PayloadLen     int
}

func summary(e Entry) entrySummary {
	return entrySummary{e.Absent, e.CreatedAt, e.LoadDuration, e.StaleWindow, e.Type, e.Replaced, len(e.Payload)}
}

func TestEncodeNormalizes(t *testing.T) {
	cases := []struct {
		name string
		in   Entry
		want Entry
	}{
		{"absent drops payload", Entry{Absent: true, Payload: []byte("ignored")}, Entry{Absent: true}},
		{"pre-epoch time", Entry{CreatedAt: time.Date(1969, 7, 20, 20, 17, 0, 0, time.UTC)}, Entry{}},
		{"epoch", Entry{CreatedAt: time.Unix(0, 0)}, Entry{}},
		{"negative duration", Entry{LoadDuration: -time.Second}, Entry{}},
		{"sub-microsecond duration", Entry{LoadDuration: 999 * time.Nanosecond}, Entry{}},
		{"sub-millisecond time", Entry{CreatedAt: time.UnixMilli(1234).Add(999 * time.Microsecond)}, Entry{CreatedAt: time.UnixMilli(1234)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := mustDecode(t, Encode(nil, tc.in, DefaultCompressAbove))
			if !entriesEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", summary(got), summary(tc.want))
			}
		})
	}
}

// TestPayloadAliases checks that an uncompressed payload aliases the input
// without letting an append to it overwrite anything.
func TestPayloadAliases(t *testing.T) {
	enc := Encode(make([]byte, 0, 256), Entry{Payload: []byte("payload")}, DefaultCompressAbove)
	e := mustDecode(t, enc)
	if &e.Payload[0] != &enc[len(enc)-len("payload")] {
		t.Error("uncompressed payload does not alias the input")
	}
	if cap(e.Payload) != len(e.Payload) {
		t.Errorf("payload cap %d, len %d", cap(e.Payload), len(e.Payload))
	}
}

func TestWireFormat(t *testing.T) {
	e := Entry{CreatedAt: time.UnixMilli(300), LoadDuration: 2 * time.Microsecond, StaleWindow: 258 * time.Millisecond,
		Type: "T", Payload: []byte("hi")}
	got := Encode(nil, e, DefaultCompressAbove)
	want := []byte{0xC1, 2, 0, 0, 0, 1, 2, 0xac, 0x02, 2, 1, 'T', 0, 2, 'h', 'i'}
	if !bytes.Equal(got, want) {
		t.Errorf("Encode = % x, want % x", got, want)
	}
	got = Encode(nil, Entry{Absent: true}, DefaultCompressAbove)
	want = []byte{0xC1, 2, flagAbsent, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	if !bytes.Equal(got, want) {
		t.Errorf("Encode(absent) = % x, want % x", got, want)
	}
}

// TestLegacyVersion checks that entries of format version 1, written by
// earlier releases, still decode.
func TestLegacyVersion(t *testing.T) {
	for name, tc := range map[string]struct {
		b    []byte
		want Entry
	}{
		"value":  {[]byte{0xC1, 1, 0, 0xac, 0x02, 2, 2, 'h', 'i'}, Entry{CreatedAt: time.UnixMilli(300).UTC(), LoadDuration: 2 * time.Microsecond, Payload: []byte("hi")}},
		"absent": {[]byte{0xC1, 1, flagAbsent, 0, 0, 0}, Entry{Absent: true}},
	} {
		got := mustDecode(t, tc.b)
		if !entriesEqual(got, tc.want) {
			t.Errorf("%s: got %+v, want %+v", name, summary(got), summary(tc.want))
		}
		if w := Window(tc.b); w != 0 {
			t.Errorf("%s: Window = %v, want 0", name, w)
		}
	}
}

// validEncodings returns encodings of every shape Encode produces.
func validEncodings() map[string][]byte {
	return map[string][]byte{
		"absent":         Encode(nil, Entry{Absent: true, CreatedAt: created, LoadDuration: time.Second}, DefaultCompressAbove),
		"empty":          Encode(nil, Entry{CreatedAt: created}, DefaultCompressAbove),
		"small":          Encode(nil, Entry{CreatedAt: created, LoadDuration: time.Millisecond, Payload: []byte("small payload")}, DefaultCompressAbove),
		"compressed":     Encode(nil, Entry{CreatedAt: created, LoadDuration: time.Millisecond, Payload: compressible[:8<<10]}, DefaultCompressAbove),
		"incompressible": Encode(nil, Entry{CreatedAt: created, Payload: randomBytes(5000)}, DefaultCompressAbove),
	}
}

func TestEveryTruncationIsCorrupt(t *testing.T) {
	for name, enc := range validEncodings() {
		mustDecode(t, enc)
		for n := range len(enc) {
			if e, err := Decode(enc[:n]); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("%s: Decode of %d of %d bytes = %+v, %v; want ErrCorrupt", name, n, len(enc), summary(e), err)
			}
		}
	}
}

// corruptEncodings returns invalid entries of every shape Decode must reject.
func corruptEncodings() map[string][]byte {
	valid := validEncodings()
	small := valid["small"]
	with := func(b []byte, i int, v byte) []byte {
		b = bytes.Clone(b)
		b[i] = v
		return b
	}
	// entry builds an entry from raw parts, with a correct payload length.
	entry := func(flags byte, createdAt, loadDuration []byte, payload []byte) []byte {
		b := []byte{magic, version, flags, 0, 0, 0, 0}
		b = append(b, createdAt...)
		b = append(b, loadDuration...)
		b = append(b, 0, 0) // empty type tags
		b = binary.AppendUvarint(b, uint64(len(payload)))
		return append(b, payload...)
	}
	// tagged builds a value entry with raw type tag bytes.
	tagged := func(tags ...byte) []byte {
		b := []byte{magic, version, 0, 0, 0, 0, 0, 1, 1}
		b = append(b, tags...)
		return append(b, 1, 'x')
	}
	uv := func(v uint64) []byte { return binary.AppendUvarint(nil, v) }

	// A block that claims to decode to MaxPayload+1 bytes but holds one
	// literal byte.
	bomb := binary.AppendUvarint(nil, MaxPayload+1)
	bomb = append(bomb, 0x00, 'x') // literal, length 1
	// A block that claims a size within MaxPayload but cannot produce it.
	liar := binary.AppendUvarint(nil, 1<<20)
	liar = append(liar, 0x00, 'x')
	return map[string][]byte{
		"empty":                        {},
		"bad magic":                    with(small, 0, 0xE5),
		"json":                         []byte(`{"id":1,"name":"x"}`),
		"msgpack":                      {0x82, 0xa1, 'a', 0x01, 0xa1, 'b', 0x02},
		"bad magic, short":             {'x'},
		"version 0":                    with(small, 1, 0),
		"version 3":                    with(small, 1, 3),
		"version 2 header cut":         {magic, version, 0, 0, 0, 0},
		"type tag too long":            tagged(append(binary.AppendUvarint(nil, MaxTypeTag+1), bytes.Repeat([]byte{'a'}, MaxTypeTag+1)...)...),
		"type tag cut":                 tagged(5, 'a'),
		"replaced tag missing":         tagged(1, 'a'),
		"non-minimal tag length":       tagged(0x80, 0x00, 0),
		"unknown flag bit 2":           with(small, 2, 1<<2),
		"unknown flag bit 7":           with(small, 2, 1<<7),
		"absent and compressed":        with(valid["absent"], 2, flagAbsent|flagCompressed),
		"absent with payload":          entry(flagAbsent, uv(1), uv(1), []byte("x")),
		"trailing byte":                append(bytes.Clone(small), 0),
		"payload shorter than length":  entry(0, uv(1), uv(1), []byte("abc"))[:len(entry(0, uv(1), uv(1), []byte("abc")))-1],
		"non-minimal created-at":       entry(0, []byte{0x81, 0x00}, uv(1), []byte("x")),
		"non-minimal duration":         entry(0, uv(1), []byte{0x80, 0x80, 0x00}, []byte("x")),
		"created-at beyond int64":      entry(0, uv(math.MaxInt64+1), uv(1), []byte("x")),
		"created-at varint overflow":   entry(0, bytes.Repeat([]byte{0xff}, 11), uv(1), []byte("x")),
		"duration beyond Duration":     entry(0, uv(1), uv(math.MaxInt64/1000+1), []byte("x")),
		"compressed garbage":           entry(flagCompressed, uv(1), uv(1), []byte("\xff\xff\xff\xff\xff\xff not s2")),
		"compressed empty":             entry(flagCompressed, uv(1), uv(1), nil),
		"compressed, truncated block":  entry(flagCompressed, uv(1), uv(1), s2.Encode(nil, compressible[:8<<10])[:100]),
		"decompression bomb":           entry(flagCompressed, uv(1), uv(1), bomb),
		"decompressed size is a lie":   entry(flagCompressed, uv(1), uv(1), liar),
		"compressed with flipped byte": flipLast(valid["compressed"]),
	}
}

func flipLast(b []byte) []byte {
	b = bytes.Clone(b)
	b[len(b)-1] ^= 0xff
	return b
}

func TestCorrupt(t *testing.T) {
	for name, b := range corruptEncodings() {
		t.Run(name, func(t *testing.T) {
			e, err := Decode(b)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Decode(% x) = %+v, %v; want ErrCorrupt", b[:min(len(b), 32)], summary(e), err)
			}
			if e.Payload != nil || e.Absent || !e.CreatedAt.IsZero() {
				t.Errorf("error with non-zero entry %+v", summary(e))
			}
		})
	}
}

func TestCorruptMessage(t *testing.T) {
	_, err := Decode([]byte{0xC1, 9, 0, 0, 0, 0})
	if want := "locksmith: corrupt or foreign entry: unknown format version"; err == nil || err.Error() != want {
		t.Errorf("got %v, want %q", err, want)
	}
	_, err = Decode(corruptEncodings()["decompression bomb"])
	if err == nil || !errors.Is(err, ErrCorrupt) || !errors.Is(err, errTooLarge) {
		t.Errorf("bomb: got %v", err)
	}
}

// TestBombAllocatesLittle checks that the size guard runs before the output
// buffer is allocated.
func TestBombAllocatesLittle(t *testing.T) {
	b := corruptEncodings()["decompression bomb"]
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 10 {
		_, _ = Decode(b)
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Errorf("10 decodes allocated %d bytes", n)
	}
}

func TestDecodeAllocations(t *testing.T) {
	// Without type tags: a tag is a string, one allocation each.
	b := Encode(nil, Entry{CreatedAt: created, LoadDuration: time.Millisecond, StaleWindow: time.Second, Payload: randomBytes(1024)}, DefaultCompressAbove)
	if allocs := testing.AllocsPerRun(100, func() { _, _ = Decode(b) }); allocs != 0 {
		t.Errorf("Decode of an uncompressed entry: %v allocations, want 0", allocs)
	}
}

func BenchmarkDecode(b *testing.B) {
	enc := Encode(nil, Entry{CreatedAt: created, LoadDuration: time.Millisecond, Payload: randomBytes(1024)}, DefaultCompressAbove)
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(enc); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	e := Entry{CreatedAt: created, LoadDuration: time.Millisecond, Payload: randomBytes(1024)}
	dst := make([]byte, 0, 2048)
	b.SetBytes(int64(len(e.Payload)))
	b.ReportAllocs()
	for b.Loop() {
		dst = Encode(dst[:0], e, DefaultCompressAbove)
	}
}
