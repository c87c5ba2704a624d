package statusapi

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	wrrlocalityv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/wrr_locality/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/trellis-mesh/trellis/internal/clients"
	"github.com/trellis-mesh/trellis/internal/model"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
	statusv1 "github.com/trellis-mesh/trellis/proto/trellis/status/v1"
	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// Inputs are what the server translated last: Explain explains the served
// resources with them. Every method returns the latest value and must be
// safe for concurrent use; values are shared and must not be modified.
type Inputs interface {
	// Catalog is the latest catalog snapshot; nil before the first.
	Catalog() *model.Snapshot
	// Policy returns the policy in effect for service and its revision;
	// nil when it has none.
	Policy(service string) (*policyv1.ServicePolicy, uint64)
	// Security is the mTLS and authorization input in effect.
	Security() Security
	// Skips are what the last translation left out or warned about.
	Skips() []Skip
	// Synced reports whether the first translation has been applied.
	Synced() bool
}

// Security is the security input of the translation, in this package's
// terms.
type Security struct {
	// TrustDomain is the SPIFFE trust domain; empty when none is set.
	TrustDomain string
	// MTLS is the mesh-wide default transport.
	MTLS bool
	// DefaultDeny denies the calls no intention matches.
	DefaultDeny bool
	// Intentions are the service intentions; nil for none.
	Intentions *model.Intentions
}

// Skip is one thing the translation left out or warned about (the
// translation's own Skip, copied field by field).
type Skip struct {
	// Warning: translated, but otherwise than asked. Otherwise left out.
	Warning bool
	// Service, Instance (node/id), Route and Profile as in the
	// translation's Skip: what is concerned, and the client profile when
	// only that profile's clients are.
	Service, Instance, Route, Profile string
	// Reason says what was wrong and what is accepted.
	Reason string
}

func (s Skip) text() string {
	switch {
	case s.Instance != "":
		return fmt.Sprintf("instance %s: %s", s.Instance, s.Reason)
	case s.Route != "":
		return s.Route + ": " + s.Reason
	}
	return s.Reason
}

// Explain implements statusv1.StatusServiceServer.
func (s *Server) Explain(ctx context.Context, req *statusv1.ExplainRequest) (*statusv1.ExplainResponse, error) {
	if s.served == nil || s.inputs == nil {
		return nil, status.Error(codes.Unimplemented, "Explain: this server was started without its resource caches or inputs")
	}
	listener, service, err := parseTarget(req.GetTarget())
	if err != nil {
		return nil, err
	}
	e := &explanation{
		s:    s,
		resp: &statusv1.ExplainResponse{Target: req.GetTarget(), Listener: listener, Service: service, Replica: s.replica},
	}
	if err := e.pickClient(strings.TrimSpace(req.GetClient()), req.GetProfile()); err != nil {
		return nil, err
	}
	if err := s.prepare(ctx, e.resp.Profile); err != nil {
		return nil, err
	}
	e.cache = s.served.Cache(e.resp.Profile)
	if !s.inputs.Synced() {
		e.problem("the server has not completed its first Consul sync and serves nothing yet: clients wait, then report \"resource does not exist\"")
	}
	e.explainService()
	e.explainClientSync()
	return e.resp, nil
}

// parseTarget returns the Listener name and the service a channel target
// names.
func parseTarget(target string) (listener, service string, err error) {
	t := strings.TrimSpace(target)
	switch {
	case strings.HasPrefix(t, "xds:///"):
		t = strings.TrimPrefix(t, "xds:///")
	case strings.HasPrefix(t, "xds://"):
		return "", "", status.Errorf(codes.InvalidArgument, "target: %q: names an authority; accepted: xds:///name[:port] or name[:port]", target)
	case strings.Contains(t, "://"):
		return "", "", status.Errorf(codes.InvalidArgument, "target: %q: not an xds target; accepted: xds:///name[:port] or name[:port]", target)
	}
	if t == "" || strings.ContainsAny(t, "/ \t") {
		return "", "", status.Errorf(codes.InvalidArgument, "target: %q: accepted: xds:///name[:port] or name[:port]", target)
	}
	service = t
	if i := strings.LastIndexByte(t, ':'); i > 0 {
		if p, err := strconv.ParseUint(t[i+1:], 10, 16); err == nil && p > 0 {
			service = t[:i]
		}
	}
	return t, service, nil
}

