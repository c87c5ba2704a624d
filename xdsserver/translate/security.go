package translate

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/internal/bootstrap"
	"github.com/trellis-mesh/trellis/internal/clients"
	"github.com/trellis-mesh/trellis/internal/model"
)

// MTLSMetaKey is the service meta key by which an instance sets its
// service's transport: "true" for mTLS, "false" for plaintext. When the
// instances of a service disagree, "true" wins: one instance asking for mTLS
// is enough, so that no instance can downgrade the others. Without the key
// on any instance the mesh-wide default (Security.MTLS) applies. (Consul
// meta keys allow letters, digits, '-' and '_' only, hence no dot.)
const MTLSMetaKey = "trellis-mtls"

// Names of the xDS extensions the security configuration uses.
const (
	// TLSTransportSocketName names the transport socket of mTLS Clusters
	// and server Listener filter chains; gRPC accepts no other name.
	TLSTransportSocketName = "envoy.transport_sockets.tls"
	// RBACFilterName names the RBAC HTTP filter of mTLS server Listeners.
	RBACFilterName = "envoy.filters.http.rbac"
	// hcmFilterName names the HttpConnectionManager network filter of
	// server Listeners.
	hcmFilterName = "envoy.filters.network.http_connection_manager"
)

// unenforcedReason reports a plaintext service whose intentions deny some
// caller.
const unenforcedReason = "intentions not enforced: the service is served in plaintext, so its servers cannot identify callers and " +
	"let every call through, including the ones its intentions (or the default action) deny; use mTLS (" + MTLSMetaKey + "=true or --mtls) to enforce them"

// inboundName names the filter chain, route configuration and virtual host
// of every server Listener.
const inboundName = "inbound"

// Security is the transport security and authorization input of a
// translation. Its zero value is what `trellis server` runs with by
// default: plaintext unless an instance's meta asks for mTLS, no trust
// domain (so a service asking for mTLS is left out), the default SPIFFE ID
// scheme, and calls that no intention matches allowed. With a nil
// *Security, nothing is secured and no server Listeners are produced; the
// server always translates with one.
//
// With a Security, every instance with a usable IP and port gets a server
// Listener, the resource an xds.NewGRPCServer listening on that address asks
// for (see ServerListenerName). A service in mTLS mode gets:
//   - on its Cluster and subset Clusters, an UpstreamTlsContext: the client
//     presents its SVID and accepts only a server whose certificate carries
//     the service's SPIFFE ID as a URI SAN;
//   - on each instance's server Listener, a DownstreamTlsContext requiring a
//     client certificate, and an RBAC filter allowing exactly the callers
//     the intentions allow (see below).
//
// Both name the certificate provider instance
// bootstrap.CertificateProviderInstance for identity and roots, with one
// exception: for clients whose bootstrap defines the own-trust-domain
// instance (a profile with clients.Capabilities.OwnTrustDomainRoots), a
// server Listener whose only rule is "any workload of the trust domain"
// names bootstrap.OwnTrustDomainProviderInstance instead and carries no
// RBAC filter, as its TLS handshake refuses every other caller (see
// serviceSecurity.handshakeAuthorizes).
//
// A service in plaintext mode gets server Listeners without TLS and without
// RBAC: without a peer identity, intentions cannot be enforced. When its
// intentions (or the default) deny some caller, that is reported in
// Result.Skipped.
//
// Authorization follows Consul's intention semantics: among the intentions
// matching a call (its source or "*", its destination or "*"), the one of
// highest precedence decides; when none matches, DefaultDeny does. An
// intention with L7 permissions decides its source's calls by them, as
// Consul's proxies do: the first permission matching the call decides, and
// a call none matches gets DefaultDeny; they become RBAC permissions on
// method paths and headers (see l7Permissions). Permissions that gRPC
// servers cannot check, and conditions Trellis does not enforce (JWT
// requirements), deny every call from the intention's source: they are
// reported in Result.Skipped, never left out to let calls through. Callers are identified by their SPIFFE ID under Scheme in
// the destination instance's datacenter; "*" and the default stand for any
// workload of TrustDomain, never for another trust domain.
type Security struct {
	// TrustDomain is the SPIFFE trust domain of every workload. Required
	// for a service to use mTLS: a service asking for mTLS without it is
	// left out (reported in Result.Skipped) rather than served in
	// plaintext.
	TrustDomain spiffeid.TrustDomain
	// Scheme maps a service to its SPIFFE ID. Default:
	// identity.DefaultScheme(), spiffe://<td>/ns/default/dc/<dc>/svc/<service>.
	Scheme *identity.Scheme
	// MTLS is the mesh-wide default transport: mTLS when true. A service
	// whose instances carry MTLSMetaKey overrides it. Default: false.
	MTLS bool
	// DefaultDeny denies the calls no intention matches. Default: false,
	// they are allowed, as Consul does with ACLs disabled (trellis server's
	// --intention-default=allow).
	DefaultDeny bool
	// Intentions are the service intentions. Default: none.
	Intentions *model.Intentions
}

