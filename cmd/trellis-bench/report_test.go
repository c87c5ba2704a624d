package main

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/bench/dataplane"
)

// syntheticReport is a two-round report in which (b) is 10% slower than
// (a) and (d) exactly as fast as (c).
func syntheticReport() *dataplane.Report {
	loads := []dataplane.Load{
		{Kind: dataplane.KindClosed, Concurrency: 16, Duration: time.Second},
		{Kind: dataplane.KindOpen, Rate: 1000, Duration: time.Second},
	}
	speed := map[string]float64{"a": 1, "b": 0.9, "c": 0.8, "d": 0.8, "e": 0.75}
	r := &dataplane.Report{Rounds: 2, Configs: dataplane.AllConfigs, Loads: loads, Machine: dataplane.Machine{CPUs: 2}}
	for round := 1; round <= 2; round++ {
		for _, c := range dataplane.AllConfigs {
			run := dataplane.RunResult{Config: c, Round: round, ClientPeakRSS: 30 << 20, ServerPeakRSS: 20 << 20,
				Ready: dataplane.ClientReady{HeapBefore: 1 << 20, HeapAfter: 2 << 20}}
			for _, l := range loads {
				var h dataplane.Histogram
				for i := range 1000 {
					h.Record(time.Duration(float64(time.Duration(100+i)*time.Microsecond) / speed[c]))
				}
				run.Phases = append(run.Phases, dataplane.PhaseResult{Load: l.Name(), ClientCPU: time.Second, ServerCPU: time.Second,
					Result: dataplane.LoadResult{Calls: uint64(10000 * speed[c] * float64(round)), Elapsed: time.Second, Latency: h.Encode()}})
			}
			r.Runs = append(r.Runs, run)
		}
	}
	r.Summary = dataplane.Summarize(r)
	return r
}

func TestRenderReport(t *testing.T) {
	cp := `{"runs": [{"services": 10, "phases": [
		{"streams": 100, "trellis_rss_bytes": 50000, "single": {"latency_last_watcher": {"p99_ms": 3}}},
		{"streams": 1000, "trellis_rss_bytes": 40000, "single": {"latency_last_watcher": {"p99_ms": 9}}}]}],
		"targets": [{"name": "push p99", "met": true}], "problems": ["2 pushes did not arrive"]}`
	var cpv any
	if err := json.Unmarshal([]byte(cp), &cpv); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name         string
		controlplane any
		wantPlots    []string
		wantText     []string
	}{
		{"without the control plane", nil, []string{"latency-closed-16.svg", "latency-open-1000.svg"},
			[]string{"No control-plane report"}},
		{"with the control plane", cpv, []string{"runs-phases-latency-vs-streams.svg", "runs-phases-memory-vs-streams.svg"},
			[]string{"### runs.phases", "| runs.services | single.latency_last_watcher.p99_ms | streams | trellis_rss_bytes |",
				"| 10 | 9 | 1000 | 40000 |", "### targets", "| true | push p99 |", "problems:\n\n- 2 pushes did not arrive\n"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			md, files := render(reportInputs{dataplane: syntheticReport(), controlplane: tt.controlplane, controlplanePath: "cp.json", analysis: "The analysis."}, "plots")
			want := append([]string{
				"## Goals", "## Throughput and CPU", "## Latency at fixed rates", "## Memory", "## Context",
				"The analysis.",
				// (b) at 0.9x of (a) misses its goal; (d) at 1.0x of (c) meets its.
				// Per CPU second (client and server at 1 s each per load, so
				// the calls decide): (b) at 0.9x of (a) again.
				"| (b) calls/s vs (a) | `closed-16` | 0.900x | >= 0.97x | **missed** | 0.900x | **missed** |",
				"| (d) calls/s vs (c) | `closed-16` | 1.000x | >= 0.95x | met | 1.000x | met |",
				"| (b) | `closed-16` |",
				"![latency distribution, open-1000](plots/latency-open-1000.svg)",
				"https://istio.io/",
			}, tt.wantText...)
			for _, w := range want {
				if !strings.Contains(md, w) {
					t.Errorf("the report lacks %q", w)
				}
			}
			for _, name := range tt.wantPlots {
				svg, ok := files[name]
				if !ok {
					t.Errorf("no plot %s (have %d plots)", name, len(files))
					continue
				}
				dec := xml.NewDecoder(strings.NewReader(svg))
				for {
					_, err := dec.Token()
					if err == io.EOF {
						break
					}
					if err != nil {
						t.Errorf("%s is not well-formed XML: %v", name, err)
						break
					}
				}
				if !strings.Contains(svg, "<polyline") {
					t.Errorf("%s draws no line", name)
				}
			}
		})
	}
}

