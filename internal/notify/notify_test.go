package notify

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"go.uber.org/goleak"

	"github.com/locksmith-go/locksmith/internal/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func recv(t *testing.T, s *Sub) string {
	t.Helper()
	select {
	case p := <-s.C():
		return p
	case <-time.After(10 * time.Second):
		t.Fatal("no message within 10s")
		return ""
	}
}

func ready(t *testing.T, s *Sub) {
	t.Helper()
	select {
	case <-s.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("subscription not confirmed within 10s")
	}
}

func TestRefCounting(t *testing.T) {
	_, rdb := redistest.Mini(t)
	h := New(rdb, nil)
	defer h.Close()
	ctx := context.Background()
	numSub := func() int64 {
		n, _ := rdb.PubSubNumSub(ctx, "ch").Result()
		return n["ch"]
	}
	a, b := h.Subscribe("ch"), h.Subscribe("ch")
	ready(t, a)
	ready(t, b)
	if n := numSub(); n != 1 {
		t.Fatalf("subscribers: got %d; want 1 shared connection", n)
	}
	if err := rdb.Publish(ctx, "ch", "hello").Err(); err != nil {
		t.Fatal(err)
	}
	if p := recv(t, a); p != "hello" {
		t.Errorf("a got %q", p)
	}
	if p := recv(t, b); p != "hello" {
		t.Errorf("b got %q", p)
	}
	a.Close()
	a.Close() // idempotent
	if err := rdb.Publish(ctx, "ch", "again").Err(); err != nil {
		t.Fatal(err)
	}
	if p := recv(t, b); p != "again" {
		t.Errorf("b got %q", p)
	}
	b.Close()
	redistest.WaitFor(t, "unsubscribed", func() bool { return numSub() == 0 })
	// Subscribing again after the last Close works.
	c := h.Subscribe("ch")
	defer c.Close()
	ready(t, c)
	if err := rdb.Publish(ctx, "ch", "third").Err(); err != nil {
		t.Fatal(err)
	}
	if p := recv(t, c); p != "third" {
		t.Errorf("c got %q", p)
	}
}