// explanation is one Explain being built.
type explanation struct {
	s       *Server
	resp    *statusv1.ExplainResponse
	cache   *xdscache.Cache
	streams []xdsserver.StreamStatus
}

func (e *explanation) problem(format string, args ...any) {
	e.resp.Problems = append(e.resp.Problems, fmt.Sprintf(format, args...))
}

// pickClient finds the client's streams and the profile to explain for.
func (e *explanation) pickClient(client, profile string) error {
	profiles := e.s.served.Profiles()
	if profile != "" {
		if !slices.ContainsFunc(profiles, func(p clients.Profile) bool { return p.Name == profile }) {
			names := make([]string, len(profiles))
			for i, p := range profiles {
				names[i] = p.Name
			}
			return status.Errorf(codes.InvalidArgument, "profile: %q: not served; accepted: %v", profile, names)
		}
	}
	if client != "" {
		id, idErr := strconv.ParseInt(client, 10, 64)
		for _, st := range e.s.streams() {
			if st.NodeID == client || (idErr == nil && st.ID == id) {
				e.streams = append(e.streams, st)
			}
		}
		e.resp.NodeId = client
	}
	if len(e.streams) > 0 {
		// The stream that asks for the Listener, else the first.
		st := e.streams[0]
		for _, cand := range e.streams {
			if subscribes(cand, resource.ListenerType, e.resp.Listener) {
				st = cand
				break
			}
		}
		e.resp.NodeId, e.resp.UserAgent = st.NodeID, st.UserAgent
		if st.Profile != "" && (profile == "" || profile == st.Profile) {
			e.resp.Profile, e.resp.ProfileSource = st.Profile, profileFromStream
			return nil
		}
	}
	switch {
	case profile != "":
		e.resp.Profile, e.resp.ProfileSource = profile, profileRequested
	default:
		e.resp.Profile, e.resp.ProfileSource = profiles[0].Name, profileFallback
	}
	if client != "" && len(e.streams) == 0 {
		e.problem("client %q has no open xDS stream on %s: it is not running, has not dialled an xds:/// target yet, or is connected to another replica; explaining for the %s profile", client, e.s.replicaName(), e.resp.Profile)
	}
	return nil
}

func subscribes(st xdsserver.StreamStatus, typeURL, name string) bool {
	for _, ts := range st.Types {
		if ts.TypeURL == typeURL && slices.Contains(ts.ResourceNames, name) {
			return true
		}
	}
	return false
}

// served returns what the profile is served under typeURL and name and
// records it in the response.
func (e *explanation) served(typeURL, name string) proto.Message {
	out := &statusv1.ExplainedResource{TypeUrl: typeURL, Name: name}
	e.resp.Resources = append(e.resp.Resources, out)
	if e.cache == nil {
		return nil
	}
	res, version, ok := e.cache.Resource(typeURL, name)
	if !ok {
		return nil
	}
	out.Served, out.ContentVersion = true, version
	return res
}

