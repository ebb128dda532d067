package codec_test

import (
	"bytes"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/codec"
)

// profile has json tags, as most application types do.
type profile struct {
	ID        int64             `json:"id"`
	Handle    string            `json:"handle"`
	Bio       string            `json:"bio,omitempty"`
	Tags      []string          `json:"tags"`
	Links     map[string]string `json:"links"`
	Avatar    *image            `json:"avatar"`
	Secret    string            `json:"-"`
	CreatedAt time.Time         `json:"created_at"`
}

type image struct {
	URL    string `json:"url"`
	Width  int    `json:"w"`
	Height int    `json:"h"`
}

// plain has no tags at all.
type plain struct {
	Name    string
	Count   uint32
	Ratio   float64
	Enabled bool
	Data    []byte
	Next    *plain
	Seen    time.Time
	Nums    []int
}

func ptr[T any](v T) *T { return &v }

var (
	utcTime   = time.Date(2024, 3, 9, 17, 4, 5, 123456789, time.UTC)
	zonedTime = time.Date(2023, 11, 5, 1, 30, 0, 42, time.FixedZone("UTC-7", -7*3600))
)

func sampleProfile() profile {
	return profile{
		ID:        9007199254740993,
		Handle:    "ada",
		Bio:       "analyst & programmer <first>",
		Tags:      []string{"math", "engines"},
		Links:     map[string]string{"home": "https://example.org/ada"},
		Avatar:    &image{URL: "https://example.org/a.png", Width: 64, Height: 64},
		CreatedAt: zonedTime,
	}
}

func equalProfile(a, b profile) bool {
	if !a.CreatedAt.Equal(b.CreatedAt) {
		return false
	}
	a.CreatedAt, b.CreatedAt = time.Time{}, time.Time{}
	return reflect.DeepEqual(a, b)
}

func equalPlain(a, b *plain) bool {
	for a != nil && b != nil {
		if !a.Seen.Equal(b.Seen) {
			return false
		}
		x, y := *a, *b
		x.Seen, y.Seen, x.Next, y.Next = time.Time{}, time.Time{}, nil, nil
		if !reflect.DeepEqual(x, y) {
			return false
		}
		a, b = a.Next, b.Next
	}
	return a == nil && b == nil
}

// roundTrip marshals in with c and unmarshals the result into a new T.
func roundTrip[T any](t *testing.T, c codec.Codec, in T) T {
	t.Helper()
	data, err := c.Marshal(in)
	if err != nil {
		t.Fatalf("Marshal(%#v): %v", in, err)
	}
	var out T
	if err := c.Unmarshal(data, &out); err != nil {
		t.Fatalf("Unmarshal(%x) into %T: %v", data, &out, err)
	}
	return out
}

type roundTripCase struct {
	name  string
	check func(t *testing.T, c codec.Codec)
}

// same builds a case whose value must come back reflect.DeepEqual.
func same[T any](name string, in T) roundTripCase {
	return equal(name, in, func(a, b T) bool { return reflect.DeepEqual(a, b) })
}

// equal builds a case whose value must come back equal according to eq.
func equal[T any](name string, in T, eq func(a, b T) bool) roundTripCase {
	return roundTripCase{name, func(t *testing.T, c codec.Codec) {
		if out := roundTrip(t, c, in); !eq(in, out) {
			t.Errorf("round trip of %T:\n got %#v\nwant %#v", in, out, in)
		}
	}}
}

