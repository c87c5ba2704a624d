package translate

import (
	"sort"
	"sync"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

	"github.com/trellis-mesh/trellis/internal/model"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// DefaultMinHealthyPercent is the share of a zone's instances that must be
// healthy for its clients to keep their calls in it, unless the service's
// policy sets locality.min_healthy_percent.
const DefaultMinHealthyPercent = 50

// ZoneAssignments are the per-zone variants of ClusterLoadAssignments: by
// client zone (node.locality.zone), then by cluster name, the assignment
// the clients of that zone receive in place of the one in Resources. A
// cluster without a variant for a zone is served its Resources assignment.
type ZoneAssignments map[string]map[string]*endpointv3.ClusterLoadAssignment

// Zone-aware routing. A cluster whose priority-0 endpoints span two zones
// or more gets one variant per zone Z: Z's localities at priority 0, the
// other priority-0 localities at priority 1, and every later priority
// (failover datacenters) one further down. A client in Z then sends all
// its calls to Z, and gRPC's priority load balancing moves them to the
// other zones by itself if it cannot reach any of Z's endpoints. While
// fewer than min_healthy_percent of Z's instances (those not in
// maintenance) are healthy, Z gets no variant: its clients receive the
// shared assignment, where every zone is one priority and calls spread
// over the zones by their healthy weight, so a zone that lost most of its
// instances does not concentrate its clients' calls on the few left.
//
// Variants are a pure function of the translation's assignments and the
// catalog: every client of one zone gets the same variant, and a variant
// is computed once per change of its inputs (ZoneSplitter).

// ZoneSplitter computes ZoneAssignments, reusing the variants of every
// cluster whose base assignment, service and policy are unchanged since
// the previous call. Split may be called from several goroutines; calls
// are serialized.
type ZoneSplitter struct {
	mu   sync.Mutex
	memo map[string]zoneMemo // by cluster name; guarded by mu
}

type zoneMemo struct {
	base *endpointv3.ClusterLoadAssignment
	svc  *model.Service
	pol  *policyv1.ServicePolicy
	// variants by zone; nil when the cluster has none.
	variants map[string]*endpointv3.ClusterLoadAssignment
}

// Split returns the zone variants of res, the translation of in. The
// assignments returned are shared and must not be modified.
func (z *ZoneSplitter) Split(in Input, res *Result) ZoneAssignments {
	z.mu.Lock()
	defer z.mu.Unlock()
	out := ZoneAssignments{}
	if in.Catalog == nil || res == nil {
		z.memo = nil
		return out
	}
	panicking := make(map[string]bool, len(res.Panicking))
	for _, c := range res.Panicking {
		panicking[c] = true
	}
	next := make(map[string]zoneMemo, len(z.memo))
	add := func(cname string, svc *model.Service, pol *policyv1.ServicePolicy, instances func() *model.Service) {
		base := res.Resources.Endpoints[cname]
		if base == nil || panicking[cname] {
			return
		}
		m, ok := z.memo[cname]
		if !ok || m.base != base || m.svc != svc || m.pol != pol {
			m = zoneMemo{base: base, svc: svc, pol: pol, variants: zoneVariants(base, instances(), minHealthyPercent(pol))}
		}
		next[cname] = m
		for zone, v := range m.variants {
			if out[zone] == nil {
				out[zone] = map[string]*endpointv3.ClusterLoadAssignment{}
			}
			out[zone][cname] = v
		}
	}
	for name, svc := range in.Catalog.Services {
		pol := in.Policies[name]
		add(name, svc, pol, func() *model.Service { return svc })
		for _, subset := range pol.GetSubsets() {
			add(SubsetClusterName(name, subset.GetName()), svc, pol, func() *model.Service { return subsetInstances(svc, subset) })
		}
	}
	z.memo = next
	return out
}

func minHealthyPercent(pol *policyv1.ServicePolicy) uint32 {
	if l := pol.GetLocality(); l != nil && l.MinHealthyPercent != nil {
		return min(*l.MinHealthyPercent, 100)
	}
	return DefaultMinHealthyPercent
}

// zoneVariants computes the variants of base, the assignment of the
// instances of svc, for the zones of its priority-0 localities whose
// healthy share is at least minPercent.
func zoneVariants(base *endpointv3.ClusterLoadAssignment, svc *model.Service, minPercent uint32) map[string]*endpointv3.ClusterLoadAssignment {
	var top []*endpointv3.LocalityLbEndpoints
	zones := map[string]bool{}
	for _, l := range base.GetEndpoints() {
		if l.GetPriority() == 0 {
			top = append(top, l)
			zones[l.GetLocality().GetZone()] = true
		}
	}
	if len(zones) < 2 {
		return nil
	}
	// The instances each priority-0 locality stands for, maintenance
	// excluded.
	total := map[localityKey]int{}
	for _, inst := range svc.Instances {
		if inst.Health != model.HealthMaintenance {
			total[localityKey{region: inst.Datacenter, zone: inst.Zone}]++
		}
	}
	var variants map[string]*endpointv3.ClusterLoadAssignment
	names := make([]string, 0, len(zones))
	for zone := range zones {
		if zone != "" {
			names = append(names, zone)
		}
	}
	sort.Strings(names)
	for _, zone := range names {
		healthy, all := 0, 0
		for _, l := range top {
			if l.GetLocality().GetZone() == zone {
				healthy += len(l.GetLbEndpoints())
				all += total[localityKey{region: l.GetLocality().GetRegion(), zone: zone}]
			}
		}
		if all == 0 || uint64(healthy)*100 < uint64(minPercent)*uint64(all) {
			continue
		}
		v := &endpointv3.ClusterLoadAssignment{ClusterName: base.GetClusterName(), Policy: base.GetPolicy()}
		for _, l := range base.GetEndpoints() {
			p := l.GetPriority() + 1
			if l.GetPriority() == 0 && l.GetLocality().GetZone() == zone {
				p = 0
			}
			v.Endpoints = append(v.Endpoints, &endpointv3.LocalityLbEndpoints{
				Locality:            l.GetLocality(),
				LbEndpoints:         l.GetLbEndpoints(),
				LoadBalancingWeight: l.GetLoadBalancingWeight(),
				Priority:            p,
			})
		}
		// Own zone first; the order within a priority is the base's.
		sort.SliceStable(v.Endpoints, func(a, b int) bool { return v.Endpoints[a].Priority < v.Endpoints[b].Priority })
		if v.ValidateAll() != nil {
			continue // never serve what the base would not be
		}
		if variants == nil {
			variants = map[string]*endpointv3.ClusterLoadAssignment{}
		}
		variants[zone] = v
	}
	return variants
}