// ServerListenerName is the name of the server Listener for an
// xds.NewGRPCServer listening on hostPort, which must be written as
// net.Listener.Addr().String() prints it ("10.0.0.1:8080", "[::1]:8080").
func ServerListenerName(hostPort string) string {
	return strings.ReplaceAll(bootstrap.ServerListenerTemplate, "%s", hostPort)
}

// serviceSecurity is the security of one service, decided before it is
// translated.
type serviceSecurity struct {
	sec  *Security
	mtls bool
	// ids are the service's SPIFFE IDs, one per datacenter of its
	// instances, sorted; set in mTLS mode.
	ids []string
	// intentions are the evaluated intentions for the service.
	intentions model.DestinationIntentions
	// datacenters is the fallback datacenter list for instances that have
	// none.
	datacenters []string
}

// forService decides the transport of svc. A non-empty reason means the
// service cannot be served safely and must be left out.
func (s *Security) forService(svc *model.Service, datacenters []string) (*serviceSecurity, []Skip, string) {
	if s == nil {
		return nil, nil, ""
	}
	mtls, skips := s.serviceMTLS(svc)
	out := &serviceSecurity{sec: s, mtls: mtls, intentions: s.Intentions.For(svc.Name), datacenters: datacenters}
	if !mtls {
		return out, skips, ""
	}
	if s.TrustDomain.IsZero() {
		return nil, skips, "uses mTLS (mesh default or " + MTLSMetaKey + "=true) but no trust domain is configured; left out rather than served in plaintext"
	}
	dcs := instanceDatacenters(svc)
	if len(dcs) == 0 {
		dcs = datacenters
	}
	if len(dcs) == 0 {
		dcs = []string{""}
	}
	for _, dc := range dcs {
		id, err := s.id(svc.Name, dc)
		if err != nil {
			return nil, skips, fmt.Sprintf("no SPIFFE ID for mTLS: %v", err)
		}
		out.ids = append(out.ids, id.String())
	}
	return out, skips, ""
}

// DefaultAction is what s does with the calls no intention matches.
func (s *Security) DefaultAction() model.IntentionAction {
	if s.DefaultDeny {
		return model.IntentionDeny
	}
	return model.IntentionAllow
}

func (s *Security) scheme() *identity.Scheme {
	if s.Scheme == nil {
		return identity.DefaultScheme()
	}
	return s.Scheme
}

func (s *Security) id(service, datacenter string) (spiffeid.ID, error) {
	return s.scheme().ID(identity.Workload{TrustDomain: s.TrustDomain, Datacenter: datacenter, Service: service})
}

// serviceMTLS reads the transport of a service from its instances' meta:
// any "true" wins, else any "false", else the mesh default. Values other
// than true and false (in any case) are ignored and reported.
func (s *Security) serviceMTLS(svc *model.Service) (bool, []Skip) {
	var (
		skips     []Skip
		yes       bool
		noByInsts []string
	)
	for _, inst := range svc.Instances {
		v, ok := inst.Meta[MTLSMetaKey]
		if !ok {
			continue
		}
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "true":
			yes = true
		case "false":
			noByInsts = append(noByInsts, inst.Key())
		default:
			skips = append(skips, Skip{Kind: SkipWarning, Service: svc.Name, Route: fmt.Sprintf("instance %q", inst.Key()), Reason: fmt.Sprintf(
				"meta %s=%q of instance %q ignored; accepted: true or false", MTLSMetaKey, v, inst.Key())})
		}
	}
	switch {
	case yes:
		for _, key := range noByInsts {
			skips = append(skips, Skip{Kind: SkipWarning, Service: svc.Name, Route: fmt.Sprintf("instance %q", key), Reason: fmt.Sprintf(
				"meta %s=false of instance %q overridden: another instance of the service asks for mTLS, which wins", MTLSMetaKey, key)})
		}
		return true, skips
	case len(noByInsts) > 0:
		return false, skips
	default:
		return s.MTLS, skips
	}
}

