package main

import (
	"encoding/json"
	"io"

	"github.com/locksmith-go/locksmith/examples/internal/demo"
)

// The report as one JSON object (-json).

// jsonReport is the output of -json.
type jsonReport struct {
	Settings   jsonSettings      `json:"settings"`
	Results    map[string]result `json:"results"` // by mode
	Conclusion []string          `json:"conclusion"`
	TimingNote string            `json:"timing_note,omitempty"`
}

// jsonSettings are the run's settings, from its flags.
type jsonSettings struct {
	Modes         []string `json:"modes"` // in the order they ran
	Servers       int      `json:"servers"`
	Requests      int      `json:"requests"`
	Concurrency   int      `json:"concurrency"`
	Prompts       int      `json:"prompts"`
	Zipf          float64  `json:"zipf"`
	Seed          uint64   `json:"seed"`
	RPM           int64    `json:"rpm"`
	TPM           int64    `json:"tpm"`
	MinuteMs      float64  `json:"minute_ms"`
	TokensMedian  float64  `json:"tokens_median"`
	TokensSigma   float64  `json:"tokens_sigma"`
	EstimateError float64  `json:"estimate_error"`
	LatencyMs     float64  `json:"api_latency_ms"`
	TTLMs         float64  `json:"ttl_ms"`
	TimeoutMs     float64  `json:"request_timeout_ms"` // each request's deadline
	// TimeoutComputed says that -timeout was not given: TimeoutMs was
	// computed from the distinct prompts and the limits.
	TimeoutComputed bool   `json:"request_timeout_computed"`
	Redis           string `json:"redis"` // host:port, or "embedded"
	Prefix          string `json:"prefix"`
}

// writeJSON writes the settings and results as one JSON object, and nothing
// else.
func writeJSON(w io.Writer, cfg config, env *demo.Redis, results []result) error {
	rep := jsonReport{
		Settings: jsonSettings{
			Servers:         cfg.servers,
			Requests:        cfg.requests,
			Concurrency:     cfg.concurrency,
			Prompts:         cfg.prompts,
			Zipf:            cfg.zipf,
			Seed:            cfg.seed,
			RPM:             cfg.rpm,
			TPM:             cfg.tpm,
			MinuteMs:        millis(cfg.minute),
			TokensMedian:    cfg.tokensMedian,
			TokensSigma:     cfg.tokensSigma,
			EstimateError:   cfg.estimateError,
			LatencyMs:       millis(cfg.latency),
			TTLMs:           millis(cfg.ttl),
			TimeoutMs:       millis(cfg.timeout),
			TimeoutComputed: cfg.timeoutComputed,
			Redis:           env.Addr,
			Prefix:          cfg.prefix,
		},
		Results:    make(map[string]result),
		Conclusion: conclusion(results),
		TimingNote: timingNote(results),
	}
	if env.Embedded() {
		rep.Settings.Redis = "embedded"
	}
	for _, m := range cfg.modes {
		rep.Settings.Modes = append(rep.Settings.Modes, m.name)
	}
	for _, r := range results {
		rep.Results[r.Mode] = r
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}
