// Package translate turns an immutable catalog snapshot into the xDS resources
// that grpc-go's xDS client consumes: for every service a client Listener, a
// RouteConfiguration, an EDS Cluster and a ClusterLoadAssignment; with a
// Security input, mTLS on Clusters and a server Listener (with RBAC from
// intentions) for every instance. A server Listener whose only rule is "any
// workload of the trust domain" is authorized by its TLS handshake instead,
// without RBAC, for clients whose bootstrap trusts only their own trust
// domain (see Security).
//
// Translation is a pure function: no I/O, no clock, no logging, no globals.
// Every rule about what gRPC accepts lives here, so that the control plane
// never emits a resource a client would NACK. What cannot be translated is
// left out and reported as a Skip, for the caller to log (Skip.LogAttrs);
// what is translated otherwise than asked is reported as a warning Skip.
//
// Translate is the pure function, which the golden tests use; a Translator
// gives exactly the same results, re-translating only the services whose
// inputs changed and handing back the same resource values for the others,
// so that the xDS cache does no work for them either.
//
// This package must not import Consul's API, the xDS cache or the server.
package translate

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/trellis-mesh/trellis/internal/clients"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/names"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// defaultRetryBase is gRPC's default retry backoff base interval.
const defaultRetryBase = 25 * time.Millisecond

// RouterFilterName is the name of the terminal HTTP filter in every
// HttpConnectionManager Trellis emits.
const RouterFilterName = "envoy.filters.http.router"

// Options tune translation. The zero value is the documented default.
type Options struct {
	// ExcludeWarning leaves instances whose checks are warning out of the
	// endpoint lists. Default: false (warning instances receive traffic, with
	// their Warning weight).
	ExcludeWarning bool
	// DisablePanicRouting turns off panic routing: by default, when no
	// instance of a service is healthy, calls are spread over every
	// instance not in maintenance, as Envoy does below its healthy panic
	// threshold, rather than over none. Consul marks every instance critical
	// in situations that are not outages (TTL checks after an agent
	// restart, a partitioned agent); failing every call then is worse than
	// trying the instances. Default: false (panic routing on).
	DisablePanicRouting bool
	// Client is the client profile (package clients) the translation is
	// for: what its clients do not honour is substituted or withheld and
	// reported as a Skip with the profile's name (see clients.go).
	// Default: nil, every feature Trellis emits, as grpc-go honours them.
	Client *clients.Profile
	// DisableLoadReporting leaves lrs_server out of every Cluster. By
	// default each EDS Cluster names the control plane itself (a self
	// ConfigSource) as its load reporting server, so that clients report
	// the calls they make over LRS on their ADS connection: grpc-go,
	// grpc-js-xds 1.14 and C-core 1.51 all accept a self lrs_server (and
	// NACK any other kind). Default: false (load reporting on).
	DisableLoadReporting bool
}

// Input is everything a translation reads.
type Input struct {
	// Catalog is the service catalog. Required.
	Catalog *model.Snapshot
	// Policies are the validated service policies, by destination service.
	// Optional.
	Policies map[string]*policyv1.ServicePolicy
	// Security configures mTLS, authorization from intentions and server
	// Listeners (see Security). Optional: nil serves every service in
	// plaintext, without server Listeners.
	Security *Security
}

// Resources are the translated xDS resources, by name.
type Resources struct {
	Listeners map[string]*listenerv3.Listener
	Routes    map[string]*routev3.RouteConfiguration
	Clusters  map[string]*clusterv3.Cluster
	Endpoints map[string]*endpointv3.ClusterLoadAssignment

	// byType is the ByTypeURL view, kept up to date by a Translator; nil
	// when ByTypeURL must build it.
	byType map[string]map[string]types.Resource
}

// ByTypeURL returns the resources keyed by xDS type URL, then by name: the
// shape the xDS cache consumes. The maps must not be modified: resources
// from a Translator share them with its later results.
func (r *Resources) ByTypeURL() map[string]map[string]types.Resource {
	if r.byType != nil {
		return r.byType
	}
	out := map[string]map[string]types.Resource{
		resource.ListenerType: make(map[string]types.Resource, len(r.Listeners)),
		resource.RouteType:    make(map[string]types.Resource, len(r.Routes)),
		resource.ClusterType:  make(map[string]types.Resource, len(r.Clusters)),
		resource.EndpointType: make(map[string]types.Resource, len(r.Endpoints)),
	}
	for name, l := range r.Listeners {
		out[resource.ListenerType][name] = l
	}
	for name, rc := range r.Routes {
		out[resource.RouteType][name] = rc
	}
	for name, c := range r.Clusters {
		out[resource.ClusterType][name] = c
	}
	for name, cla := range r.Endpoints {
		out[resource.EndpointType][name] = cla
	}
	return out
}