// instanceDatacenters returns the distinct non-empty datacenters of a
// service's instances, sorted.
func instanceDatacenters(svc *model.Service) []string {
	seen := map[string]bool{}
	var out []string
	for _, inst := range svc.Instances {
		if inst.Datacenter != "" && !seen[inst.Datacenter] {
			seen[inst.Datacenter] = true
			out = append(out, inst.Datacenter)
		}
	}
	sort.Strings(out)
	return out
}

// snapshotDatacenters returns the distinct datacenters of every instance in
// the catalog, sorted.
func snapshotDatacenters(snap *model.Snapshot) []string {
	seen := map[string]bool{}
	var out []string
	for _, svc := range snap.Services {
		for _, dc := range instanceDatacenters(svc) {
			if !seen[dc] {
				seen[dc] = true
				out = append(out, dc)
			}
		}
	}
	sort.Strings(out)
	return out
}

// apply secures the translated resources of svc for clients of profile p
// (nil: every feature): TLS on its clusters in mTLS mode, and a server
// Listener for every instance.
func (ss *serviceSecurity) apply(out *serviceResources, svc *model.Service, p *clients.Profile) ([]Skip, error) {
	if ss == nil {
		return nil, nil
	}
	if ss.mtls {
		ts, err := upstreamTransportSocket(ss.ids)
		if err != nil {
			return nil, fmt.Errorf("translate: service %q: %w", svc.Name, err)
		}
		for _, c := range out.clusters {
			c.TransportSocket = proto.CloneOf(ts)
		}
	}
	var skips []Skip
	rbacByDC := map[string]*rbacv3.RBAC{}
	seen := map[string]bool{}
	for _, inst := range svc.Instances {
		addr, reason := endpointAddress(inst)
		if reason != "" {
			continue // reported with the endpoints when the instance is a target
		}
		hostPort := netip.AddrPortFrom(addr, uint16(inst.Port)).String()
		if seen[hostPort] {
			continue // one Listener per address; duplicates are reported with the endpoints
		}
		seen[hostPort] = true
		var tls *serverTLS
		if ss.mtls {
			dc := inst.Datacenter
			if dc == "" && len(ss.datacenters) > 0 {
				dc = ss.datacenters[0]
			}
			rbac := rbacByDC[dc]
			if rbac == nil {
				var rbacSkips []Skip
				rbac, rbacSkips = ss.rbac(dc)
				rbacByDC[dc] = rbac
				skips = append(skips, rbacSkips...)
			}
			tls = &serverTLS{instance: bootstrap.CertificateProviderInstance, rbac: rbac}
			if ss.handshakeAuthorizes(rbac, p) {
				tls = &serverTLS{instance: bootstrap.OwnTrustDomainProviderInstance}
			}
		}
		lis, err := serverListener(addr, inst.Port, tls)
		if err != nil {
			return nil, fmt.Errorf("translate: service %q instance %q: %w", svc.Name, inst.Key(), err)
		}
		out.servers = append(out.servers, lis)
	}
	return dedupSkips(skips), nil
}

// handshakeAuthorizes reports whether, for clients of profile p, the mTLS
// handshake alone enforces rbac, so that the server Listener can leave the
// RBAC filter out: p's bootstrap defines the own-trust-domain certificate
// provider instance (clients.Capabilities.OwnTrustDomainRoots), and rbac
// is exactly "allow every call of any workload of the trust domain", what
// rbac builds when calls from every source are allowed and none is denied.
//
// With that instance as its roots, grpc-go's server credentials verify a
// client's chain against the bundle of the trust domain of the client's
// SPIFFE ID, its one URI SAN (the provider always sets SPIFFEBundleMap,
// which holds the workload's own trust domain only), and refuse a client
// without exactly one SPIFFE ID: a connection is accepted only from a
// workload of the trust domain, which is what the RBAC prefix
// spiffe://<td>/ on the URI SAN accepts. Any other rule (a deny, named
// sources, L7 permissions, the default deny, another trust domain) keeps
// the RBAC filter and the provider of every trust domain, the output for
// every other profile.
func (ss *serviceSecurity) handshakeAuthorizes(rbac *rbacv3.RBAC, p *clients.Profile) bool {
	if p == nil || !p.Caps.OwnTrustDomainRoots {
		return false
	}
	return proto.Equal(rbac, trustDomainRBAC(ss.sec.TrustDomain))
}

