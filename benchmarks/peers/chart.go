package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"strings"
)

// Chart geometry, in SVG user units.
const (
	chartW     = 980
	chartH     = 500
	plotTop    = 124
	plotBottom = 380
	colorOurs  = "#2563eb"
	colorPeer  = "#94a3b8"
	colorGrid  = "#e2e8f0"
	colorText  = "#1e293b"
	colorMuted = "#64748b"
)

type bar struct {
	label, sub string // two lines under the bar
	group      string // caption under a run of bars of the same group
	value      float64
	text       string // printed above the bar
	title      string // tooltip
	ours       bool
	light      bool // second series: drawn lighter
	slot       int  // consecutive bars of one slot are drawn side by side
}

// svgWriter accumulates SVG elements.
type svgWriter struct{ b bytes.Buffer }

func (s *svgWriter) printf(format string, args ...any) { fmt.Fprintf(&s.b, format, args...) }

func esc(v string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(v))
	return b.String()
}

func (s *svgWriter) text(x, y float64, anchor, size, color, weight, v string) {
	s.printf(`<text x="%.1f" y="%.1f" text-anchor="%s" font-size="%s" fill="%s" font-weight="%s">%s</text>`+"\n",
		x, y, anchor, size, color, weight, esc(v))
}

func (s *svgWriter) line(x1, y1, x2, y2 float64, color string) {
	s.printf(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>`+"\n", x1, y1, x2, y2, color)
}

// renderChart draws two bar groups: how soon a waiter proceeds once the lock
// is released or the value loaded (median, log scale), and the loader calls
// per key of a stampede (linear scale).
func renderChart(r *Results) []byte {
	cfg, env := r.Config, r.Environment
	s := &svgWriter{}
	s.printf(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif">`+"\n",
		chartW, chartH, chartW, chartH)
	s.printf(`<rect width="100%%" height="100%%" fill="#ffffff"/>` + "\n")
	s.text(20, 30, "start", "18", colorText, "600", "locksmith and peer libraries on one Redis")
	s.text(20, 50, "start", "12", colorMuted, "400", fmt.Sprintf("Redis %s, %s %s/%s, GOMAXPROCS %d; one process, one run",
		env.RedisVersion, env.GoVersion, env.OS, env.Arch, env.GOMAXPROCS))

	// Left: how soon a waiter proceeds.
	var wait []bar
	for _, h := range r.Handoff {
		sub := ""
		switch h.Library {
		case "locksmith":
			sub = "Obtain (pub/sub)"
		case "bsm/redislock":
			sub = "retry " + redislockBackoff.String()
		case "redsync":
			sub = "retry 50–250ms"
		}
		wait = append(wait, bar{label: h.Library, sub: sub, group: "lock handoff", value: h.MedianMs,
			text: fmtMs(h.MedianMs), title: h.Library + " lock handoff, median: " + fmtMs(h.MedianMs),
			ours: h.Library == "locksmith", slot: len(wait)})
	}
	firstK := 0
	if len(cfg.Keys) > 0 {
		firstK = cfg.Keys[0]
	}
	for _, st := range r.Stampede {
		if st.Keys != firstK || st.FollowerSamples == 0 || st.Library == "naive" {
			continue
		}
		sub, what := "fill: woken", "follower woken"
		if st.FollowerMeaning != followerWoken {
			sub, what = "loads it again", "other server returns (it loaded the key itself)"
		}
		wait = append(wait, bar{label: st.Library, sub: sub, group: fmt.Sprintf("stampede follower (K=%d)", firstK),
			value: st.Follower.MedianMs, text: fmtMs(st.Follower.MedianMs),
			title: st.Library + " " + what + ", median: " + fmtMs(st.Follower.MedianMs),
			ours:  st.Library == "locksmith", slot: len(wait)})
	}
	s.text(80, 84, "start", "14", colorText, "600", "How soon a waiter proceeds")
	s.text(80, 100, "start", "11", colorMuted, "400",
		"median ms after the holder releases (lock) or the load ends (cache); log scale")
	logPanel(s, 80, 590, wait)

	// Right: loader calls per key.
	var loads []bar
	for li, lib := range fillLibs() {
		for i, k := range cfg.Keys {
			for _, st := range r.Stampede {
				if st.Library == lib.Name && st.Keys == k {
					loads = append(loads, bar{label: lib.Name, value: st.LoadsPerKey, text: trimFloat(math.Round(st.LoadsPerKey*10) / 10),
						title: fmt.Sprintf("%s, K=%d: %s loads per key", lib.Name, k, trimFloat(st.LoadsPerKey)),
						ours:  lib.Name == "locksmith", light: i > 0, slot: li})
				}
			}
		}
	}
	s.text(690, 84, "start", "14", colorText, "600", "Loader calls per key, stampede")
	s.text(690, 100, "start", "11", colorMuted, "400", fmt.Sprintf("%d servers × %d goroutines, same cold keys",
		cfg.Servers, cfg.Goroutines))
	linearPanel(s, 690, 965, loads, cfg.Keys)

	s.text(20, chartH-30, "start", "11", colorMuted, "400", fmt.Sprintf(
		"Handoff: %d samples per library, each waiting its own way: locksmith is woken by pub/sub; bsm/redislock retries every %s; redsync uses its defaults.",
		cfg.HandoffSamples, redislockBackoff))
	s.text(20, chartH-14, "start", "11", colorMuted, "400", fmt.Sprintf(
		"Stampede: loader %s, %d rounds on fresh keys. go-redis/cache merges callers in-process only, so every server loads the key itself.",
		cfg.LoadDelay, cfg.Rounds))
	s.printf("</svg>\n")
	return s.b.Bytes()
}

