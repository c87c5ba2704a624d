package translate

import (
	"fmt"
	"sort"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	commonfaultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	cswrrv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/client_side_weighted_round_robin/v3"
	pickfirstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/pick_first/v3"
	wrrlocalityv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/wrr_locality/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/names"
	"github.com/trellis-mesh/trellis/internal/policy"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// FaultFilterName is the name of the fault injection HTTP filter; routes
// carry their fault configuration as a per-filter override under this name.
const FaultFilterName = "envoy.filters.http.fault"

// SubsetClusterName names the Cluster (and its EDS service) holding the
// instances of one subset of a service. Service names cannot contain '/', so
// it never collides with a service's own cluster.
func SubsetClusterName(service, subset string) string { return service + "/" + subset }

// clusterIndex knows which clusters a translation produces, so that routes
// never point at a cluster that does not exist: the cluster of every
// service of the catalog with a valid name, and of every subset of its
// policy.
type clusterIndex struct {
	catalog  *model.Snapshot
	policies map[string]*policyv1.ServicePolicy
}

func newClusterIndex(in Input) clusterIndex {
	return clusterIndex{catalog: in.Catalog, policies: in.Policies}
}

// has reports whether the translation produces the cluster name. Service
// names cannot contain '/', so a name with one is a subset cluster (see
// SubsetClusterName).
func (idx clusterIndex) has(name string) bool {
	service, subset, isSubset := strings.Cut(name, "/")
	if _, ok := idx.catalog.Services[service]; !ok || !names.ValidService(service) {
		return false
	}
	if !isSubset {
		return true
	}
	for _, s := range idx.policies[service].GetSubsets() {
		if s.GetName() == subset {
			return true
		}
	}
	return false
}

// usesFault reports whether any route of the policy injects faults, in which
// case the service's listener carries the fault filter.
func usesFault(p *policyv1.ServicePolicy) bool {
	if p.GetDefaults().GetFault() != nil {
		return true
	}
	for _, r := range p.GetRoutes() {
		if r.GetSettings().GetFault() != nil {
			return true
		}
	}
	return false
}

func faultFilter() (*anypb.Any, error) {
	return anypb.New(&faultv3.HTTPFault{})
}

// policyRoutes turns a policy's routes into xDS routes, followed by a
// catch-all route to the whole service carrying the defaults.
func policyRoutes(service string, p *policyv1.ServicePolicy, clusters clusterIndex) ([]*routev3.Route, []Skip, error) {
	var (
		routes []*routev3.Route
		skips  []Skip
	)
	for i, r := range p.GetRoutes() {
		label := fmt.Sprintf("policy routes[%d]", i)
		if r.GetName() != "" {
			label += fmt.Sprintf(" (%s)", r.GetName())
		}
		action, dropped, err := routeAction(service, r, clusters)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", label, err)
		}
		if action == nil {
			skips = append(skips, Skip{Service: service, Route: label, Reason: fmt.Sprintf(
				"route left out: no destination exists (missing clusters %s: unknown service or subset)", strings.Join(dropped, ", "))})
			continue
		}
		for _, d := range dropped {
			skips = append(skips, Skip{Service: service, Route: label, Reason: fmt.Sprintf(
				"destination %q left out of the split: unknown service or subset", d)})
		}
		settings := mergeSettings(p.GetDefaults(), r.GetSettings())
		route := &routev3.Route{
			Name:   r.GetName(),
			Match:  routeMatch(r.GetMatch()),
			Action: &routev3.Route_Route{Route: action},
		}
		if err := applySettings(route, action, settings); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", label, err)
		}
		routes = append(routes, route)
	}
	def := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: service}}
	catchAll := &routev3.Route{
		Name:   "default",
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: ""}},
		Action: &routev3.Route_Route{Route: def},
	}
	if err := applySettings(catchAll, def, p.GetDefaults()); err != nil {
		return nil, nil, fmt.Errorf("defaults: %w", err)
	}
	return append(routes, catchAll), skips, nil
}

