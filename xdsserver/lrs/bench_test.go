package lrs

import (
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
)

// BenchmarkRecord measures the server's cost of one report of a client
// calling three services, with 10,000 series already kept: what
// --load-reporting-interval multiplies by the number of clients.
func BenchmarkRecord(b *testing.B) {
	s, err := New(Config{Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	warm := &stream{source: "warm", inProgress: map[seriesKey]uint64{}}
	for i := range DefaultMaxSeries - 3 {
		s.record(warm, []*endpointv3.ClusterStats{{ClusterName: "svc-" + strconv.Itoa(i), UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{locality("dc1", "a", 1, 0, 0)}}})
	}
	str := &stream{source: "web", inProgress: map[seriesKey]uint64{}}
	report := []*endpointv3.ClusterStats{
		{ClusterName: "echo", UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{locality("dc1", "a", 100, 2, 3)}},
		{ClusterName: "echo/blue", UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{locality("dc1", "a", 10, 0, 0)}},
		{ClusterName: "billing", UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{locality("dc1", "b", 50, 5, 1)}},
	}
	b.ReportAllocs()
	for b.Loop() {
		s.record(str, report)
	}
}
