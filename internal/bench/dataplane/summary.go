package dataplane

import (
	"fmt"
	"slices"
	"time"
)

// Stat summarizes one quantity across rounds.
type Stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	// Spread is (Max-Min)/Median: how much the rounds disagree.
	Spread float64 `json:"spread"`
	// Values are the per-round values, in round order.
	Values []float64 `json:"values"`
}

func newStat(values []float64) Stat {
	if len(values) == 0 {
		return Stat{Values: []float64{}}
	}
	s := Stat{Values: values}
	sorted := slices.Sorted(slices.Values(values))
	s.Min, s.Max = sorted[0], sorted[len(sorted)-1]
	if n := len(sorted); n%2 == 1 {
		s.Median = sorted[n/2]
	} else {
		s.Median = (sorted[n/2-1] + sorted[n/2]) / 2
	}
	if s.Median != 0 {
		s.Spread = (s.Max - s.Min) / s.Median
	}
	return s
}

// Cell is one configuration under one load, across rounds. Latencies are
// in microseconds, CPU in microseconds per call.
type Cell struct {
	Config      string `json:"config"`
	Load        string `json:"load"`
	CallsPerSec Stat   `json:"calls_per_sec"`
	ClientCPU   Stat   `json:"client_cpu_us_per_call"`
	ServerCPU   Stat   `json:"server_cpu_us_per_call"`
	P50         Stat   `json:"p50_us"`
	P90         Stat   `json:"p90_us"`
	P99         Stat   `json:"p99_us"`
	P999        Stat   `json:"p999_us"`
	// Calls and Errors are totals over the rounds; FirstError is the first
	// failure seen.
	Calls      uint64 `json:"calls"`
	Errors     uint64 `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
	// VsBaseline holds per-round ratios to the baseline (a) of the same
	// round: calls/s, and p99 latency. VsTLS holds the calls/s ratios to
	// direct TLS (c) of the same round.
	VsBaseline    Stat `json:"calls_per_sec_vs_a"`
	P99VsBaseline Stat `json:"p99_vs_a"`
	VsTLS         Stat `json:"calls_per_sec_vs_c"`
	// EfficiencyVsBaseline and EfficiencyVsTLS are per-round ratios of
	// calls per CPU second (client and server together) to (a) and (c):
	// what the throughput ratio would be on a machine given to the two
	// processes, and much less sensitive than calls/s to other load.
	EfficiencyVsBaseline Stat `json:"efficiency_vs_a"`
	EfficiencyVsTLS      Stat `json:"efficiency_vs_c"`
	// Latency merges the latency histograms of every round.
	Latency EncodedHistogram `json:"latency"`
}

// Memory is the memory of one configuration across rounds, in bytes.
type Memory struct {
	Config        string `json:"config"`
	ClientPeakRSS Stat   `json:"client_peak_rss"`
	ServerPeakRSS Stat   `json:"server_peak_rss"`
	// ChannelHeap and ChannelRSS are what creating the channel and making
	// its first call added to the client's live heap and to its RSS.
	ChannelHeap Stat `json:"channel_heap"`
	ChannelRSS  Stat `json:"channel_rss"`
	// ReadyAfter is the time to the first successful call, in ms.
	ReadyAfterMS Stat `json:"ready_after_ms"`
}

// Goal is one stated goal checked against the medians.
type Goal struct {
	Name     string  `json:"name"`
	Load     string  `json:"load"`
	Want     string  `json:"want"`
	Measured float64 `json:"measured"`
	Met      bool    `json:"met"`
	// ByCPU is the same ratio in calls per CPU second, for throughput
	// goals (0 otherwise), and CPUMet whether it meets the goal.
	ByCPU  float64 `json:"by_cpu,omitempty"`
	CPUMet bool    `json:"cpu_met,omitempty"`
}

// Summary is what a Report's measurements say.
type Summary struct {
	Cells  []Cell   `json:"cells"`
	Memory []Memory `json:"memory"`
	Goals  []Goal   `json:"goals"`
}

// Cell returns the cell of config under load, or nil.
func (s *Summary) Cell(config, load string) *Cell {
	for i := range s.Cells {
		if s.Cells[i].Config == config && s.Cells[i].Load == load {
			return &s.Cells[i]
		}
	}
	return nil
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// Summarize computes the summary of r's runs.
func Summarize(r *Report) Summary {
	var s Summary
	// phase[config][load][round]
	phase := map[string]map[string]map[int]PhaseResult{}
	for _, run := range r.Runs {
		if phase[run.Config] == nil {
			phase[run.Config] = map[string]map[int]PhaseResult{}
		}
		for _, p := range run.Phases {
			if phase[run.Config][p.Load] == nil {
				phase[run.Config][p.Load] = map[int]PhaseResult{}
			}
			phase[run.Config][p.Load][run.Round] = p
		}
	}
	rounds := make([]int, 0, r.Rounds)
	for i := 1; i <= r.Rounds; i++ {
		rounds = append(rounds, i)
	}
	for _, config := range r.Configs {
		for _, l := range r.Loads {
			byRound := phase[config][l.Name()]
			if len(byRound) == 0 {
				continue
			}
			c := Cell{Config: config, Load: l.Name()}
			var cps, ccpu, scpu, p50, p90, p99, p999, vsA, p99A, vsC, effA, effC []float64
			var merged Histogram
			for _, round := range rounds {
				p, ok := byRound[round]
				if !ok {
					continue
				}
				h, err := p.Result.Latency.Decode()
				if err != nil {
					h = &Histogram{}
				}
				merged.Merge(h)
				c.Calls += p.Result.Calls
				c.Errors += p.Result.Errors
				if c.FirstError == "" {
					c.FirstError = p.Result.FirstError
				}
				cps = append(cps, p.CallsPerSecond())
				cc, sc := p.CPUPerCall()
				ccpu, scpu = append(ccpu, cc), append(scpu, sc)
				p50, p90 = append(p50, micros(h.Quantile(0.5))), append(p90, micros(h.Quantile(0.9)))
				p99, p999 = append(p99, micros(h.Quantile(0.99))), append(p999, micros(h.Quantile(0.999)))
				if base, ok := phase[ConfigDirect][l.Name()][round]; ok && base.CallsPerSecond() > 0 {
					vsA = append(vsA, p.CallsPerSecond()/base.CallsPerSecond())
					if bh, err := base.Result.Latency.Decode(); err == nil && bh.Quantile(0.99) > 0 {
						p99A = append(p99A, float64(h.Quantile(0.99))/float64(bh.Quantile(0.99)))
					}
				}
				if tls, ok := phase[ConfigTLS][l.Name()][round]; ok && tls.CallsPerSecond() > 0 {
					vsC = append(vsC, p.CallsPerSecond()/tls.CallsPerSecond())
				}
				if e, ok := efficiency(p, phase[ConfigDirect][l.Name()], round); ok {
					effA = append(effA, e)
				}
				if e, ok := efficiency(p, phase[ConfigTLS][l.Name()], round); ok {
					effC = append(effC, e)
				}
			}
			c.CallsPerSec, c.ClientCPU, c.ServerCPU = newStat(cps), newStat(ccpu), newStat(scpu)
			c.P50, c.P90, c.P99, c.P999 = newStat(p50), newStat(p90), newStat(p99), newStat(p999)
			c.VsBaseline, c.P99VsBaseline, c.VsTLS = newStat(vsA), newStat(p99A), newStat(vsC)
			c.EfficiencyVsBaseline, c.EfficiencyVsTLS = newStat(effA), newStat(effC)
			c.Latency = merged.Encode()
			s.Cells = append(s.Cells, c)
		}
		var crss, srss, heap, rss, ready []float64
		for _, run := range r.Runs {
			if run.Config != config {
				continue
			}
			crss, srss = append(crss, float64(run.ClientPeakRSS)), append(srss, float64(run.ServerPeakRSS))
			heap = append(heap, float64(run.Ready.HeapAfter)-float64(run.Ready.HeapBefore))
			rss = append(rss, float64(run.Ready.RSSAfter-run.Ready.RSSBefore))
			ready = append(ready, float64(run.Ready.ReadyAfter)/float64(time.Millisecond))
		}
		if len(crss) > 0 {
			s.Memory = append(s.Memory, Memory{Config: config, ClientPeakRSS: newStat(crss), ServerPeakRSS: newStat(srss),
				ChannelHeap: newStat(heap), ChannelRSS: newStat(rss), ReadyAfterMS: newStat(ready)})
		}
	}
	s.Goals = goals(&s, r.Loads)
	return s
}

// efficiency returns the ratio of p's calls per CPU second to those of the
// reference phase of the same round.
func efficiency(p PhaseResult, ref map[int]PhaseResult, round int) (float64, bool) {
	r, ok := ref[round]
	if !ok || r.Result.Calls == 0 || p.Result.Calls == 0 {
		return 0, false
	}
	cpu := float64(p.ClientCPU+p.ServerCPU) / float64(p.Result.Calls)
	refCPU := float64(r.ClientCPU+r.ServerCPU) / float64(r.Result.Calls)
	if cpu == 0 || refCPU == 0 {
		return 0, false
	}
	return refCPU / cpu, true
}

// goals checks the stated goals on every load they concern.
func goals(s *Summary, loads []Load) []Goal {
	var out []Goal
	add := func(name, load, want string, measured, byCPU Stat, ok func(float64) bool) {
		if len(measured.Values) == 0 {
			return
		}
		g := Goal{Name: name, Load: load, Want: want, Measured: measured.Median, Met: ok(measured.Median)}
		if len(byCPU.Values) > 0 {
			g.ByCPU, g.CPUMet = byCPU.Median, ok(byCPU.Median)
		}
		out = append(out, g)
	}
	atLeast := func(x float64) func(float64) bool { return func(v float64) bool { return v >= x } }
	atMost := func(x float64) func(float64) bool { return func(v float64) bool { return v <= x } }
	for _, l := range loads {
		name := l.Name()
		if l.Kind == KindClosed {
			if c := s.Cell(ConfigXDS, name); c != nil {
				add("(b) calls/s vs (a)", name, ">= 0.97x", c.VsBaseline, c.EfficiencyVsBaseline, atLeast(0.97))
			}
			if c := s.Cell(ConfigXDSMTLS, name); c != nil {
				add("(d) calls/s vs (a)", name, ">= 0.85x", c.VsBaseline, c.EfficiencyVsBaseline, atLeast(0.85))
				add("(d) calls/s vs (c)", name, ">= 0.95x", c.VsTLS, c.EfficiencyVsTLS, atLeast(0.95))
			}
		}
		if l.Kind == KindOpen {
			if c := s.Cell(ConfigXDS, name); c != nil {
				add("(b) p99 vs (a)", name, "<= 1.1x", c.P99VsBaseline, Stat{}, atMost(1.1))
			}
		}
	}
	return out
}

// String formats a goal as one line.
func (g Goal) String() string {
	verdict := "met"
	if !g.Met {
		verdict = "MISSED"
	}
	if g.ByCPU != 0 {
		return fmt.Sprintf("%s at %s: %.3fx (want %s): %s; per CPU second %.3fx", g.Name, g.Load, g.Measured, g.Want, verdict, g.ByCPU)
	}
	return fmt.Sprintf("%s at %s: %.3fx (want %s): %s", g.Name, g.Load, g.Measured, g.Want, verdict)
}
