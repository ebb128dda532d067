package otel_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/locksmith-go/locksmith/fill"
	lsotel "github.com/locksmith-go/locksmith/otel"
)

// A Cache whose metrics a Prometheus server scrapes from /metrics: the
// OpenTelemetry SDK with the Prometheus exporter as its reader.
func Example_prometheus() {
	ctx := context.Background()

	// The exporter registers with a registry of its own here; without
	// WithRegisterer it uses prometheus.DefaultRegisterer.
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo(), otelprom.WithoutTargetInfo())
	if err != nil {
		fmt.Println(err)
		return
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	defer mp.Shutdown(ctx)

	// An embedded Redis, so the example runs anywhere.
	m, err := miniredis.Run()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close()
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	defer rdb.Close()

	cache := fill.New(rdb, &fill.Options{
		Prefix: "example:",
		Events: lsotel.New(&lsotel.Options{MeterProvider: mp}),
	})
	defer cache.Close()
	for range 3 { // a miss and a load, then two hits
		if _, err := fill.Get(ctx, cache, "user:37344436", func(context.Context) (string, error) {
			return "jack", nil
		}); err != nil {
			fmt.Println(err)
			return
		}
	}

	// Serve /metrics on loopback, and read it as Prometheus would.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	defer srv.Close()

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "locksmith_lookups_total") || strings.HasPrefix(line, "locksmith_load_duration_seconds_count") {
			fmt.Println(line)
		}
	}
	// Output:
	// locksmith_load_duration_seconds_count{locksmith_absent="false",locksmith_background="false",locksmith_name="example:",locksmith_source="fill"} 1
	// locksmith_lookups_total{locksmith_lookup_result="hit",locksmith_name="example:",locksmith_source="fill"} 2
	// locksmith_lookups_total{locksmith_lookup_result="miss",locksmith_name="example:",locksmith_source="fill"} 1
}