var roundTripCases = []roundTripCase{
	same("int", 42),
	same("negative int", -1_000_000),
	same("int64 max", int64(math.MaxInt64)),
	same("int64 min", int64(math.MinInt64)),
	same("uint64 max", uint64(math.MaxUint64)),
	same("int8", int8(-128)),
	same("float64", 3.14159),
	same("bool", true),
	same("string", "hello, world"),
	same("unicode string", "héllo, 世界 🌍"),
	same("long string", strings.Repeat("abc", 30000)),
	same("bytes", []byte{0, 1, 2, 0xc1, 0xff}),
	same("large bytes", bytes.Repeat([]byte{0xde, 0xad}, 70000)),
	same("int slice", []int{1, -2, 300, 70000, -5_000_000_000}),
	same("string slice", []string{"a", "", "ccc"}),
	same("empty slice", []int{}),
	same("string map", map[string]int{"a": 1, "b": -2, "": 0}),
	same("int map", map[int]string{1: "one", -7: "minus seven"}),
	same("nested map", map[string][]string{"x": {"1", "2"}, "y": nil}),
	same("map of any", map[string]any{"s": "str", "b": true, "n": nil, "f": 1.5}),
	equal("tagged struct", sampleProfile(), equalProfile),
	equal("tagged struct slice", []profile{sampleProfile(), {ID: 2, Handle: "bob"}}, func(a, b []profile) bool {
		if len(a) != len(b) {
			return false
		}
		for i := range a {
			if !equalProfile(a[i], b[i]) {
				return false
			}
		}
		return true
	}),
	equal("untagged struct", &plain{
		Name: "root", Count: 7, Ratio: 0.25, Enabled: true, Data: []byte("raw"),
		Seen: utcTime, Nums: []int{3, 2, 1},
		Next: &plain{Name: "leaf", Seen: zonedTime},
	}, equalPlain),
	same("pointer to int", ptr(17)),
	same("pointer to string", ptr("pointed")),
	same("nil pointer", (*image)(nil)),
	same("pointer to struct", &image{URL: "u", Width: 1, Height: 2}),
	equal("time UTC", utcTime, time.Time.Equal),
	equal("time with zone", zonedTime, time.Time.Equal),
	equal("time local", time.Date(2001, 2, 3, 4, 5, 6, 7, time.Local), time.Time.Equal),
	equal("time before 1970", time.Date(1969, 7, 20, 20, 17, 40, 0, time.UTC), time.Time.Equal),
	equal("time far future", time.Date(2500, 1, 1, 0, 0, 0, 1, time.UTC), time.Time.Equal),
	equal("zero time", time.Time{}, func(a, b time.Time) bool { return b.IsZero() && a.Equal(b) }),
	same("zero int", 0),
	same("zero string", ""),
	same("nil slice", []string(nil)),
	same("nil map", map[string]int(nil)),
	equal("zero tagged struct", profile{}, equalProfile),
	equal("zero untagged struct", &plain{}, equalPlain),
}

func TestRoundTrip(t *testing.T) {
	codecs := []struct {
		name string
		c    codec.Codec
	}{{"msgpack", codec.MsgPack}, {"json", codec.JSON}}
	for _, cc := range codecs {
		t.Run(cc.name, func(t *testing.T) {
			for _, tc := range roundTripCases {
				t.Run(tc.name, func(t *testing.T) { tc.check(t, cc.c) })
			}
		})
	}
}

// TestMsgPackFieldNames checks which names MsgPack gives struct fields: the
// msgpack tag, else the json tag, else the Go name; "-" and omitempty are
// honoured whichever tag they come from.
func TestMsgPackFieldNames(t *testing.T) {
	type named struct {
		Both    int    `msgpack:"mp" json:"js"`
		JSON    int    `json:"json_name"`
		Omitted string `json:"omitted,omitempty"`
		Ignored int    `json:"-"`
		Go      int
	}
	data, err := codec.MsgPack.Marshal(named{Both: 1, JSON: 2, Ignored: 3, Go: 4})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := codec.MsgPack.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	want := map[string]bool{"mp": true, "json_name": true, "Go": true}
	if len(m) != len(want) {
		t.Fatalf("keys %q, want %v", keys, want)
	}
	for k := range want {
		if _, ok := m[k]; !ok {
			t.Fatalf("keys %q, want %v", keys, want)
		}
	}
}

// TestMsgPackIntoExisting checks that decoding into a reused value replaces
// what was there.
func TestMsgPackIntoExisting(t *testing.T) {
	data, err := codec.MsgPack.Marshal(sampleProfile())
	if err != nil {
		t.Fatal(err)
	}
	got := profile{ID: 1, Handle: "stale handle", Tags: []string{"x", "y", "z"}}
	if err := codec.MsgPack.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if !equalProfile(got, sampleProfile()) {
		t.Fatalf("got %#v", got)
	}
}

// TestMsgPackMarshalOwned checks that results do not share memory.
func TestMsgPackMarshalOwned(t *testing.T) {
	a, err := codec.MsgPack.Marshal("first value")
	if err != nil {
		t.Fatal(err)
	}
	keep := bytes.Clone(a)
	if _, err := codec.MsgPack.Marshal("second value, which is longer"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, keep) {
		t.Fatalf("first result changed to %x", a)
	}
}

// TestMsgPackUnmarshalDoesNotRetain checks that decoded values do not alias
// the input, which the caller may reuse.
func TestMsgPackUnmarshalDoesNotRetain(t *testing.T) {
	in := plain{Name: "name", Data: []byte("data"), Nums: []int{1}}
	data, err := codec.MsgPack.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out plain
	if err := codec.MsgPack.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	clear(data)
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("after clearing input: got %#v, want %#v", out, in)
	}
}

