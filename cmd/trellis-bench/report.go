package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/bench/dataplane"
)

// runReport is `trellis-bench report`: BENCHMARKS.md and its plots from
// the data-plane report, the control-plane report (when present) and the
// hand-written analysis (when present).
func runReport(_ context.Context, args []string) error {
	fset := flag.NewFlagSet("report", flag.ContinueOnError)
	dpPath := fset.String("dataplane", "bench/dataplane.json", "data-plane report (trellis-bench dataplane -o)")
	cpPath := fset.String("controlplane", "bench/controlplane.json", "control-plane report (trellis-bench controlplane -o); skipped when absent")
	analysisPath := fset.String("analysis", "bench/analysis.md", "Markdown included as the analysis section; skipped when absent")
	out := fset.String("o", "BENCHMARKS.md", "Markdown file to write")
	plots := fset.String("plots", "bench/plots", "directory for the SVG plots, referenced from -o")
	if err := fset.Parse(args); err != nil {
		return err
	}
	in := reportInputs{}
	raw, err := os.ReadFile(*dpPath)
	if err != nil {
		return fmt.Errorf("-dataplane: %w (run `trellis-bench dataplane -o %s` first)", err, *dpPath)
	}
	in.dataplane = new(dataplane.Report)
	if err := json.Unmarshal(raw, in.dataplane); err != nil {
		return fmt.Errorf("-dataplane %s: %w", *dpPath, err)
	}
	if raw, err := os.ReadFile(*cpPath); err == nil {
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("-controlplane %s: %w", *cpPath, err)
		}
		in.controlplane, in.controlplanePath = v, *cpPath
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("-controlplane: %w", err)
	}
	if raw, err := os.ReadFile(*analysisPath); err == nil {
		in.analysis = string(raw)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("-analysis: %w", err)
	}
	if err := os.MkdirAll(*plots, 0o755); err != nil {
		return fmt.Errorf("-plots: %w", err)
	}
	rel, err := filepath.Rel(filepath.Dir(*out), *plots)
	if err != nil {
		rel = *plots
	}
	md, files := render(in, filepath.ToSlash(rel))
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(*plots, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("-plots: %w", err)
		}
	}
	if err := os.WriteFile(*out, []byte(md), 0o644); err != nil {
		return fmt.Errorf("-o: %w", err)
	}
	fmt.Fprintf(os.Stderr, "wrote %s and %d plots in %s\n", *out, len(files), *plots)
	return nil
}

type reportInputs struct {
	dataplane        *dataplane.Report
	controlplane     any
	controlplanePath string
	analysis         string
}

