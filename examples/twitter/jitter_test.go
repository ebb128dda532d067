package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// BenchmarkArrivalJitter measures what no budget sees: how long an HTTP
// call takes from the client's send to the handler's start, on this host,
// with nothing else running. One goroutine sends a call every 20 ms (the
// demo's 50 calls/s) to a handler in the same process that takes 80 ms
// (the demo's latency); b.N calls in all.
//
// An upstream that allows no burst refuses a call that arrives less than
// an interval after the one before it. Calls spaced an interval plus a
// slack s apart are refused where the earlier one's delay exceeds the
// later one's by more than s, whatever the pacing: the metrics
// refused%@slack=Xms are the share of consecutive calls for which that
// happened here, the least any budget pacing X ms under the limit could
// draw on this host. Run it with -benchtime 1500x (30 s).
func BenchmarkArrivalJitter(b *testing.B) {
	var (
		mu     sync.Mutex
		delays []int64 // µs, in order of arrival
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now().UnixMicro()
		sent, err := strconv.ParseInt(r.Header.Get("X-Sent"), 10, 64)
		if err == nil {
			mu.Lock()
			delays = append(delays, now-sent)
			mu.Unlock()
		}
		time.Sleep(80 * time.Millisecond)
	}))
	defer srv.Close()
	hc := newHTTPClient(warmConns, 10*time.Second)
	defer hc.CloseIdleConnections()
	c := &apiClient{hc: hc, base: srv.URL}
	if err := c.warm(b.Context(), warmConns); err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	next := time.Now()
	b.ResetTimer()
	for range b.N {
		next = next.Add(20 * time.Millisecond)
		time.Sleep(time.Until(next))
		wg.Go(func() {
			req, err := http.NewRequestWithContext(b.Context(), http.MethodGet, srv.URL, nil)
			if err != nil {
				b.Error(err)
				return
			}
			req.Header.Set("X-Sent", strconv.FormatInt(time.Now().UnixMicro(), 10))
			resp, err := hc.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		})
	}
	wg.Wait()
	b.StopTimer()
	mu.Lock()
	defer mu.Unlock()
	if len(delays) < 2 {
		return // the first run, of one call, says nothing
	}
	for _, slack := range []int64{0, 1000, 2000, 3000} {
		over := 0
		for i := 1; i < len(delays); i++ {
			if delays[i-1]-delays[i] > slack {
				over++
			}
		}
		b.ReportMetric(100*float64(over)/float64(len(delays)-1), "refused%@slack="+strconv.FormatInt(slack/1000, 10)+"ms")
	}
	sorted := slices.Sorted(slices.Values(delays))
	q := func(p float64) float64 { return float64(sorted[int(p*float64(len(sorted)-1))]) / 1000 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(q(0.995), "p99.5-ms")
}