// trustDomainRBAC is the RBAC that allows every call of any workload of
// td and no other.
func trustDomainRBAC(td spiffeid.TrustDomain) *rbacv3.RBAC {
	return &rbacv3.RBAC{Rules: &rbacconfigv3.RBAC{Action: rbacconfigv3.RBAC_ALLOW, Policies: map[string]*rbacconfigv3.Policy{
		"source:" + model.Wildcard: {
			Permissions: []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_Any{Any: true}}},
			Principals:  []*rbacconfigv3.Principal{principalPrefix(td.IDString() + "/")},
		},
	}}}
}

// dedupSkips drops repeated skips, keeping the first of each.
func dedupSkips(skips []Skip) []Skip {
	seen := map[Skip]bool{}
	out := skips[:0]
	for _, s := range skips {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// allows reports whether an intention lets its calls through: an allow
// without conditions Trellis cannot enforce.
func allows(in model.Intention) bool {
	return in.Action == model.IntentionAllow && len(in.Conditions) == 0
}

// wildcardAllows reports whether calls from sources that no intention names
// exactly are allowed.
func (ss *serviceSecurity) wildcardAllows() bool {
	if w := ss.intentions.Wildcard; w != nil {
		return allows(*w)
	}
	return !ss.sec.DefaultDeny
}

// deniesSome reports whether the intentions (or the default) deny some
// caller of the service.
func (ss *serviceSecurity) deniesSome() bool {
	if !ss.wildcardAllows() {
		return true
	}
	for _, in := range ss.intentions.Sources {
		if !allows(in) {
			return true
		}
	}
	return false
}

// rbac builds the RBAC filter configuration of the service's server
// Listeners for instances in datacenter dc: one ALLOW rule set whose
// policies are exactly the calls the intentions allow.
//
// When calls from unnamed sources are allowed (by a wildcard intention or
// the default), one policy "source:*" allows any workload of the trust
// domain except the sources whose deciding intention does not simply
// allow. Otherwise there is one policy "source:<name>" per allowed source;
// with none, the rule set is empty and every call is denied. A source
// (or the wildcard) decided by an intention with L7 permissions gets a
// policy of its own whose permissions are the calls those permissions
// allow (see l7Permissions); when they cannot be expressed, the source is
// denied and reported. A wildcard with L7 permissions excludes every
// source named by an intention of its own, and the plain allowed ones get
// a policy each.
func (ss *serviceSecurity) rbac(dc string) (*rbacv3.RBAC, []Skip) {
	var (
		skips               []Skip
		allowed, notAllowed []string
		l7                  = map[string][]*rbacconfigv3.Permission{}
		defaultAllow        = !ss.sec.DefaultDeny
		destination         = ss.intentions.Destination
		reportInexpressible = func(src, reason string) {
			who := fmt.Sprintf("%q", src)
			if src == model.Wildcard {
				who = "any source without an intention of its own"
			}
			skips = append(skips, Skip{Kind: SkipWarning, Service: destination, Route: fmt.Sprintf("intention from %q", src), Reason: fmt.Sprintf(
				"intention from %q: its permissions cannot be enforced by gRPC servers (%s); treated as deny: calls from %s are denied", src, reason, who)})
		}
	)
	sources := make([]string, 0, len(ss.intentions.Sources))
	for src := range ss.intentions.Sources {
		sources = append(sources, src)
	}
	sort.Strings(sources)
	ids := map[string]string{}
	for _, src := range sources {
		id, err := ss.sec.id(src, dc)
		if err != nil {
			skips = append(skips, Skip{Service: destination, Route: fmt.Sprintf("intention from %q", src),
				Reason: fmt.Sprintf("intention from %q ignored: the source has no SPIFFE ID, so no caller can match it: %v", src, err)})
			continue
		}
		ids[src] = id.String()
		in := ss.intentions.Sources[src]
		switch {
		case allows(in):
			allowed = append(allowed, src)
		case isL7(in):
			notAllowed = append(notAllowed, src)
			perms, notes, reason := l7Permissions(in.Permissions, defaultAllow)
			for _, n := range notes {
				skips = append(skips, Skip{Kind: SkipWarning, Service: destination, Route: fmt.Sprintf("intention from %q", src), Reason: fmt.Sprintf("intention from %q: %s", src, n)})
			}
			if reason != "" {
				reportInexpressible(src, reason)
				continue
			}
			if len(perms) > 0 {
				l7[src] = perms
			}
		default:
			notAllowed = append(notAllowed, src)
		}
	}
	policies := map[string]*rbacconfigv3.Policy{}
	anyPermission := []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_Any{Any: true}}}
	anyExcept := func(excluded []string) *rbacconfigv3.Principal {
		principal := principalPrefix(ss.sec.TrustDomain.IDString() + "/")
		if len(excluded) == 0 {
			return principal
		}
		var not *rbacconfigv3.Principal
		if len(excluded) == 1 {
			not = principalExact(ids[excluded[0]])
		} else {
			set := &rbacconfigv3.Principal_Set{}
			for _, src := range excluded {
				set.Ids = append(set.Ids, principalExact(ids[src]))
			}
			not = &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_OrIds{OrIds: set}}
		}
		return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_AndIds{AndIds: &rbacconfigv3.Principal_Set{Ids: []*rbacconfigv3.Principal{
			principal,
			{Identifier: &rbacconfigv3.Principal_NotId{NotId: not}},
		}}}}
	}
	switch w := ss.intentions.Wildcard; {
	case ss.wildcardAllows():
		policies["source:"+model.Wildcard] = &rbacconfigv3.Policy{Permissions: anyPermission, Principals: []*rbacconfigv3.Principal{anyExcept(notAllowed)}}
		allowed = nil // the wildcard policy covers them
	case w != nil && isL7(*w):
		perms, notes, reason := l7Permissions(w.Permissions, defaultAllow)
		for _, n := range notes {
			skips = append(skips, Skip{Kind: SkipWarning, Service: destination, Route: fmt.Sprintf("intention from %q", model.Wildcard), Reason: fmt.Sprintf("intention from %q: %s", model.Wildcard, n)})
		}
		if reason != "" {
			reportInexpressible(model.Wildcard, reason)
			break
		}
		if len(perms) > 0 {
			named := slices.Concat(allowed, notAllowed)
			sort.Strings(named)
			policies["source:"+model.Wildcard] = &rbacconfigv3.Policy{Permissions: perms, Principals: []*rbacconfigv3.Principal{anyExcept(named)}}
		}
	}
	for _, src := range allowed {
		policies["source:"+src] = &rbacconfigv3.Policy{Permissions: anyPermission, Principals: []*rbacconfigv3.Principal{principalExact(ids[src])}}
	}
	for src, perms := range l7 {
		policies["source:"+src] = &rbacconfigv3.Policy{Permissions: perms, Principals: []*rbacconfigv3.Principal{principalExact(ids[src])}}
	}
	return &rbacv3.RBAC{Rules: &rbacconfigv3.RBAC{Action: rbacconfigv3.RBAC_ALLOW, Policies: policies}}, skips
}