// routeAction resolves a route's destination or split into clusters. A
// destination whose cluster does not exist is dropped and returned; when
// nothing is left the action is nil.
func routeAction(service string, r *policyv1.Route, clusters clusterIndex) (*routev3.RouteAction, []string, error) {
	switch a := r.GetAction().(type) {
	case *policyv1.Route_Destination:
		name := destinationCluster(service, a.Destination)
		if !clusters.has(name) {
			return nil, []string{name}, nil
		}
		return &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name}}, nil, nil
	case *policyv1.Route_Split:
		var (
			weighted []*routev3.WeightedCluster_ClusterWeight
			dropped  []string
			total    uint64
		)
		for _, d := range a.Split.GetDestinations() {
			name := destinationCluster(service, d.GetDestination())
			if !clusters.has(name) {
				dropped = append(dropped, name)
				continue
			}
			if d.GetWeight() == 0 {
				continue // gRPC skips weight-0 entries; leave them out
			}
			total += uint64(d.GetWeight())
			weighted = append(weighted, &routev3.WeightedCluster_ClusterWeight{
				Name:   name,
				Weight: wrapperspb.UInt32(d.GetWeight()),
			})
		}
		if total == 0 || total > 1<<32-1 {
			return nil, dropped, nil
		}
		// total_weight is always the sum: with it unset, C-core requires
		// the weights to add up to 100 and NACKs the RouteConfiguration
		// otherwise, while policies allow any weights (e.g. 4:1).
		return &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{
			WeightedClusters: &routev3.WeightedCluster{Clusters: weighted, TotalWeight: wrapperspb.UInt32(uint32(total))},
		}}, dropped, nil
	case nil:
		return &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: service}}, nil, nil
	default:
		return nil, nil, fmt.Errorf("unsupported action %T", a)
	}
}

func destinationCluster(service string, d *policyv1.Destination) string {
	svc := d.GetService()
	if svc == "" {
		svc = service
	}
	if d.GetSubset() != "" {
		return SubsetClusterName(svc, d.GetSubset())
	}
	return svc
}

// mergeSettings applies a route's settings over the policy defaults, field
// by field.
func mergeSettings(defaults, own *policyv1.RouteSettings) *policyv1.RouteSettings {
	out := &policyv1.RouteSettings{}
	if defaults != nil {
		out = proto.CloneOf(defaults)
	}
	if own.GetTimeout() != nil {
		out.Timeout = own.GetTimeout()
	}
	if own.GetRetry() != nil {
		out.Retry = own.GetRetry()
	}
	if own.GetFault() != nil {
		out.Fault = own.GetFault()
	}
	if len(own.GetHashPolicy()) > 0 {
		out.HashPolicy = own.GetHashPolicy()
	}
	return out
}

func routeMatch(m *policyv1.RouteMatch) *routev3.RouteMatch {
	out := &routev3.RouteMatch{}
	switch {
	case m.GetMethodExact() != "":
		out.PathSpecifier = &routev3.RouteMatch_Path{Path: m.GetMethodExact()}
	case m.GetServicePrefix() != "":
		out.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: m.GetServicePrefix()}
	case m.GetMethodRegex() != "":
		out.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: m.GetMethodRegex()}}
	default:
		out.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: ""}
	}
	if m.GetIgnoreCase() {
		out.CaseSensitive = wrapperspb.Bool(false)
	}
	for _, h := range m.GetHeaders() {
		out.Headers = append(out.Headers, headerMatcher(h))
	}
	if m != nil && m.Percent != nil {
		out.RuntimeFraction = &corev3.RuntimeFractionalPercent{
			DefaultValue: percent(m.GetPercent()),
		}
	}
	return out
}