// render returns the Markdown and the plot files (name -> SVG), whose
// links are relative to plotDir.
func render(in reportInputs, plotDir string) (string, map[string]string) {
	r := in.dataplane
	s := r.Summary
	files := map[string]string{}
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }

	p("# Trellis benchmarks\n\n")
	p("What a proxyless mesh costs: the same gRPC service called directly and through Trellis, in plaintext and with mTLS, ")
	p("measured in one run on one machine, every figure a ratio to the direct baseline of the same round. ")
	p("Regenerate everything with `make bench` (about 20 minutes) or a short subset with `make bench-quick`; ")
	p("this file is written by `trellis-bench report` from `bench/dataplane.json`, `bench/controlplane.json` and `bench/analysis.md`.\n\n")

	p("## Run\n\n")
	p("- Started %s, took %s; %d rounds.\n", r.Started.Format(time.RFC3339), r.Duration.Round(time.Second), r.Rounds)
	p("- Machine: %d CPUs (%s), Linux %s, %s. %s\n",
		r.Machine.CPUs, orUnknown(r.Machine.CPUModel), orUnknown(r.Machine.Kernel), r.Machine.GoVersion, machineLoad(r))
	p("- Noise: %s\n\n", noise(s))

	p("## Method\n\n")
	p("| | configuration |\n|---|---|\n")
	for _, c := range r.Configs {
		p("| (%s) | %s |\n", c, dataplane.Describe(c))
	}
	p("\n")
	var loads []string
	for _, l := range r.Loads {
		loads = append(loads, fmt.Sprintf("`%s` (%s)", l.Name(), l.Duration))
	}
	p("- Client and server are separate processes (`trellis-bench dataplane worker`), each with GOMAXPROCS = %d, on loopback. ", r.Machine.CPUs)
	p("One server process serves (a) and (b), so (b) differs from (a) only in the client's channel; (c), (d) and (e) have their own servers. ")
	p("The mesh is real: a Consul dev agent, `trellis server`, a SPIRE server and agent; (d) and (e) get their SVIDs through the in-process `trellis_spiffe` certificate provider, ")
	p("(c) uses static ECDSA P-256 certificates (the key type SPIRE issues) with client certificates required, so that (d) against (c) isolates what Trellis adds to mutual TLS.\n")
	p("- Loads, in this order for every configuration: %s, after an unmeasured %s warm-up. Unary calls of `trellis.echo.v1.Echo/Echo` with a 32-byte message; ", strings.Join(loads, ", "), r.Warmup)
	p("`closed-N` keeps N calls in flight; `open-R` starts R calls per second on schedule and times each from its intended start, so queueing in the client is counted (no coordinated omission); ")
	p("`stream-N` keeps N bidirectional streams each exchanging one 32-byte message at a time (latency per round trip).\n")
	p("- Each round runs every configuration with a new client process, in order a b c d e, the next round in reverse. ")
	p("Tables give the median across rounds, the spread ((max-min)/median) and ratios paired within a round (each round's value over the baseline's of the same round), then the median of those ratios.\n")
	p("- CPU: user+system time of each process from `/proc/<pid>/stat` over the load (10 ms ticks), divided by the successful calls. ")
	p("Memory: peak RSS (`VmHWM`, reset per run through `clear_refs`); the channel's cost is what creating it and making the first call added to the client's live Go heap (after a GC) and RSS.\n\n")

	p("## Goals\n\n")
	p("Measured: the median of the ratios paired within each round. Per CPU second: the same ratio in calls per CPU second of client and server together, ")
	p("which is what the throughput ratio would be with the two cores given to the two processes, and which other load on the machine disturbs less, though not nothing (CPU per call also moves with contention and batching).\n\n")
	p("| goal | load | measured | want | | per CPU second | |\n|---|---|---|---|---|---|---|\n")
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**missed**"
	}
	for _, g := range s.Goals {
		cpu, cpuVerdict := "-", ""
		if g.ByCPU != 0 {
			cpu, cpuVerdict = fmt.Sprintf("%.3fx", g.ByCPU), verdict(g.CPUMet)
		}
		p("| %s | `%s` | %.3fx | %s | %s | %s | %s |\n", g.Name, g.Load, g.Measured, g.Want, verdict(g.Met), cpu, cpuVerdict)
	}
	p("\n")

	p("## Throughput and CPU (closed loops)\n\n")
	p("| config | load | calls/s | spread | vs (a) per round | vs (a) | vs (c) | client CPU µs/call | server CPU µs/call | per CPU s vs (a) | per CPU s vs (c) | p99 ms | errors |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range s.Cells {
		if !strings.HasPrefix(c.Load, dataplane.KindClosed) && !strings.HasPrefix(c.Load, dataplane.KindStream) {
			continue
		}
		p("| (%s) | `%s` | %.0f | %s | %s | %s | %s | %.1f | %.1f | %s | %s | %.2f | %d |\n", c.Config, c.Load, c.CallsPerSec.Median, pct(c.CallsPerSec.Spread),
			ratios(c.VsBaseline.Values), ratio(c.VsBaseline), ratio(c.VsTLS), c.ClientCPU.Median, c.ServerCPU.Median,
			ratio(c.EfficiencyVsBaseline), ratio(c.EfficiencyVsTLS), c.P99.Median/1000, c.Errors)
	}
	p("\n`stream-N` rows count messages, not calls.\n\n")

	p("## Latency at fixed rates (open loops)\n\n")
	p("| config | load | achieved calls/s | p50 ms | p90 ms | p99 ms | p99.9 ms | p99 spread | p99 vs (a) per round | p99 vs (a) | client CPU µs/call | server CPU µs/call | errors |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range s.Cells {
		if !strings.HasPrefix(c.Load, dataplane.KindOpen) {
			continue
		}
		p("| (%s) | `%s` | %.0f | %.3f | %.3f | %.3f | %.3f | %s | %s | %s | %.1f | %.1f | %d |\n", c.Config, c.Load, c.CallsPerSec.Median,
			c.P50.Median/1000, c.P90.Median/1000, c.P99.Median/1000, c.P999.Median/1000, pct(c.P99.Spread),
			ratios(c.P99VsBaseline.Values), ratio(c.P99VsBaseline), c.ClientCPU.Median, c.ServerCPU.Median, c.Errors)
	}
	p("\n")
	for _, l := range r.Loads {
		name := "latency-" + l.Name() + ".svg"
		files[name] = latencyChart(s, r.Configs, l.Name())
		p("![latency distribution, %s](%s/%s)\n", l.Name(), plotDir, name)
	}
	p("\n")

	p("## Memory\n\n| config | client peak RSS MiB | server peak RSS MiB | channel: heap added KiB | channel: RSS added KiB | channel heap vs (a) KiB | first call after ms |\n|---|---|---|---|---|---|---|\n")
	var baseHeap float64
	for _, m := range s.Memory {
		if m.Config == dataplane.ConfigDirect {
			baseHeap = m.ChannelHeap.Median
		}
	}
	for _, m := range s.Memory {
		p("| (%s) | %.1f | %.1f | %.0f | %.0f | %+.0f | %.0f |\n", m.Config, m.ClientPeakRSS.Median/(1<<20), m.ServerPeakRSS.Median/(1<<20),
			m.ChannelHeap.Median/1024, m.ChannelRSS.Median/1024, (m.ChannelHeap.Median-baseHeap)/1024, m.ReadyAfterMS.Median)
	}
	p("\nThe memory an xDS channel adds to a client is the (b) row's heap against (a): the xDS client, its ADS stream and the resources it holds. Peak RSS includes the load's buffers and goroutines, so it grows with the calls in flight.\n\n")

	p("## Analysis\n\n")
	if in.analysis != "" {
		p("%s\n\n", strings.TrimSpace(in.analysis))
	} else {
		p("No analysis written for this run (`bench/analysis.md`).\n\n")
	}

	p("## Control plane\n\n")
	if in.controlplane == nil {
		p("No control-plane report (`bench/controlplane.json`): run `trellis-bench controlplane -o bench/controlplane.json` (part of `make bench`).\n\n")
	} else {
		p("From `%s` (`trellis-bench controlplane`); every table of the report, as recorded.\n\n", filepath.ToSlash(in.controlplanePath))
		for _, l := range scalarLists(in.controlplane) {
			p("%s:\n\n", l.name)
			for _, item := range l.items {
				p("- %s\n", item)
			}
			p("\n")
		}
		for _, t := range tables(in.controlplane) {
			p("### %s\n\n%s\n", t.name, markdownTable(t.rows))
			charts := controlPlaneCharts(t.rows)
			for _, name := range sortedKeys(charts) {
				file := strings.ReplaceAll(t.name, ".", "-") + "-" + name
				files[file] = charts[name]
				p("![%s, %s](%s/%s)\n", t.name, strings.TrimSuffix(name, ".svg"), plotDir, file)
			}
			p("\n")
		}
	}

	p("## Context: published figures of other meshes\n\n")
	p("Not measured here: other machines, other loads. Quoted from the named publications so that the figures above can be placed; ")
	p("the Istio documentation pages are versioned at the addresses given, the other sources were not re-read for this run.\n\n")
	p("| figure | value | source |\n|---|---|---|\n")
	p("| Istio 1.20: latency two Envoy sidecars add at 1,000 rps | ~0.23 ms at p90, ~0.30 ms at p99 | Istio 1.20 documentation, *Performance and Scalability*, https://istio.io/v1.20/docs/ops/deployment/performance-and-scalability/ |\n")
	p("| Istio 1.24: Envoy sidecar CPU and memory | ~0.20 vCPU and ~60 MB per sidecar per 1,000 rps | Istio 1.24 documentation, *Performance and Scalability*, https://istio.io/v1.24/docs/ops/deployment/performance-and-scalability/ |\n")
	p("| Istio proxyless gRPC: its agent against an Envoy sidecar | agent ~0.7 mCPU / 23.5 MiB; Envoy 320 mCPU / 67 MiB | Istio blog, *gRPC Proxyless Service Mesh* (2021) |\n")
	p("| istiod memory per connected proxy | ~1.3-2 MB | Istio documentation, *Performance and Scalability*, control plane |\n")
	p("| Consul global-scale benchmark | updates to 172,000 service instances in under 1 s | HashiCorp, *Consul Global Scale Benchmark* (2020) |\n\n")
	p("The same quantities for Trellis, from this run (medians):\n\n")
	for _, line := range sameUnits(s) {
		p("- %s\n", line)
	}
	p("\n")
	return b.String(), files
}

