package consulconfig

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// Unsupported is something a config entry expresses that Trellis does not
// send to clients, because gRPC cannot honour it or Trellis does not
// translate it.
type Unsupported struct {
	// Service is the service whose chain holds the entry.
	Service string
	// Entry is the config entry, "service-router/web".
	Entry string
	// Field is the entry's field, in Consul's spelling:
	// "Routes[1].Match.HTTP.QueryParam".
	Field string
	// Reason says why it is not sent and what clients get instead.
	Reason string
}

// String is "entry: field: reason".
func (u Unsupported) String() string {
	if u.Field == "" {
		return u.Entry + ": " + u.Reason
	}
	return u.Entry + ": " + u.Field + ": " + u.Reason
}

// Converted is the policy one chain converts into, before it is checked
// against the other policies in effect (Merge).
type Converted struct {
	// Policy is the service's policy; nil when the chain asks for nothing
	// beyond Trellis's defaults.
	Policy *policyv1.ServicePolicy
	// origins say which entry and field each part of Policy comes from,
	// so that a part refused by validation is reported against it.
	routes  []origin
	lbFrom  origin
	foFrom  origin
	unsupp  []Unsupported
	service string
}

// origin is where a part of a converted policy comes from.
type origin struct{ entry, field string }

// Unsupported lists what the chain expresses that is not sent.
func (c *Converted) Unsupported() []Unsupported { return c.unsupp }

// consulDefaultConnectTimeout is what Consul's compiler sets on every
// resolver that does not choose one.
const consulDefaultConnectTimeout = 5 * time.Second

// retryConditions are Consul's RetryOn values that gRPC clients honour, and
// the status codes they stand for.
var retryConditions = map[string]string{
	"cancelled":          "CANCELLED",
	"deadline-exceeded":  "DEADLINE_EXCEEDED",
	"internal":           "INTERNAL",
	"resource-exhausted": "RESOURCE_EXHAUSTED",
	"unavailable":        "UNAVAILABLE",
}

// The gRPC path forms Trellis's policy model names directly.
var (
	methodExactPattern   = regexp.MustCompile(`^/(?:[A-Za-z_][A-Za-z0-9_]*\.)*[A-Za-z_][A-Za-z0-9_]*/[A-Za-z_][A-Za-z0-9_]*$`)
	servicePrefixPattern = regexp.MustCompile(`^/(?:[A-Za-z_][A-Za-z0-9_]*\.)*[A-Za-z_][A-Za-z0-9_]*/$`)
)

const maxRetries = 4 // as policy.Validate: gRPC caps a call at 5 attempts

// converter converts one chain.
type converter struct {
	chain *Chain
	svc   string
	out   *policyv1.ServicePolicy
	// subsets are the subsets the chain's targets define, by service.
	subsets map[string]map[string]*policyv1.Subset
	routes  []origin
	lbFrom  origin
	foFrom  origin
	unsupp  []Unsupported
	// reported de-duplicates reports about shared nodes.
	reported map[string]bool
}

func (c *converter) report(entry, field, format string, args ...any) {
	u := Unsupported{Service: c.svc, Entry: entry, Field: field, Reason: fmt.Sprintf(format, args...)}
	if c.reported[u.String()] {
		return
	}
	c.reported[u.String()] = true
	c.unsupp = append(c.unsupp, u)
}

// Convert turns the chains (by service) into one Converted per service
// that has a chain or whose subsets another chain uses. A resolver's
// subsets become subsets of its service's policy; every route, split and
// resolver is translated as far as gRPC honours it, the rest reported.
// Convert is pure and deterministic.
func Convert(chains map[string]*Chain) map[string]*Converted {
	subsets := map[string]map[string]*policyv1.Subset{}
	convs := map[string]*converter{}
	for _, name := range sortedKeys(chains) {
		ch := chains[name]
		if ch == nil {
			continue
		}
		c := &converter{chain: ch, svc: name, subsets: subsets, reported: map[string]bool{}}
		c.convert()
		convs[name] = c
	}
	out := map[string]*Converted{}
	for _, name := range sortedKeys(convs) {
		c := convs[name]
		p := c.out
		for _, s := range sortedKeys(subsets[name]) {
			if p == nil {
				p = &policyv1.ServicePolicy{Service: name}
			}
			p.Subsets = append(p.Subsets, subsets[name][s])
		}
		out[name] = &Converted{Policy: p, routes: c.routes, lbFrom: c.lbFrom, foFrom: c.foFrom, unsupp: c.unsupp, service: name}
	}
	// Subsets of services without a chain of their own (which Consul's
	// compiler only produces for a service with a resolver entry, so
	// this is a chain not read yet) wait for that chain.
	return out
}