// isL7 reports whether an intention decides by its L7 permissions: it has
// some, and no condition that makes it deny whole.
func isL7(in model.Intention) bool {
	return len(in.Permissions) > 0 && len(in.Conditions) == 0
}

// l7Permissions turns an intention's L7 permissions into RBAC permissions,
// any of which lets a call through, that allow exactly the calls Consul's
// semantics allow: the first permission matching a call decides it, and a
// call that none matches gets the default action (defaultAllow). Allow
// permission i becomes "matches i and none of the deny permissions before
// it"; with a default allow, "matches none of the deny permissions" is
// added. A permission whose methods leave out POST never matches a gRPC
// call (every one is a POST) and is left out, with a note; a method list
// with POST matches every call and is dropped from the permission. When a
// permission cannot be expressed in the RBAC gRPC servers evaluate, reason
// says why and nothing is returned: the caller denies the source. An
// empty result with no reason allows nothing.
func l7Permissions(perms []model.IntentionPermission, defaultAllow bool) (out []*rbacconfigv3.Permission, notes []string, reason string) {
	var denies []*rbacconfigv3.Permission
	notDenied := func() *rbacconfigv3.Permission {
		switch len(denies) {
		case 0:
			return nil
		case 1:
			return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_NotRule{NotRule: denies[0]}}
		default:
			return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_NotRule{NotRule: &rbacconfigv3.Permission{
				Rule: &rbacconfigv3.Permission_OrRules{OrRules: &rbacconfigv3.Permission_Set{Rules: slices.Clone(denies)}}}}}
		}
	}
	for i, p := range perms {
		match, never, why := permissionMatch(p.HTTP)
		if why != "" {
			return nil, notes, fmt.Sprintf("Permissions[%d].HTTP.%s", i, why)
		}
		if never {
			notes = append(notes, fmt.Sprintf("Permissions[%d] never matches a gRPC call (its Methods leave out POST, the method of every gRPC call): left out, as it decides no call", i))
			continue
		}
		if p.Action == model.IntentionAllow {
			if nd := notDenied(); nd != nil {
				match = &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_AndRules{AndRules: &rbacconfigv3.Permission_Set{Rules: []*rbacconfigv3.Permission{match, nd}}}}
			}
			out = append(out, match)
			continue
		}
		denies = append(denies, match)
	}
	if defaultAllow {
		nd := notDenied()
		if nd == nil {
			nd = &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Any{Any: true}}
		}
		out = append(out, nd)
	}
	return out, notes, ""
}

