package codec_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/codec"
)

// benchPost is a typical cached record: about 1 KB as MessagePack.
type benchPost struct {
	ID        int64             `json:"id"`
	AuthorID  int64             `json:"author_id"`
	Author    string            `json:"author"`
	Title     string            `json:"title"`
	Body      string            `json:"body"`
	Tags      []string          `json:"tags"`
	Likes     int               `json:"likes"`
	Reposts   int               `json:"reposts"`
	Score     float64           `json:"score"`
	Draft     bool              `json:"draft"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
	Meta      map[string]string `json:"meta"`
	Mentions  []int64           `json:"mentions"`
}

func newBenchPost() benchPost {
	p := benchPost{
		ID:        1234567890123,
		AuthorID:  987654321,
		Author:    "grace.hopper",
		Title:     "Notes on compiling business languages for small machines",
		Tags:      []string{"compilers", "cobol", "history", "navy", "programming"},
		Likes:     48213,
		Reposts:   1907,
		Score:     0.873421,
		CreatedAt: time.Date(2024, 5, 1, 9, 30, 0, 123000000, time.UTC),
		UpdatedAt: time.Date(2024, 5, 2, 11, 0, 5, 0, time.UTC),
		Meta:      map[string]string{"lang": "en", "client": "web", "region": "us-east", "visibility": "public"},
	}
	for i := range 12 {
		p.Body += fmt.Sprintf("Paragraph %d of the post, with a little text in it. ", i)
		p.Mentions = append(p.Mentions, int64(1000000+i*7919))
	}
	return p
}

var benchCodecs = []struct {
	name  string
	codec codec.Codec
}{
	{"MsgPack", codec.MsgPack},
	{"JSON", codec.JSON}, // for comparison
}

func BenchmarkMarshal(b *testing.B) {
	for _, bc := range benchCodecs {
		b.Run(bc.name, func(b *testing.B) {
			p := newBenchPost()
			data, err := bc.codec.Marshal(p)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bc.codec.Marshal(&p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkUnmarshal(b *testing.B) {
	for _, bc := range benchCodecs {
		b.Run(bc.name, func(b *testing.B) {
			data, err := bc.codec.Marshal(newBenchPost())
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				var p benchPost
				if err := bc.codec.Unmarshal(data, &p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