// Skip records something left out of the translation, or translated
// otherwise than asked, and why (see skip.go for its kinds and log form).
type Skip struct {
	// Kind tells something left out from a warning. Default: SkipLeftOut.
	Kind SkipKind
	// Service is the service concerned.
	Service string
	// Instance is the instance key (node/id) when one instance was left out.
	Instance string
	// Route names the part of the service concerned when only that part
	// was left out or overridden: a policy route, an intention, an
	// instance's meta, a server Listener.
	Route string
	// Reason says what was wrong and what is accepted.
	Reason string
	// Profile is the client profile (Options.Client) the skip concerns
	// alone, "" when it concerns every client.
	Profile string
}

// String formats the skip for a log line.
func (s Skip) String() string {
	if s.Profile != "" {
		c := s
		c.Profile = ""
		return "[" + s.Profile + " clients] " + c.String()
	}
	switch {
	case s.Instance != "":
		return fmt.Sprintf("service %q instance %q skipped: %s", s.Service, s.Instance, s.Reason)
	case s.Route != "":
		return fmt.Sprintf("service %q %s: %s", s.Service, s.Route, s.Reason)
	default:
		return fmt.Sprintf("service %q skipped: %s", s.Service, s.Reason)
	}
}

// Result is the outcome of one translation.
type Result struct {
	Resources Resources
	// Panicking lists, sorted, the services (and subset clusters) with no
	// healthy instance whose calls are spread over all their instances.
	Panicking []string
	// Skipped lists, in a deterministic order, the services and instances
	// that were left out.
	Skipped []Skip
	// Delta is what changed in Resources since the previous call of the
	// Translator that made the Result; nil from Translate, and from a
	// Translator's first call (or the first after a nil catalog), whose
	// Resources are to be taken whole.
	Delta *Delta
}

// Delta is what one call of a Translator changed in its resources.
// Applying it to the previous Resources gives the new ones.
type Delta struct {
	// Updated holds the resources added or changed, by type URL and name.
	Updated map[string]map[string]types.Resource
	// Deleted lists the names of the resources removed, sorted, by type
	// URL.
	Deleted map[string][]string
}

// Empty reports whether the call changed nothing.
func (d *Delta) Empty() bool {
	for _, m := range d.Updated {
		if len(m) > 0 {
			return false
		}
	}
	for _, names := range d.Deleted {
		if len(names) > 0 {
			return false
		}
	}
	return true
}

// Translate converts in into xDS resources. It never fails as a whole: a
// service that cannot be translated safely is left out and reported in
// Result.Skipped, and the rest is translated.
func Translate(in Input, opts Options) *Result {
	res := &Result{Resources: Resources{
		Listeners: map[string]*listenerv3.Listener{},
		Routes:    map[string]*routev3.RouteConfiguration{},
		Clusters:  map[string]*clusterv3.Cluster{},
		Endpoints: map[string]*endpointv3.ClusterLoadAssignment{},
	}}
	if in.Catalog == nil {
		return res
	}
	clusters := newClusterIndex(in)
	var datacenters []string
	if in.Security != nil {
		datacenters = snapshotDatacenters(in.Catalog)
	}
	serverOwners := map[string]string{}
	for _, name := range in.Catalog.ServiceNames() {
		t := translateEntry(name, in.Catalog.Services[name], in.Policies[name], in.Security, datacenters, clusters, opts)
		res.Skipped = append(res.Skipped, t.pre...)
		if t.out != nil {
			res.Panicking = append(res.Panicking, t.out.panicking...)
			t.out.addTo(&res.Resources)
			res.Skipped = append(res.Skipped, addServerListeners(&res.Resources, name, t.out.servers, serverOwners)...)
		}
		res.Skipped = append(res.Skipped, t.post...)
	}
	res.Skipped = append(res.Skipped, catalogSkips(in)...)
	return res
}

// serviceTranslation is the translation of one service on its own, before
// it joins the others: which server Listener addresses it keeps depends on
// the other services (see addServerListeners).
type serviceTranslation struct {
	// pre are the skips reported before the service's server Listeners.
	pre []Skip
	// out are the service's resources; nil when it is left out.
	out *serviceResources
	// post are the skips reported after its server Listeners.
	post []Skip
}

