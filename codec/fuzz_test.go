package codec_test

import (
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/codec"
)

func FuzzMsgPackUnmarshal(f *testing.F) {
	values := []any{
		sampleProfile(),
		profile{},
		&plain{Name: "n", Data: []byte{1, 2, 3}, Seen: utcTime, Nums: []int{-1, 1 << 40}, Next: &plain{Ratio: 0.5}},
		map[string]any{"a": 1, "b": []any{"x", 2.5, nil, true}, "c": map[string]any{"d": []byte("e")}},
		[]any{int8(-3), uint64(1 << 63), float32(1.5), "s", []byte{0}},
		zonedTime,
		time.Time{},
		"a string",
		int64(-1 << 40),
		[][]int{{1}, {2, 3}},
	}
	for _, v := range values {
		b, err := codec.MsgPack.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, b := range garbage(f) {
		if len(b) < 1000 {
			f.Add(b)
		}
	}
	for _, b := range [][]byte{
		{0x81, 0x91, 0x01, 0x01},                               // map whose key is an array
		{0x81, 0x81, 0x01, 0x01, 0x01},                         // map whose key is a map
		{0x81, 0xc0, 0x01},                                     // map whose key is nil
		{0x82, 0xa1, 'a', 0x01, 0xa1, 'a', 0x02},               // duplicate key
		{0x81, 0xa2, 'i', 'd', 0xa3, 'x', 'y', 'z'},            // wrong field type
		{0xd4, 0x05, 0x00},                                     // unregistered ext type
		{0xd7, 0xff, 0, 0, 0, 0, 0, 0, 0, 1},                   // time, 8-byte form
		{0xc7, 0x0c, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, // time, 12-byte form
		{0xc7, 0x03, 0xff, 0, 0, 0},                            // time with a bad length
		{0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 1},                   // NaN
		{0x92, 0xa0, 0xc4, 0x00},                               // empty str and bin
	} {
		f.Add(b)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		var p profile
		_ = codec.MsgPack.Unmarshal(data, &p)
		var pl plain
		_ = codec.MsgPack.Unmarshal(data, &pl)
		var m map[string]any
		_ = codec.MsgPack.Unmarshal(data, &m)
		var mm map[any]any
		_ = codec.MsgPack.Unmarshal(data, &mm)
		var v any
		if err := codec.MsgPack.Unmarshal(data, &v); err != nil {
			return
		}
		// Whatever decoded must encode again.
		if _, err := codec.MsgPack.Marshal(v); err != nil {
			t.Fatalf("decoded %#v but cannot encode it: %v", v, err)
		}
	})
}
