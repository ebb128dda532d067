package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"
)

// Latency summarizes latency samples, in milliseconds.
type Latency struct {
	MedianMs float64 `json:"median_ms"`
	P99Ms    float64 `json:"p99_ms"`
	MeanMs   float64 `json:"mean_ms"`
	MinMs    float64 `json:"min_ms"`
	MaxMs    float64 `json:"max_ms"`
}

// summarize returns the summary of samples; percentiles are nearest-rank.
func summarize(samples []time.Duration) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return Latency{
		MedianMs: ms(percentile(s, 0.50)),
		P99Ms:    ms(percentile(s, 0.99)),
		MeanMs:   ms(sum / time.Duration(len(s))),
		MinMs:    ms(s[0]),
		MaxMs:    ms(s[len(s)-1]),
	}
}

// percentile returns the nearest-rank p-quantile of sorted samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// OpResult is the cost of one operation run over and over by one goroutine:
// a library's, or the GET baseline's.
type OpResult struct {
	Library         string  `json:"library"`
	Settings        string  `json:"settings"`
	Iterations      int     `json:"iterations"`
	NsPerOp         float64 `json:"ns_per_op"`
	RoundTripsPerOp float64 `json:"round_trips_per_op"`
	NsRatioToGet    float64 `json:"ns_ratio_to_get"`
}

// timedOp is an operation for interleave to time.
type timedOp struct {
	res        OpResult
	op         func(context.Context) error
	roundTrips func() int64 // commands its client has sent so far

	dur  time.Duration
	sent int64
}

// interleave runs every op n times after a warm-up (connections dialled,
// scripts loaded, caches filled), in blocks that take turns, so that a slow
// moment of a shared machine is spread over all of them instead of falling
// on one. ops[0] is the GET baseline the others' times are divided by.
func interleave(ctx context.Context, ops []*timedOp, n, blocks int) ([]OpResult, error) {
	warm := min(100, n)
	for _, o := range ops {
		for range warm {
			if err := o.op(ctx); err != nil {
				return nil, fmt.Errorf("%s: warm-up: %w", o.res.Library, err)
			}
		}
	}
	blocks = max(1, min(blocks, n))
	for b := range blocks {
		m := n / blocks
		if b == blocks-1 {
			m = n - m*(blocks-1)
		}
		for j := range ops {
			o := ops[(b+j)%len(ops)]
			c0 := o.roundTrips()
			start := time.Now()
			for range m {
				if err := o.op(ctx); err != nil {
					return nil, fmt.Errorf("%s: %w", o.res.Library, err)
				}
			}
			o.dur += time.Since(start)
			o.sent += o.roundTrips() - c0
			o.res.Iterations += m
		}
	}
	out := make([]OpResult, 0, len(ops))
	base := float64(ops[0].dur.Nanoseconds()) / float64(ops[0].res.Iterations)
	for _, o := range ops {
		o.res.NsPerOp = float64(o.dur.Nanoseconds()) / float64(o.res.Iterations)
		o.res.RoundTripsPerOp = float64(o.sent) / float64(o.res.Iterations)
		o.res.NsRatioToGet = o.res.NsPerOp / base
		out = append(out, o.res)
	}
	return out, nil
}