// translateEntry translates the service name of the catalog with its
// policy (nil when none) and security (nil when none); datacenters are the
// catalog's (see snapshotDatacenters), clusters the clusters of the whole
// translation.
func translateEntry(name string, svc *model.Service, pol *policyv1.ServicePolicy, security *Security, datacenters []string, clusters clusterIndex, opts Options) serviceTranslation {
	var t serviceTranslation
	if reason := names.CheckService(name); reason != "" {
		t.pre = append(t.pre, Skip{Service: name, Reason: reason})
		return t
	}
	sec, secSkips, reason := security.forService(svc, datacenters)
	t.pre = append(t.pre, secSkips...)
	if reason != "" {
		t.pre = append(t.pre, Skip{Service: name, Reason: reason})
		return t
	}
	out, skips, err := translateService(svc, pol, clusters, opts, sec)
	if err == nil {
		err = out.validate()
	}
	if err != nil && pol != nil {
		// Never let a policy break a service: serve it without one.
		t.pre = append(t.pre, Skip{Service: name, Route: "policy", Reason: "policy not applied: " + err.Error()})
		out, skips, err = translateService(svc, nil, clusters, opts, sec)
		if err == nil {
			err = out.validate()
		}
	}
	if err != nil {
		t.pre = append(t.pre, Skip{Service: name, Reason: err.Error()})
		return t
	}
	t.pre = append(t.pre, skips...)
	t.out = out
	if sec != nil && !sec.mtls && sec.deniesSome() {
		t.post = append(t.post, Skip{Kind: SkipWarning, Service: name, Route: "intentions", Reason: unenforcedReason})
	}
	return t
}

// catalogSkips are the skips that concern the input as a whole, reported
// after every service's: intentions with conditions, and policies whose
// service is not in the catalog.
func catalogSkips(in Input) []Skip {
	var skips []Skip
	if in.Security != nil {
		skips = append(skips, reportConditions(in.Security, in.Catalog)...)
	}
	for _, name := range sortedKeys(in.Policies) {
		if _, ok := in.Catalog.Services[name]; !ok {
			skips = append(skips, Skip{Kind: SkipWarning, Service: name, Route: "policy", Reason: "a policy exists but the service is not in the catalog; nothing to serve yet"})
		}
	}
	return skips
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// translateService builds the resources of one service, applying its policy
// when it has one and its security when sec is not nil.
func translateService(svc *model.Service, pol *policyv1.ServicePolicy, clusters clusterIndex, opts Options, sec *serviceSecurity) (*serviceResources, []Skip, error) {
	name := svc.Name
	cla, skips, panicking := serviceLoadAssignment(svc, name, pol.GetFailover(), opts)
	lis, err := clientListener(name, usesFault(pol))
	if err != nil {
		return nil, nil, err
	}
	out := &serviceResources{listener: lis, route: routeConfiguration(name)}
	if panicking {
		out.panicking = append(out.panicking, name)
	}
	if pol != nil {
		routes, routeSkips, err := policyRoutes(name, pol, clusters)
		if err != nil {
			return nil, nil, err
		}
		skips = append(skips, routeSkips...)
		out.route.VirtualHosts[0].Routes = routes
	}
	base := edsCluster(name, opts)
	if pol != nil {
		if err := applyClusterPolicy(base, pol); err != nil {
			return nil, nil, err
		}
	}
	out.clusters = append(out.clusters, base)
	out.clas = append(out.clas, cla)
	for _, subset := range pol.GetSubsets() {
		cname := SubsetClusterName(name, subset.GetName())
		c := edsCluster(cname, opts)
		if err := applyClusterPolicy(c, pol); err != nil {
			return nil, nil, err
		}
		// Problems with instances were reported for the whole service.
		subsetCLA, _, subsetPanicking := serviceLoadAssignment(subsetInstances(svc, subset), cname, pol.GetFailover(), opts)
		if subsetPanicking {
			out.panicking = append(out.panicking, cname)
		}
		out.clusters = append(out.clusters, c)
		out.clas = append(out.clas, subsetCLA)
	}
	secSkips, err := sec.apply(out, svc, opts.Client)
	if err != nil {
		return nil, nil, err
	}
	skips = append(skips, secSkips...)
	return out, append(skips, adaptForClient(out, name, opts.Client)...), nil
}

// serviceResources are the resources of one service: a listener and a
// route configuration, and a cluster with its load assignment for the
// service and for each subset.
type serviceResources struct {
	listener *listenerv3.Listener
	route    *routev3.RouteConfiguration
	clusters []*clusterv3.Cluster
	clas     []*endpointv3.ClusterLoadAssignment
	// panicking names the clusters routed in panic mode.
	panicking []string
	// servers are the server Listeners of the service's instances.
	servers []*listenerv3.Listener
}

func (s *serviceResources) addTo(r *Resources) {
	r.Listeners[s.listener.GetName()] = s.listener
	r.Routes[s.route.GetName()] = s.route
	for _, c := range s.clusters {
		r.Clusters[c.GetName()] = c
	}
	for _, cla := range s.clas {
		r.Endpoints[cla.GetClusterName()] = cla
	}
}

// validate runs the envoy protos' own validation on every resource: a last
// guard so that a translation bug drops one service instead of making
// clients NACK.
func (s *serviceResources) validate() error {
	all := []interface{ ValidateAll() error }{s.listener, s.route}
	for _, c := range s.clusters {
		all = append(all, c)
	}
	for _, cla := range s.clas {
		all = append(all, cla)
	}
	for _, l := range s.servers {
		all = append(all, l)
	}
	for _, r := range all {
		if err := r.ValidateAll(); err != nil {
			return fmt.Errorf("generated resource failed validation: %w", err)
		}
	}
	return nil
}

// clientListener is the API listener gRPC resolves xds:///name to. It routes
// through RDS over ADS to the route configuration of the same name.
func clientListener(name string, withFault bool) (*listenerv3.Listener, error) {
	router, err := routerFilter()
	if err != nil {
		return nil, err
	}
	var filters []*hcmv3.HttpFilter
	if withFault {
		fault, err := faultFilter()
		if err != nil {
			return nil, fmt.Errorf("translate: listener %q: %w", name, err)
		}
		filters = append(filters, &hcmv3.HttpFilter{
			Name:       FaultFilterName,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: fault},
		})
	}
	filters = append(filters, router)
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsConfigSource(),
			RouteConfigName: name,
		}},
		HttpFilters: filters,
	})
	if err != nil {
		return nil, fmt.Errorf("translate: listener %q: %w", name, err)
	}
	return &listenerv3.Listener{
		Name:        name,
		ApiListener: &listenerv3.ApiListener{ApiListener: hcm},
	}, nil
}