// headerMatcher uses the older HeaderMatcher oneof fields (exact_match,
// prefix_match, ...) rather than string_match: every supported gRPC
// implementation parses them, while C-core before 1.56 rejects string_match
// (gRFC A63) with the whole RouteConfiguration. They express every header
// match a policy can state.
func headerMatcher(h *policyv1.HeaderMatch) *routev3.HeaderMatcher {
	out := &routev3.HeaderMatcher{Name: h.GetName(), InvertMatch: h.GetInvert()}
	switch m := h.GetMatch().(type) {
	case *policyv1.HeaderMatch_Exact:
		out.HeaderMatchSpecifier = &routev3.HeaderMatcher_ExactMatch{ExactMatch: m.Exact}
	case *policyv1.HeaderMatch_Prefix:
		out.HeaderMatchSpecifier = &routev3.HeaderMatcher_PrefixMatch{PrefixMatch: m.Prefix}
	case *policyv1.HeaderMatch_Suffix:
		out.HeaderMatchSpecifier = &routev3.HeaderMatcher_SuffixMatch{SuffixMatch: m.Suffix}
	case *policyv1.HeaderMatch_Regex:
		out.HeaderMatchSpecifier = &routev3.HeaderMatcher_SafeRegexMatch{SafeRegexMatch: &matcherv3.RegexMatcher{Regex: m.Regex}}
	case *policyv1.HeaderMatch_Present:
		out.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: m.Present}
	}
	return out
}

func percent(p uint32) *typev3.FractionalPercent {
	return &typev3.FractionalPercent{Numerator: p, Denominator: typev3.FractionalPercent_HUNDRED}
}

// applySettings sets timeout, retries, hash policy and fault injection on a
// route whose action is action.
func applySettings(route *routev3.Route, action *routev3.RouteAction, s *policyv1.RouteSettings) error {
	if s == nil {
		return nil
	}
	if t := s.GetTimeout(); t != nil {
		action.MaxStreamDuration = &routev3.RouteAction_MaxStreamDuration{MaxStreamDuration: t}
	}
	if r := s.GetRetry(); r != nil {
		action.RetryPolicy = retryPolicy(r)
	}
	for _, h := range s.GetHashPolicy() {
		action.HashPolicy = append(action.HashPolicy, hashPolicy(h))
	}
	if f := s.GetFault(); f != nil {
		cfg, err := anypb.New(httpFault(f))
		if err != nil {
			return fmt.Errorf("fault: %w", err)
		}
		route.TypedPerFilterConfig = map[string]*anypb.Any{FaultFilterName: cfg}
	}
	return nil
}

// retryOnNames maps the gRPC codes xDS clients retry on to their xDS
// retry_on names.
var retryOnNames = map[codes.Code]string{
	codes.Canceled:          "cancelled",
	codes.DeadlineExceeded:  "deadline-exceeded",
	codes.Internal:          "internal",
	codes.ResourceExhausted: "resource-exhausted",
	codes.Unavailable:       "unavailable",
}

// retryOnName is the xDS name of a status code name in any accepted
// spelling, or "" for codes gRPC does not retry on.
func retryOnName(name string) string {
	c, ok := policy.ParseCode(name)
	if !ok {
		return ""
	}
	return retryOnNames[c]
}

func retryPolicy(r *policyv1.RetryPolicy) *routev3.RetryPolicy {
	var on []string
	seen := map[string]bool{}
	for _, c := range r.GetRetryOn() {
		if n := retryOnName(c); n != "" && !seen[n] {
			seen[n] = true
			on = append(on, n)
		}
	}
	sort.Strings(on)
	out := &routev3.RetryPolicy{RetryOn: strings.Join(on, ",")}
	if r.GetNumRetries() > 0 {
		out.NumRetries = wrapperspb.UInt32(r.GetNumRetries())
	}
	if r.GetBaseInterval() != nil || r.GetMaxInterval() != nil {
		base := r.GetBaseInterval()
		if base == nil {
			base = durationpb.New(defaultRetryBase)
		}
		out.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{BaseInterval: base, MaxInterval: r.GetMaxInterval()}
	}
	return out
}

func hashPolicy(h *policyv1.HashPolicy) *routev3.RouteAction_HashPolicy {
	out := &routev3.RouteAction_HashPolicy{Terminal: h.GetTerminal()}
	if h.GetChannelId() {
		out.PolicySpecifier = &routev3.RouteAction_HashPolicy_FilterState_{
			FilterState: &routev3.RouteAction_HashPolicy_FilterState{Key: "io.grpc.channel_id"},
		}
	} else {
		out.PolicySpecifier = &routev3.RouteAction_HashPolicy_Header_{
			Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: h.GetHeader()},
		}
	}
	return out
}