// logPanel draws bars between x0 and x1 on a log10 axis spanning whole
// decades.
func logPanel(s *svgWriter, x0, x1 float64, bars []bar) {
	minV, maxV := math.Inf(1), 0.0
	for _, b := range bars {
		if b.value > 0 {
			minV, maxV = math.Min(minV, b.value), math.Max(maxV, b.value)
		}
	}
	if maxV == 0 {
		return
	}
	lo, hi := math.Floor(math.Log10(minV)), math.Ceil(math.Log10(maxV))
	if hi <= lo {
		hi = lo + 1
	}
	y := func(v float64) float64 {
		return plotBottom - (math.Log10(v)-lo)/(hi-lo)*(plotBottom-plotTop)
	}
	for d := lo; d <= hi; d++ {
		v := math.Pow(10, d)
		yy := y(v)
		s.line(x0, yy, x1, yy, colorGrid)
		s.text(x0-6, yy+4, "end", "11", colorMuted, "400", trimFloat(v)+" ms")
	}
	drawBars(s, x0, x1, bars, func(v float64) float64 {
		if v <= 0 {
			return plotBottom
		}
		return math.Min(y(v), plotBottom-1)
	})
}

// linearPanel draws bars between x0 and x1 on a linear axis from 0, with a
// legend for the key counts when there are several.
func linearPanel(s *svgWriter, x0, x1 float64, bars []bar, keys []int) {
	maxV := 0.0
	for _, b := range bars {
		maxV = math.Max(maxV, b.value)
	}
	if maxV == 0 {
		return
	}
	step := niceStep(maxV / 4)
	top := math.Ceil(maxV/step) * step
	y := func(v float64) float64 { return plotBottom - v/top*(plotBottom-plotTop) }
	for v := 0.0; v <= top+step/2; v += step {
		yy := y(v)
		s.line(x0, yy, x1, yy, colorGrid)
		s.text(x0-6, yy+4, "end", "11", colorMuted, "400", trimFloat(v))
	}
	drawBars(s, x0, x1, bars, func(v float64) float64 { return math.Min(y(v), plotBottom-1) })
	if len(keys) > 1 {
		for i, k := range keys {
			lx := x0 + 8 + float64(i)*64
			op := "1"
			if i > 0 {
				op = "0.45"
			}
			s.printf(`<rect x="%.1f" y="%d" width="10" height="10" fill="%s" fill-opacity="%s"/>`+"\n", lx, plotTop-14, colorPeer, op)
			s.text(lx+14, plotTop-5, "start", "11", colorMuted, "400", fmt.Sprintf("K=%d keys", k))
		}
	}
}

// drawBars lays the bars' slots out evenly between x0 and x1, the bars of a
// slot side by side, and captions runs of bars of the same group.
func drawBars(s *svgWriter, x0, x1 float64, bars []bar, y func(float64) float64) {
	type slot struct{ start, n int }
	var slots []slot
	for i, b := range bars {
		if i > 0 && b.slot == bars[i-1].slot {
			slots[len(slots)-1].n++
			continue
		}
		slots = append(slots, slot{start: i, n: 1})
	}
	slotW := (x1 - x0) / float64(len(slots))
	for si, sl := range slots {
		cx := x0 + slotW*(float64(si)+0.5)
		barW := math.Min(44, slotW*0.6/float64(sl.n))
		left := cx - barW*float64(sl.n)/2
		for j := range sl.n {
			b := bars[sl.start+j]
			bx := left + barW*float64(j)
			by := y(b.value)
			fill := colorPeer
			if b.ours {
				fill = colorOurs
			}
			op := "1"
			if b.light {
				op = "0.45"
			}
			s.printf(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="%s"><title>%s</title></rect>`+"\n",
				bx+1, by, barW-2, plotBottom-by, fill, op, esc(b.title))
			s.text(bx+barW/2, by-5, "middle", "11", colorText, "600", b.text)
		}
		first := bars[sl.start]
		weight := "400"
		if first.ours {
			weight = "600"
		}
		s.text(cx, plotBottom+18, "middle", "12", colorText, weight, first.label)
		if first.sub != "" {
			s.text(cx, plotBottom+33, "middle", "11", colorMuted, "400", first.sub)
		}
	}
	s.line(x0, plotBottom, x1, plotBottom, colorMuted)
	for i := 0; i < len(slots); {
		g := bars[slots[i].start].group
		j := i + 1
		for j < len(slots) && bars[slots[j].start].group == g {
			j++
		}
		if g != "" {
			gx0, gx1 := x0+slotW*float64(i)+8, x0+slotW*float64(j)-8
			s.line(gx0, plotBottom+44, gx1, plotBottom+44, colorMuted)
			s.text((gx0+gx1)/2, plotBottom+58, "middle", "11", colorMuted, "600", g)
		}
		i = j
	}
}

// niceStep rounds raw up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// trimFloat prints v with at most two decimals and no trailing zeros.
func trimFloat(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(s, "0")
	return strings.TrimSuffix(s, ".")
}

// writeSVG writes the chart to path.
func writeSVG(path string, r *Results) error {
	return writeFileAtomic(path, renderChart(r))
}