func (e *explanation) explainService() {
	in := e.s.inputs
	svc := e.resp.Service
	snap := in.Catalog()
	var catalogSvc *model.Service
	if snap != nil {
		catalogSvc = snap.Services[svc]
	}
	skips := skipsOf(in.Skips(), svc)
	e.explainPolicy(svc)
	e.explainSecurity(svc)
	for _, sk := range skips {
		switch {
		case sk.Profile == e.resp.Profile:
			e.resp.Substitutions = append(e.resp.Substitutions, sk.text())
		case sk.Profile != "":
			// Concerns another profile's clients only.
		case sk.Instance == "" || sk.Warning:
			// Instances left out are explained with the clusters.
			e.resp.Notes = append(e.resp.Notes, sk.text())
		}
	}

	lis, _ := e.served(resource.ListenerType, e.resp.Listener).(*listenerv3.Listener)
	if lis == nil {
		e.explainMissingListener(snap, catalogSvc, skips)
		return
	}
	routeName, inline, err := routeOf(lis)
	if err != nil {
		e.problem("Listener %s: %v", e.resp.Listener, err)
		return
	}
	rc := inline
	if rc == nil {
		rc, _ = e.served(resource.RouteType, routeName).(*routev3.RouteConfiguration)
		if rc == nil {
			e.problem("Listener %s names RouteConfiguration %q, which is not served: calls fail until it is", e.resp.Listener, routeName)
			return
		}
	}
	vh := virtualHost(rc, e.resp.Listener)
	if vh == nil {
		e.problem("RouteConfiguration %s has no virtual host for the authority %q: calls fail with UNAVAILABLE", rc.GetName(), e.resp.Listener)
		return
	}
	var clusterNames []string
	for _, r := range vh.GetRoutes() {
		er := explainRoute(r)
		if e.resp.Policy == nil {
			e.resp.Policy = &statusv1.ExplainedPolicy{}
		}
		e.resp.Policy.Routes = append(e.resp.Policy.Routes, er)
		for _, c := range routeClusters(r) {
			if !slices.Contains(clusterNames, c) {
				clusterNames = append(clusterNames, c)
			}
		}
	}
	all := in.Skips()
	for _, name := range clusterNames {
		e.explainCluster(name, snap, all)
	}
}

// skipsOf returns the skips of service.
func skipsOf(all []Skip, service string) []Skip {
	var out []Skip
	for _, s := range all {
		if s.Service == service {
			out = append(out, s)
		}
	}
	return out
}

func (e *explanation) explainMissingListener(snap *model.Snapshot, svc *model.Service, skips []Skip) {
	lisName := e.resp.Listener
	switch {
	case snap == nil:
		e.problem("Listener %s is not served: the server has no catalog snapshot yet; a client asking for it reports \"listener resource does not exist\" after 15s", lisName)
	case svc == nil:
		e.resp.NearMatches = nearMatches(e.resp.Service, snap.ServiceNames())
		msg := fmt.Sprintf("Listener %s is not served: service %q is not in the Consul catalog, so a client dialling %s reports \"listener resource does not exist\"", lisName, e.resp.Service, "xds:///"+lisName)
		if len(e.resp.NearMatches) > 0 {
			msg += fmt.Sprintf("; did you mean %s?", strings.Join(e.resp.NearMatches, ", "))
		} else {
			msg += "; register it in Consul (or check the datacenter and the ACL token's service:read rights)"
		}
		e.problem("%s", msg)
	default:
		var why []string
		for _, sk := range skips {
			if !sk.Warning && sk.Instance == "" && sk.Route == "" && (sk.Profile == "" || sk.Profile == e.resp.Profile) {
				why = append(why, sk.Reason)
			}
		}
		switch {
		case len(why) > 0:
			e.problem("Listener %s is not served: service %q was left out of the configuration: %s", lisName, e.resp.Service, strings.Join(why, "; "))
		case lisName != e.resp.Service && e.cache != nil && hasResource(e.cache, resource.ListenerType, e.resp.Service):
			e.problem("Listener %s is not served yet: the server creates it (from Listener %s) when a client asks for it, and serves a bounded number of such names", lisName, e.resp.Service)
		default:
			e.problem("Listener %s is not served although service %q is in the catalog: the latest catalog change may not be translated yet; try again in a moment", lisName, e.resp.Service)
		}
	}
}

func hasResource(c *xdscache.Cache, typeURL, name string) bool {
	_, _, ok := c.Resource(typeURL, name)
	return ok
}