func httpFault(f *policyv1.FaultInjection) *faultv3.HTTPFault {
	out := &faultv3.HTTPFault{}
	if d := f.GetDelay(); d != nil {
		out.Delay = &commonfaultv3.FaultDelay{
			FaultDelaySecifier: &commonfaultv3.FaultDelay_FixedDelay{FixedDelay: d.GetFixedDelay()},
			Percentage:         percent(d.GetPercent()),
		}
	}
	if a := f.GetAbort(); a != nil {
		out.Abort = &faultv3.FaultAbort{
			ErrorType:  &faultv3.FaultAbort_GrpcStatus{GrpcStatus: uint32(grpcCode(a.GetCode()))},
			Percentage: percent(a.GetPercent()),
		}
	}
	return out
}

// grpcCode parses a status code name in any accepted spelling; unknown
// names map to UNKNOWN (validation refuses them before they get here).
func grpcCode(name string) codes.Code {
	c, ok := policy.ParseCode(name)
	if !ok {
		return codes.Unknown
	}
	return c
}

// applyClusterPolicy sets load balancing, circuit breaking and outlier
// detection on a cluster.
func applyClusterPolicy(c *clusterv3.Cluster, p *policyv1.ServicePolicy) error {
	if err := applyLoadBalancing(c, p.GetLoadBalancing()); err != nil {
		return err
	}
	if cb := p.GetCircuitBreaker(); cb != nil && cb.GetMaxRequests() > 0 {
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			Priority:    corev3.RoutingPriority_DEFAULT,
			MaxRequests: wrapperspb.UInt32(cb.GetMaxRequests()),
		}}}
	}
	if od := p.GetOutlierDetection(); od != nil {
		c.OutlierDetection = outlierDetection(od)
	}
	return nil
}

func applyLoadBalancing(c *clusterv3.Cluster, lb *policyv1.LoadBalancing) error {
	switch p := lb.GetPolicy().(type) {
	case nil, *policyv1.LoadBalancing_RoundRobin:
		c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
	case *policyv1.LoadBalancing_RingHash:
		c.LbPolicy = clusterv3.Cluster_RING_HASH
		cfg := &clusterv3.Cluster_RingHashLbConfig{HashFunction: clusterv3.Cluster_RingHashLbConfig_XX_HASH}
		if v := p.RingHash.GetMinimumRingSize(); v > 0 {
			cfg.MinimumRingSize = wrapperspb.UInt64(v)
		}
		if v := p.RingHash.GetMaximumRingSize(); v > 0 {
			cfg.MaximumRingSize = wrapperspb.UInt64(v)
		}
		c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: cfg}
	case *policyv1.LoadBalancing_LeastRequest:
		c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
		if n := p.LeastRequest.GetChoiceCount(); n > 0 {
			c.LbConfig = &clusterv3.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &clusterv3.Cluster_LeastRequestLbConfig{
				ChoiceCount: wrapperspb.UInt32(n),
			}}
		}
	case *policyv1.LoadBalancing_PickFirst:
		policy, err := typedPolicy(pickFirstPolicyName, &pickfirstv3.PickFirst{
			ShuffleAddressList: p.PickFirst.GetShuffleAddressList(),
		})
		if err != nil {
			return err
		}
		c.LbPolicy = 0
		c.LoadBalancingPolicy = &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{policy}}
	case *policyv1.LoadBalancing_WeightedRoundRobin:
		w := p.WeightedRoundRobin
		cswrr := &cswrrv3.ClientSideWeightedRoundRobin{
			OobReportingPeriod:     w.GetOobReportingPeriod(),
			WeightExpirationPeriod: w.GetWeightExpirationPeriod(),
			WeightUpdatePeriod:     w.GetWeightUpdatePeriod(),
		}
		if w.GetEnableOobLoadReport() {
			cswrr.EnableOobLoadReport = wrapperspb.Bool(true)
		}
		if w.GetErrorUtilizationPenalty() > 0 {
			cswrr.ErrorUtilizationPenalty = wrapperspb.Float(w.GetErrorUtilizationPenalty())
		}
		endpointPicking, err := typedPolicy("envoy.load_balancing_policies.client_side_weighted_round_robin", cswrr)
		if err != nil {
			return err
		}
		locality, err := typedPolicy(wrrLocalityPolicyName, &wrrlocalityv3.WrrLocality{
			EndpointPickingPolicy: &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{endpointPicking}},
		})
		if err != nil {
			return err
		}
		c.LbPolicy = 0
		c.LoadBalancingPolicy = &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{locality}}
	default:
		return fmt.Errorf("unsupported load balancing policy %T", p)
	}
	return nil
}

