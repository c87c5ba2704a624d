package translate

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/trellis-mesh/trellis/internal/model"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// DefaultMinHealthyPercent is the share of a zone's instances that must be
// healthy for its clients to keep their calls in it, unless the service's
// policy sets locality.min_healthy_percent or its instances carry
// ZoneMinHealthyMetaKey.
const DefaultMinHealthyPercent = 50

// ZoneMinHealthyMetaKey is the service meta key by which a service's
// instances set its zone spill threshold (an integer percentage, 0 to
// 100) when no policy sets locality.min_healthy_percent: the policy wins
// over the meta, the meta over DefaultMinHealthyPercent. When instances
// disagree, the highest value wins (the zone spills sooner rather than
// concentrating calls on too few instances) and the others are reported;
// a value that is not a percentage is ignored and reported.
const ZoneMinHealthyMetaKey = "trellis-zone-min-healthy-percent"

// ZoneAssignments are the per-zone variants of ClusterLoadAssignments: by
// client zone (node.locality.zone), then by cluster name, the assignment
// (a *endpointv3.ClusterLoadAssignment) the clients of that zone receive
// in place of the one in Resources. A cluster without a variant for a zone
// is served its Resources assignment.
type ZoneAssignments map[string]map[string]types.Resource

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
// the previous call, and updating its result in place. A call looks only
// at the services that may have changed since the previous one when it
// can tell which: those the catalog names (model.Snapshot.ChangedSince),
// those whose policy differs (by pointer), and the owners of the
// assignments the translation's Delta updated or deleted; it then costs
// what changed, not the catalog (10,000 services cost milliseconds per
// call when gone through whole). It goes through every service otherwise:
// on the first call, after a translation without a Delta, or when an
// assignment in the Delta belongs to no cluster it knows. Split must be
// given every Result of one Translator, in order; it may be called from
// several goroutines; calls are serialized.
type ZoneSplitter struct {
	mu sync.Mutex
	// Guarded by mu.
	memo map[string]*zoneMemo // by cluster name
	out  ZoneAssignments
	gen  uint64
	// catalog and policies are the previous call's inputs.
	catalog  *model.Snapshot
	policies map[string]*policyv1.ServicePolicy
	// clusters names, by service, the clusters in memo.
	clusters map[string][]string
}

type zoneMemo struct {
	base *endpointv3.ClusterLoadAssignment
	svc  *model.Service
	pol  *policyv1.ServicePolicy
	// variants by zone; nil when the cluster has none.
	variants map[string]*endpointv3.ClusterLoadAssignment
	// gen is the Split call that last saw the cluster.
	gen uint64
}

// Split returns the zone variants of res, the translation of in. The
// result is shared, must not be modified, and is updated by the next call.
func (z *ZoneSplitter) Split(in Input, res *Result) ZoneAssignments {
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.memo == nil {
		z.memo, z.out, z.clusters = map[string]*zoneMemo{}, ZoneAssignments{}, map[string][]string{}
	}
	z.gen++
	var panicking map[string]bool
	if res != nil && len(res.Panicking) > 0 {
		panicking = make(map[string]bool, len(res.Panicking))
		for _, c := range res.Panicking {
			panicking[c] = true
		}
	}
	if changed, ok := z.changedSince(in, res); ok {
		for _, name := range changed {
			z.service(name, in, res, panicking)
		}
	} else {
		if in.Catalog != nil && res != nil {
			for name := range in.Catalog.Services {
				z.service(name, in, res, panicking)
			}
		}
		for cname, m := range z.memo {
			if m.gen != z.gen {
				z.drop(cname, m)
			}
		}
	}
	z.catalog, z.policies = in.Catalog, in.Policies
	return z.out
}

// changedSince returns, sorted, the services whose clusters may have
// changed since the previous call; ok is false when every service must be
// looked at.
func (z *ZoneSplitter) changedSince(in Input, res *Result) (names []string, ok bool) {
	if z.catalog == nil || in.Catalog == nil || res == nil || res.Delta == nil {
		return nil, false
	}
	changed, ok := in.Catalog.ChangedSince(z.catalog)
	if !ok {
		return nil, false
	}
	set := make(map[string]bool, len(changed))
	for _, name := range changed {
		set[name] = true
	}
	for name := range policiesChanged(z.policies, in.Policies) {
		set[name] = true
	}
	owner := func(cname string) bool {
		if _, ok := in.Catalog.Services[cname]; ok {
			set[cname] = true
			return true
		}
		if m := z.memo[cname]; m != nil {
			set[m.svc.Name] = true
			return true
		}
		return false
	}
	for cname := range res.Delta.Updated[resource.EndpointType] {
		if !owner(cname) {
			return nil, false
		}
	}
	for _, cname := range res.Delta.Deleted[resource.EndpointType] {
		if _, known := z.memo[cname]; known && !owner(cname) {
			return nil, false
		}
	}
	names = make([]string, 0, len(set))
	for name := range set {
		names = append(names, name)
	}
	sort.Strings(names)
	return names, true
}

