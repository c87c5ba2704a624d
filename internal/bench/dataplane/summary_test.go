package dataplane

import (
	"math"
	"testing"
	"time"
)

func TestNewStat(t *testing.T) {
	s := newStat([]float64{3, 1, 2})
	if s.Median != 2 || s.Min != 1 || s.Max != 3 || s.Spread != 1 {
		t.Errorf("stat of 3,1,2 = %+v, want median 2, min 1, max 3, spread 1", s)
	}
	if s := newStat([]float64{1, 2, 3, 4}); s.Median != 2.5 {
		t.Errorf("median of 1..4 = %g, want 2.5", s.Median)
	}
	if s := newStat(nil); s.Median != 0 || len(s.Values) != 0 {
		t.Errorf("stat of nothing = %+v", s)
	}
}

// phaseOf is a closed-loop phase of one second with calls calls, cpu of
// CPU in each process, and every call taking latency.
func phaseOf(calls uint64, cpu, latency time.Duration) PhaseResult {
	var h Histogram
	for range calls {
		h.Record(latency)
	}
	return PhaseResult{Load: "closed-16", ClientCPU: cpu, ServerCPU: cpu,
		Result: LoadResult{Calls: calls, Elapsed: time.Second, Latency: h.Encode()}}
}

func TestSummarizePairsRatiosWithinRounds(t *testing.T) {
	// Round 2 is twice as fast for everyone (a quieter machine): the paired
	// ratios stay the same although the medians move.
	r := &Report{Rounds: 2, Configs: []string{ConfigDirect, ConfigTLS, ConfigXDSMTLS},
		Loads: []Load{{Kind: KindClosed, Concurrency: 16, Duration: time.Second}}}
	for round := 1; round <= 2; round++ {
		f := uint64(round)
		r.Runs = append(r.Runs,
			RunResult{Config: ConfigDirect, Round: round, Phases: []PhaseResult{phaseOf(1000*f, time.Second, time.Millisecond)}},
			RunResult{Config: ConfigTLS, Round: round, Phases: []PhaseResult{phaseOf(800*f, time.Second, 2*time.Millisecond)}},
			// (d): 90% of (c)'s calls with the same CPU.
			RunResult{Config: ConfigXDSMTLS, Round: round, Phases: []PhaseResult{phaseOf(720*f, time.Second, 2*time.Millisecond)}},
		)
	}
	s := Summarize(r)
	d := s.Cell(ConfigXDSMTLS, "closed-16")
	if d == nil {
		t.Fatal("no cell for (d)")
	}
	near := func(got, want float64) bool { return math.Abs(got-want) < 1e-9 }
	if !near(d.VsBaseline.Median, 0.72) || d.VsBaseline.Spread > 1e-9 || len(d.VsBaseline.Values) != 2 {
		t.Errorf("(d) vs (a) = %+v, want 0.72 in both rounds", d.VsBaseline)
	}
	if !near(d.VsTLS.Median, 0.9) || !near(d.EfficiencyVsTLS.Median, 0.9) {
		t.Errorf("(d) vs (c) = %g calls/s, %g per CPU second, want 0.9 and 0.9", d.VsTLS.Median, d.EfficiencyVsTLS.Median)
	}
	if !near(d.CallsPerSec.Median, 1080) || !near(d.CallsPerSec.Spread, 720.0/1080) {
		t.Errorf("(d) calls/s %+v, want median 1080 and spread 0.667", d.CallsPerSec)
	}
	if got := d.P99.Median; math.Abs(got-2000)/2000 > 0.01 {
		t.Errorf("(d) p99 = %g µs, want 2000", got)
	}
	if !near(d.ClientCPU.Median, (1e6/720+1e6/1440)/2) {
		t.Errorf("(d) client CPU %g µs/call", d.ClientCPU.Median)
	}
	var missed, met int
	for _, g := range s.Goals {
		switch {
		case g.Name == "(d) calls/s vs (c)" && !g.Met && !g.CPUMet:
			missed++
		case g.Name == "(d) calls/s vs (a)" && !g.Met:
			missed++
		default:
			met++
		}
	}
	if missed != 2 || met != 0 {
		t.Errorf("goals %+v: want (d) to miss both its goals", s.Goals)
	}
}
