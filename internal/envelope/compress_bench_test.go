package envelope

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"github.com/vmihailenco/msgpack/v5"
)

// timelineUser is one record of the synthetic timeline payloads.
type timelineUser struct {
	ID        int64     `json:"id"`
	Handle    string    `json:"handle"`
	Name      string    `json:"name"`
	Bio       string    `json:"bio"`
	Avatar    string    `json:"avatar_url"`
	Followers int       `json:"followers"`
	Following int       `json:"following"`
	Verified  bool      `json:"verified"`
	Tags      []string  `json:"tags"`
	JoinedAt  time.Time `json:"joined_at"`
	Post      string    `json:"last_post"`
}

var (
	firstNames = []string{"Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "John", "Margaret", "Dennis", "Hedy", "Claude", "Katherine", "Tim"}
	lastNames  = []string{"Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman", "McCarthy", "Hamilton", "Ritchie", "Lamarr", "Shannon", "Johnson", "Berners-Lee"}
	words      = strings.Fields("the a of and to in cache latency redis cluster fleet loader value key expiry stale fresh request user timeline post reply like share build deploy release bug fix test bench profile memory network packet queue lock leader follower shard replica index query plan join scan row column page block disk flash coffee morning weekend travel music film book garden city river mountain")
	tagWords   = strings.Fields("golang rust devops sre databases distributed systems frontend backend ml security music photography running cycling cooking")
)

// sentence returns n pseudo-random words.
func sentence(r *rand.Rand, n int) string {
	var sb strings.Builder
	for i := range n {
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(words[r.IntN(len(words))])
	}
	return sb.String()
}

// timeline returns deterministic user records whose encoding by marshal is
// about size bytes, and that encoding.
func timeline(size int, marshal func(any) ([]byte, error)) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	var users []timelineUser
	base := time.Date(2015, 1, 1, 0, 0, 0, 0, time.UTC)
	for {
		id := 100000 + r.Int64N(90000000)
		first, last := firstNames[r.IntN(len(firstNames))], lastNames[r.IntN(len(lastNames))]
		u := timelineUser{
			ID:        id,
			Handle:    fmt.Sprintf("%s_%s%d", strings.ToLower(first), strings.ToLower(last), r.IntN(1000)),
			Name:      first + " " + last,
			Bio:       sentence(r, 6+r.IntN(14)),
			Avatar:    fmt.Sprintf("https://cdn.example.com/avatars/%d/%08x.jpg", id, r.Uint32()),
			Followers: r.IntN(2000000),
			Following: r.IntN(5000),
			Verified:  r.IntN(10) == 0,
			JoinedAt:  base.Add(time.Duration(r.Int64N(int64(9 * 365 * 24 * time.Hour)))),
			Post:      sentence(r, 10+r.IntN(30)),
		}
		for range 1 + r.IntN(4) {
			u.Tags = append(u.Tags, tagWords[r.IntN(len(tagWords))])
		}
		users = append(users, u)
		b, err := marshal(users)
		if err != nil {
			panic(err)
		}
		if len(b) >= size {
			return b
		}
	}
}

// compressor is one candidate algorithm and setting.
type compressor struct {
	name   string
	encode func(dst, src []byte) []byte
	decode func(dst, src []byte) ([]byte, error)
}

func compressors(tb testing.TB) []compressor {
	zdec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(MaxPayload))
	if err != nil {
		tb.Fatal(err)
	}
	zstdAt := func(level zstd.EncoderLevel) compressor {
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1))
		if err != nil {
			tb.Fatal(err)
		}
		return compressor{
			name:   "zstd-" + level.String(),
			encode: func(dst, src []byte) []byte { return enc.EncodeAll(src, dst[:0]) },
			decode: func(dst, src []byte) ([]byte, error) { return zdec.DecodeAll(src, dst[:0]) },
		}
	}
	return []compressor{
		{name: "s2", encode: s2.Encode, decode: s2.Decode},
		{name: "s2-better", encode: s2.EncodeBetter, decode: s2.Decode},
		zstdAt(zstd.SpeedFastest),
		zstdAt(zstd.SpeedDefault),
	}
}

// BenchmarkCompress compares the candidate compressors on realistic payloads.
// Run it with, for example,
//
//	go test -run='^$' -bench=Compress -benchtime=200ms ./internal/envelope/
//
// The figures and the choice they led to are in compress.go.
func BenchmarkCompress(b *testing.B) {
	payloads := []struct {
		name string
		data []byte
	}{
		{"json-16K", timeline(16<<10, json.Marshal)},
		{"msgpack-16K", timeline(16<<10, msgpack.Marshal)},
		{"json-256K", timeline(256<<10, json.Marshal)},
		{"msgpack-256K", timeline(256<<10, msgpack.Marshal)},
	}
	for _, c := range compressors(b) {
		for _, p := range payloads {
			compressed := c.encode(nil, p.data)
			ratio := float64(len(p.data)) / float64(len(compressed))
			b.Run(c.name+"/"+p.name+"/encode", func(b *testing.B) {
				dst := make([]byte, 0, s2.MaxEncodedLen(len(p.data))+1024)
				b.SetBytes(int64(len(p.data)))
				b.ReportAllocs()
				for b.Loop() {
					dst = c.encode(dst, p.data)
				}
				b.ReportMetric(ratio, "ratio")
			})
			b.Run(c.name+"/"+p.name+"/decode", func(b *testing.B) {
				// A fresh slice each time, as Decode returns one.
				b.SetBytes(int64(len(p.data)))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := c.decode(nil, compressed); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(ratio, "ratio")
			})
		}
	}
}
