package loadgen

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// Type is one of the four resource types a stream subscribes to.
type Type uint8

// The resource types, in the order a gRPC client subscribes to them.
const (
	Listener Type = iota
	RouteConfiguration
	Cluster
	ClusterLoadAssignment
	numTypes
)

// Type URLs (xDS v3) of the four types, indexed by Type.
var typeURLs = [numTypes]string{
	"type.googleapis.com/envoy.config.listener.v3.Listener",
	"type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
	"type.googleapis.com/envoy.config.cluster.v3.Cluster",
	"type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
}

// resourceWrapperURL is the type of the wrapper a server may put around a
// resource for clients with the xds.config.resource-in-sotw feature.
const resourceWrapperURL = "type.googleapis.com/envoy.service.discovery.v3.Resource"

// clientFeatures are the features grpc-go v1.85.0 announces in its node.
var clientFeatures = []string{"envoy.lb.does_not_support_overprovisioning", "xds.config.resource-in-sotw"}

// URL returns the type's xDS v3 type URL.
func (t Type) URL() string {
	if t < numTypes {
		return typeURLs[t]
	}
	return ""
}

// String returns the type's short name: LDS, RDS, CDS or EDS.
func (t Type) String() string {
	switch t {
	case Listener:
		return "LDS"
	case RouteConfiguration:
		return "RDS"
	case Cluster:
		return "CDS"
	case ClusterLoadAssignment:
		return "EDS"
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

func typeOf(url string) (Type, bool) {
	for t, u := range typeURLs {
		if u == url {
			return Type(t), true
		}
	}
	return 0, false
}

// Event records one response a stream received.
type Event struct {
	// At is when the response was received, on the Generator's clock
	// (Generator.Now).
	At time.Duration
	// Bytes is the encoded size of the DiscoveryResponse.
	Bytes uint32
	// Resources is how many resources the response held.
	Resources uint16
	// Endpoints is, for ClusterLoadAssignment responses, how many
	// endpoints a gRPC client would send calls to (health HEALTHY or
	// UNKNOWN, in a locality with a non-zero weight), summed over the
	// response's resources.
	Endpoints uint16
	// Type is the response's resource type.
	Type Type
	// NACKed reports that the stream could not decode the response and
	// NACKed it.
	NACKed bool
}

// typeState is a stream's protocol state for one type.
type typeState struct {
	names   []string // subscribed, sorted
	version string   // last ACKed
	nonce   string   // last received
}

// stream is one ADS stream. Its protocol state is touched only by its own
// goroutine (start runs before that goroutine begins); the event log is
// guarded by mu.
type stream struct {
	g       *Generator
	index   int
	service string

	types [numTypes]typeState
	// children maps a resource to the names of the next type it refers
	// to: route configuration -> clusters, cluster -> EDS names. Listener
	// -> route configuration names live in the same maps.
	children  [numTypes - 1]map[string][]string
	ackedMask uint8
	ready     bool

	mu     sync.Mutex
	events []Event
	// newest holds, per type, the At of the newest event of that type in
	// the log plus one (0: none), so that a waiter polling thousands of
	// streams for an event at or after some instant can pass over a
	// stream that has none without taking its lock. Events are recorded
	// in time order, so no event of a type is newer than its entry.
	newest [numTypes]atomic.Int64
}

func newStream(g *Generator, index int, service string) *stream {
	return &stream{g: g, index: index, service: service}
}

func (s *stream) nodeID() string { return fmt.Sprintf("%s-%d", s.g.cfg.NodeIDPrefix, s.index) }

// start sends the first request: the Listener named after the service,
// with the node, as grpc-go does for a channel to xds:///<service>.
func (s *stream) start(ads discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient) error {
	s.types[Listener].names = []string{s.service}
	req := s.request(Listener, "")
	req.Node = &corev3.Node{
		Id:                   s.nodeID(),
		UserAgentName:        "gRPC Go",
		UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: s.g.cfg.UserAgentVersion},
		ClientFeatures:       clientFeatures,
	}
	if err := ads.Send(req); err != nil {
		return fmt.Errorf("send first request: %w", err)
	}
	return nil
}

// request is the subscription of type t with the stream's current state:
// an ACK when it carries the version just received, a NACK when errDetail
// is set.
func (s *stream) request(t Type, errDetail string) *discoveryv3.DiscoveryRequest {
	st := &s.types[t]
	req := &discoveryv3.DiscoveryRequest{
		TypeUrl:       typeURLs[t],
		ResourceNames: st.names,
		VersionInfo:   st.version,
		ResponseNonce: st.nonce,
	}
	if errDetail != "" {
		req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: errDetail}
	}
	return req
}

// loop receives responses, ACKs (or NACKs) each and follows the chain of
// names to the next type, until the stream ends.
func (s *stream) loop(ads discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient) error {
	for {
		resp, err := ads.Recv()
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		at := s.g.Now()
		if err := s.handle(ads, resp, at); err != nil {
			return err
		}
	}
}

