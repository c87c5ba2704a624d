package xdscache

import (
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
)

func benchSnapshot(n, generation int, changeAll bool) *model.Snapshot {
	services := make([]*model.Service, 0, n)
	for s := 0; s < n; s++ {
		weight := 1
		if changeAll || s == 0 {
			weight = 1 + generation%2
		}
		svc := &model.Service{Name: fmt.Sprintf("service-%04d", s)}
		for i := 0; i < 3; i++ {
			svc.Instances = append(svc.Instances, model.Instance{
				ID: fmt.Sprintf("i-%d", i), Node: "node", Address: fmt.Sprintf("10.%d.%d.%d", s/250, s%250, i+1),
				Port: 8080, Weights: model.Weights{Passing: weight, Warning: 1}, Datacenter: "dc1",
			})
		}
		services = append(services, svc)
	}
	return model.NewSnapshot(services)
}

// BenchmarkApplyOneServiceChanged measures translating and applying a
// 1000-service catalog in which one service changed, against the baseline
// of the same catalog with every service changed, in the same run. The
// ratio shows what the content-hash diff saves when Consul changes one
// service.
func BenchmarkApplyOneServiceChanged(b *testing.B) {
	const services = 1000
	one := New(Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	all := New(Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	apply := func(c *Cache, snap *model.Snapshot) ApplyResult {
		return c.Apply(translate.Translate(translate.Input{Catalog: snap}, translate.Options{}).Resources.ByTypeURL())
	}
	apply(one, benchSnapshot(services, 0, false))
	apply(all, benchSnapshot(services, 0, true))
	var oneTime, allTime time.Duration
	gen := 0
	for b.Loop() {
		gen++
		snapOne, snapAll := benchSnapshot(services, gen, false), benchSnapshot(services, gen, true)
		start := time.Now()
		r := apply(one, snapOne)
		mid := time.Now()
		apply(all, snapAll)
		oneTime += mid.Sub(start)
		allTime += time.Since(mid)
		if got := r.Types["type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"].Updated; got != 1 {
			b.Fatalf("one service changed, %d load assignments updated", got)
		}
	}
	b.ReportMetric(float64(oneTime.Nanoseconds())/float64(b.N), "ns/apply-one-changed")
	b.ReportMetric(float64(allTime.Nanoseconds())/float64(b.N), "ns/apply-all-changed")
	b.ReportMetric(float64(oneTime)/float64(allTime), "one/all-ratio")
}