// permissionMatch is the RBAC permission matching the calls an HTTP
// permission matches; never when no gRPC call can match it; why when it
// cannot be expressed.
func permissionMatch(h *model.IntentionHTTPMatch) (match *rbacconfigv3.Permission, never bool, why string) {
	if h == nil {
		return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Any{Any: true}}, false, ""
	}
	if len(h.Methods) > 0 && !slices.Contains(h.Methods, "POST") {
		return nil, true, ""
	}
	var rules []*rbacconfigv3.Permission
	path := func(m *matcherv3.StringMatcher) {
		rules = append(rules, &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
			Rule: &matcherv3.PathMatcher_Path{Path: m}}}})
	}
	switch {
	case h.PathExact != "":
		path(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: h.PathExact}})
	case h.PathPrefix != "":
		path(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: h.PathPrefix}})
	case h.PathRegex != "":
		if _, err := regexp.Compile(h.PathRegex); err != nil {
			return nil, false, fmt.Sprintf("PathRegex: %q is not an RE2 expression (%v)", h.PathRegex, err)
		}
		path(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: h.PathRegex}}})
	}
	for i, hd := range h.Headers {
		hm, why := headerPermission(hd)
		if why != "" {
			return nil, false, fmt.Sprintf("Header[%d]: %q: %s", i, hd.Name, why)
		}
		rules = append(rules, hm)
	}
	switch len(rules) {
	case 0:
		return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Any{Any: true}}, false, ""
	case 1:
		return rules[0], false, ""
	default:
		return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_AndRules{AndRules: &rbacconfigv3.Permission_Set{Rules: rules}}}, false, ""
	}
}

// hopByHopHeaders are the headers gRFC A41 forbids RBAC to match.
var hopByHopHeaders = map[string]bool{"connection": true, "keep-alive": true, "proxy-authenticate": true, "proxy-authorization": true,
	"te": true, "trailer": true, "transfer-encoding": true, "upgrade": true, "proxy-connection": true}