// quietLoad is the 1-minute load average of a 2-core machine below which
// a run counts as made on a quiet machine.
const quietLoad = 1.5

// machineLoad states the load averages the run recorded and whether the
// machine was quiet.
func machineLoad(r *dataplane.Report) string {
	m := r.Machine
	out := fmt.Sprintf("Load average (1 min) %.2f before, %.2f after", m.LoadBefore, m.LoadAfter)
	var during []float64
	for _, run := range r.Runs {
		if run.LoadAfter > 0 {
			during = append(during, run.LoadAfter)
		}
	}
	if len(during) == 0 {
		return out + "."
	}
	sort.Float64s(during)
	out += fmt.Sprintf(", %.2f-%.2f (median %.2f) at the end of the configurations' runs", during[0], during[len(during)-1], during[len(during)/2])
	if highest := max(m.LoadMax, during[len(during)-1]); highest < quietLoad {
		return out + fmt.Sprintf(": a quiet machine (below %.1f throughout).", quietLoad)
	}
	return out + fmt.Sprintf(": **not a quiet machine** (%.1f or more at some point): other processes competed for the cores, so calls/s and latency moved with them; the per-CPU-second ratios are the more trustworthy.", quietLoad)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func pct(v float64) string { return fmt.Sprintf("%.1f%%", v*100) }

func ratio(s dataplane.Stat) string {
	if len(s.Values) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3fx", s.Median)
}

func ratios(vs []float64) string {
	if len(vs) == 0 {
		return "-"
	}
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = fmt.Sprintf("%.2f", v)
	}
	return strings.Join(parts, " / ")
}

