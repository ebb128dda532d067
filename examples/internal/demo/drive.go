package demo

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Outcome is what the fleet saw of a request sequence.
type Outcome struct {
	Latencies []time.Duration // of every request issued, failed ones included
	Failed    int
	FirstErr  error // of the failed requests, the first to fail
}

// Drive sends requests 0 to n-1 with send, at most concurrency at a time,
// each on a ctx bounded by timeout, and times them. It stops issuing
// requests when ctx is done and returns once every request issued has
// finished. done counts finished requests as they finish.
func Drive(ctx context.Context, n, concurrency int, timeout time.Duration, send func(ctx context.Context, i int) error, done *atomic.Int64) Outcome {
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		mu      sync.Mutex // guards out
		out     Outcome
		workers = min(concurrency, n)
	)
	for range workers {
		wg.Go(func() {
			var lat []time.Duration
			var failed []error
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					break
				}
				rctx, cancel := context.WithTimeout(ctx, timeout)
				start := time.Now()
				err := send(rctx, i)
				lat = append(lat, time.Since(start))
				cancel()
				if err != nil {
					failed = append(failed, err)
				}
				done.Add(1)
			}
			mu.Lock()
			defer mu.Unlock()
			out.Latencies = append(out.Latencies, lat...)
			out.Failed += len(failed)
			if out.FirstErr == nil && len(failed) > 0 {
				out.FirstErr = failed[0]
			}
		})
	}
	wg.Wait()
	return out
}

// IsTerminal reports whether w is a terminal: a character device, which a
// file or a pipe is not. (A few other devices are too, such as /dev/null,
// where the progress line does no harm.)
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// Progress writes "mode done/total" on w every interval, overwriting the
// line, until the returned function is called; that function clears the
// line and returns once nothing more will be written. The line is for a
// terminal: a log would get the lines joined by carriage returns.
func Progress(w io.Writer, mode string, total int, done *atomic.Int64, interval time.Duration) (stop func()) {
	line := func() string {
		return fmt.Sprintf("%s %*d/%d requests", mode, len(strconv.Itoa(total)), done.Load(), total)
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			fmt.Fprint(w, "\r"+line())
			select {
			case <-t.C:
			case <-quit:
				return
			}
		}
	})
	return func() {
		close(quit)
		wg.Wait()
		fmt.Fprint(w, "\r"+strings.Repeat(" ", len(line()))+"\r")
	}
}