func (s *stream) handle(ads discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, resp *discoveryv3.DiscoveryResponse, at time.Duration) error {
	size := proto.Size(resp)
	g := s.g
	g.responses.Add(1)
	g.bytes.Add(int64(size))
	t, ok := typeOf(resp.GetTypeUrl())
	if !ok {
		// grpc-go ignores a response of a type it did not ask for, and
		// does not ACK it.
		return nil
	}
	ev := Event{At: at, Bytes: uint32(size), Resources: uint16(min(len(resp.GetResources()), 1<<16-1)), Type: t}
	st := &s.types[t]
	st.nonce = resp.GetNonce()
	endpoints, children, decodeErr := g.memo.decodeAll(t, resp.GetResources())
	if decodeErr != nil {
		ev.NACKed = true
		s.record(ev)
		g.nacks.Add(1)
		if err := ads.Send(s.request(t, decodeErr.Error())); err != nil {
			return fmt.Errorf("send NACK of %s version %q: %w", t, resp.GetVersionInfo(), err)
		}
		return nil
	}
	ev.Endpoints = uint16(min(endpoints, 1<<16-1))
	s.record(ev)
	st.version = resp.GetVersionInfo()
	if err := ads.Send(s.request(t, "")); err != nil {
		return fmt.Errorf("send ACK of %s version %q: %w", t, st.version, err)
	}
	g.acks.Add(1)
	if len(resp.GetResources()) > 0 {
		s.ackedMask |= 1 << t
	}
	if !s.ready && s.ackedMask == 1<<numTypes-1 {
		s.ready = true
		g.markReady()
	}
	if t == ClusterLoadAssignment {
		return nil
	}
	// Follow the chain: the names this type refers to become the next
	// type's subscription.
	m := s.children[t]
	if m == nil {
		m = make(map[string][]string, 1)
		s.children[t] = m
	}
	if t == Listener || t == Cluster {
		// Listener and Cluster responses hold the whole state of the
		// world: a resource left out was removed.
		clear(m)
	}
	for name, refs := range children {
		m[name] = refs
	}
	return s.resubscribe(ads, t)
}

// resubscribe derives the subscription of every type after t from the
// names of type t and the references each resource made, and sends each
// subscription that changed: a route configuration no Listener names any
// longer takes its clusters with it, as in grpc-go, where the watches of a
// chain are torn down with the resource that started them.
func (s *stream) resubscribe(ads discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, t Type) error {
	for ; t < ClusterLoadAssignment; t++ {
		m := s.children[t]
		var names []string
		for _, name := range s.types[t].names {
			names = append(names, m[name]...)
		}
		slices.Sort(names)
		names = slices.Compact(names)
		next := t + 1
		if slices.Equal(names, s.types[next].names) {
			return nil
		}
		s.types[next].names = names
		// References of resources no longer subscribed are forgotten.
		if next < ClusterLoadAssignment {
			for name := range s.children[next] {
				if !slices.Contains(names, name) {
					delete(s.children[next], name)
				}
			}
		}
		if err := ads.Send(s.request(next, "")); err != nil {
			return fmt.Errorf("send %s subscription: %w", next, err)
		}
	}
	return nil
}

func (s *stream) record(ev Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.events) >= s.g.cfg.MaxEventsPerStream {
		s.g.droppedEvents.Add(1)
		return
	}
	s.events = append(s.events, ev)
	s.newest[ev.Type].Store(int64(ev.At) + 1)
}

func (s *stream) eventsCopy() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.events)
}