// TestNewestMessageWins: a reader slower than the messages finds only the
// newest payload buffered.
func TestNewestMessageWins(t *testing.T) {
	srv := redistest.Start(t, nil)
	rdb := srv.Client(t, nil)
	h := New(rdb, nil)
	defer h.Close()
	s := h.Subscribe("ch")
	defer s.Close()
	marker := h.Subscribe("marker")
	defer marker.Close()
	ready(t, s)
	ready(t, marker)
	ctx := context.Background()
	for _, p := range []string{"1", "2", "3"} {
		if err := rdb.Publish(ctx, "ch", p).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// On the same connection, published after: all three are delivered
	// once the marker is.
	if err := rdb.Publish(ctx, "marker", "m").Err(); err != nil {
		t.Fatal(err)
	}
	recv(t, marker)
	if p := recv(t, s); p != "3" {
		t.Fatalf("got %q; want the newest payload, 3", p)
	}
	select {
	case p := <-s.C():
		t.Fatalf("got %q after the newest; want nothing buffered", p)
	default:
	}
}

// TestWakeAfterReconnect: Redis restarts; the Hub subscribes again by itself
// and wakes the waiters, which may have missed messages meanwhile.
func TestWakeAfterReconnect(t *testing.T) {
	srv := redistest.Start(t, nil)
	rdb := srv.Client(t, nil)
	h := New(rdb, nil)
	defer h.Close()
	s := h.Subscribe("ch")
	defer s.Close()
	ready(t, s)
	srv.Kill(t)
	srv.Restart(t)
	if p := recv(t, s); p != Wake {
		t.Fatalf("got %q; want the Wake payload", p)
	}
	if err := rdb.Publish(context.Background(), "ch", "after").Err(); err != nil {
		t.Fatal(err)
	}
	// Each subscription confirmed again may wake (go-redis's own and the
	// Hub's): a waiter re-checks on each; then the message comes.
	for p := recv(t, s); p != "after"; p = recv(t, s) {
		if p != Wake {
			t.Fatalf("got %q after the restart", p)
		}
	}
}

func TestAwait(t *testing.T) {
	_, rdb := redistest.Mini(t)
	h := New(rdb, nil)
	defer h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var attempts atomic.Int32
	got := make(chan error, 1)
	go func() {
		got <- h.Await(ctx, "ch", func() (Step, error) {
			attempts.Add(1)
			return Step{Wait: time.Minute}, nil
		}, func(p string) (bool, error) {
			return p == "done", nil
		})
	}()
	redistest.WaitFor(t, "subscribed", func() bool {
		n, _ := rdb.PubSubNumSub(ctx, "ch").Result()
		return n["ch"] == 1
	})
	// Once subscribed, the waiter checks again (what was published before
	// the subscription is seen by that check, not as a message); a message
	// that is not the awaited one makes it check again too (the minute-long
	// Wait cannot). The subscription keeps only the newest payload, so
	// "done" goes after that check was seen.
	redistest.WaitFor(t, "a re-check after subscribing", func() bool { return attempts.Load() >= 2 })
	if err := rdb.Publish(ctx, "ch", "other").Err(); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "a re-check after a message", func() bool { return attempts.Load() >= 3 })
	select {
	case err := <-got:
		t.Fatalf("Await returned %v on a message it was told is not the one", err)
	default:
	}
	if err := rdb.Publish(ctx, "ch", "done").Err(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	short, cancel2 := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel2()
	err := h.Await(short, "ch", func() (Step, error) { return Step{Wait: time.Minute}, nil }, nil)
	if err != context.DeadlineExceeded {
		t.Errorf("got %v; want DeadlineExceeded", err)
	}
}

// TestAwaitClosed: a wait on a Hub that is closed returns at once.
func TestAwaitClosed(t *testing.T) {
	_, rdb := redistest.Mini(t)
	h := New(rdb, nil)
	ctx := redistest.Context(t, 20*time.Second)
	got := make(chan error, 1)
	attempts := make(chan struct{}, 10)
	go func() {
		got <- h.Await(ctx, "ch", func() (Step, error) {
			attempts <- struct{}{}
			return Step{Wait: time.Hour}, nil
		}, nil)
	}()
	<-attempts
	<-attempts // subscribed and looked again: now waiting an hour
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("got %v; want ErrClosed", err)
		}
	case <-ctx.Done():
		t.Fatal("Await did not return when the Hub closed")
	}
	if err := h.Await(ctx, "ch", func() (Step, error) { return Step{Wait: time.Hour}, nil }, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Await on a closed Hub: got %v; want ErrClosed", err)
	}
}

// TestResubscribeReady: unsubscribing and subscribing again within one
// round trip leaves the channel ready, and messages published after Ready
// are delivered.
func TestResubscribeReady(t *testing.T) {
	srv := redistest.Start(t, nil)
	rdb := srv.Client(t, nil)
	h := New(rdb, nil)
	defer h.Close()
	ctx := context.Background()
	for i := range 50 {
		a := h.Subscribe("ch")
		a.Close()
		b := h.Subscribe("ch")
		ready(t, b)
		if err := rdb.Publish(ctx, "ch", fmt.Sprint(i)).Err(); err != nil {
			t.Fatal(err)
		}
		if p := recv(t, b); p != fmt.Sprint(i) {
			t.Fatalf("got %q; want %d", p, i)
		}
		b.Close()
	}
}

