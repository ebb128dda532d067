package faults_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/Shopify/toxiproxy/v2/toxics"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/locksmith-go/locksmith/internal/redistest"
)

// TestMain checks that no test leaves a goroutine behind: every client,
// Locker, Cache, proxy and HTTP server is closed by its test.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Generous bounds that only a hang reaches.
const (
	hangTimeout = 20 * time.Second // one call, or one condition to come true
	testTimeout = 60 * time.Second // one whole scenario
)

// ctxT and waitFor are the shared test helpers, bound to this suite's names.
func ctxT(t testing.TB, d time.Duration) context.Context { return redistest.Context(t, d) }

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	redistest.WaitFor(t, what, cond)
}

// within runs fn on its own goroutine and returns its error, failing the
// test if fn has not returned within hangTimeout: it tells a call that
// returns late (by its context) from one that hangs.
func within(t testing.TB, what string, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(hangTimeout):
		t.Fatalf("%s did not return within %v", what, hangTimeout)
		return nil
	}
}

// toxi is an in-process toxiproxy: proxies between the clients and Redis
// that add latency, black-hole replies or reset connections on demand.
type toxi struct {
	srv *toxiproxy.ApiServer
	n   int
}

func newToxi() *toxi {
	return &toxi{srv: toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())}
}

// proxy is one toxiproxy proxy listening on a free loopback port.
type proxy struct {
	p *toxiproxy.Proxy
}

// proxy starts a proxy to upstream on a free 127.0.0.1 port. It is stopped,
// closing its connections, in t.Cleanup.
func (x *toxi) proxy(t testing.TB, upstream string) *proxy {
	t.Helper()
	x.n++
	p := toxiproxy.NewProxy(x.srv, fmt.Sprintf("redis%d", x.n), "127.0.0.1:0", upstream)
	if err := x.srv.Collection.Add(p, true); err != nil {
		t.Fatalf("starting proxy to %s: %v", upstream, err)
	}
	t.Cleanup(func() { _ = x.srv.Collection.Remove(p.Name) })
	return &proxy{p: p}
}

// Addr returns the address clients dial to go through the proxy.
func (p *proxy) Addr() string { return p.p.Listen }

// toxic adds a toxic of typ ("latency", "timeout", "reset_peer") on stream
// ("upstream": client to Redis, "downstream": Redis to client) to every
// connection of the proxy, current and future, and returns its name.
func (p *proxy) toxic(t testing.TB, typ, stream string, attrs map[string]int64) string {
	t.Helper()
	name := typ + "_" + stream
	body, err := json.Marshal(map[string]any{"name": name, "type": typ, "stream": stream, "attributes": attrs})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.p.Toxics.AddToxicJson(strings.NewReader(string(body))); err != nil {
		t.Fatalf("adding toxic %s: %v", name, err)
	}
	return name
}

// heal removes the toxic. Removing a timeout toxic closes the connections
// whose data it was holding back.
func (p *proxy) heal(t testing.TB, name string) {
	t.Helper()
	if err := p.p.Toxics.RemoveToxic(context.Background(), name); err != nil {
		t.Fatalf("removing toxic %s: %v", name, err)
	}
}

// dropOnceToxic is a toxic of type "drop_once": the first data that reaches
// it, on any connection of its proxy, is dropped and that connection closed;
// everything else passes through. It loses exactly one request or reply,
// and the network is sound again at once for the client's next try.
type dropOnceToxic struct {
	fired atomic.Bool
}

func init() { toxics.Register("drop_once", new(dropOnceToxic)) }

// Pipe implements toxics.Toxic.
func (d *dropOnceToxic) Pipe(stub *toxics.ToxicStub) {
	for {
		select {
		case <-stub.Interrupt:
			return
		case c := <-stub.Input:
			if c == nil || d.fired.CompareAndSwap(false, true) {
				stub.Close()
				return
			}
			select {
			case stub.Output <- c:
			case <-stub.Interrupt:
				stub.Output <- c
				return
			}
		}
	}
}

// TestHelperProcess is not a test: it is the entry point of the child
// processes some scenarios start (the test binary run again with
// -test.run=^TestHelperProcess$ and helperEnv naming the helper). It does
// nothing when run as a test.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return
	}
	fn := helpers[mode]
	if fn == nil {
		fmt.Fprintf(os.Stderr, "unknown helper %q\n", mode)
		os.Exit(2)
	}
	os.Exit(fn())
}
