// Package clients knows the gRPC xDS client implementations Trellis serves:
// how to tell them apart by the node of their first ADS request
// (user_agent_name, user_agent_version) and what each honours.
//
// Each implementation family maps to a Profile, a named set of
// Capabilities. The translator emits, per profile, only what that profile
// honours (substituting or withholding the rest), and the xDS server routes
// each stream to the resources of its profile. A node no profile claims
// gets Widest, which honours only what every supported implementation
// parses. A few profiles are chosen by what the node declares in its
// metadata on top of its user agent (NodeRBAC, GoOwnTD): what they add
// depends on how the workload runs or on its bootstrap, which the user
// agent does not tell, and a workload that does not declare it keeps the
// profile of its implementation. Profiles cost nothing until a client of
// theirs connects (the xDS server translates for a profile lazily).
//
// It also knows which policy features an implementation cannot honour
// (PolicyGaps), for `trellis policy validate`.
//
// It is a leaf package (it reads the policy protos only): it must not
// import the catalog, the translator, the xDS cache or the server.
package clients

import (
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// Capabilities are the features, beyond what every supported gRPC
// implementation parses, that a client honours. The zero value honours
// none of them: the widest-compatible configuration.
type Capabilities struct {
	// LeastRequest: Cluster lb_policy LEAST_REQUEST. Without it, the
	// cluster is balanced round robin (a safe substitute: every instance
	// still gets calls).
	LeastRequest bool
	// PickFirstConfig: the pick_first load_balancing_policy extension.
	// Without it, the cluster is balanced round robin.
	PickFirstConfig bool
	// WeightedRoundRobin: client_side_weighted_round_robin under
	// wrr_locality. Without it, the cluster is balanced round robin.
	WeightedRoundRobin bool
	// RingHash: Cluster lb_policy RING_HASH. Without it, the cluster is
	// balanced round robin (calls lose their affinity, nothing fails):
	// Debian's C-core 1.51 (python3-grpcio) crashes with a segmentation
	// fault on ring hash clusters.
	RingHash bool
	// ServerRBAC: the RBAC HTTP filter on xDS-enabled servers. Without it,
	// a server Listener that carries RBAC is withheld: the server serves
	// nothing rather than serve without authorization.
	ServerRBAC bool
	// OwnTrustDomainRoots: the bootstrap defines the certificate provider
	// instance "trellis-own-td" (bootstrap.OwnTrustDomainProviderInstance),
	// a trellis_spiffe provider whose roots are the bundle of the
	// workload's own trust domain only. With it, an mTLS server Listener
	// whose only authorization rule is "any workload of the trust domain"
	// takes its identity and roots from that instance and carries no RBAC
	// filter: the TLS handshake then refuses every caller the rule would
	// refuse (every other trust domain), and the calls skip the RBAC
	// filter's cost. Without it, every mTLS server Listener carries RBAC.
	OwnTrustDomainRoots bool
}

// Profile is a named set of capabilities.
type Profile struct {
	// Name labels the profile in status, logs and metrics.
	Name string
	// Implementation describes who gets the profile, for people.
	Implementation string
	// Caps is what the profile's clients honour.
	Caps Capabilities
}

// Names of the built-in profiles.
const (
	WidestName = "widest"
	GoName     = "grpc-go"
	// GoOwnTDName is grpc-go with the own-trust-domain certificate
	// provider instance declared.
	GoOwnTDName = "grpc-go-own-td"
	NodeName    = "grpc-node"
	// NodeRBACName is grpc-node with the RBAC filter declared.
	NodeRBACName = "grpc-node-rbac"
	CoreName     = "grpc-core"
)

// Built-in profiles.
var (
	// Widest is for clients no other profile claims: what grpc-go 1.85,
	// grpc-js-xds 1.14 and C-core 1.51 all honour.
	Widest = Profile{Name: WidestName, Implementation: "unknown gRPC implementation"}
	// Go is grpc-go (user agent "gRPC Go"): every feature Trellis emits.
	Go = Profile{Name: GoName, Implementation: "grpc-go", Caps: Capabilities{
		LeastRequest: true, PickFirstConfig: true, WeightedRoundRobin: true, RingHash: true, ServerRBAC: true,
	}}
	// GoOwnTD is grpc-go on a workload that declares, with the node
	// metadata OwnTrustDomainRootsMetadataKey, that its bootstrap defines
	// the own-trust-domain certificate provider instance (`trellis
	// bootstrap --spiffe` writes both): Go plus OwnTrustDomainRoots. It is
	// a profile of its own, rather than a variant of Go's resources, so
	// that a grpc-go workload whose bootstrap lacks the instance is never
	// sent a Listener naming it (grpc-go would NACK it); like every
	// profile, it is translated only once a client of it connects.
	GoOwnTD = Profile{Name: GoOwnTDName, Implementation: "grpc-go with the own-trust-domain certificate provider", Caps: Capabilities{
		LeastRequest: true, PickFirstConfig: true, WeightedRoundRobin: true, RingHash: true, ServerRBAC: true, OwnTrustDomainRoots: true,
	}}
	// Node is grpc-js-xds (user agent "gRPC Node Pure JS"): no least
	// request; WRR, pick_first configuration and the RBAC filter only
	// behind environment flags the control plane cannot see, so not
	// assumed.
	Node = Profile{Name: NodeName, Implementation: "grpc-js-xds (gRPC Node Pure JS)", Caps: Capabilities{RingHash: true}}
	// NodeRBAC is grpc-js-xds on a workload that declares, with the node
	// metadata RBACMetadataKey, that it runs with
	// GRPC_XDS_EXPERIMENTAL_RBAC=true: Node plus the RBAC filter.
	NodeRBAC = Profile{Name: NodeRBACName, Implementation: "grpc-js-xds (gRPC Node Pure JS) with GRPC_XDS_EXPERIMENTAL_RBAC", Caps: Capabilities{
		RingHash: true, ServerRBAC: true,
	}}
	// Core is gRPC C-core (Python, C++, Ruby, PHP; user agents "gRPC C-core
	// ...", "gRPC Python ..."): no least request, no pick_first
	// configuration, no WRR, no ring hash (1.51 crashes on it); RBAC on
	// servers.
	Core = Profile{Name: CoreName, Implementation: "gRPC C-core (Python, C++, Ruby, PHP)", Caps: Capabilities{
		ServerRBAC: true,
	}}
)

// Profiles returns the built-in profiles, Widest first. Widest must stay
// first: translations for other profiles share its resources when equal.
func Profiles() []Profile { return []Profile{Widest, Go, GoOwnTD, Node, NodeRBAC, Core} }

// RBACMetadataKey is the node metadata key with which a grpc-js-xds
// workload declares (value "true") that it runs with
// GRPC_XDS_EXPERIMENTAL_RBAC=true, so that its xDS server can be given
// Listeners carrying RBAC. `trellis bootstrap --for node --rbac` writes it.
const RBACMetadataKey = "trellis.rbac_filter"

// OwnTrustDomainRootsMetadataKey is the node metadata key with which a
// grpc-go workload declares (value "true") that its bootstrap defines the
// certificate provider instance "trellis-own-td" with the roots of its own
// trust domain only, so that its xDS server can be given Listeners whose
// handshake authorizes callers (see Capabilities.OwnTrustDomainRoots).
// `trellis bootstrap --for go --spiffe` writes it with the instance.
const OwnTrustDomainRootsMetadataKey = "trellis.own_trust_domain_roots"

// Client is what a node says about its implementation.
type Client struct {
	// Name and Version are the node's user_agent_name and
	// user_agent_version.
	Name, Version string
	// RBACDeclared is the node metadata RBACMetadataKey set to "true".
	RBACDeclared bool
	// OwnTrustDomainRootsDeclared is the node metadata
	// OwnTrustDomainRootsMetadataKey set to "true".
	OwnTrustDomainRootsDeclared bool
}

// FromNode reads the implementation out of an xDS node.
func FromNode(n *corev3.Node) Client {
	c := Client{Name: n.GetUserAgentName(), Version: n.GetUserAgentVersion()}
	if v, ok := n.GetMetadata().GetFields()[RBACMetadataKey]; ok {
		c.RBACDeclared = v.GetStringValue() == "true" || v.GetBoolValue()
	}
	if v, ok := n.GetMetadata().GetFields()[OwnTrustDomainRootsMetadataKey]; ok {
		c.OwnTrustDomainRootsDeclared = v.GetStringValue() == "true" || v.GetBoolValue()
	}
	return c
}

// String is "name version", for logs.
func (c Client) String() string { return strings.TrimSpace(c.Name + " " + c.Version) }

// Classify returns the profile of a client; Widest when no profile claims
// it.
func Classify(c Client) Profile {
	name := strings.ToLower(strings.TrimSpace(c.Name))
	switch {
	case name == "grpc go":
		if c.OwnTrustDomainRootsDeclared {
			return GoOwnTD
		}
		return Go
	case name == "grpc node pure js":
		if c.RBACDeclared {
			return NodeRBAC
		}
		return Node
	case strings.HasPrefix(name, "grpc c-core"), name == "grpc python", name == "grpc c++",
		name == "grpc ruby", name == "grpc php":
		return Core
	}
	return Widest
}

// ProfileByName returns the built-in profile named name.
func ProfileByName(name string) (Profile, bool) {
	for _, p := range Profiles() {
		if p.Name == name {
			return p, true
		}
	}
	return Profile{}, false
}