// TestRefusedSubscribe: an ACL user without channel permissions gets its
// SUBSCRIBEs refused; the Hub counts it, says so once, and does not retry
// in a loop. Waiters fall back to polling.
func TestRefusedSubscribe(t *testing.T) {
	srv := redistest.Start(t, nil)
	srv.Do(t, "ACL", "SETUSER", "nochan", "on", ">pw", "~*", "+@all", "resetchannels")
	rdb := srv.Client(t, &redis.Options{Username: "nochan", Password: "pw"})
	admin := srv.Client(t, nil)
	ctx := redistest.Context(t, 30*time.Second)
	var told atomic.Int32
	h := New(rdb, &Options{OnError: func(error) { told.Add(1) }})
	defer h.Close()
	subs := commandCount(t, ctx, admin, "subscribe")
	attempts := 0
	start := time.Now()
	err := h.Await(ctx, "ch", func() (Step, error) {
		attempts++
		return Step{Done: attempts == 6, Wait: 100 * time.Millisecond}, nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if h.Errors() == 0 {
		t.Error("Errors() = 0; want the refusal counted")
	}
	if n := told.Load(); n != 1 {
		t.Errorf("OnError called %d times; want once", n)
	}
	sent := commandCount(t, ctx, admin, "subscribe") - subs
	// Polling for 5 intervals: a loop would send thousands.
	if limit := int64(3 + time.Since(start)/refusalMin); sent > limit {
		t.Errorf("%d SUBSCRIBEs sent in %v; want at most %d", sent, time.Since(start), limit)
	}
}

// commandCount returns how many times Redis ran cmd, refused calls included.
func commandCount(t *testing.T, ctx context.Context, rdb *redis.Client, cmd string) int64 {
	t.Helper()
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	var calls, rejected int64
	for _, line := range strings.Split(info, "\r\n") {
		rest, ok := strings.CutPrefix(line, "cmdstat_"+cmd+":")
		if !ok {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			n, _ := strconv.ParseInt(v, 10, 64)
			switch k {
			case "calls":
				calls = n
			case "rejected_calls", "failed_calls":
				rejected += n
			}
		}
	}
	return calls + rejected
}

// TestRing: channels on a Ring are subscribed on the shard that owns them,
// where a script running on that shard publishes.
func TestRing(t *testing.T) {
	var addrs = map[string]string{}
	for i := range 3 {
		addrs[fmt.Sprint("s", i)] = redistest.Start(t, nil).Addr()
	}
	ring := redis.NewRing(&redis.RingOptions{Addrs: addrs})
	t.Cleanup(func() { _ = ring.Close() })
	h := New(ring, nil)
	defer h.Close()
	ctx := redistest.Context(t, 20*time.Second)
	for i := range 12 {
		ch := fmt.Sprintf("p{k%d}", i)
		s := h.Subscribe(ch)
		ready(t, s)
		shard, err := ring.GetShardClientForKey(ch)
		if err != nil {
			t.Fatal(err)
		}
		if err := shard.Publish(ctx, ch, "hi").Err(); err != nil {
			t.Fatal(err)
		}
		if p := recv(t, s); p != "hi" {
			t.Fatalf("%s: got %q", ch, p)
		}
		s.Close()
	}
}

// TestReadyAfterLostReplies: a channel subscribed, unsubscribed and
// subscribed again within one round trip, whose replies are then lost with
// the connection, is ready once the connection is back, and delivers.
func TestReadyAfterLostReplies(t *testing.T) {
	srv := redistest.Start(t, nil)
	proxy := redistest.NewProxy(t, srv.Addr())
	rdb := redis.NewClient(&redis.Options{Addr: proxy.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	admin := srv.Client(t, nil)
	ctx := redistest.Context(t, 30*time.Second)
	h := New(rdb, nil)
	defer h.Close()
	warm := h.Subscribe("warm")
	defer warm.Close()
	ready(t, warm)

	proxy.HoldReplies()
	a := h.Subscribe("ch")
	a.Close()
	b := h.Subscribe("ch")
	defer b.Close()
	// The server has run all three commands; their replies are held.
	redistest.WaitFor(t, "the commands reach the server", func() bool {
		n, _ := admin.PubSubNumSub(ctx, "ch").Result()
		return n["ch"] == 1 && proxy.Held() > 0
	})
	proxy.DropAll()
	proxy.ReleaseReplies()
	select {
	case <-b.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("the channel never became ready after the connection came back")
	}
	if err := admin.Publish(ctx, "ch", "after").Err(); err != nil {
		t.Fatal(err)
	}
	for {
		if p := recv(t, b); p == "after" {
			break
		}
	}
}

// TestHeartbeatFollowsMaster: when the client's commands go to a new server
// (a Sentinel failover) while the pub/sub connection stays on the old one,
// which no longer receives what is published, missed heartbeats make the
// Hub open a new pub/sub connection, which follows the client.
func TestHeartbeatFollowsMaster(t *testing.T) {
	oldSrv, newSrv := redistest.Start(t, nil), redistest.Start(t, nil)
	var target atomic.Value
	target.Store(oldSrv.Addr())
	rdb := redis.NewClient(&redis.Options{
		Dialer: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, target.Load().(string))
		},
	})
	t.Cleanup(func() { _ = rdb.Close() })
	h := New(rdb, nil)
	defer h.Close()
	s := h.Subscribe("ch")
	defer s.Close()
	ready(t, s)
	// The "failover": new connections go to the new server, and the old
	// one drops its normal clients, not its pub/sub ones.
	target.Store(newSrv.Addr())
	oldSrv.Do(t, "CLIENT", "KILL", "TYPE", "normal")
	ctx := redistest.Context(t, 20*time.Second)
	pub := newSrv.Client(t, nil)
	redistest.WaitFor(t, "a message published on the new server", func() bool {
		if err := pub.Publish(ctx, "ch", "hello").Err(); err != nil {
			t.Fatal(err)
		}
		select {
		case p := <-s.C():
			return p == "hello"
		case <-time.After(50 * time.Millisecond):
			return false
		}
	})
}

// TestCluster: on a Redis Cluster each channel is subscribed on the master
// that owns its slot, on a connection of that master's own, whatever order
// the hub's reader and writer start in: every channel is ready at once,
// nothing is refused, and a sharded publish arrives.
func TestCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	rdb := c.Client(t, nil)
	ctx := redistest.Context(t, 60*time.Second)
	for i := range 20 {
		h := New(rdb, nil)
		var subs []*Sub
		for j := range 6 {
			ch := fmt.Sprintf("p{k%d-%d}", i, j)
			s := h.Subscribe(ch)
			subs = append(subs, s)
		}
		for _, s := range subs {
			ready(t, s)
			if err := rdb.SPublish(ctx, s.channel, "hi").Err(); err != nil {
				t.Fatal(err)
			}
			if p := recv(t, s); p != "hi" {
				t.Fatalf("%s: got %q", s.channel, p)
			}
		}
		if n := h.Errors(); n != 0 {
			t.Fatalf("hub %d: %d subscriptions refused", i, n)
		}
		h.Close()
	}
}

// TestListenAllCluster: on a Redis Cluster a ListenAll listener hears a
// classic PUBLISH made on any node, and heartbeats come back.
func TestListenAllCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	h := New(c.Client(t, nil), nil)
	defer h.Close()
	got := make(chan string, 16)
	l := h.ListenAll("inval", func(p string) {
		if p != Wake {
			got <- p
		}
	})
	defer l.Close()
	select {
	case <-l.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("listener not ready within 10s")
	}
	ctx := redistest.Context(t, 20*time.Second)
	for i, n := range c.Nodes() {
		want := fmt.Sprint("from node ", i)
		if err := n.Client(t, nil).Publish(ctx, "inval", want).Err(); err != nil {
			t.Fatal(err)
		}
		select {
		case p := <-got:
			if p != want {
				t.Fatalf("got %q; want %q", p, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("nothing heard of node %d's publish", i)
		}
	}
	redistest.WaitFor(t, "a heartbeat back", func() bool { return h.Heard() != 0 })
	if n := h.Errors(); n != 0 {
		t.Errorf("%d subscriptions refused", n)
	}
}

// TestClusterHeartbeatEveryNode: on a Redis Cluster, Heard advances only
// while every master's heartbeats reach the ListenAll connection: a master
// that stops (here SIGSTOP) holds it back, as an invalidation published
// there would not arrive either; once it is back, Heard advances again.
// (What a stopped master does not show, a broken bus link between two live
// masters, TestHeardOldestPath covers: the oldest path decides.)
func TestClusterHeartbeatEveryNode(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	h := New(c.Client(t, nil), nil)
	defer h.Close()
	l := h.ListenAll("inval", func(string) {})
	defer l.Close()
	recent := func() bool { return time.Since(time.Unix(0, h.Heard())) < 500*time.Millisecond }
	redistest.WaitFor(t, "heartbeats from every master", recent)
	// Stop a master other than the one the listener is connected to.
	ctx := redistest.Context(t, 30*time.Second)
	// Stop a master that neither holds the listener's connection nor owns
	// the heartbeat channel's slot (where a single PUBLISH would go).
	owner, err := c.Client(t, nil).MasterForKey(ctx, h.beat)
	if err != nil {
		t.Fatal(err)
	}
	var other *redistest.Server
	for _, n := range c.Nodes() {
		subs, err := n.Client(t, nil).PubSubNumSub(ctx, h.beat).Result()
		if err != nil {
			t.Fatal(err)
		}
		if subs[h.beat] == 0 && n.Addr() != owner.Options().Addr {
			other = n
		}
	}
	if other == nil {
		t.Fatal("no master to stop")
	}
	other.Pause(t)
	redistest.WaitFor(t, "Heard to fall behind", func() bool { return time.Since(time.Unix(0, h.Heard())) > time.Second })
	other.Resume(t)
	redistest.WaitFor(t, "Heard to advance again", recent)
}

// TestHeardOldestPath: on a Cluster, Heard is the oldest of the newest
// heartbeats seen from each master of the last round: one master's path
// that stopped delivering holds it back, however fresh the others are.
// A Cluster heartbeat carries its master's clock, which the Hub maps to
// its own through a reading of that clock; one that arrives before any
// reading counts once a reading is taken.
func TestHeardOldestPath(t *testing.T) {
	h := &Hub{}
	h.beats.nodes = []string{"a:1", "b:1"}
	// a's clock agrees with ours; b's runs 100s ahead.
	const bAhead = 100
	h.beats.clock("a:1", time.Unix(0, 0), 0)
	at := func(s int64) string { return strconv.FormatInt(time.Unix(s, 0).UnixMicro(), 10) }
	h.heartbeatSeen(at(10) + " a:1")
	if got := h.Heard(); got != 0 {
		t.Fatalf("Heard = %d with nothing from b; want 0", got)
	}
	h.heartbeatSeen(at(9+bAhead) + " b:1")
	h.heartbeatSeen(at(12) + " a:1")
	if got := h.Heard(); got != 0 {
		t.Fatalf("Heard = %d with no reading of b's clock; want 0", got)
	}
	h.beats.clock("b:1", time.Unix(0, 0), time.Unix(bAhead, 0).UnixMicro())
	if got := time.Unix(0, h.Heard()).Unix(); got != 9 {
		t.Fatalf("Heard = %d; want 9, b's", got)
	}
	h.heartbeatSeen(at(11+bAhead) + " b:1")
	if got := time.Unix(0, h.Heard()).Unix(); got != 11 {
		t.Fatalf("Heard = %d; want 11, b's", got)
	}
	// A stamp ahead of the heartbeat's arrival counts as sent when it
	// arrived.
	h.heartbeatSeen(at(1<<40) + " a:1")
	h.heartbeatSeen(at(1<<40) + " b:1")
	if got, now := h.Heard(), time.Now().UnixNano(); got == 0 || got > now {
		t.Fatalf("Heard = %d after stamps from the future; want at most now, %d", got, now)
	}
	// A standalone heartbeat names no master.
	h2 := &Hub{}
	h2.heartbeatSeen(strconv.FormatInt(time.Unix(5, 0).UnixNano(), 10))
	if got := time.Unix(0, h2.Heard()).Unix(); got != 5 {
		t.Fatalf("standalone Heard = %d; want 5", got)
	}
}

// TestHeartbeatOnSubscribe: the first heartbeat is sent as soon as the
// heartbeat channel is subscribed, at start and after a reconnect, not a
// period later: Heard is known at once.
func TestHeartbeatOnSubscribe(t *testing.T) {
	srv := redistest.Start(t, nil)
	rdb := srv.Client(t, nil)
	h := New(rdb, &Options{Heartbeat: time.Hour})
	defer h.Close()
	l := h.ListenAll("inval", func(string) {})
	defer l.Close()
	redistest.WaitFor(t, "a heartbeat back after start", func() bool { return h.Heard() != 0 })
	first := h.Heard()
	ctx := redistest.Context(t, 20*time.Second)
	if err := rdb.ClientKillByFilter(ctx, "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, "a heartbeat back after a reconnect", func() bool { return h.Heard() > first })
}

// TestClusterSlotMoved: when a channel's slot moves to another master, the
// old one unsubscribes its subscribers (sunsubscribe); the channel is
// subscribed again on the new owner, its waiters are woken (messages may
// have been lost meanwhile), and later publishes are heard. The Hub used to
// mark the channel unsubscribed and leave it: nothing published after the
// move was heard until the process restarted.
func TestClusterSlotMoved(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	rdb := c.Client(t, nil)
	h := New(rdb, &Options{OnError: func(err error) { t.Log("refused:", err) }})
	defer h.Close()
	const channel = "p{moved}"
	got := make(chan string, 256)
	l := h.Listen(channel, func(p string) { got <- p })
	defer l.Close()
	select {
	case <-l.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("listener not ready within 10s")
	}
	ctx := redistest.Context(t, 60*time.Second)
	if err := rdb.SPublish(ctx, channel, "before").Err(); err != nil {
		t.Fatal(err)
	}
	if p := <-got; p != "before" {
		t.Fatalf("got %q; want before", p)
	}
	// A client that learned the slots before the move, and subscribes
	// after it: its SSUBSCRIBE goes to the old owner, which answers MOVED.
	stale := c.Client(t, nil)
	if err := stale.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := stale.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.Ping(ctx).Err() }); err != nil {
		t.Fatal(err)
	}
	from := c.MoveSlot(t, channel, 1)
	if from == 1 {
		t.Fatal("the slot was on node 1 already")
	}
	// Published on the new owner (go-redis follows the MOVED).
	if !heardAfter(t, func() error { return rdb.SPublish(ctx, channel, "after").Err() }, got, "after", 20*time.Second) {
		t.Error("the listener was not woken when its subscription was dropped")
	}
	if n := h.Errors(); n != 0 {
		t.Errorf("%d subscriptions refused", n)
	}
	staleSubscribes(t, stale, "x{moved}")
}

// heardAfter publishes want with publish until it comes on got, and fails
// t if it does not within d. It reports whether got had a Wake first.
func heardAfter(t *testing.T, publish func() error, got <-chan string, want string, d time.Duration) (woken bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if err := publish(); err != nil {
			t.Fatal(err)
		}
		select {
		case p := <-got:
			if p == want {
				return woken
			}
			woken = woken || p == Wake
			continue
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q was not heard within %v", want, d)
		}
	}
}

