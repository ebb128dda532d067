package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// Module paths of the peers, for the version line.
var peerModules = []struct{ name, path string }{
	{"bsm/redislock", "github.com/bsm/redislock"},
	{"redsync", "github.com/go-redsync/redsync/v4"},
	{"go-redis/cache", "github.com/go-redis/cache/v9"},
	{"rueidisaside", "github.com/redis/rueidis/rueidisaside"},
	{"rueidis", "github.com/redis/rueidis"},
	{"go-redis", "github.com/redis/go-redis/v9"},
}

// table writes aligned rows, printing a workload's name on its first row only
// and a blank row between workloads.
type table struct {
	tw   *tabwriter.Writer
	last string
}

func (t *table) row(workload, library, metric, value, ratio string) {
	wl := workload
	if workload == t.last {
		wl = ""
	} else if t.last != "" {
		fmt.Fprintln(t.tw, "\t\t\t\t")
	}
	t.last = workload
	fmt.Fprintf(t.tw, "%s\t%s\t%s\t%s\t%s\n", wl, library, metric, value, ratio)
}

// printTable writes the results side by side, then the settings and what
// each figure means.
func printTable(w io.Writer, r *Results) {
	env, cfg := r.Environment, r.Config
	where := "an existing server"
	if env.RedisOwned {
		where = "its own redis-server"
	}
	fmt.Fprintf(w, "locksmith and peers: Redis %s at %s (%s), %s %s/%s, GOMAXPROCS %d\n",
		env.RedisVersion, env.RedisAddr, where, env.GoVersion, env.OS, env.Arch, env.GOMAXPROCS)
	var vers []string
	for _, m := range peerModules {
		vers = append(vers, m.name+" "+orUnknown(env.Modules[m.path]))
	}
	fmt.Fprintf(w, "%s\n\n", strings.Join(vers, ", "))

	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	t.row("WORKLOAD", "LIBRARY", "METRIC", "VALUE", "RATIO")
	t.last = ""

	t.ops(fmt.Sprintf("lock acquire+release (uncontended, N=%d)", cfg.LockIterations), r.Lock)

	wl := fmt.Sprintf("lock handoff [a] (%d samples)", cfg.HandoffSamples)
	var ref HandoffResult
	for _, h := range r.Handoff {
		if h.Library == "locksmith" {
			ref = h
		}
	}
	for _, h := range r.Handoff {
		isRef := h.Library == ref.Library
		t.row(wl, h.Library, "median", fmtMs(h.MedianMs), ratioTo(h.MedianMs, ref.MedianMs, isRef))
		t.row(wl, h.Library, "p99", fmtMs(h.P99Ms), ratioTo(h.P99Ms, ref.P99Ms, isRef))
		t.row(wl, h.Library, "waiter commands per handoff", fmt.Sprintf("%.1f", h.WaiterCmdsPerHandoff),
			ratioTo(h.WaiterCmdsPerHandoff, ref.WaiterCmdsPerHandoff, isRef))
	}

	for _, k := range cfg.Keys {
		wl = fmt.Sprintf("stampede [b] S=%d×G=%d, K=%d (%d callers/key, R=%d)",
			cfg.Servers, cfg.Goroutines, k, cfg.Servers*cfg.Goroutines, cfg.Rounds)
		var ref StampedeResult
		for _, s := range r.Stampede {
			if s.Keys == k && s.Library == "locksmith" {
				ref = s
			}
		}
		for _, s := range r.Stampede {
			if s.Keys != k {
				continue
			}
			isRef := s.Library == ref.Library
			loads := fmt.Sprintf("%.2f", s.LoadsPerKey)
			if s.LoadsPerKeyMin != s.LoadsPerKeyMax {
				loads += fmt.Sprintf(" (%d–%d)", s.LoadsPerKeyMin, s.LoadsPerKeyMax)
			}
			t.row(wl, s.Library, "loads per key", loads, ratioTo(s.LoadsPerKey, ref.LoadsPerKey, isRef))
			what := "follower wake [c]"
			if s.FollowerMeaning != followerWoken {
				what = "other server returns [d]"
			}
			t.row(wl, s.Library, what+", median", fmtMs(s.Follower.MedianMs), ratioTo(s.Follower.MedianMs, ref.Follower.MedianMs, isRef))
			t.row(wl, s.Library, what+", p99", fmtMs(s.Follower.P99Ms), ratioTo(s.Follower.P99Ms, ref.Follower.P99Ms, isRef))
		}
	}

	wl = fmt.Sprintf("follower wake-up [e] (%d samples)", cfg.WakeSamples)
	var wref WakeResult
	for _, w := range r.Wake {
		if w.Library == "locksmith" {
			wref = w
		}
	}
	for _, w := range r.Wake {
		isRef := w.Library == wref.Library
		t.row(wl, w.Library, "median", fmtMs(w.MedianMs), ratioTo(w.MedianMs, wref.MedianMs, isRef))
		t.row(wl, w.Library, "p99", fmtMs(w.P99Ms), ratioTo(w.P99Ms, wref.P99Ms, isRef))
		t.row(wl, w.Library, "follower commands per wake-up", fmt.Sprintf("%.1f", w.FollowerRoundTrips),
			ratioTo(w.FollowerRoundTrips, wref.FollowerRoundTrips, isRef))
	}

	t.ops(fmt.Sprintf("cache hit [f] (warm key, N=%d)", cfg.HitIterations), r.Hit)
	_ = t.tw.Flush()

	fmt.Fprintf(w, "\nSettings\n")
	st := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, h := range r.Handoff {
		fmt.Fprintf(st, "  lock: %s\t%s\n", h.Library, h.Settings)
	}
	seen := map[string]bool{}
	for _, s := range r.Stampede {
		if !seen[s.Library] {
			seen[s.Library] = true
			fmt.Fprintf(st, "  cache: %s\t%s\n", s.Library, s.Settings)
		}
	}
	for _, h := range r.Hit {
		if !seen[h.Library] && h.Library != baselineName {
			seen[h.Library] = true
			fmt.Fprintf(st, "  cache: %s\t%s\n", h.Library, h.Settings)
		}
	}
	_ = st.Flush()

	fmt.Fprintf(w, "\nNotes\n")
	fmt.Fprintf(w, "  [a] Client A holds the lock; client B (another go-redis client) waits in Obtain/Lock; A releases after\n"+
		"      %s + uniform [0, %s); time from just before A's release call until B's obtain returns.\n"+
		"      %d warm-up samples discarded. Waiter commands: what B sent from its first try to obtaining.\n",
		cfg.HandoffHoldMin, cfg.HandoffHoldSpread, handoffWarmup)
	fmt.Fprintf(w, "  [b] S servers (separate clients, each with its own cache object; rueidisaside's each a rueidis client)\n"+
		"      × G goroutines each ask for all K fresh keys at once; the loader sleeps %s. Mean over R rounds;\n"+
		"      min–max shown when they differ. One warm-up round is discarded.\n", cfg.LoadDelay)
	fmt.Fprintf(w, "  [c] %s.\n", wrapNote(followerWoken))
	fmt.Fprintf(w, "  [d] %s:\n      what looks fast here is the upstream being called again on every server.\n",
		wrapNote(followerLoaded))
	fmt.Fprintf(w, "  [e] Server A loads a fresh key; once its loader has started, a caller on server B (another client)\n"+
		"      asks for the key and waits; A's loader returns %s later. Time from A's loader returning until\n"+
		"      B's call returns. %d warm-up samples discarded. Follower commands: what B's client sent per sample.\n",
		cfg.WakeHold, wakeWarmup)
	fmt.Fprintf(w, "  [f] One goroutine reads one warm key over and over. locksmith reads Redis (one script call);\n"+
		"      rueidisaside answers from its client-side cache in memory, which Redis invalidates on a write;\n"+
		"      locksmith-local from its in-process tier, which stores and deletes evict by pub/sub. Their round\n"+
		"      trips include their background traffic meanwhile (locksmith-local: its heartbeat PUBLISH).\n")
	fmt.Fprintf(w, "  Round trips are commands counted by a go-redis hook (ProcessHook, ProcessPipelineHook); for rueidis,\n"+
		"      commands sent with Do and DoCache calls not answered from memory (one write: CLIENT CACHING YES,\n"+
		"      MULTI, PTTL, GET, EXEC).\n")
	fmt.Fprintf(w, "  Every call gets the run's context, which can be cancelled (Ctrl-C), as a request's context can.\n")
}

