package pipeline

import (
	"fmt"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/policy/store"
	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
)

// benchCatalog is a catalog of n services with 10 instances each.
func benchCatalog(n int, gen int) *model.Snapshot {
	services := make([]*model.Service, 0, n)
	for i := range n {
		services = append(services, benchService(i, gen))
	}
	return model.NewSnapshot(services)
}

func benchService(i, gen int) *model.Service {
	svc := &model.Service{Name: fmt.Sprintf("svc-%05d", i)}
	for j := range 10 {
		svc.Instances = append(svc.Instances, model.Instance{
			ID: fmt.Sprintf("svc-%05d-%d", i, j), Node: fmt.Sprintf("node-%d", j),
			Address: fmt.Sprintf("10.%d.%d.%d", j, i/250, i%250+1), Port: 8000 + gen,
			Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1", Zone: fmt.Sprintf("z%d", j%3),
		})
	}
	return svc
}

// BenchmarkApply measures one apply of a 2,000-service catalog through
// every client profile into the real profile caches, with one service
// changed, against the same-run baseline of every service changed. The
// ratio must stay small: work follows the change, not the catalog.
// (xdscache's BenchmarkApplyOneServiceChanged measures the same at 10,000
// services for one profile.)
func BenchmarkApply(b *testing.B) {
	const n = 2000
	newPipe := func(b *testing.B) *Pipeline {
		caches, err := xdsserver.NewProfileCaches(xdsserver.ProfileCachesConfig{})
		if err != nil {
			b.Fatal(err)
		}
		p, err := New(Config{Catalogs: make(chan *model.Snapshot), Policies: make(chan *store.Snapshot), Cache: caches, Profiles: caches.Profiles()})
		if err != nil {
			b.Fatal(err)
		}
		return p
	}
	measure := func(b *testing.B, changeAll bool) float64 {
		p := newPipe(b)
		// Snapshots follow one another as the catalog watcher publishes
		// them, each naming the services it changed.
		base := (*model.Snapshot)(nil).Next(benchCatalog(n, 0).Services, nil)
		sec := &translate.Security{}
		p.apply(translate.Input{Catalog: base, Security: sec})
		var total float64
		b.StopTimer()
		for i := 0; i < b.N; i++ {
			next := make(map[string]*model.Service, n)
			for k, s := range base.Services {
				next[k] = s
			}
			var changed []string
			if changeAll {
				for j := range n {
					s := benchService(j, i+1)
					next[s.Name] = s
					changed = append(changed, s.Name)
				}
			} else {
				s := benchService(i%n, i+1)
				next[s.Name] = s
				changed = append(changed, s.Name)
			}
			snap := base.Next(next, changed)
			base = snap
			b.StartTimer()
			start := time.Now()
			p.apply(translate.Input{Catalog: snap, Security: sec})
			total += float64(time.Since(start))
			b.StopTimer()
		}
		b.ReportMetric(total/float64(b.N)/1e6, "ms/apply")
		return total / float64(b.N)
	}
	var all, one float64
	b.Run("all-changed", func(b *testing.B) { all = measure(b, true) })
	b.Run("one-changed", func(b *testing.B) {
		one = measure(b, false)
		if all > 0 {
			b.ReportMetric(one/all, "ratio-to-all-changed")
		}
	})
}
