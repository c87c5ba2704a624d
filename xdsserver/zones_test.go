package xdsserver_test

import (
	"context"
	"net"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// cla is an assignment of cluster with one endpoint, the port telling
// which one it is.
func cla(cluster string, port uint32) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{ClusterName: cluster, Endpoints: []*endpointv3.LocalityLbEndpoints{{
		Locality:            &corev3.Locality{Zone: "a"},
		LoadBalancingWeight: wrapUint32(1),
		LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}},
		}}}},
	}}}
}

// fetchPort opens an ADS stream as node and returns the port of the first
// endpoint of cluster's assignment in the first EDS response.
func fetchPort(ctx context.Context, t *testing.T, addr string, node *corev3.Node, cluster string) uint32 {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resource.EndpointType, ResourceNames: []string{cluster}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("zone %q: %v", node.GetLocality().GetZone(), err)
	}
	if len(resp.GetResources()) != 1 {
		t.Fatalf("zone %q: %d assignments, want 1", node.GetLocality().GetZone(), len(resp.GetResources()))
	}
	got := &endpointv3.ClusterLoadAssignment{}
	if err := resp.GetResources()[0].UnmarshalTo(got); err != nil {
		t.Fatal(err)
	}
	return got.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue()
}

// TestZoneCachesDispatch: EDS requests of a node in a zone with variants
// get them (and the shared assignment of clusters without one); nodes
// without a zone, or in a zone without a cache, get the shared ones; a
// zone beyond MaxZones gets the shared ones too.
func TestZoneCachesDispatch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	pc, err := xdsserver.NewProfileCaches(xdsserver.ProfileCachesConfig{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	base := map[string]types.Resource{"svc": cla("svc", 1000), "other": cla("other", 2000)}
	next := map[string]xdscache.Change{}
	for _, p := range pc.Profiles() {
		next[p.Name] = xdscache.Change{Full: xdscache.Resources{resource.EndpointType: base}}
	}
	for name, r := range pc.Apply(next) {
		if r.Err != nil {
			t.Fatalf("apply %s: %v", name, r.Err)
		}
	}
	zones := xdsserver.NewZoneCaches(xdsserver.ZoneCachesConfig{Logger: testLogger(t), MaxZones: 2})
	results := zones.Apply(base, map[string]map[string]types.Resource{
		"a": {"svc": cla("svc", 1001)},
		"b": {"svc": cla("svc", 1002)},
		"c": {"svc": cla("svc", 1003)}, // beyond MaxZones
	})
	for zone, r := range results {
		if r.Err != nil {
			t.Fatalf("apply zone %s: %v", zone, r.Err)
		}
	}
	if got := zones.Zones(); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("zones with a cache: %v, want [a b]", got)
	}

	srv, err := xdsserver.New(xdsserver.Config{Watcher: zones.Wrap(pc.ConfigWatcher()), Registerer: prometheus.NewRegistry(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, lis) }()
	defer func() {
		scancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	for _, tt := range []struct {
		zone, cluster string
		want          uint32
	}{
		{"a", "svc", 1001},
		{"b", "svc", 1002},
		{"a", "other", 2000},
		{"c", "svc", 1000},
		{"", "svc", 1000},
		{"z", "svc", 1000},
	} {
		node := &corev3.Node{Id: "n", UserAgentName: "gRPC Go", Locality: &corev3.Locality{Zone: tt.zone}}
		if got := fetchPort(ctx, t, lis.Addr().String(), node, tt.cluster); got != tt.want {
			t.Errorf("zone %q, cluster %s: endpoint port %d, want %d", tt.zone, tt.cluster, got, tt.want)
		}
	}

	// Zone a loses its variant: its cache serves the shared assignment.
	zones.Apply(base, map[string]map[string]types.Resource{"b": {"svc": cla("svc", 1002)}})
	node := &corev3.Node{Id: "n", UserAgentName: "gRPC Go", Locality: &corev3.Locality{Zone: "a"}}
	if got := fetchPort(ctx, t, lis.Addr().String(), node, "svc"); got != 1000 {
		t.Errorf("zone a without a variant: endpoint port %d, want the shared 1000", got)
	}

	// Only what changed reaches a zone's cache: an unchanged assignment
	// keeps its version, a removed one leaves.
	_, before, _ := zones.Cache("b").Resource(resource.EndpointType, "svc")
	zones.Apply(map[string]types.Resource{"svc": base["svc"]}, map[string]map[string]types.Resource{"b": {"svc": cla("svc", 1002)}})
	_, after, _ := zones.Cache("b").Resource(resource.EndpointType, "svc")
	if names := zones.Cache("b").Names(resource.EndpointType); len(names) != 1 || names[0] != "svc" {
		t.Errorf("zone b assignments after other left: %v, want [svc]", names)
	}
	if before == "" || before != after {
		t.Errorf("zone b's svc variant: version %q then %q, want it unchanged (an equal variant)", before, after)
	}
}
