package translate

import (
	"fmt"
	"net/netip"
	"slices"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

	"github.com/trellis-mesh/trellis/internal/model"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// Datacenter failover (ServicePolicy.failover) is expressed as EDS
// priorities (gRFC A37 priority load balancing, which grpc-go, grpc-js-xds
// and C-core 1.51 all implement): the local datacenter's healthy instances
// are priority 0, and each failover datacenter with a healthy instance
// comes next, in the policy's order. A client uses the lowest priority that
// has endpoints it can reach, so while one local instance is healthy every
// call stays local; when Consul marks every local instance critical, the
// translation holds no local locality and the first failover datacenter
// becomes priority 0 for every client at once (no per-client variance);
// and when a local instance is healthy again, its locality comes back at
// priority 0 and calls return. Priorities are numbered without gaps, as
// gRPC requires, counting only the groups that have endpoints.
//
// Panic routing (Options.DisablePanicRouting) stays a last resort: it
// spreads calls over the critical local instances only when no failover
// datacenter has a healthy instance either. Calling a critical instance
// while a healthy datacenter is available would fail calls that need not
// fail.
//
// An instance belongs to a failover datacenter when its Datacenter is
// listed in the policy; every other instance of the service is local. The
// catalog adds the failover datacenters' healthy instances to the service
// (package failover), so translation needs no other input.

// serviceLoadAssignment is loadAssignment for a service (or subset) whose
// policy may list failover datacenters.
// It also reports the service's zone threshold meta that is ignored or
// overridden (ZoneMinHealthyMetaKey), once per service: the callers keep
// only the service cluster's skips, not its subsets'.
func serviceLoadAssignment(svc *model.Service, clusterName string, fo *policyv1.Failover, opts Options) (*endpointv3.ClusterLoadAssignment, []Skip, bool) {
	cla, skips, panicking := failoverLoadAssignment(svc, clusterName, fo, opts)
	_, _, metaSkips := metaMinHealthyPercent(svc)
	return cla, append(skips, metaSkips...), panicking
}

func failoverLoadAssignment(svc *model.Service, clusterName string, fo *policyv1.Failover, opts Options) (*endpointv3.ClusterLoadAssignment, []Skip, bool) {
	dcs := fo.GetDatacenters()
	if len(dcs) == 0 {
		return loadAssignment(svc, clusterName, opts)
	}
	local := &model.Service{Name: svc.Name}
	remote := make([]*model.Service, len(dcs))
	for i := range remote {
		remote[i] = &model.Service{Name: svc.Name}
	}
	for _, inst := range svc.Instances {
		if i := slices.Index(dcs, inst.Datacenter); i >= 0 && inst.Datacenter != "" {
			remote[i].Instances = append(remote[i].Instances, inst)
			continue
		}
		local.Instances = append(local.Instances, inst)
	}
	healthy := func(inst model.Instance) (uint32, bool) { return endpointWeight(inst, opts) }
	cla, skips := buildLoadAssignment(local, clusterName, healthy)
	seen := map[string]bool{}
	for _, l := range cla.Endpoints {
		for _, e := range l.LbEndpoints {
			seen[hostPort(e)] = true
		}
	}
	priority := uint32(0)
	if len(cla.Endpoints) > 0 {
		priority = 1
	}
	for i, r := range remote {
		rc, rskips := buildLoadAssignment(r, clusterName, healthy)
		skips = append(skips, rskips...)
		added := false
		for _, l := range rc.Endpoints {
			kept := l.LbEndpoints[:0:0]
			var weight uint32
			for _, e := range l.LbEndpoints {
				hp := hostPort(e)
				if seen[hp] {
					skips = append(skips, Skip{Service: svc.Name, Route: "failover.datacenters[" + fmt.Sprint(i) + "]",
						Reason: fmt.Sprintf("address %s in datacenter %q is already an endpoint of the service; each address may appear once", hp, dcs[i])})
					continue
				}
				seen[hp] = true
				kept = append(kept, e)
				weight += e.GetLoadBalancingWeight().GetValue()
			}
			if len(kept) == 0 {
				continue
			}
			l.LbEndpoints, l.LoadBalancingWeight.Value, l.Priority = kept, weight, priority
			cla.Endpoints = append(cla.Endpoints, l)
			added = true
		}
		if added {
			priority++
		}
	}
	if len(cla.Endpoints) > 0 {
		return cla, skips, false
	}
	// No healthy instance anywhere: panic routing over the local instances.
	return loadAssignment(local, clusterName, opts)
}

// hostPort is an endpoint's address as buildLoadAssignment wrote it.
func hostPort(e *endpointv3.LbEndpoint) string {
	sa := e.GetEndpoint().GetAddress().GetSocketAddress()
	addr, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return sa.GetAddress()
	}
	return netip.AddrPortFrom(addr, uint16(sa.GetPortValue())).String()
}
