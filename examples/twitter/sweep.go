package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"

	"github.com/locksmith-go/locksmith/examples/internal/demo"
)

// sweepRun is what the modes did on one fleet size of a sweep.
type sweepRun struct {
	Servers int               `json:"servers"`
	Results map[string]result `json:"results"` // by mode
}

// sweep runs the modes once per fleet size of -servers, and reports the
// calls and latencies of each mode against the size: one table, or with
// -json one object with the settings and a "sweep" of runs.
func sweep(ctx context.Context, cfg config, env *demo.Redis, ids []uint64, progressTo io.Writer, w io.Writer) error {
	var runs []sweepRun
	var ordered [][]result
	for _, n := range cfg.fleets {
		cfg.servers = n
		results, err := runModes(ctx, cfg, env, ids, progressTo)
		if err != nil {
			return fmt.Errorf("%d servers: %w", n, err)
		}
		run := sweepRun{Servers: n, Results: map[string]result{}}
		for _, r := range results {
			run.Results[r.Mode] = r
		}
		runs = append(runs, run)
		ordered = append(ordered, results)
	}
	distinct := len(distinctIDs(ids))
	if cfg.json {
		rep := struct {
			Settings jsonSettings `json:"settings"`
			Sweep    []sweepRun   `json:"sweep"`
		}{settingsOf(cfg, env), runs}
		rep.Settings.Servers, rep.Settings.Fleets = 0, cfg.fleets
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	fmt.Fprintf(w, "Fleet sizes %s: %d requests (%d in flight) for %d possible users, %d requested (Zipf s=%g, seed %d)\n",
		cfg.fleets.String(), cfg.requests, cfg.concurrency, cfg.keys, distinct, cfg.zipf, cfg.seed)
	fmt.Fprintf(w, "API: %g calls/s, burst %d, %s per call; Redis: %s; deadline of each request: %s\n\n",
		cfg.rate, cfg.burst, cfg.latency, env.Desc, cfg.timeout)
	rows := [][]string{{"mode", "servers", "API calls", "429s", "failed", "calls/key", "p50 ms", "p99 ms", "wall ms"}}
	for i, results := range ordered {
		for _, r := range results {
			rows = append(rows, []string{r.Mode, strconv.Itoa(runs[i].Servers), fmt.Sprint(r.APICalls), fmt.Sprint(r.Refused),
				fmt.Sprint(r.Failed), fmt.Sprintf("%.2f", r.CallsPerKey), fmt.Sprintf("%.1f", r.P50ms),
				fmt.Sprintf("%.1f", r.P99ms), fmt.Sprintf("%.0f", r.WallMs)})
		}
	}
	writeTable(w, rows)
	_, err := fmt.Fprintf(w, "\nThe fewest calls %d users can take at %d per batch call: %d.\n",
		distinct, maxBatch, (distinct+maxBatch-1)/maxBatch)
	return err
}
