package xdsserver_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/trellis-mesh/trellis/internal/clients"
	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// startProfileServer serves p on 127.0.0.1 until the test ends.
func startProfileServer(t *testing.T, p *xdsserver.ProfileCaches) (*xdsserver.Server, string) {
	t.Helper()
	srv, err := xdsserver.New(xdsserver.Config{Watcher: p.ConfigWatcher(), Registerer: prometheus.NewRegistry(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv, lis.Addr().String()
}

// fetchCluster opens an ADS stream presenting node and returns the
// Cluster named name from the first CDS response.
func fetchCluster(ctx context.Context, t *testing.T, addr string, node *corev3.Node, name string) *clusterv3.Cluster {
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
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resource.ClusterType, ResourceNames: []string{name}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("node %q: %v", node.GetUserAgentName(), err)
	}
	if len(resp.GetResources()) != 1 {
		t.Fatalf("node %q: got %d clusters, want 1", node.GetUserAgentName(), len(resp.GetResources()))
	}
	c := &clusterv3.Cluster{}
	if err := resp.GetResources()[0].UnmarshalTo(c); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestProfileCachesRouteByUserAgent serves a least-request cluster to the
// grpc-go profile and round robin to every other: a real grpc-go xDS client
// reaches its backend through the dispatching watcher, and streams with
// other user agents get their profile's cluster (an unknown one the widest).
func TestProfileCachesRouteByUserAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	pc, err := xdsserver.NewProfileCaches(xdsserver.ProfileCachesConfig{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	backend := startBackend(t)
	next := map[string]xdscache.Resources{}
	for _, p := range pc.Profiles() {
		lb := clusterv3.Cluster_ROUND_ROBIN
		if p.Caps.LeastRequest {
			lb = clusterv3.Cluster_LEAST_REQUEST
		}
		next[p.Name] = clientResources(t, "svc", backend, lb)
	}
	for name, r := range pc.Apply(whole(next)) {
		if r.Err != nil {
			t.Fatalf("apply %s: %v", name, r.Err)
		}
	}
	srv, addr := startProfileServer(t, pc)

	conn := dial(t, addr, "go-client", "xds:///svc")
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("grpc-go call through the grpc-go profile: %v", err)
	}

	for _, tt := range []struct {
		agent string
		want  clusterv3.Cluster_LbPolicy
	}{
		{"gRPC Go", clusterv3.Cluster_LEAST_REQUEST},
		{"gRPC Node Pure JS", clusterv3.Cluster_ROUND_ROBIN},
		{"gRPC C-core linux", clusterv3.Cluster_ROUND_ROBIN},
		{"gRPC Elixir", clusterv3.Cluster_ROUND_ROBIN},
		{"", clusterv3.Cluster_ROUND_ROBIN},
	} {
		c := fetchCluster(ctx, t, addr, &corev3.Node{Id: "n", UserAgentName: tt.agent}, "svc")
		if c.GetLbPolicy() != tt.want {
			t.Errorf("user agent %q: lb_policy %v, want %v", tt.agent, c.GetLbPolicy(), tt.want)
		}
	}
	found := false
	for _, st := range srv.Streams() {
		if st.NodeID == "go-client" {
			found = true
			if st.Profile != clients.GoName {
				t.Errorf("grpc-go stream profile %q, want %q", st.Profile, clients.GoName)
			}
		}
	}
	if !found {
		t.Error("no stream of node go-client tracked")
	}
}

// TestProfileCachesShareEqualResources checks that a profile's resource
// equal to the first profile's is stored as the same value, and one that
// differs is not.
func TestProfileCachesShareEqualResources(t *testing.T) {
	pc, err := xdsserver.NewProfileCaches(xdsserver.ProfileCachesConfig{
		Profiles: []clients.Profile{clients.Widest, clients.Go},
	})
	if err != nil {
		t.Fatal(err)
	}
	backend := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	widest := clientResources(t, "svc", backend, clusterv3.Cluster_ROUND_ROBIN)
	goRes := clientResources(t, "svc", backend, clusterv3.Cluster_LEAST_REQUEST)
	pc.Apply(whole(map[string]xdscache.Resources{clients.WidestName: widest, clients.GoName: goRes}))

	for _, typeURL := range []string{resource.ListenerType, resource.RouteType, resource.EndpointType, resource.ClusterType} {
		base, _, ok := pc.Cache(clients.WidestName).Resource(typeURL, "svc")
		if !ok {
			t.Fatalf("widest has no %s", typeURL)
		}
		got, _, ok := pc.Cache(clients.GoName).Resource(typeURL, "svc")
		if !ok {
			t.Fatalf("grpc-go has no %s", typeURL)
		}
		shared := got == base
		if want := typeURL != resource.ClusterType; shared != want {
			t.Errorf("%s shared = %v, want %v", typeURL, shared, want)
		}
	}
}

// whole makes a whole-state change of each profile's resources.
func whole(next map[string]xdscache.Resources) map[string]xdscache.Change {
	out := make(map[string]xdscache.Change, len(next))
	for name, r := range next {
		out[name] = xdscache.Change{Full: r}
	}
	return out
}

// TestProfileCachesShareOnDelta checks that sharing follows changes: a
// profile's changed resource equal to the first profile's current one is
// stored as that value, the caller's maps are left as they were, and a
// deleted resource goes.
func TestProfileCachesShareOnDelta(t *testing.T) {
	pc, err := xdsserver.NewProfileCaches(xdsserver.ProfileCachesConfig{
		Profiles: []clients.Profile{clients.Widest, clients.Go},
	})
	if err != nil {
		t.Fatal(err)
	}
	backend := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	pc.Apply(whole(map[string]xdscache.Resources{
		clients.WidestName: clientResources(t, "svc", backend, clusterv3.Cluster_ROUND_ROBIN),
		clients.GoName:     clientResources(t, "svc", backend, clusterv3.Cluster_LEAST_REQUEST),
	}))
	other := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 10}
	widest := clientResources(t, "svc", other, clusterv3.Cluster_ROUND_ROBIN)
	goRes := clientResources(t, "svc", other, clusterv3.Cluster_LEAST_REQUEST)
	goCLA := goRes[resource.EndpointType]["svc"]
	pc.Apply(map[string]xdscache.Change{
		clients.WidestName: {Updated: xdscache.Resources{resource.EndpointType: widest[resource.EndpointType]}},
		clients.GoName: {Updated: xdscache.Resources{resource.EndpointType: goRes[resource.EndpointType]},
			Deleted: map[string][]string{resource.RouteType: {"svc"}}},
	})
	if goRes[resource.EndpointType]["svc"] != goCLA {
		t.Error("Apply modified the caller's map")
	}
	base, _, _ := pc.Cache(clients.WidestName).Resource(resource.EndpointType, "svc")
	got, _, ok := pc.Cache(clients.GoName).Resource(resource.EndpointType, "svc")
	if !ok || got != base || base != widest[resource.EndpointType]["svc"] {
		t.Errorf("changed endpoints not shared: grpc-go %p, widest %p", got, base)
	}
	if _, _, ok := pc.Cache(clients.GoName).Resource(resource.RouteType, "svc"); ok {
		t.Error("deleted route still served to grpc-go")
	}
	if _, _, ok := pc.Cache(clients.WidestName).Resource(resource.RouteType, "svc"); !ok {
		t.Error("route deleted from the widest profile too")
	}
}

// TestProfileActivation checks that only the first profile is active until
// a client of another connects, which activates its profile and signals it.
func TestProfileActivation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	pc, err := xdsserver.NewProfileCaches(xdsserver.ProfileCachesConfig{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pc.Profiles() {
		if want := p.Name == pc.Profiles()[0].Name; pc.Active(p.Name) != want {
			t.Errorf("before any client: Active(%s) = %v, want %v", p.Name, !want, want)
		}
	}
	select {
	case <-pc.Activated():
		t.Fatal("activated before any client")
	default:
	}
	backend := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	pc.Apply(whole(map[string]xdscache.Resources{
		clients.WidestName: clientResources(t, "svc", backend, clusterv3.Cluster_ROUND_ROBIN),
		clients.GoName:     clientResources(t, "svc", backend, clusterv3.Cluster_ROUND_ROBIN),
	}))
	_, addr := startProfileServer(t, pc)
	fetchCluster(ctx, t, addr, &corev3.Node{Id: "n", UserAgentName: "gRPC Go"}, "svc")
	select {
	case <-pc.Activated():
	case <-ctx.Done():
		t.Fatal("no activation signal after a grpc-go client connected")
	}
	if !pc.Active(clients.GoName) {
		t.Error("grpc-go profile not active after a grpc-go client connected")
	}
	if pc.Active(clients.NodeName) {
		t.Error("grpc-node profile active without a client")
	}
}

func TestNewProfileCachesErrors(t *testing.T) {
	for name, profiles := range map[string][]clients.Profile{
		"duplicate": {clients.Widest, clients.Widest},
		"no name":   {{}},
	} {
		if _, err := xdsserver.NewProfileCaches(xdsserver.ProfileCachesConfig{Profiles: profiles}); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestNACKReportedWithImplementation: a client of an unknown
// implementation that NACKs anyway is reported (stream status and a log
// line) with its node id, user agent and the NACK text, and a client of
// another implementation on the same server keeps ACKing.
func TestNACKReportedWithImplementation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	pc, err := xdsserver.NewProfileCaches(xdsserver.ProfileCachesConfig{})
	if err != nil {
		t.Fatal(err)
	}
	backend := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	next := map[string]xdscache.Resources{}
	for _, p := range pc.Profiles() {
		next[p.Name] = clientResources(t, "svc", backend, clusterv3.Cluster_ROUND_ROBIN)
	}
	pc.Apply(whole(next))
	var logs syncBuffer
	srv, err := xdsserver.New(xdsserver.Config{Watcher: pc.ConfigWatcher(), Registerer: prometheus.NewRegistry(),
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
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

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	open := func(id, agent, version string) discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
		st, err := ads.StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		node := &corev3.Node{Id: id, UserAgentName: agent, UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: version}}
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resource.ClusterType, ResourceNames: []string{"svc"}}); err != nil {
			t.Fatal(err)
		}
		return st
	}
	answer := func(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, nack string) {
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		req := &discoveryv3.DiscoveryRequest{TypeUrl: resource.ClusterType, ResourceNames: []string{"svc"}, ResponseNonce: resp.GetNonce(), VersionInfo: resp.GetVersionInfo()}
		if nack != "" {
			req.VersionInfo = ""
			req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: nack}
		}
		if err := st.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	odd, good := open("odd-1", "gRPC Elixir", "0.1.0"), open("go-1", "gRPC Go", "1.85.0")
	answer(odd, "cluster svc: unsupported field")
	answer(good, "")

	waitFor(ctx, t, func() string {
		var oddSeen, goodSeen bool
		for _, st := range srv.Streams() {
			for _, ty := range st.Types {
				switch st.NodeID {
				case "odd-1":
					oddSeen = st.UserAgent == "gRPC Elixir 0.1.0" && st.Profile == clients.WidestName &&
						ty.NACKs == 1 && ty.LastNACKError == "cluster svc: unsupported field"
				case "go-1":
					goodSeen = ty.ACKs == 1 && ty.NACKs == 0 && st.Profile == clients.GoName
				}
			}
		}
		if !oddSeen || !goodSeen {
			return fmt.Sprintf("streams: %+v", srv.Streams())
		}
		return ""
	})
	line := ""
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "rejected by client") {
			line = l
		}
	}
	for _, want := range []string{"node=odd-1", `user_agent="gRPC Elixir 0.1.0"`, "profile=widest", `error="cluster svc: unsupported field"`} {
		if !strings.Contains(line, want) {
			t.Errorf("NACK log line %q lacks %s", line, want)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writes and reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestProfilePrepare: Prepare activates a profile and returns once its
// first translation is applied, and fails when ctx ends before.
func TestProfilePrepare(t *testing.T) {
	pc, err := xdsserver.NewProfileCaches(xdsserver.ProfileCachesConfig{Profiles: []clients.Profile{clients.Widest, clients.Go}})
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := pc.Prepare(short, clients.GoName); err == nil {
		t.Fatal("Prepare returned before any Apply")
	}
	if !pc.Active(clients.GoName) {
		t.Fatal("Prepare did not activate the profile")
	}
	backend := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	done := make(chan error, 1)
	go func() { done <- pc.Prepare(context.Background(), clients.GoName) }()
	pc.Apply(whole(map[string]xdscache.Resources{clients.GoName: clientResources(t, "svc", backend, clusterv3.Cluster_ROUND_ROBIN)}))
	if err := <-done; err != nil {
		t.Fatalf("Prepare after the first Apply: %v", err)
	}
	if err := pc.Prepare(context.Background(), "no-such-profile"); err == nil {
		t.Error("Prepare of an unknown profile: no error")
	}
}

// TestFirstClientOfAProfileWaitsForItsTranslation: while the fallback is
// served, the first client of another profile is answered from its
// profile's translation once the pipeline has applied it, never with an
// empty answer (which a client takes as its resources removed).
func TestFirstClientOfAProfileWaitsForItsTranslation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	pc, err := xdsserver.NewProfileCaches(xdsserver.ProfileCachesConfig{Profiles: []clients.Profile{clients.Widest, clients.Go}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	backend := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	pc.Apply(whole(map[string]xdscache.Resources{clients.WidestName: clientResources(t, "svc", backend, clusterv3.Cluster_ROUND_ROBIN)}))
	_, addr := startProfileServer(t, pc)
	// What the pipeline does on activation, a little later.
	applied := make(chan struct{})
	go func() {
		defer close(applied)
		select {
		case <-pc.Activated():
		case <-ctx.Done():
			return
		}
		time.Sleep(200 * time.Millisecond)
		pc.Apply(whole(map[string]xdscache.Resources{clients.GoName: clientResources(t, "svc", backend, clusterv3.Cluster_LEAST_REQUEST)}))
	}()
	c := fetchCluster(ctx, t, addr, &corev3.Node{Id: "n", UserAgentName: "gRPC Go"}, "svc")
	if c.GetLbPolicy() != clusterv3.Cluster_LEAST_REQUEST {
		t.Errorf("first grpc-go client: lb_policy %v, want its profile's LEAST_REQUEST", c.GetLbPolicy())
	}
	<-applied
}
