package xdsserver_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every test; generous for a busy 2-core machine.
const testTimeout = 60 * time.Second

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatalf("anypb.New(%T): %v", m, err)
	}
	return a
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

// clientResources builds what a gRPC client dialing xds:///name needs: an
// API Listener with RDS over ADS, a RouteConfiguration sending everything
// to the cluster, an EDS Cluster and one locality with one endpoint.
func clientResources(t *testing.T, name string, backend *net.TCPAddr, lb clusterv3.Cluster_LbPolicy) xdscache.Resources {
	t.Helper()
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: name,
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})},
		}},
	}
	lis := &listenerv3.Listener{
		Name:        name,
		ApiListener: &listenerv3.ApiListener{ApiListener: mustAny(t, hcm)},
	}
	rc := &routev3.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    name,
			Domains: []string{name, name + ":*"},
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: ""}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name},
				}},
			}},
		}},
	}
	cl := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name},
		LbPolicy:             lb,
	}
	cla := &endpointv3.ClusterLoadAssignment{
		ClusterName: name,
		Endpoints: []*endpointv3.LocalityLbEndpoints{{
			Locality:            &corev3.Locality{Region: "test-region", Zone: "test-zone"},
			LoadBalancingWeight: wrapUint32(1),
			LbEndpoints: []*endpointv3.LbEndpoint{{
				HealthStatus: corev3.HealthStatus_HEALTHY,
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address:       backend.IP.String(),
						PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(backend.Port)},
					}}},
				}},
			}},
		}},
	}
	for _, m := range []interface{ Validate() error }{lis, hcm, rc, cl, cla} {
		if err := m.Validate(); err != nil {
			t.Fatalf("invalid test resource %T: %v", m, err)
		}
	}
	return xdscache.Resources{
		resource.ListenerType: {name: lis},
		resource.RouteType:    {name: rc},
		resource.ClusterType:  {name: cl},
		resource.EndpointType: {name: cla},
	}
}

// startBackend serves the gRPC health service on 127.0.0.1.
func startBackend(t *testing.T) *net.TCPAddr {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := gs.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("backend: %v", err)
		}
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	return lis.Addr().(*net.TCPAddr)
}

// startServer serves c on 127.0.0.1 until the test ends, and returns the
// server and its address.
func startServer(t *testing.T, c *xdscache.Cache, reg prometheus.Registerer) (*xdsserver.Server, string) {
	t.Helper()
	return serveXDS(t, xdsserver.Config{Cache: c, Registerer: reg, Logger: testLogger(t)})
}

// serveXDS serves a Server made from cfg on 127.0.0.1 until the test or
// benchmark ends, and returns the server and its address.
func serveXDS(tb testing.TB, cfg xdsserver.Config) (*xdsserver.Server, string) {
	tb.Helper()
	srv, err := xdsserver.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Serve: %v", err)
		}
	})
	return srv, lis.Addr().String()
}

// bootstrap is a minimal xDS bootstrap pointing at addr.
func bootstrap(addr, nodeID string) []byte {
	return fmt.Appendf(nil, `{
  "xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
  "node": {"id": %q}
}`, addr, nodeID)
}

// dial opens a channel to target with an xDS client of its own, configured
// by an in-process bootstrap (no environment variable).
func dial(t *testing.T, xdsAddr, nodeID, target string) *grpc.ClientConn {
	t.Helper()
	builder, err := xds.NewXDSResolverWithConfigForTesting(bootstrap(xdsAddr, nodeID))
	if err != nil {
		t.Fatalf("xds resolver: %v", err)
	}
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithResolvers(builder))
	if err != nil {
		t.Fatalf("dial %s: %v", target, err)
	}
	t.Cleanup(func() {
		if err := conn.Close(); err != nil {
			t.Errorf("close %s: %v", target, err)
		}
	})
	return conn
}

// waitFor polls cond until it returns "" or ctx is done, and fails the test
// with cond's last complaint then.
func waitFor(ctx context.Context, t *testing.T, cond func() string) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		why := cond()
		if why == "" {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("condition not met before the deadline: %s", why)
		case <-tick.C:
		}
	}
}

var allTypes = []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType}