// staleSubscribes checks that a Hub on rdb, a Cluster client that does not
// know yet that channel's slot moved, subscribes it on its new owner without
// counting a refusal, and hears a publish. The first SSUBSCRIBE's write
// returns only once its MOVED reply has been read: the reader reads it as
// soon as it comes, and a reply read before the Hub recorded where the
// channel was sent used to be lost (the channel was never subscribed).
func staleSubscribes(t *testing.T, rdb *redis.ClusterClient, channel string) {
	t.Helper()
	h := New(rdb, &Options{OnError: func(err error) { t.Log("refused:", err) }})
	defer h.Close()
	waitMoved := func(sent *Hub) {
		if sent != h {
			return
		}
		for deadline := time.Now().Add(5 * time.Second); sent.moved.Load() == 0 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
	}
	subscribeSent.Store(&waitMoved)
	defer subscribeSent.Store(nil)
	got := make(chan string, 256)
	l := h.Listen(channel, func(p string) { got <- p })
	defer l.Close()
	ctx := redistest.Context(t, 30*time.Second)
	heardAfter(t, func() error { return rdb.SPublish(ctx, channel, "hi").Err() }, got, "hi", 20*time.Second)
	if n := h.Errors(); n != 0 {
		t.Errorf("a client that did not know the slot moved: %d subscriptions refused", n)
	}
	if h.moved.Load() == 0 {
		t.Error("no MOVED reply: the client knew the slot had moved")
	}
}

