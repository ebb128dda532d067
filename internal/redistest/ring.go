package redistest

import (
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"
)

// StartRing starts n servers, as Start(t, nil) does, and returns them with a
// redis.Ring client that shards keys over them. Server i is the ring's shard
// "s<i>" ("s0", "s1", ...). The ring is closed in t.Cleanup, before the
// servers are killed.
func StartRing(t testing.TB, n int) ([]*Server, *redis.Ring) {
	t.Helper()
	Require(t)
	if n < 1 {
		t.Fatalf("redistest: StartRing(%d): need at least 1 server", n)
	}
	servers := make([]*Server, n)
	addrs := make(map[string]string, n)
	for i := range servers {
		servers[i] = startServer(t, serverConfig{})
		addrs[fmt.Sprintf("s%d", i)] = servers[i].Addr()
	}
	r := redis.NewRing(&redis.RingOptions{Addrs: addrs})
	t.Cleanup(func() { _ = r.Close() })
	return servers, r
}
