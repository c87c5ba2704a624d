package metricsdoc

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// moduleRoot is the root of the Trellis module, three levels up.
const moduleRoot = "../../.."

// TestEveryMetricDocumented fails when the module's code constructs a
// metric that the README's Metrics table does not list (with its type), or
// names one against the rule; and when the table lists a metric the code no
// longer has. The running server's /metrics is checked against the same
// table by integration.TestMetricsDocumented.
func TestEveryMetricDocumented(t *testing.T) {
	readme := filepath.Join(moduleRoot, "README.md")
	table, err := ReadTable(readme)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := SourceMetrics(moduleRoot)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 {
		t.Fatal("found no metric in the source: the scan is broken")
	}
	seen := map[string]Metric{}
	for _, m := range ms {
		if prev, dup := seen[m.Name]; dup && prev.Type != m.Type {
			t.Errorf("%s is constructed as a %s (%s) and as a %s (%s)", m.Name, prev.Type, prev.Pos, m.Type, m.Pos)
		}
		seen[m.Name] = m
	}
	for _, err := range Undocumented(seen, table, "README.md") {
		t.Error(err)
	}
	for name, e := range table {
		if _, ok := seen[name]; !ok {
			t.Errorf("README.md:%d documents %s, which no code constructs: remove the row", e.Line, name)
		}
		if e.Meaning == "" {
			t.Errorf("README.md:%d: %s has no meaning", e.Line, name)
		}
	}
}

func TestCheckName(t *testing.T) {
	tests := []struct {
		name, typ string
		wantErr   string
	}{
		{"trellis_xds_acks_total", Counter, ""},
		{"trellis_xds_streams", Gauge, ""},
		{"trellis_xds_push_ack_latency_seconds", Histogram, ""},
		{"trellis_identity_sync_svid_expiry_timestamp_seconds", Gauge, ""},
		{"trellis_xds_acks", Counter, "a counter is named"},
		{"trellis_acks_total", Counter, "a counter is named"},
		{"trellis_xds_streams_total", Gauge, "only counters end in _total"},
		{"trellis_xds_push_latency_milliseconds", Histogram, `unit "milliseconds"`},
		{"trellis_xds_push_latency", Histogram, "ends in its base unit"},
		{"trellis_xds_cpu_percent", Gauge, "ratio"},
		{"trellis_xdsStreams", Gauge, "lower-case words"},
		{"xds_streams", Gauge, "lower-case words"},
		{"trellis_xds", Gauge, "lower-case words"},
		{"trellis_xds_latency_count", Gauge, "reserved"},
		{"trellis_xds_streams", "untyped", "accepted: counter, gauge"},
	}
	for _, tc := range tests {
		t.Run(tc.name+"/"+tc.typ, func(t *testing.T) {
			err := CheckName(tc.name, tc.typ)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckName: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("CheckName: %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestReadTable(t *testing.T) {
	dir := t.TempDir()
	write := func(text string) string {
		p := filepath.Join(dir, "README.md")
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := write("# T\n\n## Metrics\n\nSome words.\n\n| Metric | Type | Labels | Meaning |\n|---|---|---|---|\n" +
		"| `trellis_xds_streams` | gauge | — | Open ADS streams. |\n| `trellis_xds_acks_total` | counter | `type` | ACKs. |\n\n" +
		"| `trellis_not_in_table_total` | counter | | after the table |\n## Next\n| `trellis_other_total` | counter | | x |\n")
	got, err := ReadTable(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["trellis_xds_streams"].Type != Gauge || got["trellis_xds_acks_total"].Labels != "`type`" || got["trellis_xds_acks_total"].Line != 10 {
		t.Errorf("ReadTable = %+v", got)
	}

	for _, bad := range []struct{ text, wantErr string }{
		{"## Metrics\n| `trellis_a_b_total` | counter |\n", "columns metric, type, labels, meaning"},
		{"## Metrics\n| `trellis_a_b_total` | counter | | x |\n| `trellis_a_b_total` | counter | | y |\n", "already documented on line 2"},
		{"## Other\n| `trellis_a_b_total` | counter | | x |\n", "no metrics table"},
	} {
		if _, err := ReadTable(write(bad.text)); err == nil || !strings.Contains(err.Error(), bad.wantErr) {
			t.Errorf("ReadTable(%q): %v, want an error containing %q", bad.text, err, bad.wantErr)
		}
	}
}

func TestSourceMetrics(t *testing.T) {
	dir := t.TempDir()
	src := `package p

import "github.com/prometheus/client_golang/prometheus"

const sub = "xds"

func metrics(reg prometheus.Registerer, dynamic string) {
	reg.MustRegister(
		prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_xds_acks_total"}, []string{"type"}),
		prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "trellis", Subsystem: sub, Name: "streams"}),
		prometheus.NewHistogram(prometheus.HistogramOpts{Name: "trellis_" + sub + "_latency_seconds"}),
	)
}
`
	if err := os.WriteFile(filepath.Join(dir, "p.go"), []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	// Tests and test helpers are not scanned.
	if err := os.WriteFile(filepath.Join(dir, "p_test.go"), []byte("package p\nvar _ = prometheus.NewGauge(prometheus.GaugeOpts{Name: \"trellis_test_only\"})\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := SourceMetrics(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []Metric{
		{Name: "trellis_xds_acks_total", Type: Counter, Pos: "p.go:9"},
		{Name: "trellis_xds_latency_seconds", Type: Histogram, Pos: "p.go:11"},
		{Name: "trellis_xds_streams", Type: Gauge, Pos: "p.go:10"},
	}
	if len(got) != len(want) {
		t.Fatalf("SourceMetrics = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("SourceMetrics[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}

	// A name the scan cannot read is an error, not a metric left out.
	bad := strings.Replace(src, `Name: "trellis_xds_acks_total"`, `Name: dynamic`, 1)
	if err := os.WriteFile(filepath.Join(dir, "p.go"), []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := SourceMetrics(dir); err == nil || !strings.Contains(err.Error(), "p.go:9: the metric's Name is not a string literal") {
		t.Errorf("SourceMetrics with a computed name: %v", err)
	}
}

func TestUndocumentedNamesTheRowsToAdd(t *testing.T) {
	seen := map[string]Metric{
		"trellis_xds_acks_total": {Name: "trellis_xds_acks_total", Type: Counter, Pos: "a.go:1"},
		"trellis_xds_streams":    {Name: "trellis_xds_streams", Type: Gauge, Pos: "a.go:2"},
		"trellis_xds_new_total":  {Name: "trellis_xds_new_total", Type: Counter, Pos: "b.go:3"},
	}
	table := map[string]Entry{
		"trellis_xds_acks_total": {Name: "trellis_xds_acks_total", Type: Counter, Meaning: "x", Line: 5},
		"trellis_xds_streams":    {Name: "trellis_xds_streams", Type: Counter, Meaning: "y", Line: 6},
	}
	err := errors.Join(Undocumented(seen, table, "README.md")...)
	if err == nil {
		t.Fatal("Undocumented found nothing")
	}
	for _, w := range []string{
		"1 metric(s) not documented",
		"| `trellis_xds_new_total` | counter | <labels> | <meaning> |   (b.go:3)",
		"README.md:6: trellis_xds_streams is documented as a counter but is a gauge (a.go:2)",
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}