// headerPermission is the RBAC permission of one header condition, with
// Envoy's semantics (which Consul's own proxies apply) in the matcher
// fields every gRPC implementation reads (not string_match, which C-core
// 1.51 refuses):
//   - gRPC's matchers never match an absent header, inverted or not, where
//     Envoy's inverted matchers do; Invert is therefore a NOT around the
//     matcher, which holds for an absent header as Envoy's invert does;
//   - grpc-go's present matcher does not see a header with an empty value,
//     which Envoy's does: Present is "present or exactly empty";
//   - IgnoreCase (Envoy: ASCII case, for exact, prefix, suffix and
//     contains; no effect on a regex) becomes a regex with ASCII letters
//     as both-case classes.
func headerPermission(hd model.IntentionHeaderMatch) (*rbacconfigv3.Permission, string) {
	switch {
	case hd.Name == "":
		return nil, "no header name"
	case strings.HasPrefix(hd.Name, "grpc-") || hd.Name == ":scheme":
		// gRFC A41: such a matcher makes the Listener invalid.
		return nil, "gRPC servers refuse RBAC header matchers on grpc- headers and :scheme"
	case hopByHopHeaders[hd.Name]:
		return nil, "gRPC servers never match hop-by-hop headers"
	}
	header := func(m *routev3.HeaderMatcher) *rbacconfigv3.Permission {
		m.Name = hd.Name
		return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Header{Header: m}}
	}
	folded := func(pattern string) *rbacconfigv3.Permission {
		return header(&routev3.HeaderMatcher{HeaderMatchSpecifier: &routev3.HeaderMatcher_SafeRegexMatch{SafeRegexMatch: &matcherv3.RegexMatcher{Regex: pattern}}})
	}
	var m *rbacconfigv3.Permission
	switch {
	case hd.Present:
		m = &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_OrRules{OrRules: &rbacconfigv3.Permission_Set{Rules: []*rbacconfigv3.Permission{
			header(&routev3.HeaderMatcher{HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}),
			header(&routev3.HeaderMatcher{HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: ""}}),
		}}}}
	case hd.Exact != "" && hd.IgnoreCase:
		m = folded(asciiFold(hd.Exact))
	case hd.Exact != "":
		m = header(&routev3.HeaderMatcher{HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: hd.Exact}})
	case hd.Prefix != "" && hd.IgnoreCase:
		m = folded(asciiFold(hd.Prefix) + "(?s:.*)")
	case hd.Prefix != "":
		m = header(&routev3.HeaderMatcher{HeaderMatchSpecifier: &routev3.HeaderMatcher_PrefixMatch{PrefixMatch: hd.Prefix}})
	case hd.Suffix != "" && hd.IgnoreCase:
		m = folded("(?s:.*)" + asciiFold(hd.Suffix))
	case hd.Suffix != "":
		m = header(&routev3.HeaderMatcher{HeaderMatchSpecifier: &routev3.HeaderMatcher_SuffixMatch{SuffixMatch: hd.Suffix}})
	case hd.Contains != "" && hd.IgnoreCase:
		m = folded("(?s:.*)" + asciiFold(hd.Contains) + "(?s:.*)")
	case hd.Contains != "":
		m = header(&routev3.HeaderMatcher{HeaderMatchSpecifier: &routev3.HeaderMatcher_ContainsMatch{ContainsMatch: hd.Contains}})
	case hd.Regex != "":
		if _, err := regexp.Compile(hd.Regex); err != nil {
			return nil, fmt.Sprintf("Regex: %q is not an RE2 expression (%v)", hd.Regex, err)
		}
		m = header(&routev3.HeaderMatcher{HeaderMatchSpecifier: &routev3.HeaderMatcher_SafeRegexMatch{SafeRegexMatch: &matcherv3.RegexMatcher{Regex: hd.Regex}}})
	default:
		return nil, "no match operator (Present, Exact, Prefix, Suffix, Contains or Regex)"
	}
	if hd.Invert {
		m = &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_NotRule{NotRule: m}}
	}
	return m, ""
}

// asciiFold is a regex matching s literally, ASCII letters in either case.
func asciiFold(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z':
			b.WriteString("[" + string(r) + string(r-'a'+'A') + "]")
		case r >= 'A' && r <= 'Z':
			b.WriteString("[" + string(r-'A'+'a') + string(r) + "]")
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	return b.String()
}

func principalExact(id string) *rbacconfigv3.Principal {
	return principalName(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}})
}

func principalPrefix(prefix string) *rbacconfigv3.Principal {
	return principalName(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: prefix}})
}

// principalName matches the peer certificate's URI SAN (its SPIFFE ID).
func principalName(m *matcherv3.StringMatcher) *rbacconfigv3.Principal {
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Authenticated_{
		Authenticated: &rbacconfigv3.Principal_Authenticated{PrincipalName: m},
	}}
}

// certificateProvider names a certificate provider instance of the
// bootstrap.
func certificateProvider(instance string) *tlsv3.CertificateProviderPluginInstance {
	return &tlsv3.CertificateProviderPluginInstance{InstanceName: instance}
}

// upstreamTransportSocket is the client side of mTLS to a service whose
// servers carry one of ids as their URI SAN.
func upstreamTransportSocket(ids []string) (*corev3.TransportSocket, error) {
	validation := &tlsv3.CertificateValidationContext{CaCertificateProviderInstance: certificateProvider(bootstrap.CertificateProviderInstance)}
	for _, id := range ids {
		validation.MatchSubjectAltNames = append(validation.MatchSubjectAltNames,
			&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}})
	}
	cfg, err := anypb.New(&tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: certificateProvider(bootstrap.CertificateProviderInstance),
		ValidationContextType:          &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: validation},
	}})
	if err != nil {
		return nil, fmt.Errorf("upstream TLS context: %w", err)
	}
	return &corev3.TransportSocket{Name: TLSTransportSocketName, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: cfg}}, nil
}

// downstreamTransportSocket is the server side of mTLS: present the SVID,
// require and verify the client's, both with the certificate provider
// instance named.
func downstreamTransportSocket(instance string) (*corev3.TransportSocket, error) {
	cfg, err := anypb.New(&tlsv3.DownstreamTlsContext{
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateProviderInstance: certificateProvider(instance),
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				CaCertificateProviderInstance: certificateProvider(instance),
			}},
		},
		RequireClientCertificate: wrapperspb.Bool(true),
	})
	if err != nil {
		return nil, fmt.Errorf("downstream TLS context: %w", err)
	}
	return &corev3.TransportSocket{Name: TLSTransportSocketName, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: cfg}}, nil
}