// routeOf returns the RDS route name, or the inline RouteConfiguration, of a
// client Listener.
func routeOf(lis *listenerv3.Listener) (string, *routev3.RouteConfiguration, error) {
	api := lis.GetApiListener().GetApiListener()
	if api == nil {
		return "", nil, fmt.Errorf("not a client Listener (no api_listener)")
	}
	hcm := &hcmv3.HttpConnectionManager{}
	if err := api.UnmarshalTo(hcm); err != nil {
		return "", nil, fmt.Errorf("api_listener: %w", err)
	}
	if rc := hcm.GetRouteConfig(); rc != nil {
		return "", rc, nil
	}
	if name := hcm.GetRds().GetRouteConfigName(); name != "" {
		return name, nil, nil
	}
	return "", nil, fmt.Errorf("HttpConnectionManager names no route configuration")
}

// virtualHost picks the virtual host gRPC picks for authority: an exact
// domain, then the longest suffix or prefix wildcard, then "*".
func virtualHost(rc *routev3.RouteConfiguration, authority string) *routev3.VirtualHost {
	var best *routev3.VirtualHost
	bestRank, bestLen := 0, -1
	for _, vh := range rc.GetVirtualHosts() {
		for _, d := range vh.GetDomains() {
			rank, n := 0, len(d)
			switch {
			case d == authority:
				rank = 4
			case strings.HasPrefix(d, "*") && d != "*" && strings.HasSuffix(authority, d[1:]):
				rank = 3
			case strings.HasSuffix(d, "*") && d != "*" && strings.HasPrefix(authority, d[:len(d)-1]):
				rank = 2
			case d == "*":
				rank = 1
			}
			if rank > bestRank || (rank == bestRank && rank > 0 && n > bestLen) {
				best, bestRank, bestLen = vh, rank, n
			}
		}
	}
	return best
}

// routeClusters are the clusters a route sends calls to.
func routeClusters(r *routev3.Route) []string {
	a := r.GetRoute()
	if a == nil {
		return nil
	}
	if c := a.GetCluster(); c != "" {
		return []string{c}
	}
	var out []string
	for _, wc := range a.GetWeightedClusters().GetClusters() {
		if wc.GetWeight().GetValue() > 0 {
			out = append(out, wc.GetName())
		}
	}
	return out
}

func explainRoute(r *routev3.Route) *statusv1.ExplainedRoute {
	out := &statusv1.ExplainedRoute{Match: describeMatch(r.GetMatch())}
	a := r.GetRoute()
	switch {
	case a == nil && r.GetNonForwardingAction() != nil:
		out.Action = "served here (server route)"
	case a == nil:
		out.Action = "no route action: calls fail"
	case a.GetCluster() != "":
		out.Action = "cluster " + a.GetCluster()
	case a.GetWeightedClusters() != nil:
		var total uint64
		for _, wc := range a.GetWeightedClusters().GetClusters() {
			total += uint64(wc.GetWeight().GetValue())
		}
		var parts []string
		for _, wc := range a.GetWeightedClusters().GetClusters() {
			if total == 0 {
				break
			}
			parts = append(parts, fmt.Sprintf("%s %s%%", wc.GetName(), strconv.FormatFloat(100*float64(wc.GetWeight().GetValue())/float64(total), 'f', -1, 64)))
		}
		out.Action = "split: " + strings.Join(parts, ", ")
	default:
		out.Action = "unsupported action"
	}
	if a != nil {
		if d := a.GetMaxStreamDuration(); d != nil {
			if v := d.GetGrpcTimeoutHeaderMax(); v != nil {
				out.Settings = append(out.Settings, "timeout at most "+v.AsDuration().String())
			}
			if v := d.GetMaxStreamDuration(); v != nil {
				out.Settings = append(out.Settings, "timeout "+v.AsDuration().String())
			}
		}
		if rp := a.GetRetryPolicy(); rp != nil {
			n := uint32(1)
			if rp.GetNumRetries() != nil {
				n = rp.GetNumRetries().GetValue()
			}
			out.Settings = append(out.Settings, fmt.Sprintf("up to %d retries on %s", n, rp.GetRetryOn()))
		}
		for _, h := range a.GetHashPolicy() {
			switch {
			case h.GetHeader() != nil:
				out.Settings = append(out.Settings, "hash by header "+h.GetHeader().GetHeaderName())
			case h.GetFilterState() != nil:
				out.Settings = append(out.Settings, "hash by channel")
			}
		}
	}
	if len(r.GetTypedPerFilterConfig()) > 0 {
		out.Settings = append(out.Settings, "fault injection")
	}
	return out
}