func routerFilter() (*hcmv3.HttpFilter, error) {
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		return nil, fmt.Errorf("translate: router filter: %w", err)
	}
	return &hcmv3.HttpFilter{
		Name:       RouterFilterName,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router},
	}, nil
}

// routeConfiguration has one virtual host matching the authorities a client
// of the service sends: the bare name and name:port, for any port.
func routeConfiguration(name string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    name,
			Domains: domainsFor(name),
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: ""}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name},
				}},
			}},
		}},
	}
}

// domainsFor lists the virtual host domains for a service. gRPC matches them
// case-sensitively against the channel authority, so a lower-case variant is
// added for names with upper-case letters.
func domainsFor(name string) []string {
	domains := []string{name, name + ":*"}
	if lower := strings.ToLower(name); lower != name {
		domains = append(domains, lower, lower+":*")
	}
	return domains
}

// edsCluster is the EDS Cluster of a service or subset, reporting its load
// to the control plane unless opts.DisableLoadReporting.
func edsCluster(name string, opts Options) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{
			EdsConfig:   adsConfigSource(),
			ServiceName: name,
		},
		LbPolicy: clusterv3.Cluster_ROUND_ROBIN,
	}
	if !opts.DisableLoadReporting {
		c.LrsServer = selfConfigSource()
	}
	return c
}