// noise describes the spread of the closed-loop throughput across rounds.
func noise(s dataplane.Summary) string {
	var spreads []float64
	for _, c := range s.Cells {
		if strings.HasPrefix(c.Load, dataplane.KindClosed) && len(c.CallsPerSec.Values) > 1 {
			spreads = append(spreads, c.CallsPerSec.Spread)
		}
	}
	if len(spreads) == 0 {
		return "one round only: no spread to report."
	}
	sort.Float64s(spreads)
	return fmt.Sprintf("closed-loop calls/s varied between rounds by %s (median spread) and up to %s; differences smaller than that are not significant.",
		pct(spreads[len(spreads)/2]), pct(spreads[len(spreads)-1]))
}

// sameUnits states this run's figures in the units of the published ones.
func sameUnits(s dataplane.Summary) []string {
	var out []string
	base, mtls, policy := s.Cell(dataplane.ConfigDirect, "open-1000"), s.Cell(dataplane.ConfigXDSMTLS, "open-1000"), s.Cell(dataplane.ConfigXDSMTLSPolicy, "open-1000")
	if base != nil && mtls != nil {
		out = append(out, fmt.Sprintf("latency Trellis mTLS (d) adds to direct plaintext (a) at 1,000 calls/s: %+.3f ms at p90, %+.3f ms at p99 (two sidecars: ~0.23 and ~0.30 ms)",
			(mtls.P90.Median-base.P90.Median)/1000, (mtls.P99.Median-base.P99.Median)/1000))
		// µs of CPU per call times 1,000 calls/s is ms of CPU per second:
		// mCPU.
		out = append(out, fmt.Sprintf("CPU per 1,000 calls/s of (d), client and server processes together, application included: %.0f mCPU; what (d) adds to (a): %+.0f mCPU (two sidecars: ~400 mCPU)",
			mtls.ClientCPU.Median+mtls.ServerCPU.Median, mtls.ClientCPU.Median+mtls.ServerCPU.Median-base.ClientCPU.Median-base.ServerCPU.Median))
	}
	if policy != nil && base != nil {
		out = append(out, fmt.Sprintf("the same for (e), with RBAC from intentions and retries: %.0f mCPU, %+.0f mCPU over (a)",
			policy.ClientCPU.Median+policy.ServerCPU.Median, policy.ClientCPU.Median+policy.ServerCPU.Median-base.ClientCPU.Median-base.ServerCPU.Median))
	}
	var a, d *dataplane.Memory
	for i := range s.Memory {
		switch s.Memory[i].Config {
		case dataplane.ConfigDirect:
			a = &s.Memory[i]
		case dataplane.ConfigXDSMTLS:
			d = &s.Memory[i]
		}
	}
	if a != nil && d != nil {
		out = append(out, fmt.Sprintf("memory Trellis mTLS adds to a client: %.1f MiB of live heap for the xDS channel, %+.1f MiB of peak RSS against (a) under load (a sidecar: ~60 MB; the proxyless agent: 23.5 MiB)",
			(d.ChannelHeap.Median-a.ChannelHeap.Median)/(1<<20), (d.ClientPeakRSS.Median-a.ClientPeakRSS.Median)/(1<<20)))
	}
	if len(out) == 0 {
		out = append(out, "(configurations (a) and (d) were not both measured at open-1000)")
	}
	return out
}

