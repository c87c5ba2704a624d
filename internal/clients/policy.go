package clients

import (
	"fmt"

	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// Gap is a feature of a policy that one implementation does not honour,
// and what its clients get instead.
type Gap struct {
	// Field is the policy field path, e.g. "load_balancing.least_request".
	Field string
	// Implementation names who is concerned, e.g. "grpc-js-xds 1.14".
	Implementation string
	// Instead says what those clients get.
	Instead string
}

// String is the warning text.
func (g Gap) String() string {
	return fmt.Sprintf("%s: %s clients get %s", g.Field, g.Implementation, g.Instead)
}

// Display names of the implementations in gaps.
const (
	nodeDisplay = "grpc-js-xds 1.14"
	coreDisplay = "gRPC C-core 1.51 (Python, C++, Ruby, PHP)"
)

// PolicyGaps lists what of p some supported implementation does not honour
// (the substitutes the translator makes per profile, and client
// limitations no substitute can mend), in field order. It does not
// validate p.
func PolicyGaps(p *policyv1.ServicePolicy) []Gap {
	var gaps []Gap
	rr := "round robin instead"
	switch p.GetLoadBalancing().GetPolicy().(type) {
	case *policyv1.LoadBalancing_LeastRequest:
		gaps = append(gaps,
			Gap{"load_balancing.least_request", nodeDisplay, rr},
			Gap{"load_balancing.least_request", coreDisplay, rr})
	case *policyv1.LoadBalancing_PickFirst:
		gaps = append(gaps,
			Gap{"load_balancing.pick_first", nodeDisplay, rr + " (pick_first configuration only behind GRPC_EXPERIMENTAL_PICKFIRST_LB_CONFIG)"},
			Gap{"load_balancing.pick_first", coreDisplay, rr})
	case *policyv1.LoadBalancing_WeightedRoundRobin:
		gaps = append(gaps,
			Gap{"load_balancing.weighted_round_robin", nodeDisplay, rr + " (weighted round robin only behind GRPC_EXPERIMENTAL_XDS_WRR_LB)"},
			Gap{"load_balancing.weighted_round_robin", coreDisplay, rr})
	case *policyv1.LoadBalancing_RingHash:
		gaps = append(gaps, Gap{"load_balancing.ring_hash", coreDisplay, rr + ", without affinity (Debian's C-core 1.51 crashes on ring hash)"})
	}
	// grpc-js-xds 1.14 compares a resource update with the previous one
	// over the previous one's fields only, so an update that only adds a
	// field can be taken as unchanged.
	if p.GetOutlierDetection() != nil {
		gaps = append(gaps, Gap{"outlier_detection", nodeDisplay,
			"it only on channels that first see the service after the policy: connected channels may keep their earlier setting until they reconnect (grpc-js-xds compares Cluster updates one way)"})
	}
	for i, r := range p.GetRoutes() {
		if r.GetSettings().GetFault() != nil {
			gaps = append(gaps, Gap{fmt.Sprintf("routes[%d].settings.fault", i), nodeDisplay,
				"it only on channels that first see the service after the policy: connected channels may keep their routes without the fault until they reconnect (grpc-js-xds compares route updates one way)"})
			break
		}
	}
	if p.GetDefaults().GetFault() != nil {
		gaps = append(gaps, Gap{"defaults.fault", nodeDisplay,
			"it only on channels that first see the service after the policy: connected channels may keep their routes without the fault until they reconnect (grpc-js-xds compares route updates one way)"})
	}
	return gaps
}