// selfConfigSource names the management server the resource came from:
// the only lrs_server gRPC clients accept.
func selfConfigSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Self{Self: &corev3.SelfConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

func adsConfigSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

// localityKey groups endpoints; it sorts by region then zone.
type localityKey struct{ region, zone string }

// loadAssignment lists the instances that may receive calls, grouped by
// locality. Instances that are unhealthy, weightless, or whose address gRPC
// cannot dial are left out; duplicates of an address already listed too
// (gRPC NACKs duplicate addresses).
func loadAssignment(svc *model.Service, clusterName string, opts Options) (*endpointv3.ClusterLoadAssignment, []Skip, bool) {
	cla, skips := buildLoadAssignment(svc, clusterName, func(inst model.Instance) (uint32, bool) {
		return endpointWeight(inst, opts)
	})
	if len(cla.Endpoints) > 0 || opts.DisablePanicRouting {
		return cla, skips, false
	}
	panicCLA, panicSkips := buildLoadAssignment(svc, clusterName, panicWeight)
	if len(panicCLA.Endpoints) == 0 {
		return cla, skips, false
	}
	return panicCLA, panicSkips, true
}

// panicWeight admits every instance not in maintenance, with its passing
// weight (at least 1).
func panicWeight(inst model.Instance) (uint32, bool) {
	if inst.Health == model.HealthMaintenance {
		return 0, false
	}
	return uint32(min(max(inst.Weights.Passing, 1), 1<<20)), true
}

func buildLoadAssignment(svc *model.Service, clusterName string, weightOf func(model.Instance) (uint32, bool)) (*endpointv3.ClusterLoadAssignment, []Skip) {
	var skips []Skip
	byLocality := map[localityKey][]*endpointv3.LbEndpoint{}
	localityWeight := map[localityKey]uint32{}
	seen := map[string]string{} // host:port -> instance key
	for _, inst := range svc.Instances {
		weight, ok := weightOf(inst)
		if !ok {
			continue // unhealthy or weight 0: not an error, just not a target
		}
		addr, reason := endpointAddress(inst)
		if reason != "" {
			skips = append(skips, Skip{Service: svc.Name, Instance: inst.Key(), Reason: reason})
			continue
		}
		hostPort := netip.AddrPortFrom(addr, uint16(inst.Port)).String()
		if first, dup := seen[hostPort]; dup {
			skips = append(skips, Skip{Service: svc.Name, Instance: inst.Key(),
				Reason: fmt.Sprintf("address %s is already used by instance %q; each address may appear once", hostPort, first)})
			continue
		}
		seen[hostPort] = inst.Key()
		key := localityKey{region: inst.Datacenter, zone: inst.Zone}
		byLocality[key] = append(byLocality[key], &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: socketAddress(addr.String(), inst.Port),
			}},
			HealthStatus:        corev3.HealthStatus_HEALTHY,
			LoadBalancingWeight: wrapperspb.UInt32(weight),
		})
		localityWeight[key] += weight
	}
	keys := make([]localityKey, 0, len(byLocality))
	for k := range byLocality {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(a, b int) bool {
		if keys[a].region != keys[b].region {
			return keys[a].region < keys[b].region
		}
		return keys[a].zone < keys[b].zone
	})
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: clusterName}
	for _, k := range keys {
		cla.Endpoints = append(cla.Endpoints, &endpointv3.LocalityLbEndpoints{
			Locality:            &corev3.Locality{Region: k.region, Zone: k.zone},
			LbEndpoints:         byLocality[k],
			LoadBalancingWeight: wrapperspb.UInt32(localityWeight[k]),
			Priority:            0,
		})
	}
	return cla, skips
}

// endpointWeight is the weight an instance receives, and whether it receives
// calls at all.
func endpointWeight(inst model.Instance, opts Options) (uint32, bool) {
	var w int
	switch inst.Health {
	case model.HealthPassing:
		w = inst.Weights.Passing
	case model.HealthWarning:
		if opts.ExcludeWarning {
			return 0, false
		}
		w = inst.Weights.Warning
	default:
		return 0, false
	}
	if w <= 0 {
		return 0, false
	}
	return uint32(min(w, 1<<20)), true
}

// endpointAddress checks that the instance can be dialled: an IP address
// (IPv4 or IPv6, without zone) and a port in 1..65535.
func endpointAddress(inst model.Instance) (netip.Addr, string) {
	if inst.Port <= 0 || inst.Port > 65535 {
		return netip.Addr{}, "port " + strconv.Itoa(inst.Port) + " is not dialable; accepted: 1-65535"
	}
	if inst.Address == "" {
		return netip.Addr{}, "no service or node address"
	}
	addr, err := netip.ParseAddr(inst.Address)
	if err != nil || addr.Zone() != "" {
		return netip.Addr{}, fmt.Sprintf("address %q is not an IP address; accepted: an IPv4 or IPv6 address without zone", inst.Address)
	}
	return addr.Unmap(), ""
}

func socketAddress(ip string, port int) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol:      corev3.SocketAddress_TCP,
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}