func typedPolicy(name string, cfg proto.Message) (*clusterv3.LoadBalancingPolicy_Policy, error) {
	a, err := anypb.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("load balancing policy %s: %w", name, err)
	}
	return &clusterv3.LoadBalancingPolicy_Policy{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: name, TypedConfig: a}}, nil
}

// outlierDetection maps the policy to the cluster field. gRPC enables
// success-rate ejection unless enforcing_success_rate is 0, so it is set to 0
// explicitly when the policy has no success-rate block.
func outlierDetection(od *policyv1.OutlierDetection) *clusterv3.OutlierDetection {
	out := &clusterv3.OutlierDetection{
		Interval:         od.GetInterval(),
		BaseEjectionTime: od.GetBaseEjectionTime(),
		MaxEjectionTime:  od.GetMaxEjectionTime(),
	}
	if od.MaxEjectionPercent != nil {
		out.MaxEjectionPercent = wrapperspb.UInt32(od.GetMaxEjectionPercent())
	}
	opt := func(v *uint32) *wrapperspb.UInt32Value {
		if v == nil {
			return nil
		}
		return wrapperspb.UInt32(*v)
	}
	if sr := od.GetSuccessRate(); sr != nil {
		out.SuccessRateStdevFactor = opt(sr.StdevFactor)
		out.EnforcingSuccessRate = opt(sr.EnforcementPercentage)
		out.SuccessRateMinimumHosts = opt(sr.MinimumHosts)
		out.SuccessRateRequestVolume = opt(sr.RequestVolume)
	} else {
		out.EnforcingSuccessRate = wrapperspb.UInt32(0)
	}
	if fp := od.GetFailurePercentage(); fp != nil {
		out.FailurePercentageThreshold = opt(fp.Threshold)
		out.EnforcingFailurePercentage = opt(fp.EnforcementPercentage)
		if fp.EnforcementPercentage == nil {
			out.EnforcingFailurePercentage = wrapperspb.UInt32(100)
		}
		out.FailurePercentageMinimumHosts = opt(fp.MinimumHosts)
		out.FailurePercentageRequestVolume = opt(fp.RequestVolume)
	}
	return out
}

// subsetInstances selects the instances of a service that belong to a
// subset: every listed tag, every listed meta key with its value, and a
// match of the filter expression (evaluated as Consul evaluates a
// service-resolver subset's Filter, see policy.CompileFilter). With
// only_passing, a warning instance counts as critical within the subset,
// so that it receives calls only when the server would send calls to
// critical instances (panic routing), as Consul's OnlyPassing treats it as
// unhealthy. A filter that does not compile (which a validated policy
// cannot have) selects no instance.
func subsetInstances(svc *model.Service, subset *policyv1.Subset) *model.Service {
	out := &model.Service{Name: SubsetClusterName(svc.Name, subset.GetName())}
	var filter *policy.Filter
	if expr := subset.GetFilter(); expr != "" {
		var err error
		if filter, err = policy.CompileFilter(expr); err != nil {
			return out
		}
	}
	for _, inst := range svc.Instances {
		if !hasTags(inst.Tags, subset.GetTags()) || !hasMeta(inst.Meta, subset.GetMeta()) {
			continue
		}
		if filter != nil && !filter.Match(svc.Name, inst) {
			continue
		}
		if subset.GetOnlyPassing() && inst.Health == model.HealthWarning {
			inst.Health = model.HealthCritical
		}
		out.Instances = append(out.Instances, inst)
	}
	return out
}

func hasTags(have, want []string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			if h == w {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func hasMeta(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}