// convertWith converts the chains and adds what the entries themselves
// set that is not sent (service-defaults fields), by service.
func convertWith(chains map[string]*Chain, entryUnsupported map[string][]Unsupported) map[string]*Converted {
	out := Convert(chains)
	for _, svc := range sortedKeys(entryUnsupported) {
		c := out[svc]
		if c == nil {
			c = &Converted{service: svc}
			out[svc] = c
		}
		c.unsupp = append(c.unsupp, entryUnsupported[svc]...)
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// entryOf names the config entry a node comes from.
func (c *converter) entryOf(n *Node) string {
	kind := "service-" + n.Type
	switch n.Type {
	case nodeResolver:
		if t := c.chain.Targets[n.Resolver.GetTarget()]; t != nil {
			return kind + "/" + t.Service
		}
	}
	return kind + "/" + nodeService(n.Name)
}

// nodeService is the service part of a node name ("web.default.default"
// or "web": Consul adds the namespace and partition).
func nodeService(name string) string {
	if s, ok := strings.CutSuffix(name, ".default.default"); ok {
		return s
	}
	return name
}

// GetTarget returns the resolver's target, "" for nil.
func (r *Resolver) GetTarget() string {
	if r == nil {
		return ""
	}
	return r.Target
}

func (c *converter) convert() {
	ch := c.chain
	if ch.Namespace != "" && ch.Namespace != "default" || ch.Partition != "" && ch.Partition != "default" {
		c.report("discovery-chain/"+c.svc, "", "chains of namespace %q, partition %q are not served: Trellis serves the default namespace and partition", ch.Namespace, ch.Partition)
		return
	}
	start := ch.Nodes[ch.StartNode]
	if start == nil {
		return
	}
	p := &policyv1.ServicePolicy{Service: c.svc}
	c.out = p
	switch start.Type {
	case nodeRouter:
		entry := c.entryOf(start)
		for i, r := range start.Routes {
			field := fmt.Sprintf("Routes[%d]", i)
			if i == len(start.Routes)-1 && isDefaultRoute(r) {
				// Consul's compiler ends every router with a catch-all
				// route to the service's own resolver.
				field = "(default route)"
			}
			route, ok := c.route(entry, field, r)
			if !ok {
				continue
			}
			p.Routes = append(p.Routes, route)
			c.routes = append(c.routes, origin{entry, field})
		}
	case nodeSplitter, nodeResolver:
		route := &policyv1.Route{}
		if !c.action(route, ch.StartNode, 1, c.entryOf(start), "") {
			c.out = nil
			return
		}
		if route.Action != nil || route.Settings != nil {
			p.Routes = append(p.Routes, route)
			c.routes = append(c.routes, origin{c.entryOf(start), ""})
		}
	}
	c.loadBalancer()
	c.failover()
	c.trimDefaultRoute()
	if len(p.Routes) == 0 && p.LoadBalancing == nil && p.Defaults == nil && p.Failover == nil {
		c.out = nil
	}
}

// trimDefaultRoute drops a last route that matches everything and asks for
// nothing: calls that match no route get exactly that.
func (c *converter) trimDefaultRoute() {
	p := c.out
	if n := len(p.Routes); n > 0 {
		r := p.Routes[n-1]
		if r.Match == nil && r.Action == nil && r.Settings == nil {
			p.Routes = p.Routes[:n-1]
			c.routes = c.routes[:n-1]
		}
	}
}

func isDefaultRoute(r *Route) bool {
	m := r.Definition.GetHTTP()
	return m == nil || m.PathPrefix == "/" && m.PathExact == "" && m.PathRegex == "" && len(m.Header) == 0 && len(m.QueryParam) == 0 && len(m.Methods) == 0
}

// GetHTTP returns the route's HTTP match, nil when none.
func (r *ServiceRoute) GetHTTP() *HTTPMatch {
	if r == nil || r.Match == nil {
		return nil
	}
	return r.Match.HTTP
}

// route converts one router route; false when it cannot be sent.
func (c *converter) route(entry, field string, r *Route) (*policyv1.Route, bool) {
	out := &policyv1.Route{}
	if m := r.Definition.GetHTTP(); m != nil {
		match, ok := c.match(entry, field+".Match.HTTP", m)
		if !ok {
			return nil, false
		}
		out.Match = match
	}
	var dest *RouteDestination
	if r.Definition != nil {
		dest = r.Definition.Destination
	}
	if dest != nil {
		out.Settings = c.destinationSettings(entry, field+".Destination", dest)
	}
	if !c.action(out, r.NextNode, 1, entry, field) {
		return nil, false
	}
	return out, true
}

func (c *converter) match(entry, field string, m *HTTPMatch) (*policyv1.RouteMatch, bool) {
	if len(m.QueryParam) > 0 {
		c.report(entry, field+".QueryParam", "gRPC calls have no query parameters (gRPC clients skip such routes): the route is not sent, calls go to the next route")
		return nil, false
	}
	if len(m.Methods) > 0 && !slices.ContainsFunc(m.Methods, func(s string) bool { return strings.EqualFold(s, "POST") }) {
		c.report(entry, field+".Methods", "every gRPC call is a POST, which %v leaves out: the route never matches and is not sent", m.Methods)
		return nil, false
	}
	out := &policyv1.RouteMatch{}
	switch {
	case m.PathExact != "":
		if methodExactPattern.MatchString(m.PathExact) {
			out.Method = &policyv1.RouteMatch_MethodExact{MethodExact: m.PathExact}
			out.IgnoreCase = m.CaseInsensitive
		} else {
			out.Method = &policyv1.RouteMatch_MethodRegex{MethodRegex: caseFlag(m.CaseInsensitive) + regexp.QuoteMeta(m.PathExact)}
		}
	case m.PathPrefix != "" && m.PathPrefix != "/":
		if servicePrefixPattern.MatchString(m.PathPrefix) {
			out.Method = &policyv1.RouteMatch_ServicePrefix{ServicePrefix: m.PathPrefix}
			out.IgnoreCase = m.CaseInsensitive
		} else {
			out.Method = &policyv1.RouteMatch_MethodRegex{MethodRegex: caseFlag(m.CaseInsensitive) + regexp.QuoteMeta(m.PathPrefix) + ".*"}
		}
	case m.PathRegex != "":
		out.Method = &policyv1.RouteMatch_MethodRegex{MethodRegex: m.PathRegex}
		if m.CaseInsensitive {
			c.report(entry, field+".CaseInsensitive", "has no effect on PathRegex (Envoy ignores it there too); the regex is matched as written, use (?i) in it")
		}
	}
	for i, h := range m.Header {
		hm := &policyv1.HeaderMatch{Name: strings.ToLower(h.Name), Invert: h.Invert}
		switch {
		case h.Present:
			hm.Match = &policyv1.HeaderMatch_Present{Present: true}
		case h.Exact != "":
			hm.Match = &policyv1.HeaderMatch_Exact{Exact: h.Exact}
		case h.Prefix != "":
			hm.Match = &policyv1.HeaderMatch_Prefix{Prefix: h.Prefix}
		case h.Suffix != "":
			hm.Match = &policyv1.HeaderMatch_Suffix{Suffix: h.Suffix}
		case h.Regex != "":
			hm.Match = &policyv1.HeaderMatch_Regex{Regex: h.Regex}
		default:
			c.report(entry, fmt.Sprintf("%s.Header[%d]", field, i), "no match operator set: the route is not sent")
			return nil, false
		}
		out.Headers = append(out.Headers, hm)
	}
	if out.Method == nil && len(out.Headers) == 0 {
		return nil, true
	}
	return out, true
}

func caseFlag(insensitive bool) string {
	if insensitive {
		return "(?i)"
	}
	return ""
}

// destinationSettings converts a route destination's timeouts and retries.
func (c *converter) destinationSettings(entry, field string, d *RouteDestination) *policyv1.RouteSettings {
	s := &policyv1.RouteSettings{}
	if d.RequestTimeout > 0 {
		s.Timeout = c.timeout(entry, field+".RequestTimeout", time.Duration(d.RequestTimeout))
	}
	if d.IdleTimeout > 0 {
		c.report(entry, field+".IdleTimeout", "gRPC clients have no per-route idle timeout: not sent")
	}
	if d.PrefixRewrite != "" {
		c.report(entry, field+".PrefixRewrite", "gRPC clients do not rewrite method paths: not sent, calls keep their method")
	}
	if !d.RequestHeaders.empty() {
		c.report(entry, field+".RequestHeaders", "gRPC clients do not modify headers: not sent")
	}
	if !d.ResponseHeaders.empty() {
		c.report(entry, field+".ResponseHeaders", "gRPC clients do not modify headers: not sent")
	}
	if d.Namespace != "" && d.Namespace != "default" || d.Partition != "" && d.Partition != "default" {
		c.report(entry, field, "namespaces and partitions other than default are not served")
	}
	var codes []string
	for i, cond := range d.RetryOn {
		code, ok := retryConditions[strings.ToLower(cond)]
		if !ok {
			c.report(entry, fmt.Sprintf("%s.RetryOn[%d]", field, i), "%q is not a condition gRPC clients retry on (they honour cancelled, deadline-exceeded, internal, resource-exhausted, unavailable): not sent", cond)
			continue
		}
		if !slices.Contains(codes, code) {
			codes = append(codes, code)
		}
	}
	if d.RetryOnConnectFailure && !slices.Contains(codes, "UNAVAILABLE") {
		// A gRPC call that cannot connect fails UNAVAILABLE.
		codes = append(codes, "UNAVAILABLE")
	}
	if len(d.RetryOnStatusCodes) > 0 {
		c.report(entry, field+".RetryOnStatusCodes", "gRPC clients retry on gRPC status codes, not HTTP status codes: not sent (use RetryOn with gRPC conditions)")
	}
	switch {
	case len(codes) > 0:
		n := d.NumRetries
		switch {
		case n == 0:
			n = 1 // Envoy's default, which Consul leaves in place
		case n > maxRetries:
			c.report(entry, field+".NumRetries", "%d: gRPC clients make at most 5 attempts; %d retries are sent", n, maxRetries)
			n = maxRetries
		}
		s.Retry = &policyv1.RetryPolicy{RetryOn: codes, NumRetries: n}
	case d.NumRetries > 0:
		c.report(entry, field+".NumRetries", "no retry condition gRPC honours is set, so nothing is retried (as with Consul's Envoy, which retries nothing without RetryOn)")
	}
	if s.Timeout == nil && s.Retry == nil {
		return nil
	}
	return s
}

// timeout converts a Consul timeout within the policy model's range.
func (c *converter) timeout(entry, field string, d time.Duration) *durationpb.Duration {
	if d < time.Millisecond || d > 24*time.Hour {
		c.report(entry, field, "%s is outside 1ms to 24h: not sent, calls have no deadline from the route", d)
		return nil
	}
	return durationpb.New(d)
}

// action sets route's destination or split from the node named next,
// scaling weights by share (for nested splitters). It reports and returns
// false when the node cannot be reached by gRPC clients.
func (c *converter) action(route *policyv1.Route, next string, share float64, entry, field string) bool {
	node := c.chain.Nodes[next]
	if node == nil {
		c.report(entry, field, "refers to chain node %q, which the chain does not hold: not sent", next)
		return false
	}
	switch node.Type {
	case nodeResolver:
		d, ok := c.resolver(node)
		if !ok {
			return false
		}
		if d.Service != "" || d.Subset != "" {
			route.Action = &policyv1.Route_Destination{Destination: d}
		}
		if rt := node.Resolver.RequestTimeout; rt > 0 && route.GetSettings().GetTimeout() == nil {
			if t := c.timeout(c.entryOf(node), "RequestTimeout", time.Duration(rt)); t != nil {
				if route.Settings == nil {
					route.Settings = &policyv1.RouteSettings{}
				}
				route.Settings.Timeout = t
			}
		}
		return true
	case nodeSplitter:
		legs := map[[2]string]uint64{}
		var order [][2]string
		if !c.splitLegs(node, share, legs, &order) {
			return false
		}
		split := &policyv1.WeightedSplit{}
		for _, k := range order {
			if legs[k] == 0 {
				continue
			}
			wd := &policyv1.WeightedDestination{Weight: uint32(min(legs[k], math.MaxUint32))}
			if k[0] != "" || k[1] != "" {
				wd.Destination = &policyv1.Destination{Service: k[0], Subset: k[1]}
			}
			split.Destinations = append(split.Destinations, wd)
		}
		if len(split.Destinations) == 0 {
			c.report(c.entryOf(node), "Splits", "every split has weight 0: not sent")
			return false
		}
		route.Action = &policyv1.Route_Split{Split: split}
		return true
	default:
		c.report(entry, field, "leads to a %s node, where a splitter or resolver is expected: not sent", node.Type)
		return false
	}
}

// splitLegs adds a splitter's legs, in Consul's weights (percent, two
// decimals) scaled to integers: 100.00 is 10000, so that no 0.01 step is
// lost. Nested splitters multiply.
func (c *converter) splitLegs(node *Node, share float64, legs map[[2]string]uint64, order *[][2]string) bool {
	entry := c.entryOf(node)
	for i, s := range node.Splits {
		field := fmt.Sprintf("Splits[%d]", i)
		if d := s.Definition; d != nil {
			if !d.RequestHeaders.empty() {
				c.report(entry, field+".RequestHeaders", "gRPC clients do not modify headers: not sent")
			}
			if !d.ResponseHeaders.empty() {
				c.report(entry, field+".ResponseHeaders", "gRPC clients do not modify headers: not sent")
			}
		}
		w := share * s.Weight / 100
		next := c.chain.Nodes[s.NextNode]
		if next == nil {
			c.report(entry, field, "refers to chain node %q, which the chain does not hold: not sent", s.NextNode)
			return false
		}
		switch next.Type {
		case nodeSplitter:
			if !c.splitLegs(next, w, legs, order) {
				return false
			}
		case nodeResolver:
			d, ok := c.resolver(next)
			if !ok {
				return false
			}
			k := [2]string{d.Service, d.Subset}
			if _, seen := legs[k]; !seen {
				*order = append(*order, k)
			}
			legs[k] += uint64(math.Round(w * 10000))
		default:
			c.report(entry, field, "leads to a %s node: not sent", next.Type)
			return false
		}
	}
	return true
}

// resolver converts a resolver node into a destination (empty service:
// the chain's own service) and records its subset.
func (c *converter) resolver(node *Node) (*policyv1.Destination, bool) {
	entry := c.entryOf(node)
	r := node.Resolver
	if r == nil {
		c.report(entry, "", "resolver node without a resolver: not sent")
		return nil, false
	}
	t := c.chain.Targets[r.Target]
	if t == nil {
		c.report(entry, "", "target %q is not in the chain: not sent", r.Target)
		return nil, false
	}
	if ct := time.Duration(r.ConnectTimeout); ct != 0 && ct != consulDefaultConnectTimeout {
		c.report(entry, "ConnectTimeout", "gRPC clients set their connect timeout themselves: not sent")
	}
	switch {
	case t.Peer != "":
		c.report(entry, "", "target %s is in cluster peer %q, which Trellis does not serve: not sent", t.ID, t.Peer)
		return nil, false
	case t.Datacenter != "" && c.chain.Datacenter != "" && t.Datacenter != c.chain.Datacenter:
		c.report(entry, "", "target %s is in datacenter %s; Trellis serves the local datacenter (%s) only: not sent", t.ID, t.Datacenter, c.chain.Datacenter)
		return nil, false
	case t.Namespace != "" && t.Namespace != "default" || t.Partition != "" && t.Partition != "default":
		c.report(entry, "", "target %s is in another namespace or partition, which Trellis does not serve: not sent", t.ID)
		return nil, false
	case t.External:
		c.report(entry, "", "target %s is reached through a terminating gateway, which gRPC clients cannot use: not sent", t.ID)
		return nil, false
	}
	d := &policyv1.Destination{}
	if t.Service != c.svc {
		d.Service = t.Service
	}
	if t.ServiceSubset != "" {
		if t.Subset.Filter == "" && !t.Subset.OnlyPassing {
			// A subset without filter holds every instance.
			return d, true
		}
		d.Subset = t.ServiceSubset
		byName := c.subsets[t.Service]
		if byName == nil {
			byName = map[string]*policyv1.Subset{}
			c.subsets[t.Service] = byName
		}
		if _, ok := byName[t.ServiceSubset]; !ok {
			byName[t.ServiceSubset] = &policyv1.Subset{Name: t.ServiceSubset, Filter: t.Subset.Filter, OnlyPassing: t.Subset.OnlyPassing}
		}
	}
	return d, true
}

// loadBalancer converts the load balancer of the service's own resolver:
// a Trellis policy balances calls to its service, whoever routes them.
func (c *converter) loadBalancer() {
	var node *Node
	for _, name := range sortedKeys(c.chain.Nodes) {
		n := c.chain.Nodes[name]
		if n.Type != nodeResolver || n.LoadBalancer == nil {
			continue
		}
		if t := c.chain.Targets[n.Resolver.GetTarget()]; t != nil && t.Service == c.svc {
			node = n
			break
		}
	}
	if node == nil {
		return
	}
	entry := c.entryOf(node)
	lb := node.LoadBalancer
	p := c.out
	c.lbFrom = origin{entry, "LoadBalancer"}
	switch lb.Policy {
	case "", "round_robin":
		if lb.Policy != "" {
			p.LoadBalancing = &policyv1.LoadBalancing{Policy: &policyv1.LoadBalancing_RoundRobin{RoundRobin: &policyv1.RoundRobin{}}}
		}
	case "least_request":
		lr := &policyv1.LeastRequest{}
		if lb.LeastRequestConfig != nil {
			lr.ChoiceCount = lb.LeastRequestConfig.ChoiceCount
		}
		p.LoadBalancing = &policyv1.LoadBalancing{Policy: &policyv1.LoadBalancing_LeastRequest{LeastRequest: lr}}
	case "ring_hash":
		rh := &policyv1.RingHash{}
		if lb.RingHashConfig != nil {
			rh.MinimumRingSize, rh.MaximumRingSize = lb.RingHashConfig.MinimumRingSize, lb.RingHashConfig.MaximumRingSize
		}
		p.LoadBalancing = &policyv1.LoadBalancing{Policy: &policyv1.LoadBalancing_RingHash{RingHash: rh}}
	default:
		c.report(entry, "LoadBalancer.Policy", "%q is not a policy gRPC clients implement (they do round_robin, least_request, ring_hash): round robin is used", lb.Policy)
	}
	for i, h := range lb.HashPolicies {
		field := fmt.Sprintf("LoadBalancer.HashPolicies[%d]", i)
		if lb.Policy != "ring_hash" {
			c.report(entry, field, "hash policies only apply to ring_hash here: not sent")
			continue
		}
		switch {
		case h.SourceIP:
			c.report(entry, field+".SourceIP", "gRPC clients cannot hash on their own source address: not sent")
		case h.Field == "header":
			if p.Defaults == nil {
				p.Defaults = &policyv1.RouteSettings{}
			}
			p.Defaults.HashPolicy = append(p.Defaults.HashPolicy, &policyv1.HashPolicy{
				Policy: &policyv1.HashPolicy_Header{Header: strings.ToLower(h.FieldValue)}, Terminal: h.Terminal})
		default:
			c.report(entry, field+".Field", "%q hashing is not something gRPC clients do (they hash headers or the channel): not sent", h.Field)
		}
	}
}

// failover converts the Failover of the service's own resolvers (one node
// per subset the chain uses) into the policy's failover datacenters: a
// failover target that is the same service and subset in another
// datacenter of the default namespace and partition is a datacenter to
// fail over to, in the resolver's order. Trellis fails a service over as a
// whole (every subset keeps its filter in the other datacenter), so the
// resolvers must agree; per-subset failovers that differ are reported and
// none is sent. Other services, subsets, peers, namespaces and partitions
// as failover targets, and failover policies and regions, are reported;
// the datacenters that are expressible are still sent. Resolvers of other
// services are converted in those services' own chains.
func (c *converter) failover() {
	type nodeFailover struct {
		entry, subset string
		dcs           []string
	}
	var found []nodeFailover
	for _, name := range sortedKeys(c.chain.Nodes) {
		n := c.chain.Nodes[name]
		if n.Type != nodeResolver || n.Resolver == nil {
			continue
		}
		t := c.chain.Targets[n.Resolver.Target]
		if t == nil || t.Service != c.svc {
			continue
		}
		entry := c.entryOf(n)
		found = append(found, nodeFailover{entry: entry, subset: t.ServiceSubset, dcs: c.failoverDatacenters(entry, t, n.Resolver.Failover)})
	}
	if len(found) == 0 {
		return
	}
	for _, f := range found[1:] {
		if !slices.Equal(f.dcs, found[0].dcs) {
			var each []string
			for _, f := range found {
				each = append(each, fmt.Sprintf("%s: %v", subsetLabel(f.subset), f.dcs))
			}
			c.report(found[0].entry, "Failover", "the subsets fail over to different datacenters (%s); Trellis fails a service over as a whole, with every subset's filter applied in the other datacenter: not sent, calls stay in the local datacenter", strings.Join(each, ", "))
			return
		}
	}
	if len(found[0].dcs) > 0 {
		c.out.Failover = &policyv1.Failover{Datacenters: found[0].dcs}
		c.foFrom = origin{found[0].entry, "Failover"}
	}
}

func subsetLabel(s string) string {
	if s == "" {
		return "(no subset)"
	}
	return "subset " + s
}

// failoverDatacenters lists the datacenters the resolver of target t fails
// over to, reporting the failover targets that are not a datacenter.
func (c *converter) failoverDatacenters(entry string, t *Target, fo *Failover) []string {
	if fo == nil {
		return nil
	}
	field := "Failover"
	if t.ServiceSubset != "" {
		field = fmt.Sprintf("Failover[%q]", t.ServiceSubset)
	}
	if fo.Policy != nil && string(*fo.Policy) != "null" && string(*fo.Policy) != "{}" {
		c.report(entry, field+".Policy", "failover policies (order by locality) are not translated: the targets are failed over to in the order listed")
	}
	if len(fo.Regions) > 0 {
		c.report(entry, field+".Regions", "failover by region is not translated: not sent")
	}
	var dcs []string
	for _, id := range fo.Targets {
		ft := c.chain.Targets[id]
		switch {
		case ft == nil:
			c.report(entry, field, "failover target %q is not in the chain: not sent", id)
		case ft.Peer != "":
			c.report(entry, field, "failover target %s is in cluster peer %q, which Trellis does not serve: not sent", ft.ID, ft.Peer)
		case ft.Namespace != "" && ft.Namespace != "default" || ft.Partition != "" && ft.Partition != "default":
			c.report(entry, field, "failover target %s is in another namespace or partition, which Trellis does not serve: not sent", ft.ID)
		case ft.Service != t.Service:
			c.report(entry, field, "failover target %s is another service; Trellis fails a service over to its own instances in other datacenters only: not sent", ft.ID)
		case ft.ServiceSubset != t.ServiceSubset:
			c.report(entry, field, "failover target %s is another subset; Trellis fails a subset over to the same subset in other datacenters only: not sent", ft.ID)
		case ft.Datacenter == "" || ft.Datacenter == c.chain.Datacenter:
			c.report(entry, field, "failover target %s is in the local datacenter: not sent", ft.ID)
		case slices.Contains(dcs, strings.ToLower(ft.Datacenter)):
		default:
			dcs = append(dcs, strings.ToLower(ft.Datacenter))
		}
	}
	return dcs
}