// TestSilentShardReplaced: a Ring shard's pub/sub connection whose peer
// goes silent (no reply, no reset: a host gone, a network partition) is
// replaced once a health ping goes unanswered, its listeners woken, and its
// channels heard again on the new connection. Heartbeats cover a plain
// Redis and Sentinel; a Ring has none (nor a Cluster's shard connections),
// and the Hub used to ping and never check the PONG: the silence lasted
// until TCP gave up, many minutes later.
func TestSilentShardReplaced(t *testing.T) {
	old := healthEvery
	healthEvery = 100 * time.Millisecond
	t.Cleanup(func() { healthEvery = old })
	s := redistest.Start(t, nil)
	p := redistest.NewProxy(t, s.Addr())
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": p.Addr()}})
	t.Cleanup(func() { ring.Close() })
	h := New(ring, nil)
	defer h.Close()
	got := make(chan string, 256)
	l := h.Listen("silent", func(p string) { got <- p })
	defer l.Close()
	select {
	case <-l.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("listener not ready within 10s")
	}
	conns := p.Conns()
	p.HoldReplies()
	select {
	case m := <-got:
		if m != Wake {
			t.Fatalf("got %q; want %q", m, Wake)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the silent connection was not replaced within 10s (100 ms health pings)")
	}
	redistest.WaitFor(t, "a new connection", func() bool { return p.Conns() > conns })
	p.ReleaseReplies()
	direct := s.Client(t, nil)
	ctx := redistest.Context(t, 30*time.Second)
	heardAfter(t, func() error { return direct.Publish(ctx, "silent", "after").Err() }, got, "after", 20*time.Second)
}

// TestSilentClusterShardReplaced: the same on a Cluster, whose shard
// connections have no heartbeat: a master stopped (SIGSTOP, silent and
// unreset) has its shard connection replaced, and once it runs again its
// channels are heard on the new one.
func TestSilentClusterShardReplaced(t *testing.T) {
	old := healthEvery
	healthEvery = 100 * time.Millisecond
	t.Cleanup(func() { healthEvery = old })
	c := redistest.StartCluster(t, 3)
	rdb := c.Client(t, nil)
	h := New(rdb, nil)
	defer h.Close()
	const channel = "p{silent}"
	got := make(chan string, 256)
	l := h.Listen(channel, func(p string) { got <- p })
	defer l.Close()
	select {
	case <-l.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("listener not ready within 10s")
	}
	ctx := redistest.Context(t, 60*time.Second)
	node, err := rdb.MasterForKey(ctx, channel)
	if err != nil {
		t.Fatal(err)
	}
	var owner *redistest.Server
	for _, n := range c.Nodes() {
		if n.Addr() == node.Options().Addr {
			owner = n
		}
	}
	owner.Pause(t)
	select {
	case m := <-got:
		if m != Wake {
			t.Fatalf("got %q; want %q", m, Wake)
		}
	case <-time.After(10 * time.Second):
		owner.Resume(t)
		t.Fatal("the silent shard connection was not replaced within 10s (100 ms health pings)")
	}
	owner.Resume(t)
	heardAfter(t, func() error { return rdb.SPublish(ctx, channel, "after").Err() }, got, "after", 20*time.Second)
	if n := h.Errors(); n != 0 {
		t.Errorf("%d subscriptions refused", n)
	}
}

// TestClusterResubscribe: a shard channel whose last Sub closes and which a
// new Sub wants again before the SUNSUBSCRIBE's reply comes is heard on: the
// reply to the Hub's own SUNSUBSCRIBE is not taken for its master dropping
// the channel (a slot moved), whose clean-up unsubscribed it for good.
func TestClusterResubscribe(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	rdb := c.Client(t, nil)
	h := New(rdb, nil)
	defer h.Close()
	ctx := redistest.Context(t, 60*time.Second)
	const channel = "p{resub}"
	s := h.Subscribe(channel)
	ready(t, s)
	// The writer holds its commands a moment (as in a refusal's back-off),
	// so that the SUNSUBSCRIBE and the SSUBSCRIBE go out together: the
	// first's reply comes once the channel is wanted again.
	h.refusal.mu.Lock()
	h.refusal.refused, h.refusal.retryAt = true, time.Now().Add(100*time.Millisecond)
	h.refusal.mu.Unlock()
	s.Close()
	s = h.Subscribe(channel)
	defer s.Close()
	ready(t, s)
	redistest.WaitFor(t, "the Hub settled", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		e := h.chans[channel]
		if len(h.ops) > 0 || e == nil || !e.subscribed || e.sh == nil || e.unsubs > 0 {
			return false
		}
		for _, sh := range h.shards {
			if sh.echoes > 0 || len(sh.wait) > 0 {
				return false
			}
		}
		return true
	})
	heardAfter(t, func() error { return rdb.SPublish(ctx, channel, "hi").Err() }, s.C(), "hi", 2*time.Second)
}

