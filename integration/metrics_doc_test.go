package integration

import (
	"errors"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	"github.com/trellis-mesh/trellis/internal/testutil/metricsdoc"
)

// TestMetricsDocumented scrapes the /metrics of a real server, with a real
// Consul and a real grpc-go client that received and ACKed its
// configuration, and fails when a trellis_* metric it serves is missing from
// README.md's Metrics table, documented with another type, or named against
// trellis_<subsystem>_<name>_<unit|total>. Labelled metrics appear in a
// scrape only once observed, so the metrics the code constructs are added
// from the source (metricsdoc.SourceMetrics) and checked alike.
func TestMetricsDocumented(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	startBackend(t, consul, "echo", "echo-1", backendOptions{})
	s := startTrellis(t, consul.HTTPAddr())
	conn := dialXDS(t, s.bootstrapFor(t, "metrics-client"), "xds:///echo")
	waitForInstances(t, conn, 30*time.Second, "echo-1")
	s.requireAllACKed(t)

	code, body, err := s.get("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	seen := map[string]metricsdoc.Metric{}
	for name, fam := range families {
		if !strings.HasPrefix(name, "trellis_") {
			continue
		}
		seen[name] = metricsdoc.Metric{Name: name, Type: familyType(fam.GetType()), Pos: "/metrics of trellis server"}
	}
	// The scrape must see the pipeline's metrics, or it proves nothing.
	for _, name := range []string{"trellis_xds_streams", "trellis_xds_acks_total", "trellis_catalog_services",
		"trellis_xds_subscriptions", "trellis_xds_resources", "trellis_xds_ack_latency_seconds", "trellis_consul_last_contact_age_seconds"} {
		if _, ok := seen[name]; !ok {
			t.Errorf("/metrics has no %s", name)
		}
	}
	fromSource, err := metricsdoc.SourceMetrics("..")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range fromSource {
		if scraped, ok := seen[m.Name]; ok {
			if scraped.Type != m.Type {
				t.Errorf("%s is a %s in /metrics and a %s in %s", m.Name, scraped.Type, m.Type, m.Pos)
			}
			continue
		}
		seen[m.Name] = m
	}
	table, err := metricsdoc.ReadTable("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(metricsdoc.Undocumented(seen, table, "README.md")...); err != nil {
		t.Error(err)
	}
}

func familyType(t dto.MetricType) string {
	switch t {
	case dto.MetricType_COUNTER:
		return metricsdoc.Counter
	case dto.MetricType_GAUGE:
		return metricsdoc.Gauge
	case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
		return metricsdoc.Histogram
	case dto.MetricType_SUMMARY:
		return metricsdoc.Summary
	default:
		return strings.ToLower(t.String())
	}
}