func (s *stream) firstAfter(t Type, at time.Duration) (Event, bool) {
	if t >= numTypes || s.newest[t].Load() <= int64(at) {
		return Event{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ev := range s.events {
		if ev.At >= at && ev.Type == t {
			return ev, true
		}
	}
	return Event{}, false
}

func (s *stream) countAfter(at time.Duration) (int, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int
	var b int64
	for _, ev := range s.events {
		if ev.At >= at {
			n++
			b += int64(ev.Bytes)
		}
	}
	return n, b
}

func (s *stream) resetEvents() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = s.events[:0]
	for t := range s.newest {
		s.newest[t].Store(0)
	}
}

// maxMemo bounds the distinct resource encodings a Generator remembers
// the decoding of; past it the memo starts again empty.
const maxMemo = 8192

// decodeMemo remembers what each distinct resource encoding decoded to.
// Every stream watching a resource receives the same bytes: decoding them
// once per push instead of once per stream keeps the generator's own CPU,
// which shares the machine with the control plane it measures, small,
// while each stream still ACKs or NACKs exactly what a decoding says.
type decodeMemo struct {
	mu sync.Mutex
	m  map[memoKey]decoded
}

type memoKey struct{ typeURL, value string }

// decoded is what one resource says to a stream: its name and the names
// of the next type it refers to, or its usable endpoints.
type decoded struct {
	name      string
	refs      []string
	endpoints int
	err       error
}

func (m *decodeMemo) decode(t Type, a *anypb.Any) decoded {
	m.mu.Lock()
	d, ok := m.m[memoKey{a.GetTypeUrl(), string(a.GetValue())}]
	m.mu.Unlock()
	if ok {
		return d
	}
	d = decodeResource(t, a)
	m.mu.Lock()
	if m.m == nil || len(m.m) >= maxMemo {
		m.m = make(map[memoKey]decoded)
	}
	m.m[memoKey{a.GetTypeUrl(), string(a.GetValue())}] = d
	m.mu.Unlock()
	return d
}

// decodeAll decodes a response's resources as a client of type t would: the
// usable endpoints of ClusterLoadAssignments, else each resource's
// references to the next type, by resource name. The reference slices are
// shared between streams: they must not be modified.
func (m *decodeMemo) decodeAll(t Type, resources []*anypb.Any) (endpoints int, children map[string][]string, err error) {
	if t != ClusterLoadAssignment {
		children = make(map[string][]string, len(resources))
	}
	for _, a := range resources {
		d := m.decode(t, a)
		if d.err != nil {
			return 0, nil, d.err
		}
		endpoints += d.endpoints
		if children != nil {
			children[d.name] = d.refs
		}
	}
	return endpoints, children, nil
}

// decodeResource decodes one resource of a response of type t.
func decodeResource(t Type, a *anypb.Any) decoded {
	if a.GetTypeUrl() == resourceWrapperURL {
		var w discoveryv3.Resource
		if err := a.UnmarshalTo(&w); err != nil {
			return decoded{err: fmt.Errorf("decode resource wrapper: %w", err)}
		}
		a = w.GetResource()
	}
	if a.GetTypeUrl() != typeURLs[t] {
		return decoded{err: fmt.Errorf("resource of type %q in a %s response", a.GetTypeUrl(), t)}
	}
	switch t {
	case Listener:
		var l listenerv3.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			return decoded{err: fmt.Errorf("decode Listener: %w", err)}
		}
		routes, err := listenerRoutes(&l)
		if err != nil {
			return decoded{err: fmt.Errorf("Listener %q: %w", l.GetName(), err)}
		}
		return decoded{name: l.GetName(), refs: routes}
	case RouteConfiguration:
		var rc routev3.RouteConfiguration
		if err := a.UnmarshalTo(&rc); err != nil {
			return decoded{err: fmt.Errorf("decode RouteConfiguration: %w", err)}
		}
		return decoded{name: rc.GetName(), refs: routeClusters(&rc)}
	case Cluster:
		var c clusterv3.Cluster
		if err := a.UnmarshalTo(&c); err != nil {
			return decoded{err: fmt.Errorf("decode Cluster: %w", err)}
		}
		if c.GetType() != clusterv3.Cluster_EDS {
			// LOGICAL_DNS and aggregate clusters subscribe to no
			// endpoints of their own here.
			return decoded{name: c.GetName()}
		}
		name := c.GetEdsClusterConfig().GetServiceName()
		if name == "" {
			name = c.GetName()
		}
		return decoded{name: c.GetName(), refs: []string{name}}
	default: // ClusterLoadAssignment
		var cla endpointv3.ClusterLoadAssignment
		if err := a.UnmarshalTo(&cla); err != nil {
			return decoded{err: fmt.Errorf("decode ClusterLoadAssignment: %w", err)}
		}
		return decoded{name: cla.GetClusterName(), endpoints: usableEndpoints(&cla)}
	}
}

// listenerRoutes returns the route configuration a client Listener names
// through RDS (none when its routes are inline).
func listenerRoutes(l *listenerv3.Listener) ([]string, error) {
	api := l.GetApiListener().GetApiListener()
	if api == nil {
		return nil, fmt.Errorf("no api_listener")
	}
	var hcm hcmv3.HttpConnectionManager
	if err := api.UnmarshalTo(&hcm); err != nil {
		return nil, fmt.Errorf("decode HttpConnectionManager: %w", err)
	}
	if name := hcm.GetRds().GetRouteConfigName(); name != "" {
		return []string{name}, nil
	}
	if hcm.GetRouteConfig() == nil {
		return nil, fmt.Errorf("HttpConnectionManager has neither rds nor route_config")
	}
	return nil, nil
}

// routeClusters returns the clusters a route configuration's routes name.
func routeClusters(rc *routev3.RouteConfiguration) []string {
	var out []string
	for _, vh := range rc.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			action := r.GetRoute()
			if c := action.GetCluster(); c != "" {
				out = append(out, c)
			}
			for _, wc := range action.GetWeightedClusters().GetClusters() {
				out = append(out, wc.GetName())
			}
		}
	}
	return out
}

// usableEndpoints counts the endpoints gRPC sends calls to.
func usableEndpoints(cla *endpointv3.ClusterLoadAssignment) int {
	n := 0
	for _, loc := range cla.GetEndpoints() {
		if loc.GetLoadBalancingWeight().GetValue() == 0 {
			continue
		}
		for _, ep := range loc.GetLbEndpoints() {
			switch ep.GetHealthStatus() {
			case corev3.HealthStatus_HEALTHY, corev3.HealthStatus_UNKNOWN:
				n++
			}
		}
	}
	return n
}
