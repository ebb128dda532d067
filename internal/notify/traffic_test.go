package notify

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/locksmith-go/locksmith/internal/redistest"
)

// clusterTraffic is what a Cluster's nodes counted of pub/sub traffic.
type clusterTraffic struct {
	forwarded int64 // classic PUBLISH messages sent over the cluster bus
	publish   int64 // PUBLISH commands run (from scripts too)
	evalsha   int64 // EVALSHA commands run
}

func measureTraffic(t *testing.T, ctx context.Context, c *redistest.Cluster) clusterTraffic {
	t.Helper()
	var tr clusterTraffic
	for _, n := range c.Nodes() {
		rdb := n.Client(t, nil)
		info, err := rdb.ClusterInfo(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "cluster_stats_messages_publish_sent:"); ok {
				f, _ := strconv.ParseInt(v, 10, 64)
				tr.forwarded += f
			}
		}
		tr.publish += commandCount(t, ctx, rdb, "publish")
		tr.evalsha += commandCount(t, ctx, rdb, "evalsha")
		_ = rdb.Close()
	}
	return tr
}

// TestClusterHeartbeatTraffic: on a Redis Cluster the heartbeats of a
// fleet cost about one classic PUBLISH per master per period, whatever the
// number of servers: over a span in which every server's Heard advanced
// by many periods, the PUBLISH messages the nodes forwarded over the
// cluster bus stay within a bound that does not grow with the servers.
// (Each server publishing its own heartbeat on every master costs servers
// x masters PUBLISHes per period, each forwarded to every other node.)
func TestClusterHeartbeatTraffic(t *testing.T) {
	const (
		servers = 12
		masters = 3
		every   = defaultBeat
		periods = 20
	)
	c := redistest.StartCluster(t, masters)
	ctx := redistest.Context(t, 60*time.Second)
	hubs := make([]*Hub, servers)
	for i := range hubs {
		h := New(c.Client(t, nil), &Options{Heartbeat: every})
		defer h.Close()
		l := h.ListenAll("inval", func(string) {})
		defer l.Close()
		hubs[i] = h
	}
	for i, h := range hubs {
		redistest.WaitFor(t, fmt.Sprintf("server %d to hear heartbeats", i), func() bool { return h.Heard() != 0 })
	}
	before, start := measureTraffic(t, ctx, c), time.Now()
	goal := start.Add(periods * every).UnixNano()
	for i, h := range hubs {
		redistest.WaitFor(t, fmt.Sprintf("server %d's Heard to advance %d periods", i, periods),
			func() bool { return h.Heard() >= goal })
	}
	after, span := measureTraffic(t, ctx, c), time.Since(start)
	forwarded := after.forwarded - before.forwarded
	n := float64(span) / float64(every)
	t.Logf("%d servers, %d masters, %.1f periods of %v: per second %.0f forwarded, %.0f PUBLISH, %.0f EVALSHA",
		servers, masters, n, every, float64(forwarded)/span.Seconds(),
		float64(after.publish-before.publish)/span.Seconds(), float64(after.evalsha-before.evalsha)/span.Seconds())
	// One heartbeat per master per period, every one forwarded to the
	// other nodes, with room for four times that; servers x masters
	// heartbeats per period would be twelve times.
	if limit := int64(4 * masters * (masters - 1) * (n + 2)); forwarded > limit {
		t.Errorf("%d PUBLISH messages forwarded over %.1f periods; want at most %d, whatever the servers", forwarded, n, limit)
	}
}
