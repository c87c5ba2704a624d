package pipeline

import (
	"sync"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

	"github.com/trellis-mesh/trellis/internal/clients"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/policy/store"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// fakeZones records the zone applies, and when each came relative to the
// profile caches' applies.
type fakeZones struct {
	mu       sync.Mutex
	cache    *fakeCache
	base     []map[string]types.Resource
	variants []map[string]map[string]types.Resource
	// before counts the profile applies made before each zone apply.
	before []int
}

func (z *fakeZones) Apply(base map[string]types.Resource, variants map[string]map[string]types.Resource) map[string]xdscache.ApplyResult {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.base, z.variants, z.before = append(z.base, base), append(z.variants, variants), append(z.before, z.cache.count())
	return nil
}

func zonedCatalog() *model.Snapshot {
	svc := &model.Service{Name: "echo"}
	for i, zone := range []string{"a", "a", "b", "b"} {
		svc.Instances = append(svc.Instances, model.Instance{ID: "echo-" + string(rune('1'+i)), Node: "n1", Address: "10.0.0." + string(rune('1'+i)), Port: 8080,
			Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1", Zone: zone})
	}
	return model.NewSnapshot([]*model.Service{svc})
}

// TestZonesApplied: each apply gives Config.Zones the first profile's
// assignments and their zone variants, before the profile caches get the
// clusters naming them.
func TestZonesApplied(t *testing.T) {
	zones := &fakeZones{}
	_, cache, in, _ := start(t, Config{Zones: zones})
	zones.mu.Lock()
	zones.cache = cache
	zones.mu.Unlock()
	in.policies <- &store.Snapshot{}
	in.catalogs <- zonedCatalog()
	waitApplies(t, cache, 1)

	zones.mu.Lock()
	defer zones.mu.Unlock()
	if len(zones.base) != 1 || zones.before[0] != 0 {
		t.Fatalf("zone applies %d (after %v profile applies), want 1 before the first", len(zones.base), zones.before)
	}
	if zones.base[0]["echo"] != cache.last()[clients.Widest.Name][resource.EndpointType]["echo"] {
		t.Errorf("zone base assignment is not the first profile's")
	}
	for _, zone := range []string{"a", "b"} {
		v, ok := zones.variants[0][zone]["echo"].(*endpointv3.ClusterLoadAssignment)
		if !ok {
			t.Fatalf("zone %s: no variant of echo in %v", zone, zones.variants[0])
		}
		if got := v.GetEndpoints()[0]; got.GetLocality().GetZone() != zone || got.GetPriority() != 0 {
			t.Errorf("zone %s variant starts with %v at priority %d, want its own zone at 0", zone, got.GetLocality(), got.GetPriority())
		}
	}
}