// legend names the configurations briefly in plots.
var legend = map[string]string{
	dataplane.ConfigDirect:        "direct",
	dataplane.ConfigXDS:           "xDS",
	dataplane.ConfigTLS:           "direct mTLS",
	dataplane.ConfigXDSMTLS:       "xDS mTLS",
	dataplane.ConfigXDSMTLSPolicy: "xDS mTLS+RBAC+retry",
}

// quantiles plotted, at even steps of log10(1/(1-q)).
var plotQuantiles = []float64{0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999}

func latencyChart(s dataplane.Summary, configs []string, load string) string {
	c := chart{title: "Latency distribution, " + load + " (all rounds)", xLabel: "percentile", yLabel: "latency, ms", logY: true, xTicks: map[float64]string{}}
	for _, q := range plotQuantiles {
		c.xTicks[-math.Log10(1-q)] = fmt.Sprintf("p%g", q*100)
	}
	for _, cfg := range configs {
		cell := s.Cell(cfg, load)
		if cell == nil {
			continue
		}
		h, err := cell.Latency.Decode()
		if err != nil || h.Count() == 0 {
			continue
		}
		ser := series{name: "(" + cfg + ") " + legend[cfg]}
		for _, q := range plotQuantiles {
			ser.points = append(ser.points, [2]float64{-math.Log10(1 - q), float64(h.Quantile(q)) / float64(time.Millisecond)})
		}
		c.series = append(c.series, ser)
	}
	return c.svg()
}

