package translate

import (
	"fmt"
	"math/rand/v2"
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"

	"github.com/trellis-mesh/trellis/internal/model"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// randomZoned is service name with 2 to 7 instances over zones a, b and
// c, some critical, some tagged "v2", some carrying a spill threshold.
func randomZoned(r *rand.Rand, name string) *model.Service {
	svc := &model.Service{Name: name}
	for i := range 2 + r.IntN(6) {
		in := model.Instance{
			ID: fmt.Sprintf("%s-%d", name, i), Node: "n", Address: fmt.Sprintf("10.0.%d.%d", r.IntN(200), i+1), Port: 8080,
			Health: model.HealthPassing, Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1",
			Zone: []string{"a", "b", "c"}[r.IntN(3)],
		}
		if r.IntN(4) == 0 {
			in.Health = model.HealthCritical
		}
		if r.IntN(2) == 0 {
			in.Tags = []string{"v2"}
		}
		if r.IntN(5) == 0 {
			in.Meta = map[string]string{ZoneMinHealthyMetaKey: fmt.Sprint(r.IntN(101))}
		}
		svc.Instances = append(svc.Instances, in)
	}
	model.SortInstances(svc.Instances)
	return svc
}

// randomPolicy is nil, or a policy with a "v2" subset and maybe a spill
// threshold.
func randomPolicy(r *rand.Rand) *policyv1.ServicePolicy {
	switch r.IntN(3) {
	case 0:
		return nil
	case 1:
		return &policyv1.ServicePolicy{Subsets: []*policyv1.Subset{{Name: "v2", Tags: []string{"v2"}}}}
	default:
		return &policyv1.ServicePolicy{Locality: &policyv1.Locality{MinHealthyPercent: u32p(uint32(r.IntN(101)))}}
	}
}

// TestZoneSplitterFollowsChanges drives one ZoneSplitter through random
// changes (services added, changed and removed through
// model.Snapshot.Next, policies replaced, subsets coming and going) and
// checks after each call that it holds exactly what a new ZoneSplitter
// computes from the same translation: looking only at what changed must
// give what looking at everything gives.
func TestZoneSplitterFollowsChanges(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	const services = 40
	catalog := map[string]*model.Service{}
	for i := range services {
		name := fmt.Sprintf("svc-%02d", i)
		catalog[name] = randomZoned(r, name)
	}
	policies := map[string]*policyv1.ServicePolicy{}
	snap := (*model.Snapshot)(nil).Next(catalog, nil)
	tr := NewTranslator(Options{})
	z := &ZoneSplitter{}
	incremental := 0
	for step := range 300 {
		if step > 0 {
			next := make(map[string]*model.Service, len(catalog))
			for k, v := range catalog {
				next[k] = v
			}
			var changed []string
			for range 1 + r.IntN(3) {
				name := fmt.Sprintf("svc-%02d", r.IntN(services+5))
				switch {
				case r.IntN(6) == 0:
					delete(next, name)
				default:
					next[name] = randomZoned(r, name)
				}
				changed = append(changed, name)
			}
			catalog = next
			snap = snap.Next(catalog, changed)
			if r.IntN(4) == 0 {
				// A new policies map, one policy replaced.
				np := make(map[string]*policyv1.ServicePolicy, len(policies)+1)
				for k, v := range policies {
					np[k] = v
				}
				name := fmt.Sprintf("svc-%02d", r.IntN(services))
				if p := randomPolicy(r); p != nil {
					np[name] = p
				} else {
					delete(np, name)
				}
				policies = np
			}
		}
		in := Input{Catalog: snap, Policies: policies}
		res := tr.Translate(in)
		if _, ok := z.changedSince(in, res); ok {
			incremental++
		}
		got := z.Split(in, res)
		want := (&ZoneSplitter{}).Split(in, res)
		if len(got) != len(want) {
			t.Fatalf("step %d: variants for %d zones, a new splitter has %d", step, len(got), len(want))
		}
		for zone, clusters := range want {
			if len(got[zone]) != len(clusters) {
				t.Fatalf("step %d, zone %s: %d clusters with variants, a new splitter has %d", step, zone, len(got[zone]), len(clusters))
			}
			for cname, w := range clusters {
				g, ok := got[zone][cname].(*endpointv3.ClusterLoadAssignment)
				if !ok || !proto.Equal(g, w.(*endpointv3.ClusterLoadAssignment)) {
					t.Fatalf("step %d, zone %s, cluster %s: variant %v, a new splitter has %v", step, zone, cname, g, w)
				}
			}
		}
	}
	// The test must exercise the incremental path, not only the full one.
	if incremental < 250 {
		t.Errorf("%d of 300 calls looked only at what changed; want most of them", incremental)
	}
}
