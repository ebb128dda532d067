package codec_test

import (
	"fmt"

	"github.com/locksmith-go/locksmith/codec"
)

func ExampleMsgPack() {
	type User struct {
		ID    int      `json:"id"`
		Name  string   `json:"name"`
		Roles []string `json:"roles,omitempty"`
	}

	data, err := codec.MsgPack.Marshal(User{ID: 42, Name: "Ada"})
	if err != nil {
		panic(err)
	}
	fmt.Printf("%d bytes: % x\n", len(data), data)

	var u User
	if err := codec.MsgPack.Unmarshal(data, &u); err != nil {
		panic(err)
	}
	fmt.Printf("%+v\n", u)

	// Anything that is not exactly one MessagePack value is an error.
	err = codec.MsgPack.Unmarshal(data[:len(data)-1], &u)
	fmt.Println(err)
	// Output:
	// 14 bytes: 82 a2 69 64 2a a4 6e 61 6d 65 a3 41 64 61
	// {ID:42 Name:Ada Roles:[]}
	// codec: msgpack: truncated input
}
