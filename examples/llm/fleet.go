package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// fleet is the app servers of one mode, each on its own serverEnv.
type fleet struct {
	servers []appServer
	envs    []serverEnv
}

// newFleet builds cfg.servers servers of mode m, calling the API at base and
// recording the completions they receive in usage.
func newFleet(cfg config, env *redisEnv, m mode, base string, usage *usageLog) *fleet {
	f := &fleet{servers: make([]appServer, cfg.servers), envs: make([]serverEnv, cfg.servers)}
	for i := range f.servers {
		f.envs[i] = serverEnv{
			cfg:    cfg,
			rdb:    env.client(),
			api:    &apiClient{hc: newHTTPClient(cfg.concurrency, cfg.timeout), base: base, usage: usage},
			prefix: cfg.prefix + m.name + ":",
		}
		f.servers[i] = m.newServer(f.envs[i])
	}
	return f
}

// close closes every server, then its clients.
func (f *fleet) close() error {
	var err error
	for i, s := range f.servers {
		err = errors.Join(err, s.close())
		f.envs[i].api.close()
		err = errors.Join(err, f.envs[i].rdb.Close())
	}
	return err
}

// outcome is what the fleet saw of a request sequence.
type outcome struct {
	latencies []time.Duration // of every request issued, failed ones included
	failed    int
	firstErr  error // of the failed requests, the first to fail
}

// drive sends prompts[i] to servers[i%len(servers)], at most concurrency at
// a time, each request bounded by timeout. It stops issuing requests when ctx
// is done and returns once every request issued has finished. done counts
// finished requests as they finish.
func drive(ctx context.Context, servers []appServer, prompts []string, concurrency int, timeout time.Duration, done *atomic.Int64) outcome {
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		mu      sync.Mutex // guards out
		out     outcome
		workers = min(concurrency, len(prompts))
	)
	for range workers {
		wg.Go(func() {
			var lat []time.Duration
			var failed []error
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(prompts) {
					break
				}
				d, err := request(ctx, servers[i%len(servers)], prompts[i], timeout)
				lat = append(lat, d)
				if err != nil {
					failed = append(failed, err)
				}
				done.Add(1)
			}
			mu.Lock()
			defer mu.Unlock()
			out.latencies = append(out.latencies, lat...)
			out.failed += len(failed)
			if out.firstErr == nil && len(failed) > 0 {
				out.firstErr = failed[0]
			}
		})
	}
	wg.Wait()
	return out
}

// request sends one request and times it.
func request(ctx context.Context, s appServer, prompt string, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	_, err := s.complete(ctx, prompt)
	return time.Since(start), err
}

// isTerminal reports whether w is a terminal: a character device, which a
// file or a pipe is not. (A few other devices are too, such as /dev/null,
// where the progress line does no harm.)
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progress writes "mode done/total" on w every interval, overwriting the
// line, until the returned function is called; that function clears the
// line and returns once nothing more will be written. The line is for a
// terminal: a log would get the lines joined by carriage returns.
func progress(w io.Writer, mode string, total int, done *atomic.Int64, interval time.Duration) (stop func()) {
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