// table is a list of objects found in the control-plane report, each
// flattened to its scalar fields.
type table struct {
	name string
	rows []map[string]any
}

// tables finds the lists of objects in the control-plane report: the report
// itself when it is one, the lists among its fields, and the lists inside
// their elements, whose rows then also carry their parent's scalar fields
// (prefixed with the parent list's name). A report with no list is one row.
func tables(v any) []table {
	objects := func(v any) []map[string]any {
		list, ok := v.([]any)
		if !ok || len(list) == 0 {
			return nil
		}
		var out []map[string]any
		for _, e := range list {
			obj, ok := e.(map[string]any)
			if !ok {
				return nil
			}
			out = append(out, obj)
		}
		return out
	}
	var out []table
	var walk func(name string, objs []map[string]any, parent map[string]any)
	walk = func(name string, objs []map[string]any, parent map[string]any) {
		t := table{name: name}
		nested := map[string]bool{}
		for _, obj := range objs {
			row := flatten("", obj)
			for k, v := range parent {
				row[k] = v
			}
			t.rows = append(t.rows, row)
			for k, v := range obj {
				if objects(v) != nil {
					nested[k] = true
				}
			}
		}
		out = append(out, t)
		if parent != nil {
			return // two levels are enough for a Markdown report
		}
		for _, k := range sortedKeys(nested) {
			var rows []map[string]any
			for _, obj := range objs {
				// The parent's identifying fields (its size), not all of
				// them: enough to tell the rows of different parents apart.
				inherited := map[string]any{}
				for pk, pv := range obj {
					if _, isNumber := pv.(float64); isNumber && identifying(pk) {
						inherited[name+"."+pk] = pv
					}
				}
				for _, child := range objects(obj[k]) {
					row := flatten("", child)
					for ik, iv := range inherited {
						row[ik] = iv
					}
					rows = append(rows, row)
				}
			}
			if len(rows) > 0 {
				out = append(out, table{name: name + "." + k, rows: rows})
			}
		}
	}
	if objs := objects(v); objs != nil {
		walk("report", objs, nil)
		return out
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil
	}
	// The report's own fields (settings, machine) first, then its lists.
	if top := flatten("", obj); len(top) > 0 {
		out = append(out, table{name: "report", rows: []map[string]any{top}})
	}
	for _, k := range sortedKeys(obj) {
		if objs := objects(obj[k]); objs != nil {
			walk(k, objs, nil)
		}
	}
	return out
}

// scalarList is a top-level list of strings or numbers of the report,
// such as the problems it found.
type scalarList struct {
	name  string
	items []string
}

// scalarLists returns the report's top-level lists of scalars, by name.
func scalarLists(v any) []scalarList {
	obj, ok := v.(map[string]any)
	if !ok {
		return nil
	}
	var out []scalarList
	for _, k := range sortedKeys(obj) {
		list, ok := obj[k].([]any)
		if !ok || len(list) == 0 {
			continue
		}
		l := scalarList{name: k}
		for _, e := range list {
			switch e.(type) {
			case map[string]any, []any: // a table, not a list of scalars
			default:
				l.items = append(l.items, fmt.Sprint(e))
			}
		}
		if len(l.items) == len(list) {
			out = append(out, l)
		}
	}
	return out
}

// identifying reports whether a field names what a row is about (a size)
// rather than what was measured.
func identifying(field string) bool {
	for _, suffix := range []string{"services", "streams", "instances_per_service", "conns"} {
		if field == suffix || strings.HasSuffix(field, "_"+suffix) {
			return true
		}
	}
	return false
}