func describeMatch(m *routev3.RouteMatch) string {
	var parts []string
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		if p.Prefix != "" && p.Prefix != "/" {
			parts = append(parts, "prefix "+p.Prefix)
		}
	case *routev3.RouteMatch_Path:
		parts = append(parts, "path "+p.Path)
	case *routev3.RouteMatch_SafeRegex:
		parts = append(parts, "path matching "+p.SafeRegex.GetRegex())
	}
	for _, h := range m.GetHeaders() {
		parts = append(parts, describeHeader(h))
	}
	if len(parts) == 0 {
		return "every call"
	}
	return strings.Join(parts, " and ")
}

func describeHeader(h *routev3.HeaderMatcher) string {
	not := ""
	if h.GetInvertMatch() {
		not = "not "
	}
	name := "header " + h.GetName()
	switch {
	case h.GetPresentMatch():
		return name + " " + not + "present"
	case h.GetExactMatch() != "":
		return fmt.Sprintf("%s %s= %q", name, not, h.GetExactMatch())
	case h.GetPrefixMatch() != "":
		return fmt.Sprintf("%s %sstarting with %q", name, not, h.GetPrefixMatch())
	case h.GetSafeRegexMatch() != nil:
		return fmt.Sprintf("%s %smatching %q", name, not, h.GetSafeRegexMatch().GetRegex())
	case h.GetStringMatch() != nil:
		return name + " " + not + describeString(h.GetStringMatch())
	}
	return name + " " + not + "matching"
}

func describeString(m *matcherv3.StringMatcher) string {
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return fmt.Sprintf("= %q", p.Exact)
	case *matcherv3.StringMatcher_Prefix:
		return fmt.Sprintf("starting with %q", p.Prefix)
	case *matcherv3.StringMatcher_Suffix:
		return fmt.Sprintf("ending with %q", p.Suffix)
	case *matcherv3.StringMatcher_Contains:
		return fmt.Sprintf("containing %q", p.Contains)
	case *matcherv3.StringMatcher_SafeRegex:
		return fmt.Sprintf("matching %q", p.SafeRegex.GetRegex())
	}
	return "matching"
}

