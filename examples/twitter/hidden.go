package main

// A hidden limit (-hidden-limit): the API does not state its limit, and
// changes it during the run; mode fill+adaptive's budget learns it.

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/locksmith-go/locksmith/budget"
)

// hiddenStep is one step of a hidden limit: the API allows rate calls per
// second for d, then goes on to the next step; the last one holds.
type hiddenStep struct {
	rate float64
	d    time.Duration
}

// hiddenFlag is the -hidden-limit flag: the steps of the API's hidden
// limit, "40/10s,60/10s,20/10s"; none for a limit the API states.
type hiddenFlag []hiddenStep

func (f *hiddenFlag) String() string {
	steps := make([]string, len(*f))
	for i, s := range *f {
		steps[i] = strconv.FormatFloat(s.rate, 'g', -1, 64) + "/" + s.d.String()
	}
	return strings.Join(steps, ",")
}

func (f *hiddenFlag) Set(v string) error {
	var steps hiddenFlag
	for step := range strings.SplitSeq(v, ",") {
		r, d, ok := strings.Cut(strings.TrimSpace(step), "/")
		rate, err := strconv.ParseFloat(r, 64)
		if !ok || err != nil || !(rate > 0) || rate > 1e9 {
			return fmt.Errorf("%q is not a step of a hidden limit: want calls/s, a positive number, then /duration (40/10s)", step)
		}
		dur, err := time.ParseDuration(d)
		if err != nil || dur < 2*time.Millisecond {
			return fmt.Errorf("%q is not a step of a hidden limit: want a duration of 2ms or more after the / (40/10s)", step)
		}
		steps = append(steps, hiddenStep{rate, dur})
	}
	*f = steps
	return nil
}

// at returns the hidden limit in force d after the start.
func (f hiddenFlag) at(d time.Duration) float64 {
	for _, s := range f {
		if d < s.d {
			return s.rate
		}
		d -= s.d
	}
	return f[len(f)-1].rate
}

// tick is how often a run against a hidden limit samples what the API
// served and the learned rate: every second, or twice a step when a step
// is shorter than two seconds.
func (f hiddenFlag) tick() time.Duration {
	t := time.Second
	for _, s := range f {
		t = min(t, s.d/2)
	}
	return t
}

// tracePoint is what the API served over one tick of a run against a
// hidden limit, and the rate the fleet's budget had learned by its end.
type tracePoint struct {
	AtMs    float64 `json:"at_ms"`          // the tick's end, from the start of the run
	Limit   float64 `json:"hidden_limit_s"` // calls/s the API allowed
	Served  float64 `json:"served_per_s"`   // calls/s it answered 200
	Refused int64   `json:"refused"`        // calls it refused (429)
	Learned float64 `json:"learned_per_s"`  // mean of the servers' budget.Stats().Rate; 0 without Options.Adaptive
	Cuts    uint64  `json:"learned_cuts"`   // cuts of the learned rate so far, fleet-wide
}

// hide makes api state no limit and follow the steps of cfg's hidden
// limit until the returned func is called, which also stops sampling and
// returns what each tick saw: the calls api served and refused, and the
// rate servers' budgets had learned.
func hide(cfg config, api *fakeAPI, servers []appServer) (stop func() []tracePoint) {
	api.hidden.Store(true)
	api.bucket.setRate(api.now(), cfg.hidden.at(0))
	start := time.Now()
	tick := cfg.hidden.tick()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var trace []tracePoint
	wg.Go(func() {
		t := time.NewTicker(tick)
		defer t.Stop()
		var served, refused int64
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				d := now.Sub(start)
				api.bucket.setRate(api.now(), cfg.hidden.at(d))
				s, r := api.calls()
				p := tracePoint{AtMs: millis(d), Limit: cfg.hidden.at(d - tick),
					Served: round2(float64(s-served) / tick.Seconds()), Refused: r - refused}
				served, refused = s, r
				p.Learned, p.Cuts = learned(servers)
				trace = append(trace, p)
			}
		}
	})
	return func() []tracePoint {
		cancel()
		wg.Wait()
		return trace
	}
}

// learned returns the mean of the servers' learned rates (calls/s) and
// their cuts, for the servers whose budget learns (Options.Adaptive): each
// server's budget.Stats().Rate is the rate as it last heard it.
func learned(servers []appServer) (rate float64, cuts uint64) {
	n := 0
	for _, s := range servers {
		bs, ok := s.(interface{ learnedStats() (budget.Stats, bool) })
		if !ok {
			continue
		}
		st, ok := bs.learnedStats()
		if !ok {
			continue
		}
		n++
		rate += st.Rate
		cuts += st.RateCuts
	}
	if n == 0 {
		return 0, 0
	}
	return round2(rate / float64(n)), cuts
}

// apiLimit tells the API's limit: -rate, or the steps of the hidden one.
func apiLimit(cfg config) string {
	if len(cfg.hidden) > 0 {
		return "hidden limit of " + cfg.hidden.String() + " (calls/s for a time each; the fleet is told " +
			strconv.FormatFloat(cfg.rate, 'g', -1, 64) + ")"
	}
	return strconv.FormatFloat(cfg.rate, 'g', -1, 64) + " calls/s"
}

// cutsOf tells the cuts of the learned rate of mode r, if it learns.
func cutsOf(r result) string {
	if r.Mode != adaptiveMode || r.Budget == nil {
		return ""
	}
	return ", " + plural(int64(r.Budget.RateCuts), "cut") + " of the learned rate"
}

// writeTrace writes the trace of each mode run against a hidden limit.
func writeTrace(w io.Writer, cfg config, results []result) {
	for _, r := range results {
		if len(r.Trace) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s against the hidden limit (%s), every %s:\n", r.Mode, cfg.hidden.String(), cfg.hidden.tick())
		rows := [][]string{{"t s", "limit/s", "served/s", "429s", "learned/s", "cuts"}}
		for _, p := range r.Trace {
			learned := "-"
			if p.Learned > 0 {
				learned = fmt.Sprintf("%.1f", p.Learned)
			}
			rows = append(rows, []string{fmt.Sprintf("%.1f", p.AtMs/1000), fmt.Sprintf("%g", p.Limit),
				fmt.Sprintf("%.1f", p.Served), fmt.Sprint(p.Refused), learned, fmt.Sprint(p.Cuts)})
		}
		writeTable(w, rows)
	}
}
