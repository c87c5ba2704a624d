package xdscache

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
)

// benchService is service s of a generated catalog, with 10 instances
// whose weight follows gen.
func benchService(s, gen int) *model.Service {
	svc := &model.Service{Name: fmt.Sprintf("service-%05d", s)}
	for i := range 10 {
		svc.Instances = append(svc.Instances, model.Instance{
			ID: fmt.Sprintf("i-%d", i), Node: fmt.Sprintf("node-%d", i),
			Address: fmt.Sprintf("10.%d.%d.%d", i, s/250, s%250+1), Port: 8080,
			Weights: model.Weights{Passing: 1 + gen%1000, Warning: 1}, Datacenter: "dc1", Zone: fmt.Sprintf("z%d", i%3),
		})
	}
	return svc
}

// BenchmarkApplyOneServiceChanged measures translating (with a memoising
// Translator and the security settings trellis server runs with by default)
// and applying a catalog of 10,000 services x 10 instances in which one
// service changed, against the baseline, in the same run and through the
// same Translator and Cache, of the catalog with every service changed.
// Building the catalogs, and collecting the garbage of the previous step,
// are left out of the timing. The one/all ratio shows
// that the cost follows the change, not the catalog: it must stay <= 0.02.
func BenchmarkApplyOneServiceChanged(b *testing.B) {
	const n = 10000
	tr := translate.NewTranslator(translate.Options{})
	c := New(Config{})
	sec := &translate.Security{}
	services := make(map[string]*model.Service, n)
	for s := range n {
		svc := benchService(s, 0)
		services[svc.Name] = svc
	}
	snapshot := func() *model.Snapshot {
		m := make(map[string]*model.Service, n)
		for name, svc := range services {
			m[name] = svc
		}
		return &model.Snapshot{Services: m}
	}
	apply := func(snap *model.Snapshot) (ApplyResult, time.Duration) {
		start := time.Now()
		r := c.Apply(tr.Translate(translate.Input{Catalog: snap, Security: sec}).Resources.ByTypeURL())
		return r, time.Since(start)
	}
	if r, _ := apply(snapshot()); r.Err != nil {
		b.Fatal(r.Err)
	}
	var oneTime, allTime time.Duration
	gen := 0
	b.ResetTimer()
	for b.Loop() {
		gen++
		b.StopTimer()
		changed := benchService(gen%n, gen)
		services[changed.Name] = changed
		snapOne := snapshot()
		runtime.GC() // the previous step's garbage is not this step's cost
		b.StartTimer()
		r, d := apply(snapOne)
		oneTime += d
		if got := r.Types[resource.EndpointType].Updated; got != 1 || r.Err != nil {
			b.Fatalf("one service changed: %d load assignments updated (error %v)", got, r.Err)
		}

		b.StopTimer()
		gen++
		for s := range n {
			svc := benchService(s, gen)
			services[svc.Name] = svc
		}
		snapAll := snapshot()
		runtime.GC()
		b.StartTimer()
		r, d = apply(snapAll)
		allTime += d
		if got := r.Types[resource.EndpointType].Updated; got < n-1 || r.Err != nil {
			b.Fatalf("every service changed: %d load assignments updated (error %v)", got, r.Err)
		}
	}
	b.ReportMetric(float64(oneTime.Nanoseconds())/float64(b.N), "ns/apply-one-changed")
	b.ReportMetric(float64(allTime.Nanoseconds())/float64(b.N), "ns/apply-all-changed")
	b.ReportMetric(float64(oneTime)/float64(allTime), "one/all-ratio")
}
