package xdsserver_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// testScope lets every peer receive the resources of the services in
// allowed.
type testScope struct {
	mu      sync.Mutex
	allowed map[string]bool
	changed chan struct{}
}

func (s *testScope) Identify(ctx context.Context) (string, error) {
	return "workload", nil
}

func (s *testScope) Allow(string) (func(string, string) bool, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	allowed := s.allowed
	return func(_, name string) bool { return allowed[name] }, s.changed
}

// set replaces the allowed services and tells the streams.
func (s *testScope) set(services ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.allowed = map[string]bool{}
	for _, svc := range services {
		s.allowed[svc] = true
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

func startScopedServer(t *testing.T, c *xdscache.Cache, reg prometheus.Registerer, scope xdsserver.Scope) string {
	t.Helper()
	srv, err := xdsserver.New(xdsserver.Config{Cache: c, Registerer: reg, Logger: testLogger(t), Scope: scope})
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
	return lis.Addr().String()
}

// TestScope serves two services under a scope that allows one: a raw ADS
// stream asking for both (and for the wildcard) gets only the allowed one,
// and the withheld names are counted; real gRPC clients of the allowed
// service work; a change of scope is followed, both ways, by the clients.
func TestScope(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	backend := startBackend(t)
	c := xdscache.New(xdscache.Config{Logger: testLogger(t)})
	all := clientResources(t, "allowed", backend, clusterv3.Cluster_ROUND_ROBIN)
	for typeURL, named := range clientResources(t, "other", backend, clusterv3.Cluster_ROUND_ROBIN) {
		for name, r := range named {
			all[typeURL][name] = r
		}
	}
	if res := c.Apply(all); res.Err != nil {
		t.Fatal(res.Err)
	}
	scope := &testScope{allowed: map[string]bool{"allowed": true}, changed: make(chan struct{})}
	reg := prometheus.NewRegistry()
	addr := startScopedServer(t, c, reg, scope)

	t.Run("raw stream", func(t *testing.T) {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		for _, names := range [][]string{{"allowed", "other"}, {"*"}} {
			// One stream per request: a first request is answered at once.
			sctx, scancel := context.WithCancel(ctx)
			st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "raw"}, TypeUrl: resource.ClusterType, ResourceNames: names}); err != nil {
				t.Fatal(err)
			}
			resp, err := st.Recv()
			scancel()
			if err != nil {
				t.Fatalf("request %v: %v", names, err)
			}
			var got []string
			for _, r := range resp.GetResources() {
				var cl clusterv3.Cluster
				if err := r.UnmarshalTo(&cl); err != nil {
					t.Fatal(err)
				}
				got = append(got, cl.GetName())
			}
			want := "allowed"
			if names[0] == "*" {
				want = ""
			}
			if strings.Join(got, ",") != want {
				t.Errorf("request %v: clusters %v, want [%s]", names, got, want)
			}
		}
		if got := gather(t, reg)[`trellis_xds_scope_denied_total{type="cluster"}`]; got < 2 {
			t.Errorf("trellis_xds_scope_denied_total{cluster} = %v, want at least 2 (other, *)", got)
		}
	})

	allowed := dial(t, addr, "client-a", "xds:///allowed")
	other := dial(t, addr, "client-b", "xds:///other")
	check := func(conn *grpc.ClientConn) error {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		defer ccancel()
		_, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{})
		return err
	}
	waitFor(ctx, t, func() string {
		if err := check(allowed); err != nil {
			return "allowed service: " + err.Error()
		}
		return ""
	})

	// other's Listener is withheld: its channel gets no configuration.
	if err := check(other); status.Code(err) != codes.DeadlineExceeded && status.Code(err) != codes.Unavailable {
		t.Fatalf("call to a withheld service: %v, want it to fail", err)
	}

	scope.set("allowed", "other")
	waitFor(ctx, t, func() string {
		if err := check(other); err != nil {
			return "other service after it was allowed: " + err.Error()
		}
		return ""
	})

	scope.set("allowed")
	waitFor(ctx, t, func() string {
		err := check(other)
		if err == nil {
			return "other service still answers after it was withheld again"
		}
		if !strings.Contains(err.Error(), `resource "other" of type "ListenerResource" has been removed`) {
			return "other service: want its Listener removed, got " + err.Error()
		}
		return ""
	})
	if err := check(allowed); err != nil {
		t.Errorf("allowed service after the scope changed: %v", err)
	}
}