// flatten returns the scalar fields of obj, nested names joined by ".".
func flatten(prefix string, obj map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range obj {
		switch v := v.(type) {
		case map[string]any:
			for kk, vv := range flatten(prefix+k+".", v) {
				out[kk] = vv
			}
		case []any:
			// Lists (histograms, samples) do not fit a table cell.
		default:
			out[prefix+k] = v
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func markdownTable(rows []map[string]any) string {
	if len(rows) == 0 {
		return "The control-plane report holds no rows.\n"
	}
	colSet := map[string]bool{}
	for _, r := range rows {
		for k := range r {
			colSet[k] = true
		}
	}
	cols := sortedKeys(colSet)
	cell := func(v any) string {
		switch v := v.(type) {
		case nil:
			return ""
		case float64:
			if v == math.Trunc(v) && math.Abs(v) < 1e15 {
				return fmt.Sprintf("%.0f", v)
			}
			return fmt.Sprintf("%.4g", v)
		default:
			return fmt.Sprint(v)
		}
	}
	var b strings.Builder
	if len(cols) > maxColumns && len(rows) <= maxColumns {
		// Too wide to read: one line per field, one column per row.
		b.WriteString("| field |" + strings.Repeat(" |", len(rows)) + "\n|---|" + strings.Repeat("---|", len(rows)) + "\n")
		for _, c := range cols {
			cells := make([]string, len(rows))
			for i, r := range rows {
				cells[i] = cell(r[c])
			}
			b.WriteString("| " + c + " | " + strings.Join(cells, " | ") + " |\n")
		}
		return b.String()
	}
	b.WriteString("| " + strings.Join(cols, " | ") + " |\n|" + strings.Repeat("---|", len(cols)) + "\n")
	for _, r := range rows {
		cells := make([]string, len(cols))
		for i, c := range cols {
			cells[i] = cell(r[c])
		}
		b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
	}
	return b.String()
}

// maxColumns is the widest table drawn with one column per field.
const maxColumns = 10

// controlPlaneCharts plots, against a "streams" column when the rows have
// one, the p50/p99 latency columns and the RSS columns, one line per
// column and per value of a parent "services" column when there is one.
func controlPlaneCharts(rows []map[string]any) map[string]string {
	out := map[string]string{}
	xKey, groupKey := "", ""
	for _, r := range rows {
		for k := range r {
			if k == "streams" {
				xKey = k
			}
			if strings.HasSuffix(k, ".services") {
				groupKey = k
			}
		}
	}
	if xKey == "" {
		return out
	}
	groups := map[string]func(string) bool{
		"latency-vs-streams.svg": func(k string) bool {
			return strings.Contains(k, "latency") && (strings.HasSuffix(k, "p50_ms") || strings.HasSuffix(k, "p99_ms"))
		},
		"memory-vs-streams.svg": func(k string) bool { return strings.Contains(k, "rss") },
	}
	for name, match := range groups {
		yLabel := "ms"
		if strings.HasPrefix(name, "memory") {
			yLabel = "bytes"
		}
		c := chart{title: strings.TrimSuffix(name, ".svg"), xLabel: xKey, yLabel: yLabel, logX: true}
		cols := map[string]bool{}
		for _, r := range rows {
			for k, v := range r {
				if _, ok := v.(float64); ok && match(k) {
					cols[k] = true
				}
			}
		}
		for _, col := range sortedKeys(cols) {
			byGroup := map[string]*series{}
			for _, r := range rows {
				x, xok := r[xKey].(float64)
				y, yok := r[col].(float64)
				if !xok || !yok {
					continue
				}
				g := col
				if groupKey != "" {
					g = fmt.Sprintf("%s, %s=%v", col, strings.TrimPrefix(groupKey[strings.LastIndex(groupKey, ".")+1:], "."), r[groupKey])
				}
				if byGroup[g] == nil {
					byGroup[g] = &series{name: g}
				}
				byGroup[g].points = append(byGroup[g].points, [2]float64{x, y})
			}
			for _, g := range sortedKeys(byGroup) {
				ser := byGroup[g]
				sort.Slice(ser.points, func(i, j int) bool { return ser.points[i][0] < ser.points[j][0] })
				c.series = append(c.series, *ser)
			}
		}
		if len(c.series) > 0 {
			out[name] = c.svg()
		}
	}
	return out
}
