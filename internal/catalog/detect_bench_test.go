package catalog

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/hashicorp/consul/api"
)

// BenchmarkDecodeNonPassingChecks decodes one answer of a check detector
// holding 1,000 critical checks, as the detectors do (checkSummary) and,
// as the same-run baseline, into api.HealthCheck as api.Health.State
// does. Reported: the ratio of the two, per answer.
func BenchmarkDecodeNonPassingChecks(b *testing.B) {
	var checks []*api.HealthCheck
	for i := range 1000 {
		checks = append(checks, &api.HealthCheck{
			Node: fmt.Sprint("node-", i%10), CheckID: fmt.Sprintf("service:svc-%05d-%d", i, i%10), Name: "Service check",
			Status: api.HealthCritical, Output: "TTL expired", Type: "ttl",
			ServiceID: fmt.Sprintf("svc-%05d-%d", i, i%10), ServiceName: fmt.Sprintf("svc-%05d", i), ServiceTags: []string{"v1", "grpc"},
			CreateIndex: 100, ModifyIndex: uint64(200 + i),
		})
	}
	body, err := json.Marshal(checks)
	if err != nil {
		b.Fatal(err)
	}
	var full, summary float64
	b.Run("api.HealthCheck", func(b *testing.B) {
		for b.Loop() {
			var out []*api.HealthCheck
			if err := json.Unmarshal(body, &out); err != nil || len(out) != 1000 {
				b.Fatalf("%d checks, %v", len(out), err)
			}
		}
		full = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	})
	b.Run("checkSummary", func(b *testing.B) {
		for b.Loop() {
			var out []checkSummary
			if err := json.Unmarshal(body, &out); err != nil || len(out) != 1000 || out[999].ServiceName != "svc-00999" {
				b.Fatalf("%d checks, %v", len(out), err)
			}
		}
		summary = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		if full > 0 {
			b.ReportMetric(summary/full, "ratio-to-api.HealthCheck")
		}
	})
}