// serverTLS is the mTLS of a server Listener.
type serverTLS struct {
	// instance is the certificate provider instance of the workload's
	// identity and of the roots its callers are verified against.
	instance string
	// rbac is the RBAC filter's configuration; nil when the handshake
	// alone authorizes (see handshakeAuthorizes).
	rbac *rbacv3.RBAC
}

// serverListener is the Listener of an xds.NewGRPCServer listening on
// addr:port: one filter chain whose routes all end in a non-forwarding
// action; with mTLS (tls not nil), a DownstreamTlsContext and, unless
// the handshake authorizes, the RBAC filter.
func serverListener(addr netip.Addr, port int, tls *serverTLS) (*listenerv3.Listener, error) {
	var filters []*hcmv3.HttpFilter
	if tls != nil && tls.rbac != nil {
		rbac := tls.rbac
		cfg, err := anypb.New(rbac)
		if err != nil {
			return nil, fmt.Errorf("rbac filter: %w", err)
		}
		filters = append(filters, &hcmv3.HttpFilter{Name: RBACFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg}})
	}
	router, err := routerFilter()
	if err != nil {
		return nil, err
	}
	filters = append(filters, router)
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix: inboundName,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: inboundName,
			VirtualHosts: []*routev3.VirtualHost{{
				Name:    inboundName,
				Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: ""}},
					Action: &routev3.Route_NonForwardingAction{NonForwardingAction: &routev3.NonForwardingAction{}},
				}},
			}},
		}},
		HttpFilters: filters,
	})
	if err != nil {
		return nil, fmt.Errorf("http connection manager: %w", err)
	}
	chain := &listenerv3.FilterChain{
		Name: inboundName,
		Filters: []*listenerv3.Filter{{
			Name:       hcmFilterName,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm},
		}},
	}
	if tls != nil {
		if chain.TransportSocket, err = downstreamTransportSocket(tls.instance); err != nil {
			return nil, err
		}
	}
	return &listenerv3.Listener{
		Name:             ServerListenerName(netip.AddrPortFrom(addr, uint16(port)).String()),
		Address:          socketAddress(addr.String(), port),
		FilterChains:     []*listenerv3.FilterChain{chain},
		TrafficDirection: corev3.TrafficDirection_INBOUND,
	}, nil
}

// addServerListeners adds the server Listeners of one service to r. A
// Listener whose address already carries another service's Listener is left
// out and reported: the first service by name keeps the address.
func addServerListeners(r *Resources, service string, servers []*listenerv3.Listener, owners map[string]string) []Skip {
	var skips []Skip
	for _, l := range servers {
		if owner, taken := owners[l.GetName()]; taken {
			addr := l.GetAddress().GetSocketAddress()
			hostPort := net.JoinHostPort(addr.GetAddress(), strconv.FormatUint(uint64(addr.GetPortValue()), 10))
			skips = append(skips, Skip{Service: service, Route: "server Listener " + hostPort, Reason: fmt.Sprintf(
				"no server Listener for %s: the address is also registered for service %q, which keeps it", hostPort, owner)})
			continue
		}
		owners[l.GetName()] = service
		r.Listeners[l.GetName()] = l
	}
	return skips
}

// reportConditions reports, once each, the intentions whose conditions
// Trellis does not enforce and that concern a service of the catalog (or
// every service).
func reportConditions(sec *Security, snap *model.Snapshot) []Skip {
	var skips []Skip
	for _, in := range sec.Intentions.All() {
		if len(in.Conditions) == 0 {
			continue
		}
		if _, ok := snap.Services[in.Destination]; !ok && in.Destination != model.Wildcard {
			continue
		}
		who := fmt.Sprintf("%q", in.Source)
		if in.Source == model.Wildcard {
			who = "any source without an intention of its own"
		}
		skips = append(skips, Skip{Kind: SkipWarning, Service: in.Destination, Route: fmt.Sprintf("intention from %q", in.Source), Reason: fmt.Sprintf(
			"intention from %q: %s not enforced by gRPC servers; treated as deny: calls from %s are denied", in.Source, strings.Join(in.Conditions, ", "), who)})
	}
	return skips
}