// ops writes the rows of a timed workload: mean time and round trips per
// operation, each as a ratio to the GET baseline.
func (t *table) ops(workload string, results []OpResult) {
	var get OpResult
	for _, o := range results {
		if o.Library == baselineName {
			get = o
		}
	}
	for _, o := range results {
		tr, rr := ratio(o.NsPerOp, get.NsPerOp, "GET"), ratio(o.RoundTripsPerOp, get.RoundTripsPerOp, "GET")
		if o.Library == baselineName {
			tr, rr = "baseline", "baseline"
		}
		t.row(workload, o.Library, "mean time per op", fmtNs(o.NsPerOp), tr)
		t.row(workload, o.Library, "round trips per op", fmt.Sprintf("%.2f", o.RoundTripsPerOp), rr)
	}
}

func wrapNote(s string) string { return strings.ReplaceAll(s, "; ", ";\n      ") }

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}

// ratio formats v/ref, naming the reference.
func ratio(v, ref float64, name string) string {
	if ref <= 0 {
		return "n/a"
	}
	r := v / ref
	var s string
	switch {
	case r >= 100:
		s = fmt.Sprintf("%.0f×", r)
	case r >= 10:
		s = fmt.Sprintf("%.1f×", r)
	case r > 0 && r < 0.01:
		s = fmt.Sprintf("%.2g×", r) // two significant digits, not 0.00
	default:
		s = fmt.Sprintf("%.2f×", r)
	}
	return s + " " + name
}

func ratioTo(v, ref float64, isRef bool) string {
	if isRef {
		return "reference"
	}
	return ratio(v, ref, "locksmith")
}

func fmtNs(ns float64) string {
	switch d := time.Duration(ns); {
	case d < time.Microsecond:
		return fmt.Sprintf("%.0f ns", ns)
	case d < time.Millisecond:
		return fmt.Sprintf("%.1f µs", ns/1e3)
	default:
		return fmt.Sprintf("%.2f ms", ns/1e6)
	}
}

func fmtMs(v float64) string {
	switch {
	case v < 1:
		return fmt.Sprintf("%.3f ms", v)
	case v < 10:
		return fmt.Sprintf("%.2f ms", v)
	case v < 100:
		return fmt.Sprintf("%.1f ms", v)
	default:
		return fmt.Sprintf("%.0f ms", v)
	}
}

// writeJSON writes every figure to path.
func writeJSON(path string, r *Results) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'))
}

// writeFileAtomic writes data to path through a temporary file, so an
// interrupted run never leaves half a file behind.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}