func TestRenderIsDeterministic(t *testing.T) {
	in := reportInputs{dataplane: syntheticReport()}
	md1, files1 := render(in, "plots")
	for range 5 {
		md2, files2 := render(in, "plots")
		if md2 != md1 {
			t.Fatal("two renderings of the same report differ")
		}
		for name, svg := range files1 {
			if files2[name] != svg {
				t.Fatalf("two renderings of %s differ", name)
			}
		}
	}
}

func TestTablesShapes(t *testing.T) {
	for _, tt := range []struct {
		json string
		want []string // table names
	}{
		{`[{"a": 1}, {"a": 2}, {"a": 3}]`, []string{"report"}},
		{`{"name": "x", "rows": [{"a": 1, "nested": {"b": 2}, "inner": [{"c": 3}]}]}`, []string{"report", "rows", "rows.inner"}},
		{`{"a": 1, "b": {"c": 2}}`, []string{"report"}},
		{`"just a string"`, nil},
	} {
		var v any
		if err := json.Unmarshal([]byte(tt.json), &v); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, tb := range tables(v) {
			got = append(got, tb.name)
		}
		if strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("tables(%s) = %v, want %v", tt.json, got, tt.want)
		}
	}
	tbs := tables(map[string]any{"rows": []any{map[string]any{"services": 10.0, "write_s": 1.5, "nested": map[string]any{"b": 2.0},
		"inner": []any{map[string]any{"c": 3.0}}}}})
	if tbs[0].rows[0]["nested.b"] != 2.0 {
		t.Errorf("nested fields are not flattened: %v", tbs[0].rows[0])
	}
	if r := tbs[1].rows[0]; r["rows.services"] != 10.0 || r["c"] != 3.0 || len(r) != 2 {
		t.Errorf("inner row %v: want its own fields and its parent's size only", r)
	}
}

func TestWideTablesAreTransposed(t *testing.T) {
	row := map[string]any{}
	for i := range 12 {
		row[fmt.Sprintf("f%02d", i)] = float64(i)
	}
	got := markdownTable([]map[string]any{row, row})
	if !strings.HasPrefix(got, "| field | | |\n") || !strings.Contains(got, "| f11 | 11 | 11 |") {
		t.Errorf("a 12-column table is not drawn one field per line:\n%s", got)
	}
}

func TestMachineLoadSaysWhetherTheMachineWasQuiet(t *testing.T) {
	for _, tt := range []struct {
		name          string
		before, after float64
		during        []float64
		want          []string
		notWant       string
	}{
		{"quiet throughout", 0.3, 0.9, []float64{0.5, 1.2, 0.8}, []string{"0.30 before, 0.90 after", "0.50-1.20 (median 0.80)", "a quiet machine"}, "not a quiet"},
		{"loaded during one run", 0.3, 0.9, []float64{0.5, 3.4, 0.8}, []string{"0.50-3.40", "**not a quiet machine**"}, "a quiet machine (below"},
		{"loaded before", 2.1, 0.9, []float64{0.5, 1.0, 0.8}, []string{"2.10 before", "**not a quiet machine**"}, "a quiet machine (below"},
		{"older report without per-run loads", 0.3, 0.4, nil, []string{"0.30 before, 0.40 after."}, "quiet"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := &dataplane.Report{Machine: dataplane.Machine{LoadBefore: tt.before, LoadAfter: tt.after, LoadMax: max(tt.before, tt.after)}}
			for _, l := range tt.during {
				r.Runs = append(r.Runs, dataplane.RunResult{LoadAfter: l})
				r.Machine.LoadMax = max(r.Machine.LoadMax, l)
			}
			got := machineLoad(r)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("machineLoad = %q, want it to contain %q", got, w)
				}
			}
			if strings.Contains(got, tt.notWant) {
				t.Errorf("machineLoad = %q, want it not to contain %q", got, tt.notWant)
			}
		})
	}
}