func TestADSWithGRPCClients(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	backend := startBackend(t)
	c := xdscache.New(xdscache.Config{Logger: testLogger(t)})
	if res := c.Apply(clientResources(t, "svc", backend, clusterv3.Cluster_ROUND_ROBIN)); res.Err != nil {
		t.Fatal(res.Err)
	}
	reg := prometheus.NewRegistry()
	srv, addr := startServer(t, c, reg)

	targets := map[string]string{ // target -> Listener it asks for
		"xds:///svc":      "svc",
		"xds:///svc:1234": "svc:1234",
	}
	for _, target := range slices.Sorted(maps.Keys(targets)) {
		conn := dial(t, addr, "node-"+targets[target], target)
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		if err != nil {
			t.Fatalf("%s: Check: %v", target, err)
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("%s: status %v", target, resp.GetStatus())
		}
	}

	// Every type ACKed at the version sent, on both streams, no NACK.
	waitFor(ctx, t, func() string {
		streams := srv.Streams()
		if len(streams) != len(targets) {
			return fmt.Sprintf("%d streams, want %d", len(streams), len(targets))
		}
		for _, st := range streams {
			lds := ""
			if st.NodeID == "" || st.Peer == "" || st.OpenedAt.IsZero() {
				return fmt.Sprintf("stream %d incomplete: %+v", st.ID, st)
			}
			if len(st.Types) != len(allTypes) {
				return fmt.Sprintf("stream %d (%s) has %d types, want %d", st.ID, st.NodeID, len(st.Types), len(allTypes))
			}
			for i, ts := range st.Types {
				if ts.TypeURL != allTypes[i] {
					return fmt.Sprintf("stream %d type %d = %s, want %s", st.ID, i, ts.TypeURL, allTypes[i])
				}
				if ts.SentVersion == "" || ts.Pending || ts.AckedVersion != ts.SentVersion || ts.ACKs == 0 {
					return fmt.Sprintf("stream %d (%s) %s not ACKed at the version sent: %+v", st.ID, st.NodeID, ts.TypeURL, ts)
				}
				if ts.NACKs != 0 {
					return fmt.Sprintf("stream %d (%s) %s NACKed: %+v", st.ID, st.NodeID, ts.TypeURL, ts)
				}
				if ts.SentResources != 1 {
					return fmt.Sprintf("stream %d %s sent %d resources, want 1", st.ID, ts.TypeURL, ts.SentResources)
				}
				if ts.TypeURL == resource.ListenerType {
					lds = strings.Join(ts.ResourceNames, ",")
				}
			}
			if want := targets["xds:///"+strings.TrimPrefix(st.NodeID, "node-")]; lds != want {
				return fmt.Sprintf("stream %d (%s) asked for Listener %q, want %q", st.ID, st.NodeID, lds, want)
			}
		}
		return ""
	})

	totals := srv.Totals()
	if totals.NACKs != 0 || totals.ACKs < int64(len(targets)*len(allTypes)) || totals.Streams != int64(len(targets)) {
		t.Errorf("Totals = %+v, want no NACK, at least %d ACKs, %d streams", totals, len(targets)*len(allTypes), len(targets))
	}
	wantMetrics := map[string]float64{
		"trellis_xds_streams":                          2,
		`trellis_xds_acks_total{type="cluster"}`:       2,
		`trellis_xds_acks_total{type="listener"}`:      2,
		`trellis_xds_nacks_total{type="cluster"}`:      0,
		`trellis_xds_responses_total{type="endpoint"}`: 2,
	}
	got := gather(t, reg)
	for name, want := range wantMetrics {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}

	// A change reaches the clients and is ACKed; unchanged types are not
	// sent again.
	before := srv.Streams()
	next := clientResources(t, "svc", backend, clusterv3.Cluster_ROUND_ROBIN)
	next[resource.EndpointType]["svc"].(*endpointv3.ClusterLoadAssignment).Endpoints[0].Locality.SubZone = "changed"
	res := c.Apply(next)
	if res.Types[resource.EndpointType].Updated != 1 || res.Types[resource.ClusterType].Updated != 0 {
		t.Fatalf("Apply = %+v, want only the endpoints updated", res.Types)
	}
	waitFor(ctx, t, func() string {
		for i, st := range srv.Streams() {
			for j, ts := range st.Types {
				prev := before[i].Types[j]
				changed := ts.TypeURL == resource.EndpointType
				if changed && (ts.SentVersion == prev.SentVersion || ts.AckedVersion != ts.SentVersion) {
					return fmt.Sprintf("stream %d: endpoints not re-sent and ACKed: %+v", st.ID, ts)
				}
				if !changed && ts.SentNonce != prev.SentNonce {
					return fmt.Sprintf("stream %d: unchanged %s sent again: %+v", st.ID, ts.TypeURL, ts)
				}
			}
		}
		return ""
	})
}

