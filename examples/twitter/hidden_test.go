package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// hiddenRun is a short run against a hidden limit that halves: 400 calls/s
// for 0.7s, then 200; the fleet is told 1000. Nearly every request is for
// a user of its own: an API call.
var hiddenRun = []string{"-servers", "4", "-requests", "500", "-keys", "10000000", "-zipf", "1.0001",
	"-latency", "5ms", "-concurrency", "200", "-rate", "1000", "-burst", "10", "-timeout", "30s",
	"-hidden-limit", "400/700ms,200/700ms"}

// TestHiddenLimit: against an API that hides its limit and changes it,
// mode fill+adaptive's budget cuts its learned rate from the ceiling it
// was told down to the limit, and no request fails; its trace follows the
// limit, with the rate learned. (Against
// the same API, fill+budget, told the ceiling as the limit, has several
// times the 429s and takes seconds longer, pausing: see the package
// documentation.)
func TestHiddenLimit(t *testing.T) {
	var out, errOut bytes.Buffer
	args := append(append([]string{}, hiddenRun...), "-modes", adaptiveMode, "-json")
	if err := run(t.Context(), args, &out, &errOut); err != nil {
		t.Fatalf("run: %v\nstderr: %s", err, errOut.String())
	}
	var res struct {
		Settings map[string]any `json:"settings"`
		Results  map[string]struct {
			APICalls int `json:"api_calls"`
			Refused  int `json:"api_calls_refused"`
			Failed   int `json:"failed_requests"`
			Budget   struct {
				RateCuts int `json:"rate_cuts"`
			} `json:"budget"`
			Trace []tracePoint `json:"trace"`
		} `json:"results"`
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("stdout is not a JSON object: %v\n%s", err, out.String())
	}
	if got := res.Settings["hidden_limit"]; got != "400/700ms,200/700ms" {
		t.Errorf("settings.hidden_limit = %v; want 400/700ms,200/700ms", got)
	}
	r := res.Results[adaptiveMode]
	// Told 1000 calls/s, paced at it, the fleet would see 60% of its calls
	// refused at 400 (more at 200). Learning takes a few latencies in a
	// run of 1.4s: a quarter to a third were refused, under a loaded race
	// run up to 34%.
	if r.Failed != 0 || r.Budget.RateCuts < 1 || r.Refused*2 > r.APICalls {
		t.Errorf("fill+adaptive: %d requests failed, %d cuts, %d of %d calls refused; want none, a cut or more, under half",
			r.Failed, r.Budget.RateCuts, r.Refused, r.APICalls)
	}
	tr := r.Trace
	if len(tr) < 2 || tr[0].Limit != 400 || tr[len(tr)-1].Limit != 200 {
		t.Fatalf("fill+adaptive's trace %+v; want the limit from 400 to 200", tr)
	}
	var rates, cuts bool
	for _, p := range tr {
		rates = rates || p.Learned > 0 && p.Learned < 1000
		cuts = cuts || p.Cuts > 0
	}
	if !rates || !cuts {
		t.Errorf("fill+adaptive's trace %+v; want a rate learned under the ceiling, and cuts", tr)
	}
}

// TestHiddenLimitText: the text report says the limit is hidden, and
// prints the trace of each mode.
func TestHiddenLimitText(t *testing.T) {
	var out, errOut bytes.Buffer
	args := append(append([]string{}, hiddenRun...), "-modes", adaptiveMode, "-requests", "200")
	if err := run(t.Context(), args, &out, &errOut); err != nil {
		t.Fatalf("run: %v\nstderr: %s", err, errOut.String())
	}
	for _, want := range []string{"API: hidden limit of 400/700ms,200/700ms", "fill+adaptive against the hidden limit",
		"learned/s", "of the learned rate"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report does not say %q:\n%s", want, out.String())
		}
	}
}

// TestHiddenFlag: -hidden-limit's steps, and its errors.
func TestHiddenFlag(t *testing.T) {
	var f hiddenFlag
	if err := f.Set(" 40/10s, 60.5/1m "); err != nil || f.String() != "40/10s,60.5/1m0s" {
		t.Errorf("Set = %v, %q", err, f.String())
	}
	if f.at(0) != 40 || f.at(10*time.Second) != 60.5 || f.at(time.Hour) != 60.5 {
		t.Errorf("at: %v, %v, %v; want 40, 60.5, 60.5", f.at(0), f.at(10*time.Second), f.at(time.Hour))
	}
	if f.tick() != time.Second {
		t.Errorf("tick = %v; want 1s", f.tick())
	}
	for _, bad := range []string{"", "40", "40/", "x/1s", "-1/1s", "0/1s", "40/0s", "40/1ms", "40/1s,,"} {
		if err := f.Set(bad); err == nil {
			t.Errorf("Set(%q) = nil; want an error", bad)
		}
	}
	cfg, err := parseFlags([]string{"-hidden-limit", "40/10s"}, &bytes.Buffer{})
	if err != nil || cfg.modes.String() != "fill+budget,fill+adaptive" {
		t.Errorf("-hidden-limit alone: modes %q, %v; want fill+budget,fill+adaptive", cfg.modes.String(), err)
	}
	cfg, err = parseFlags([]string{"-hidden-limit", "40/10s", "-modes", "fill"}, &bytes.Buffer{})
	if err != nil || cfg.modes.String() != "fill" {
		t.Errorf("-hidden-limit -modes fill: modes %q, %v; want fill", cfg.modes.String(), err)
	}
}