func TestMarshalError(t *testing.T) {
	for _, c := range []codec.Codec{codec.MsgPack, codec.JSON} {
		if b, err := c.Marshal(make(chan int)); err == nil {
			t.Errorf("%T: Marshal(chan) = %x, want error", c, b)
		}
	}
}

func TestUnmarshalWrongType(t *testing.T) {
	mustMarshal := func(c codec.Codec, v any) []byte {
		b, err := c.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, c := range []struct {
		name string
		c    codec.Codec
	}{{"msgpack", codec.MsgPack}, {"json", codec.JSON}} {
		cases := []struct {
			name string
			data []byte
			into any
		}{
			{"string into int", mustMarshal(c.c, "hello"), new(int)},
			{"struct into slice", mustMarshal(c.c, sampleProfile()), new([]int)},
			{"slice into string", mustMarshal(c.c, []int{1, 2}), new(string)},
			{"map into bool", mustMarshal(c.c, map[string]int{"a": 1}), new(bool)},
			{"string into struct", mustMarshal(c.c, "x"), new(profile)},
			{"int into time", mustMarshal(c.c, 12), new(time.Time)},
			{"wrong field type", mustMarshal(c.c, map[string]any{"id": "not a number"}), new(profile)},
			{"non-pointer", mustMarshal(c.c, 1), 0},
			{"nil", mustMarshal(c.c, 1), nil},
		}
		for _, tc := range cases {
			t.Run(c.name+"/"+tc.name, func(t *testing.T) {
				if err := c.c.Unmarshal(tc.data, tc.into); err == nil {
					t.Errorf("Unmarshal(%x, %T) succeeded, want error", tc.data, tc.into)
				}
			})
		}
	}
}

// garbage returns inputs that no codec may accept.
func garbage(t testing.TB) map[string][]byte {
	valid, err := codec.MsgPack.Marshal(sampleProfile())
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{
		"nil":              nil,
		"empty":            {},
		"reserved code":    {0xc1},
		"truncated struct": valid[:len(valid)/2],
		"truncated str8":   {0xd9, 0x10, 'a'},
		"truncated int64":  {0xd3, 0, 0},
		"trailing bytes":   append(bytes.Clone(valid), 0x01),
		"huge bin32":       {0xc6, 0xff, 0xff, 0xff, 0xff, 0},
		"huge str32":       {0xdb, 0x7f, 0xff, 0xff, 0xff, 'x'},
		"huge array32":     {0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0},
		"huge map32":       {0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0},
		"huge ext32":       {0xc9, 0xff, 0xff, 0xff, 0xff, 0xff},
		"deep nesting":     bytes.Repeat([]byte{0x91}, 100000),
		"bad time ext":     {0xd4, 0xff, 0x00},
		"random":           []byte("\x8f\x13\xa7\xfe\x00\xc7\x99\x01\xd8"),
		"terminal escape":  []byte("\x1b[0m\x07"),
	}
}

func TestUnmarshalGarbage(t *testing.T) {
	for name, data := range garbage(t) {
		for _, into := range []any{new(profile), new(map[string]any), new(any), new([]byte), new(time.Time)} {
			if err := codec.MsgPack.Unmarshal(data, into); err == nil {
				t.Errorf("MsgPack.Unmarshal(%s, %T) succeeded, want error", name, into)
			}
		}
	}
}

// TestMsgPackRejectsForeign checks that bytes written by another format are
// errors even where their first byte happens to be a valid MessagePack value.
func TestMsgPackRejectsForeign(t *testing.T) {
	foreign := map[string][]byte{
		"json object": []byte(`{"id":1,"handle":"ada"}`), // '{' is fixint 123
		"json number": []byte("12345"),                   // '1' is fixint 49
		"text":        []byte("hello"),
		"gzip":        {0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00},
	}
	for name, data := range foreign {
		var n int
		if err := codec.MsgPack.Unmarshal(data, &n); err == nil {
			t.Errorf("Unmarshal(%s) into int = %d, want error", name, n)
		}
		var v any
		if err := codec.MsgPack.Unmarshal(data, &v); err == nil {
			t.Errorf("Unmarshal(%s) into any = %v, want error", name, v)
		}
	}
}

// TestMsgPackEveryPrefix checks that every truncation of a valid encoding is
// an error.
func TestMsgPackEveryPrefix(t *testing.T) {
	p := sampleProfile()
	data, err := codec.MsgPack.Marshal(&plain{Name: "n", Data: []byte{1, 2}, Seen: utcTime, Next: &plain{Nums: []int{1, 1 << 40}}, Ratio: 1.5})
	if err != nil {
		t.Fatal(err)
	}
	data2, err := codec.MsgPack.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, full := range [][]byte{data, data2} {
		for n := range len(full) {
			var v any
			if err := codec.MsgPack.Unmarshal(full[:n], &v); err == nil {
				t.Errorf("Unmarshal of %d-byte prefix of %d bytes succeeded", n, len(full))
			}
		}
	}
}

// TestMsgPackNestingLimit checks the depth limit's boundary.
func TestMsgPackNestingLimit(t *testing.T) {
	nested := func(depth int) []byte {
		return append(bytes.Repeat([]byte{0x91}, depth), 0x01) // [[...[1]...]]
	}
	var v any
	if err := codec.MsgPack.Unmarshal(nested(10000), &v); err != nil {
		t.Errorf("depth 10000: %v", err)
	}
	if err := codec.MsgPack.Unmarshal(nested(10001), &v); err == nil {
		t.Error("depth 10001 succeeded, want error")
	}
}

// TestMsgPackDecoderPanic checks that a panic inside the msgpack decoder
// (here: an array used as a key of a map[any]any) becomes an error.
func TestMsgPackDecoderPanic(t *testing.T) {
	var m map[any]any
	err := codec.MsgPack.Unmarshal([]byte{0x81, 0x91, 0x01, 0x01}, &m)
	if err == nil || !strings.Contains(err.Error(), "panic") {
		t.Fatalf("got %v, want an error reporting the panic", err)
	}
	// The codec still works afterwards.
	if got := roundTrip(t, codec.MsgPack, map[any]any{"k": int8(1)}); !reflect.DeepEqual(got, map[any]any{"k": int8(1)}) {
		t.Fatalf("got %#v", got)
	}
}

// TestMsgPackExtensionAsMap checks extension values (timestamps) that sit
// where a map is expected: msgpack then reads the extension's data as a map
// header, which for these bytes would declare 0x30303030 entries.
func TestMsgPackExtensionAsMap(t *testing.T) {
	risky := []byte("\xd7\xff\xdf00000@0") // a timestamp whose data starts with 0xdf (map 32)
	var m map[string]any
	if err := codec.MsgPack.Unmarshal(risky, &m); err == nil {
		t.Errorf("into map: got %v, want error", m)
	}
	var tm time.Time
	if err := codec.MsgPack.Unmarshal(risky, &tm); err != nil {
		t.Errorf("into time.Time: %v", err)
	}
	inStruct := append([]byte{0x81, 0xa5, 'l', 'i', 'n', 'k', 's'}, risky...) // {"links": <timestamp>}
	var p profile
	if err := codec.MsgPack.Unmarshal(inStruct, &p); err == nil {
		t.Errorf("into struct with a map field: got %#v, want error", p)
	}
	// A timestamp whose data starts like a map, in a field of type
	// time.Time, is a legitimate value and must decode.
	type withTime struct{ T time.Time }
	for nsec := 0x80 << 22; nsec < 1e9; nsec += 1 << 22 {
		in := withTime{time.Unix(1700000000, int64(nsec))}
		if out := roundTrip(t, codec.MsgPack, in); !out.T.Equal(in.T) {
			t.Fatalf("got %v, want %v", out.T, in.T)
		}
	}
	// Extension data that is itself one MessagePack map may be decoded as
	// a map, as msgpack allows.
	wrapped := []byte{0xc7, 0x04, 0x11, 0x81, 0xa1, 'k', 0x07} // ext 8, type 17, {"k": 7}
	var mi map[string]int
	if err := codec.MsgPack.Unmarshal(wrapped, &mi); err != nil || mi["k"] != 7 {
		t.Errorf("ext-wrapped map: got %v, %v", mi, err)
	}
}

func TestErrorPrefix(t *testing.T) {
	var n int
	if err := codec.MsgPack.Unmarshal([]byte{0xc1}, &n); err == nil || !strings.HasPrefix(err.Error(), "codec: msgpack: ") {
		t.Errorf("MsgPack error %v, want prefix %q", err, "codec: msgpack: ")
	}
	if err := codec.JSON.Unmarshal([]byte("{"), &n); err == nil || !strings.HasPrefix(err.Error(), "codec: json: ") {
		t.Errorf("JSON error %v, want prefix %q", err, "codec: json: ")
	}
}

func TestConcurrentUse(t *testing.T) {
	want := sampleProfile()
	done := make(chan struct{})
	for range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 200 {
				got := roundTrip(t, codec.MsgPack, want)
				if !equalProfile(got, want) {
					t.Errorf("got %#v", got)
					return
				}
				var v any
				_ = codec.MsgPack.Unmarshal([]byte{0x92, 0x01}, &v) // an error, drops the decoder
			}
		}()
	}
	for range 8 {
		<-done
	}
}