// explainCluster explains one cluster the routes send calls to, which may
// be another service's: its settings and which instances of its service
// are in its endpoints.
func (e *explanation) explainCluster(name string, snap *model.Snapshot, allSkips []Skip) {
	service, subset, _ := strings.Cut(name, "/")
	skips := skipsOf(allSkips, service)
	ec := &statusv1.ExplainedCluster{Name: name, Service: service, Subset: subset}
	e.resp.Clusters = append(e.resp.Clusters, ec)
	c, _ := e.served(resource.ClusterType, name).(*clusterv3.Cluster)
	if c == nil {
		e.problem("cluster %s is named by a route but not served: calls routed to it fail with UNAVAILABLE", name)
		return
	}
	ec.Served = true
	ec.LoadBalancing = describeLB(c)
	if ids, ok := mtlsOf(c); ok {
		ec.Mtls, ec.ServerSpiffeIds = true, ids
	}
	edsName := cmp.Or(c.GetEdsClusterConfig().GetServiceName(), name)
	cla, _ := e.served(resource.EndpointType, edsName).(*endpointv3.ClusterLoadAssignment)
	type endpoint struct {
		weight uint32
		zone   string
	}
	endpoints := map[string]endpoint{}
	for _, loc := range cla.GetEndpoints() {
		for _, lb := range loc.GetLbEndpoints() {
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			addr, err := netip.ParseAddr(sa.GetAddress())
			if err != nil {
				continue
			}
			key := netip.AddrPortFrom(addr.Unmap(), uint16(sa.GetPortValue())).String()
			endpoints[key] = endpoint{weight: lb.GetLoadBalancingWeight().GetValue(), zone: loc.GetLocality().GetZone()}
		}
	}
	if cla == nil {
		e.problem("the endpoints of cluster %s (%s) are not served: calls routed to it fail until they are", name, edsName)
	} else if len(endpoints) == 0 {
		e.problem("cluster %s has no endpoints: calls routed to it fail with UNAVAILABLE (no instance of %q can receive calls)", name, service)
	}
	var svc *model.Service
	if snap != nil {
		svc = snap.Services[service]
	}
	skipped := map[string]string{}
	for _, sk := range skips {
		if sk.Instance != "" && !sk.Warning {
			skipped[sk.Instance] = sk.Reason
		}
	}
	healthyIncluded, unhealthyIncluded := 0, 0
	var instances []model.Instance
	if svc != nil {
		instances = svc.Instances
	}
	for _, inst := range instances {
		ei := &statusv1.ExplainedInstance{Key: inst.Key(), Address: addrOf(inst), Health: inst.Health.String(), Zone: inst.Zone, Datacenter: inst.Datacenter}
		ec.Instances = append(ec.Instances, ei)
		if ep, ok := endpoints[hostPort(inst)]; ok {
			ei.Included, ei.Weight = true, ep.weight
			if inst.Health == model.HealthCritical {
				unhealthyIncluded++
			} else {
				healthyIncluded++
			}
			continue
		}
		ei.Reason = leftOutReason(inst, subset, skipped)
	}
	if unhealthyIncluded > 0 && healthyIncluded == 0 {
		ec.PanicRouting = true
		e.problem("no instance of %q is healthy: calls are spread over every instance not in maintenance (panic routing) rather than failing at once", service)
	}
}

// addrOf is an instance's address as host:port.
func addrOf(inst model.Instance) string {
	if hp := hostPort(inst); hp != "" {
		return hp
	}
	return inst.Address + ":" + strconv.Itoa(inst.Port)
}

// hostPort is the instance's address as the endpoints write it; empty when
// it is not an IP address.
func hostPort(inst model.Instance) string {
	addr, err := netip.ParseAddr(inst.Address)
	if err != nil || inst.Port <= 0 || inst.Port > 65535 {
		return ""
	}
	return netip.AddrPortFrom(addr.Unmap(), uint16(inst.Port)).String()
}

// leftOutReason says why an instance is not in a cluster's endpoints.
func leftOutReason(inst model.Instance, subset string, skipped map[string]string) string {
	if r, ok := skipped[inst.Key()]; ok {
		return r
	}
	switch inst.Health {
	case model.HealthMaintenance:
		return "in maintenance mode"
	case model.HealthCritical:
		return "its health checks are critical"
	case model.HealthWarning:
		if inst.Weights.Warning <= 0 {
			return "its checks are warning and its Consul weight while warning is 0"
		}
		return "its checks are warning, and the server runs with --exclude-warning"
	}
	if inst.Weights.Passing <= 0 {
		return "its Consul weight while passing is 0"
	}
	if subset != "" {
		return fmt.Sprintf("not in subset %q (the subset's filter does not select it)", subset)
	}
	return "not in the endpoints served now (a catalog change not yet translated?)"
}

// describeLB names the load balancing a cluster asks for.
func describeLB(c *clusterv3.Cluster) string {
	if lbp := c.GetLoadBalancingPolicy(); lbp != nil && len(lbp.GetPolicies()) > 0 {
		return describePolicies(lbp)
	}
	return strings.ToLower(strings.ReplaceAll(c.GetLbPolicy().String(), "_", " "))
}

// describePolicies names the policies of a load_balancing_policy in order
// (the client uses the first it supports), e.g. "pick first" or "client
// side weighted round robin in each locality".
func describePolicies(lbp *clusterv3.LoadBalancingPolicy) string {
	var names []string
	for _, p := range lbp.GetPolicies() {
		cfg := p.GetTypedExtensionConfig().GetTypedConfig()
		t := cfg.GetTypeUrl()
		name := words(t[strings.LastIndexByte(t, '.')+1:])
		wl := &wrrlocalityv3.WrrLocality{}
		if cfg.MessageIs(wl) && cfg.UnmarshalTo(wl) == nil && wl.GetEndpointPickingPolicy() != nil {
			name = describePolicies(wl.GetEndpointPickingPolicy()) + " in each locality"
		}
		names = append(names, name)
	}
	return strings.Join(names, ", else ")
}

