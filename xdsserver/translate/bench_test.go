package translate

import (
	"fmt"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/model"
)

// benchCatalog builds a catalog of n services with three instances each.
func benchCatalog(n int) *model.Snapshot {
	services := make([]*model.Service, 0, n)
	for s := 0; s < n; s++ {
		svc := &model.Service{Name: fmt.Sprintf("service-%04d", s)}
		for i := 0; i < 3; i++ {
			svc.Instances = append(svc.Instances, model.Instance{
				ID: fmt.Sprintf("i-%d", i), Node: fmt.Sprintf("node-%d", i),
				Address: fmt.Sprintf("10.%d.%d.%d", s/250, s%250, i+1), Port: 8080,
				Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1", Zone: fmt.Sprintf("z%d", i),
			})
		}
		services = append(services, svc)
	}
	return model.NewSnapshot(services)
}

// BenchmarkTranslateScaling translates catalogs of 100 and 1000 services in
// the same run and reports the cost per service of each, and their ratio:
// 1.0 means translation scales linearly with the number of services.
func BenchmarkTranslateScaling(b *testing.B) {
	small, large := benchCatalog(100), benchCatalog(1000)
	var smallTime, largeTime time.Duration
	for b.Loop() {
		start := time.Now()
		Translate(Input{Catalog: small}, Options{})
		mid := time.Now()
		Translate(Input{Catalog: large}, Options{})
		smallTime += mid.Sub(start)
		largeTime += time.Since(mid)
	}
	perSmall := float64(smallTime.Nanoseconds()) / float64(b.N) / 100
	perLarge := float64(largeTime.Nanoseconds()) / float64(b.N) / 1000
	b.ReportMetric(perSmall, "ns/service@100")
	b.ReportMetric(perLarge, "ns/service@1000")
	b.ReportMetric(perLarge/perSmall, "per-service-ratio")
}
