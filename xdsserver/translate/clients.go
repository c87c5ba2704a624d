package translate

import (
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/trellis-mesh/trellis/internal/clients"
)

// Client-aware translation. Options.Client names the profile (see package
// clients) a translation is for; what its clients cannot honour is
// replaced by a safe substitute, or, where a substitute would weaken
// security, withheld. Each substitution and each withheld resource is
// reported as a Skip carrying the profile's name.
//
// Substitutes (documented in README's compatibility matrix):
//   - least request, pick_first configuration, weighted round robin, ring
//     hash -> round robin: every instance still receives calls, balancing
//     is less tuned (ring hash: calls lose their affinity).
//
// Withheld:
//   - a server Listener carrying the RBAC filter, for clients without
//     ServerRBAC: the workload's xDS server gets no Listener and serves
//     nothing, rather than serve callers its intentions deny.
//
// Lighter, for clients that declare what makes it safe:
//   - for clients with OwnTrustDomainRoots (grpc-go whose bootstrap
//     defines the own-trust-domain certificate provider), an mTLS server
//     Listener whose only rule is "any workload of the trust domain" has
//     no RBAC filter and verifies callers with the own-trust-domain
//     instance, so that the handshake enforces that rule (see
//     serviceSecurity.handshakeAuthorizes). grpc-go's RBAC filter copies a
//     call's metadata before it evaluates any policy, a cost per call that
//     the handshake, paid once per connection, does not have. This is a
//     profile of its own because the Listener names an instance that only
//     those bootstraps define: grpc-go NACKs a Listener naming a
//     certificate provider instance its bootstrap lacks.

// adaptForClient applies the profile's limits to the resources of one
// service. A nil profile honours everything.
func adaptForClient(out *serviceResources, service string, p *clients.Profile) []Skip {
	if p == nil {
		return nil
	}
	var skips []Skip
	reported := map[string]bool{}
	for _, c := range out.clusters {
		feature := substituteLoadBalancing(c, p.Caps)
		if feature == "" || reported[feature] {
			continue
		}
		reported[feature] = true
		skips = append(skips, Skip{Kind: SkipWarning, Service: service, Route: "load balancing", Profile: p.Name, Reason: fmt.Sprintf(
			"%s clients get round robin instead of %s, which they do not honour", p.Implementation, feature)})
	}
	if p.Caps.ServerRBAC {
		return skips
	}
	kept := out.servers[:0]
	for _, l := range out.servers {
		if !hasHTTPFilter(l, RBACFilterName) {
			kept = append(kept, l)
			continue
		}
		addr := l.GetAddress().GetSocketAddress()
		skips = append(skips, Skip{Service: service, Route: fmt.Sprintf("server Listener %s:%d", addr.GetAddress(), addr.GetPortValue()), Profile: p.Name, Reason: fmt.Sprintf(
			"withheld from %s servers: they do not honour the RBAC filter that enforces intentions, and serving without it would admit denied callers", p.Implementation)})
	}
	out.servers = kept
	return skips
}

// substituteLoadBalancing replaces a load balancing policy the
// capabilities do not cover with round robin and names the feature
// replaced, "" when nothing was.
func substituteLoadBalancing(c *clusterv3.Cluster, caps clients.Capabilities) string {
	feature := ""
	switch {
	case c.GetLbPolicy() == clusterv3.Cluster_LEAST_REQUEST && !caps.LeastRequest:
		feature = "least request"
	case c.GetLbPolicy() == clusterv3.Cluster_RING_HASH && !caps.RingHash:
		feature = "ring hash"
	case c.GetLoadBalancingPolicy() != nil:
		name := c.GetLoadBalancingPolicy().GetPolicies()[0].GetTypedExtensionConfig().GetName()
		switch {
		case name == pickFirstPolicyName && !caps.PickFirstConfig:
			feature = "pick_first configuration"
		case name == wrrLocalityPolicyName && !caps.WeightedRoundRobin:
			feature = "weighted round robin"
		}
	}
	if feature == "" {
		return ""
	}
	c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
	c.LbConfig = nil
	c.LoadBalancingPolicy = nil
	return feature
}

// Names of the load_balancing_policy extensions the translator emits.
const (
	pickFirstPolicyName   = "envoy.load_balancing_policies.pick_first"
	wrrLocalityPolicyName = "envoy.load_balancing_policies.wrr_locality"
)

// hasHTTPFilter reports whether any filter chain of a server Listener has
// the named HTTP filter.
func hasHTTPFilter(l *listenerv3.Listener, name string) bool {
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			hcm := &hcmv3.HttpConnectionManager{}
			if f.GetTypedConfig().UnmarshalTo(hcm) != nil {
				continue
			}
			for _, hf := range hcm.GetHttpFilters() {
				if hf.GetName() == name {
					return true
				}
			}
		}
	}
	return false
}

// ProfilesResult is the outcome of TranslateProfiles.
type ProfilesResult struct {
	// Resources holds each profile's resources, by profile name.
	Resources map[string]*Resources
	// Panicking is as in Result; it does not depend on the profile.
	Panicking []string
	// Skipped lists every skip of the first profile's translation, then
	// the skips of the other profiles that concern them alone (Skip.Profile
	// set), each once.
	Skipped []Skip
}

// TranslateProfiles translates in once for each profile (opts with Client
// set to it). profiles should start with the widest one, whose skips
// report everything common to all clients. Equal resources are not shared
// here: the cache that serves them does that (xdsserver.ProfileCaches).
func TranslateProfiles(in Input, opts Options, profiles []clients.Profile) *ProfilesResult {
	out := &ProfilesResult{Resources: make(map[string]*Resources, len(profiles))}
	seen := map[string]bool{}
	for i, p := range profiles {
		o := opts
		o.Client = &p
		res := Translate(in, o)
		out.Resources[p.Name] = &res.Resources
		if i == 0 {
			out.Panicking = res.Panicking
		}
		for _, s := range res.Skipped {
			if i > 0 && s.Profile == "" {
				continue
			}
			if k := s.String(); !seen[k] {
				seen[k] = true
				out.Skipped = append(out.Skipped, s)
			}
		}
	}
	return out
}
