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
	Modes   []string `json:"modes"` // in the order they ran
	Servers int      `json:"servers,omitempty"`
	// Fleets are the fleet sizes of a sweep (-servers with several).
	Fleets      []int   `json:"servers_swept,omitempty"`
	Requests    int     `json:"requests"`
	Concurrency int     `json:"concurrency"`
	Keys        int     `json:"keys"`
	Zipf        float64 `json:"zipf"`
	Seed        uint64  `json:"seed"`
	RatePerSec  float64 `json:"api_rate_per_s"`
	Burst       int     `json:"api_burst"`
	Tokens      int     `json:"tokens,omitempty"` // -tokens: the rate and burst are per token
	// APIConcurrency is the API's cap on calls in flight; 0 for none.
	APIConcurrency int     `json:"api_concurrency"`
	LatencyMs      float64 `json:"api_latency_ms"`
	TTLMs          float64 `json:"ttl_ms"`
	TimeoutMs      float64 `json:"request_timeout_ms"` // each request's deadline
	// TimeoutComputed says that -timeout was not given: TimeoutMs was
	// computed from the distinct users and the rate.
	TimeoutComputed bool    `json:"request_timeout_computed"`
	BatchWindowMs   float64 `json:"batch_window_ms"`
	BudgetRate      float64 `json:"budget_rate_per_s"` // of the modes with a budget
	BudgetBurst     int     `json:"budget_burst"`
	Redis           string  `json:"redis"` // host:port, or "embedded"
	HiddenLimit     string  `json:"hidden_limit,omitempty"`
	Prefix          string  `json:"prefix"`
}

// writeJSON writes the settings and results as one JSON object, and nothing
// else.
func writeJSON(w io.Writer, cfg config, env *demo.Redis, results []result) error {
	rep := jsonReport{
		Settings:   settingsOf(cfg, env),
		Results:    make(map[string]result),
		Conclusion: conclusion(results),
		TimingNote: timingNote(cfg, results),
	}
	for _, r := range results {
		rep.Results[r.Mode] = r
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// settingsOf returns the settings of cfg on env, for -json.
func settingsOf(cfg config, env *demo.Redis) jsonSettings {
	st := jsonSettings{
		Servers:         cfg.servers,
		Requests:        cfg.requests,
		Concurrency:     cfg.concurrency,
		Keys:            cfg.keys,
		Zipf:            cfg.zipf,
		Seed:            cfg.seed,
		RatePerSec:      cfg.rate,
		Burst:           cfg.burst,
		Tokens:          cfg.tokens,
		APIConcurrency:  cfg.apiConcurrency,
		LatencyMs:       millis(cfg.latency),
		TTLMs:           millis(cfg.ttl),
		TimeoutMs:       millis(cfg.timeout),
		TimeoutComputed: cfg.timeoutComputed,
		BatchWindowMs:   millis(cfg.window),
		Redis:           env.Addr,
		Prefix:          cfg.prefix,
		HiddenLimit:     cfg.hidden.String(),
	}
	if env.Embedded() {
		st.Redis = "embedded"
	}
	l := budgetLimit(cfg)
	st.BudgetRate, st.BudgetBurst = round2(float64(l.Rate)/l.Per.Seconds()), l.Burst
	for _, m := range cfg.modes {
		st.Modes = append(st.Modes, m.name)
	}
	return st
}