// service brings the variants of every cluster of one service up to date,
// and drops those of its clusters that are gone; z.mu is held.
func (z *ZoneSplitter) service(name string, in Input, res *Result, panicking map[string]bool) {
	var seen []string
	if svc := in.Catalog.Services[name]; svc != nil && res != nil {
		pol := in.Policies[name]
		if z.cluster(name, res.Resources.Endpoints[name], svc, pol, nil, panicking[name]) {
			seen = append(seen, name)
		}
		for _, subset := range pol.GetSubsets() {
			cname := SubsetClusterName(name, subset.GetName())
			if z.cluster(cname, res.Resources.Endpoints[cname], svc, pol, subset, panicking[cname]) {
				seen = append(seen, cname)
			}
		}
	}
	for _, cname := range z.clusters[name] {
		if m := z.memo[cname]; m != nil && m.gen != z.gen {
			z.drop(cname, m)
		}
	}
	if len(seen) == 0 {
		delete(z.clusters, name)
	} else {
		z.clusters[name] = seen
	}
}

// drop forgets cluster cname and its variants; z.mu is held.
func (z *ZoneSplitter) drop(cname string, m *zoneMemo) {
	z.setVariants(cname, m, nil)
	delete(z.memo, cname)
}

// cluster brings the variants of one cluster up to date and reports
// whether the cluster is served (it is dropped as unseen otherwise);
// z.mu is held.
func (z *ZoneSplitter) cluster(cname string, base *endpointv3.ClusterLoadAssignment, svc *model.Service, pol *policyv1.ServicePolicy, subset *policyv1.Subset, panicking bool) bool {
	if base == nil || panicking {
		return false
	}
	m := z.memo[cname]
	if m == nil {
		m = &zoneMemo{}
		z.memo[cname] = m
	}
	m.gen = z.gen
	if m.base == base && m.svc == svc && m.pol == pol {
		return true
	}
	m.base, m.svc, m.pol = base, svc, pol
	instances := svc
	if subset != nil {
		instances = subsetInstances(svc, subset)
	}
	z.setVariants(cname, m, zoneVariants(base, instances, minHealthyPercent(pol, svc)))
	return true
}

// setVariants replaces m's variants of cluster cname in z.out; z.mu is
// held.
func (z *ZoneSplitter) setVariants(cname string, m *zoneMemo, variants map[string]*endpointv3.ClusterLoadAssignment) {
	for zone := range m.variants {
		if _, ok := variants[zone]; !ok {
			delete(z.out[zone], cname)
			if len(z.out[zone]) == 0 {
				delete(z.out, zone)
			}
		}
	}
	for zone, v := range variants {
		if z.out[zone] == nil {
			z.out[zone] = map[string]types.Resource{}
		}
		z.out[zone][cname] = v
	}
	m.variants = variants
}

// minHealthyPercent is the zone spill threshold of svc: its policy's,
// else its instances' meta, else the default.
func minHealthyPercent(pol *policyv1.ServicePolicy, svc *model.Service) uint32 {
	if l := pol.GetLocality(); l != nil && l.MinHealthyPercent != nil {
		return min(*l.MinHealthyPercent, 100)
	}
	if p, ok, _ := metaMinHealthyPercent(svc); ok {
		return p
	}
	return DefaultMinHealthyPercent
}

// metaMinHealthyPercent reads ZoneMinHealthyMetaKey from the instances of
// svc: the highest valid value, whether one was set, and warnings for the
// values ignored (not a percentage) or overridden (lower than another
// instance's).
func metaMinHealthyPercent(svc *model.Service) (uint32, bool, []Skip) {
	var (
		skips []Skip
		best  uint32
		found bool
		by    = map[string]uint32{}
		order []string
	)
	for _, inst := range svc.Instances {
		v, ok := inst.Meta[ZoneMinHealthyMetaKey]
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
		if err != nil || n > 100 {
			skips = append(skips, Skip{Kind: SkipWarning, Service: svc.Name, Instance: inst.Key(), Reason: fmt.Sprintf(
				"meta %s=%q of instance %q ignored; accepted: an integer percentage from 0 to 100", ZoneMinHealthyMetaKey, v, inst.Key())})
			continue
		}
		by[inst.Key()] = uint32(n)
		order = append(order, inst.Key())
		if !found || uint32(n) > best {
			best, found = uint32(n), true
		}
	}
	for _, key := range order {
		if by[key] < best {
			skips = append(skips, Skip{Kind: SkipWarning, Service: svc.Name, Instance: key, Reason: fmt.Sprintf(
				"meta %s=%d of instance %q overridden: another instance of the service sets %d, the highest wins", ZoneMinHealthyMetaKey, by[key], key, best)})
		}
	}
	return best, found, skips
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
		// Own zone first; the order within a priority is the base's. The
		// base passed validation, and a variant differs from it only in
		// priorities, which stay contiguous from 0: the zone's localities
		// take 0, every other one moves down by one (the base's priorities
		// are contiguous and its priority 0 holds another zone).
		sort.SliceStable(v.Endpoints, func(a, b int) bool { return v.Endpoints[a].Priority < v.Endpoints[b].Priority })
		if variants == nil {
			variants = map[string]*endpointv3.ClusterLoadAssignment{}
		}
		variants[zone] = v
	}
	return variants
}