// words turns a message name into lower-case words: "RingHash" -> "ring
// hash".
func words(name string) string {
	var b strings.Builder
	for i, r := range name {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte(' ')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// mtlsOf returns the SPIFFE IDs a cluster's clients accept from its servers
// when it requires mTLS.
func mtlsOf(c *clusterv3.Cluster) ([]string, bool) {
	ts := c.GetTransportSocket()
	if ts == nil || ts.GetTypedConfig() == nil {
		return nil, false
	}
	up := &tlsv3.UpstreamTlsContext{}
	if err := ts.GetTypedConfig().UnmarshalTo(up); err != nil {
		return nil, false
	}
	vc := up.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext()
	if vc == nil {
		vc = up.GetCommonTlsContext().GetValidationContext()
	}
	var ids []string
	for _, m := range vc.GetMatchTypedSubjectAltNames() {
		ids = append(ids, describeSAN(m.GetMatcher()))
	}
	//lint:ignore SA1019 grpc-go reads the older field too.
	for _, m := range vc.GetMatchSubjectAltNames() {
		ids = append(ids, describeSAN(m))
	}
	return ids, true
}

func describeSAN(m *matcherv3.StringMatcher) string {
	if x := m.GetExact(); x != "" {
		return x
	}
	return describeString(m)
}

func (e *explanation) explainPolicy(service string) {
	pol, rev := e.s.inputs.Policy(service)
	if e.resp.Policy == nil {
		e.resp.Policy = &statusv1.ExplainedPolicy{}
	}
	if pol == nil {
		return
	}
	e.resp.Policy.Present, e.resp.Policy.Revision = true, rev
	for _, g := range clients.PolicyGaps(pol) {
		e.resp.Policy.Gaps = append(e.resp.Policy.Gaps, g.String())
	}
}

func (e *explanation) explainSecurity(service string) {
	sec := e.s.inputs.Security()
	out := &statusv1.ExplainedSecurity{TrustDomain: sec.TrustDomain, DefaultDeny: sec.DefaultDeny}
	e.resp.Security = out
	if sec.Intentions != nil {
		for _, in := range sec.Intentions.All() {
			if in.Destination != service && in.Destination != model.Wildcard {
				continue
			}
			out.Intentions = append(out.Intentions, &statusv1.ExplainedIntention{Source: in.Source, Destination: in.Destination,
				Action: in.Action.String(), Precedence: int32(in.Precedence), Conditions: slices.Clone(in.Conditions)})
		}
	}
	slices.SortStableFunc(out.Intentions, func(a, b *statusv1.ExplainedIntention) int { return cmp.Compare(b.Precedence, a.Precedence) })
}

// finishSecurity fills in what the clusters tell about mTLS.
func (e *explanation) finishSecurity() {
	out := e.resp.Security
	for _, c := range e.resp.Clusters {
		if c.Mtls {
			out.Mtls = true
		}
	}
	def := "allowed"
	if out.DefaultDeny {
		def = "denied"
	}
	switch {
	case out.Mtls:
		out.Enforcement = fmt.Sprintf("calls use mTLS; the servers of %q (xds.NewGRPCServer with xDS credentials) check each caller's SPIFFE ID against the intentions; calls no intention matches are %s", e.resp.Service, def)
	case len(out.Intentions) > 0 || out.DefaultDeny:
		out.Enforcement = fmt.Sprintf("not enforced: %q is served in plaintext, so its servers cannot tell callers apart; use mTLS to enforce its intentions", e.resp.Service)
	default:
		out.Enforcement = fmt.Sprintf("plaintext, and no intention names %q: every caller is allowed", e.resp.Service)
	}
}

// explainClientSync tells, per resource explained, whether the client's
// streams accepted what is served now.
func (e *explanation) explainClientSync() {
	e.finishSecurity()
	if len(e.streams) == 0 {
		return
	}
	now := e.s.now()
	subscribedLDS := false
	for _, r := range e.resp.Resources {
		st, ts, ok := e.typeFor(r.TypeUrl, r.Name)
		if !ok {
			continue
		}
		if r.TypeUrl == resource.ListenerType {
			subscribedLDS = true
		}
		if !r.Served {
			r.ClientReason = "the client asks for it and waits: gRPC reports it as not existing after 15s"
			continue
		}
		state, reason, _ := e.s.classify(st.Profile, ts, now, DefaultStaleAfter, false)
		sent, wasSent := ts.SentContent[r.Name]
		r.SentContentVersion = sent
		if state == statusv1.SyncState_SYNC_STATE_SYNCED && wasSent && sent != r.ContentVersion {
			state = statusv1.SyncState_SYNC_STATE_STALE
			reason = fmt.Sprintf("the client was last sent content %s, the server serves %s now", orNone(sent), orNone(r.ContentVersion))
		}
		r.ClientState, r.ClientReason = state, reason
		switch state {
		case statusv1.SyncState_SYNC_STATE_NACKED:
			e.problem("the client rejected (NACKed) %s %s: %s; it keeps the version it had before, if any", shortType(r.TypeUrl), r.Name, ts.LastNACKError)
		case statusv1.SyncState_SYNC_STATE_STALE:
			e.problem("the client has not applied the current %s %s: %s", shortType(r.TypeUrl), r.Name, reason)
		}
	}
	if !subscribedLDS {
		var asked []string
		for _, st := range e.streams {
			for _, ts := range st.Types {
				if ts.TypeURL == resource.ListenerType {
					asked = append(asked, ts.ResourceNames...)
				}
			}
		}
		slices.Sort(asked)
		msg := fmt.Sprintf("client %q does not ask for Listener %s: it has not dialled xds:///%s", e.resp.NodeId, e.resp.Listener, e.resp.Listener)
		if len(asked) > 0 {
			msg += fmt.Sprintf(" (it asks for %s)", strings.Join(slices.Compact(asked), ", "))
		}
		e.problem("%s", msg)
	}
}

// typeFor finds the stream and type status of the client that subscribe to
// a resource.
func (e *explanation) typeFor(typeURL, name string) (xdsserver.StreamStatus, xdsserver.TypeStatus, bool) {
	for _, st := range e.streams {
		for _, ts := range st.Types {
			if ts.TypeURL == typeURL && slices.Contains(ts.ResourceNames, name) {
				return st, ts, true
			}
		}
	}
	return xdsserver.StreamStatus{}, xdsserver.TypeStatus{}, false
}

func orNone(v string) string {
	if v == "" {
		return "(none)"
	}
	return v
}

// shortType is "Listener", "RouteConfiguration", "Cluster" or
// "ClusterLoadAssignment".
func shortType(typeURL string) string {
	return typeURL[strings.LastIndexByte(typeURL, '.')+1:]
}

// nearMatches returns the names closest to name: within an edit distance
// of a third of its length (at least 2), or containing it, or contained in
// it; at most 5, closest first.
func nearMatches(name string, names []string) []string {
	type cand struct {
		name string
		d    int
	}
	var cands []cand
	limit := max(2, len(name)/3)
	for _, n := range names {
		d := editDistance(name, n)
		if d <= limit || (len(name) >= 3 && strings.Contains(n, name)) || (len(n) >= 3 && strings.Contains(name, n)) {
			cands = append(cands, cand{n, d})
		}
	}
	slices.SortFunc(cands, func(a, b cand) int { return cmp.Or(cmp.Compare(a.d, b.d), cmp.Compare(a.name, b.name)) })
	var out []string
	for i, c := range cands {
		if i == 5 {
			break
		}
		out = append(out, c.name)
	}
	return out
}

// editDistance is the Levenshtein distance of a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
