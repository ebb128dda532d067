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
	chartW     = 1040
	chartH     = 900
	rowH       = 390 // the second row of panels is drawn this much lower
	colorOurs  = "#2563eb"
	colorPeer  = "#94a3b8"
	colorGrid  = "#e2e8f0"
	colorText  = "#1e293b"
	colorMuted = "#64748b"
)

// panel is where a panel's bars go: x0 to x1 across, top to bottom (the
// axis) down.
type panel struct{ x0, x1, top, bottom float64 }

// row returns the panel between x0 and x1 in row r (0 or 1).
func row(r int, x0, x1 float64) panel {
	return panel{x0: x0, x1: x1, top: 124 + float64(r*rowH), bottom: 380 + float64(r*rowH)}
}

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

// renderChart draws four panels: how soon a waiter proceeds once the lock is
// released or the value loaded (median, log scale) and the loader calls per
// key of a stampede (linear scale); below, the follower wake-up of the
// libraries that wait across servers (linear scale) and the time of a cache
// hit (log scale).
func renderChart(r *Results) []byte {
	cfg, env := r.Config, r.Environment
	s := &svgWriter{}
	s.printf(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif">`+"\n",
		chartW, chartH, chartW, chartH)
	s.printf(`<rect width="100%%" height="100%%" fill="#ffffff"/>` + "\n")
	s.text(20, 30, "start", "18", colorText, "600", "locksmith and peer libraries on one Redis")
	s.text(20, 50, "start", "12", colorMuted, "400", fmt.Sprintf("Redis %s, %s %s/%s, GOMAXPROCS %d; one process, one run",
		env.RedisVersion, env.GoVersion, env.OS, env.Arch, env.GOMAXPROCS))

	// Top left: how soon a waiter proceeds.
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
		sub, what := wokenBy(st.Library), "follower woken"
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
	logPanel(s, row(0, 80, 600), wait, func(v float64) string { return trimFloat(v) + " ms" })

	// Top right: loader calls per key.
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
	s.text(680, 84, "start", "14", colorText, "600", "Loader calls per key, stampede")
	s.text(680, 100, "start", "11", colorMuted, "400", fmt.Sprintf("%d servers × %d goroutines, same cold keys",
		cfg.Servers, cfg.Goroutines))
	var keys []string
	if len(cfg.Keys) > 1 {
		for _, k := range cfg.Keys {
			keys = append(keys, fmt.Sprintf("K=%d keys", k))
		}
	}
	linearPanel(s, row(0, 680, 1025), loads, keys)

	// Bottom left: follower wake-up, one follower.
	var wakes []bar
	for _, w := range r.Wake {
		for i, v := range []struct {
			name string
			ms   float64
		}{{"median", w.MedianMs}, {"p99", w.P99Ms}} {
			wakes = append(wakes, bar{label: w.Library, sub: wokenBy(w.Library), value: v.ms, text: fmtMs(v.ms),
				title: fmt.Sprintf("%s follower wake-up, %s: %s", w.Library, v.name, fmtMs(v.ms)),
				ours:  w.Library == "locksmith", light: i > 0, slot: len(wakes) / 2})
		}
	}
	s.text(80, 84+rowH, "start", "14", colorText, "600", "Follower wake-up")
	s.text(80, 100+rowH, "start", "11", colorMuted, "400",
		"ms from the loader returning on one server to a waiting caller on another returning")
	linearPanel(s, row(1, 80, 480), wakes, []string{"median", "p99"})

	// Bottom right: a cache hit.
	var hits []bar
	for _, h := range r.Hit {
		us := h.NsPerOp / 1e3
		trips := trimFloat(h.RoundTripsPerOp) + " round trips"
		if trips == "1 round trips" {
			trips = "1 round trip"
		}
		hits = append(hits, bar{label: h.Library, sub: trips, value: us,
			text: fmtNs(h.NsPerOp), title: fmt.Sprintf("%s, warm key: %s per read", h.Library, fmtNs(h.NsPerOp)),
			ours: strings.HasPrefix(h.Library, "locksmith"), slot: len(hits)})
	}
	s.text(620, 84+rowH, "start", "14", colorText, "600", "Cache hit, warm key")
	s.text(620, 100+rowH, "start", "11", colorMuted, "400", "mean time per read, one goroutine; log scale")
	logPanel(s, row(1, 620, 1025), hits, func(v float64) string { return trimFloat(v) + " µs" })

	s.text(20, chartH-46, "start", "11", colorMuted, "400", fmt.Sprintf(
		"Handoff: %d samples per library, each waiting its own way: locksmith is woken by pub/sub; bsm/redislock retries every %s; redsync uses its defaults.",
		cfg.HandoffSamples, redislockBackoff))
	s.text(20, chartH-30, "start", "11", colorMuted, "400", fmt.Sprintf(
		"Stampede: loader %s, %d rounds on fresh keys. go-redis/cache merges callers in-process only, so every server loads the key itself.",
		cfg.LoadDelay, cfg.Rounds))
	s.text(20, chartH-14, "start", "11", colorMuted, "400", fmt.Sprintf(
		"Wake-up: %d samples, the load ending %s after the follower's call. Hit: %d reads; rueidisaside and locksmith-local answer from memory.",
		cfg.WakeSamples, cfg.WakeHold, cfg.HitIterations))
	s.printf("</svg>\n")
	return s.b.Bytes()
}