// TestUnsubscribesWait: the UNSUBSCRIBEs of Subs closed together wait
// (unsubDelay), without waking the writer until then, and go out as one
// command, rather than reach Redis at once beside the messages still
// arriving; a SUBSCRIBE queued behind them sends them at once, in order,
// and waits for nothing.
func TestUnsubscribesWait(t *testing.T) {
	defer func(d time.Duration) { unsubDelay = d }(unsubDelay)
	unsubDelay = time.Hour
	srv := redistest.Start(t, nil)
	rdb := srv.Client(t, nil)
	h := New(rdb, nil)
	defer h.Close()
	ctx := context.Background()
	numSub := func(ch string) int64 {
		n, err := rdb.PubSubNumSub(ctx, ch).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n[ch]
	}
	unsubscribes := func() int {
		info, err := rdb.Info(ctx, "commandstats").Result()
		if err != nil {
			t.Fatal(err)
		}
		_, rest, ok := strings.Cut(info, "cmdstat_unsubscribe:calls=")
		if !ok {
			return 0
		}
		n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
		return n
	}
	subs := []*Sub{h.Subscribe("a"), h.Subscribe("b"), h.Subscribe("c")}
	for _, s := range subs {
		ready(t, s)
	}
	// The Hub's heartbeat channel is subscribed once its connection is
	// made: a SUBSCRIBE that would send the UNSUBSCRIBEs queued before it.
	redistest.WaitFor(t, "a heartbeat heard", func() bool { return h.Heard() != 0 })
	wakes := h.wakes.Load()
	for _, s := range subs {
		s.Close()
	}
	// Nothing to wait for: the claim is that nothing happens. A round
	// trip of this client and 50ms give the writer time to act.
	time.Sleep(50 * time.Millisecond)
	if n := h.wakes.Load() - wakes; n != 0 {
		// Each wake-up is a goroutine made runnable as a wait ends, on
		// the CPUs that hand out the values which ended it.
		t.Errorf("the writer woke %d times for UNSUBSCRIBEs that wait; want 0", n)
	}
	for _, ch := range []string{"a", "b", "c"} {
		if n := numSub(ch); n != 1 {
			t.Fatalf("%s unsubscribed at once (%d subscribers); want it to wait", ch, n)
		}
	}
	d := h.Subscribe("d")
	defer d.Close()
	ready(t, d) // its PING follows the UNSUBSCRIBE: replied to after it
	for _, ch := range []string{"a", "b", "c"} {
		if n := numSub(ch); n != 0 {
			t.Errorf("%s still subscribed once a SUBSCRIBE went out behind its UNSUBSCRIBE", ch)
		}
	}
	if n := unsubscribes(); n != 1 {
		t.Errorf("%d UNSUBSCRIBE commands for 3 Subs closed together; want 1", n)
	}
	// Without a SUBSCRIBE behind, they go once unsubDelay is over.
	unsubDelay = 0
	d.Close()
	redistest.WaitFor(t, "d unsubscribed", func() bool { return numSub("d") == 0 })
}