func TestNACKTracked(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	backend := startBackend(t)
	c := xdscache.New(xdscache.Config{Logger: testLogger(t)})
	c.Apply(clientResources(t, "svc", backend, clusterv3.Cluster_MAGLEV))
	reg := prometheus.NewRegistry()
	srv, addr := startServer(t, c, reg)
	dial(t, addr, "nack-node", "xds:///svc").Connect()

	var cds xdsserver.TypeStatus
	waitFor(ctx, t, func() string {
		for _, st := range srv.Streams() {
			for _, ts := range st.Types {
				if ts.TypeURL == resource.ClusterType && ts.NACKs > 0 {
					cds = ts
					return ""
				}
			}
		}
		return fmt.Sprintf("no CDS NACK recorded: %+v", srv.Streams())
	})
	if cds.LastNACKVersion == "" || cds.LastNACKVersion != cds.SentVersion || cds.AckedVersion == cds.SentVersion {
		t.Errorf("NACK not attributed to the version sent: %+v", cds)
	}
	if !strings.Contains(cds.LastNACKError, "MAGLEV") {
		t.Errorf("LastNACKError = %q, want the client's complaint about MAGLEV", cds.LastNACKError)
	}
	if tot := srv.Totals(); tot.NACKs < 1 {
		t.Errorf("Totals.NACKs = %d, want >= 1", tot.NACKs)
	}
	if got := gather(t, reg)[`trellis_xds_nacks_total{type="cluster"}`]; got < 1 {
		t.Errorf("trellis_xds_nacks_total{type=cluster} = %v, want >= 1", got)
	}

	// Fixing the cluster clears the way: the next version is ACKed.
	c.Apply(clientResources(t, "svc", backend, clusterv3.Cluster_ROUND_ROBIN))
	waitFor(ctx, t, func() string {
		for _, st := range srv.Streams() {
			for _, ts := range st.Types {
				if ts.TypeURL == resource.ClusterType && ts.AckedVersion != "" && ts.AckedVersion == ts.SentVersion && ts.SentVersion != cds.SentVersion {
					return ""
				}
			}
		}
		return fmt.Sprintf("fixed cluster not ACKed: %+v", srv.Streams())
	})
	// The rejected cluster was not sent again while it stayed the same:
	// one response, one NACK.
	for _, st := range srv.Streams() {
		for _, ts := range st.Types {
			if ts.TypeURL == resource.ClusterType && ts.NACKs != 1 {
				t.Errorf("CDS NACKed %d times, want once: the rejected version was re-sent", ts.NACKs)
			}
		}
	}
}

func TestServeStopsPromptly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	backend := startBackend(t)
	c := xdscache.New(xdscache.Config{})
	c.Apply(clientResources(t, "svc", backend, clusterv3.Cluster_ROUND_ROBIN))
	srv, err := xdsserver.New(xdsserver.Config{Cache: c, ShutdownGrace: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(serveCtx, lis) }()

	conn := dial(t, lis.Addr().String(), "stop-node", "xds:///svc")
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("Check: %v", err)
	}
	// The ADS stream is open: stopping must not wait for the grace period.
	start := time.Now()
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve = %v, want nil", err)
		}
	case <-ctx.Done():
		t.Fatal("Serve did not return")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Serve took %v to stop with open ADS streams", d)
	}
	if err := srv.Serve(ctx, lis); err == nil {
		t.Error("second Serve succeeded")
	}
}

func TestNewErrors(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := xdscache.New(xdscache.Config{})
	tests := []struct {
		name string
		cfg  xdsserver.Config
	}{
		{name: "no cache", cfg: xdsserver.Config{}},
		{name: "metrics already registered", cfg: xdsserver.Config{Cache: c, Registerer: reg}},
	}
	if _, err := xdsserver.New(xdsserver.Config{Cache: c, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := xdsserver.New(tt.cfg)
			if err == nil || !strings.HasPrefix(err.Error(), "xdsserver: ") {
				t.Fatalf("New = %v, want an xdsserver error", err)
			}
		})
	}
	var are prometheus.AlreadyRegisteredError
	if _, err := xdsserver.New(xdsserver.Config{Cache: c, Registerer: reg}); !errors.As(err, &are) {
		t.Errorf("New with a used registry = %v, want it to wrap AlreadyRegisteredError", err)
	}
}

func TestServeReturnsListenerError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	srv, err := xdsserver.New(xdsserver.Config{Cache: xdscache.New(xdscache.Config{})})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis.Close()
	if err := srv.Serve(ctx, lis); err == nil || !strings.HasPrefix(err.Error(), "xdsserver: ") {
		t.Fatalf("Serve on a closed listener = %v, want an xdsserver error", err)
	}
}