// wokenBy says how a library's waiting callers are woken.
func wokenBy(library string) string {
	switch library {
	case "locksmith":
		return "pub/sub"
	case "rueidisaside":
		return "invalidation"
	}
	return ""
}

// logPanel draws bars in p on a log10 axis spanning whole decades, its
// ticks labelled by tick.
func logPanel(s *svgWriter, p panel, bars []bar, tick func(float64) string) {
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
		return p.bottom - (math.Log10(v)-lo)/(hi-lo)*(p.bottom-p.top)
	}
	for d := lo; d <= hi; d++ {
		v := math.Pow(10, d)
		yy := y(v)
		s.line(p.x0, yy, p.x1, yy, colorGrid)
		s.text(p.x0-6, yy+4, "end", "11", colorMuted, "400", tick(v))
	}
	drawBars(s, p, bars, func(v float64) float64 {
		if v <= 0 {
			return p.bottom
		}
		return math.Min(y(v), p.bottom-1)
	})
}

// linearPanel draws bars in p on a linear axis from 0, with a legend naming
// the bars of a slot when there are several.
func linearPanel(s *svgWriter, p panel, bars []bar, legend []string) {
	maxV := 0.0
	for _, b := range bars {
		maxV = math.Max(maxV, b.value)
	}
	if maxV == 0 {
		return
	}
	step := niceStep(maxV / 4)
	top := math.Ceil(maxV/step) * step
	y := func(v float64) float64 { return p.bottom - v/top*(p.bottom-p.top) }
	for v := 0.0; v <= top+step/2; v += step {
		yy := y(v)
		s.line(p.x0, yy, p.x1, yy, colorGrid)
		s.text(p.x0-6, yy+4, "end", "11", colorMuted, "400", trimFloat(v))
	}
	drawBars(s, p, bars, func(v float64) float64 { return math.Min(y(v), p.bottom-1) })
	for i, l := range legend {
		lx := p.x0 + 8 + float64(i)*80
		op := "1"
		if i > 0 {
			op = "0.45"
		}
		s.printf(`<rect x="%.1f" y="%.1f" width="10" height="10" fill="%s" fill-opacity="%s"/>`+"\n", lx, p.top-14, colorPeer, op)
		s.text(lx+14, p.top-5, "start", "11", colorMuted, "400", l)
	}
}

// drawBars lays the bars' slots out evenly across p, the bars of a slot side
// by side, and captions runs of bars of the same group.
func drawBars(s *svgWriter, p panel, bars []bar, y func(float64) float64) {
	type slot struct{ start, n int }
	var slots []slot
	for i, b := range bars {
		if i > 0 && b.slot == bars[i-1].slot {
			slots[len(slots)-1].n++
			continue
		}
		slots = append(slots, slot{start: i, n: 1})
	}
	slotW := (p.x1 - p.x0) / float64(len(slots))
	for si, sl := range slots {
		cx := p.x0 + slotW*(float64(si)+0.5)
		barW := math.Min(56, slotW*0.6/float64(sl.n))
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
				bx+1, by, barW-2, p.bottom-by, fill, op, esc(b.title))
			s.text(bx+barW/2, by-5, "middle", "11", colorText, "600", b.text)
		}
		first := bars[sl.start]
		weight := "400"
		if first.ours {
			weight = "600"
		}
		s.text(cx, p.bottom+18, "middle", "12", colorText, weight, first.label)
		if first.sub != "" {
			s.text(cx, p.bottom+33, "middle", "11", colorMuted, "400", first.sub)
		}
	}
	s.line(p.x0, p.bottom, p.x1, p.bottom, colorMuted)
	for i := 0; i < len(slots); {
		g := bars[slots[i].start].group
		j := i + 1
		for j < len(slots) && bars[slots[j].start].group == g {
			j++
		}
		if g != "" {
			gx0, gx1 := p.x0+slotW*float64(i)+8, p.x0+slotW*float64(j)-8
			s.line(gx0, p.bottom+44, gx1, p.bottom+44, colorMuted)
			s.text((gx0+gx1)/2, p.bottom+58, "middle", "11", colorMuted, "600", g)
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
