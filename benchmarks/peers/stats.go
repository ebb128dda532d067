package main

import (
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
