package spiretest_test

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/trellis-mesh/trellis/internal/testutil/spiretest"
)

const testTimeout = 90 * time.Second

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestStartServesRegisteredWorkload(t *testing.T) {
	s := spiretest.Start(t, spiretest.Options{TrustDomain: "example.test"})
	if got := s.TrustDomain().Name(); got != "example.test" {
		t.Errorf("TrustDomain() = %s, want example.test", got)
	}
	if !strings.HasPrefix(s.WorkloadAPIAddr(), "unix:///") || !strings.HasSuffix(s.WorkloadAPIAddr(), s.SocketPath()) {
		t.Errorf("WorkloadAPIAddr() = %q, want unix:// + %s", s.WorkloadAPIAddr(), s.SocketPath())
	}
	if len(s.SocketPath()) >= 108 {
		t.Errorf("socket path %q is too long for a unix socket", s.SocketPath())
	}

	id := spiffeid.RequireFromPath(s.TrustDomain(), "/svc/echo")
	s.RegisterWorkload(t, spiretest.Entry{SPIFFEID: id.String(), X509SVIDTTL: 120 * time.Second})

	c := s.Agent().FetchX509Context(t)
	if len(c.SVIDs) != 1 || c.SVIDs[0].ID != id {
		t.Fatalf("agent serves %d SVIDs, want exactly %s", len(c.SVIDs), id)
	}
	leaf := c.SVIDs[0].Certificates[0]
	if ttl := leaf.NotAfter.Sub(time.Now()); ttl > 125*time.Second || ttl < 60*time.Second {
		t.Errorf("SVID expires in %s, want about the 120 s of the entry", ttl)
	}
	bundle, ok := c.Bundles.Get(s.TrustDomain())
	if !ok {
		t.Fatalf("no bundle for %s from the Workload API", s.TrustDomain())
	}
	if !bundle.Equal(s.Bundle(t)) {
		t.Errorf("Workload API bundle differs from the server's")
	}
}

// TestAgentsServeDifferentIdentities is the pattern mTLS tests use: two
// agents, each serving its own identity to the same test process, and a
// gRPC mTLS call between them that checks both SPIFFE IDs.
func TestAgentsServeDifferentIdentities(t *testing.T) {
	s := spiretest.Start(t, spiretest.Options{})
	serverAgent, clientAgent := s.Agent(), s.AddAgent(t)
	if serverAgent.NodeID() == clientAgent.NodeID() || serverAgent.SocketPath() == clientAgent.SocketPath() {
		t.Fatalf("agents share node %s or socket %s", serverAgent.NodeID(), serverAgent.SocketPath())
	}
	serverID := spiffeid.RequireFromPath(s.TrustDomain(), "/svc/server")
	clientID := spiffeid.RequireFromPath(s.TrustDomain(), "/svc/client")
	serverAgent.Register(t, spiretest.Entry{SPIFFEID: serverID.String()})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: clientID.String()})

	// Each agent serves only its own entries.
	for _, tc := range []struct {
		agent *spiretest.Agent
		want  spiffeid.ID
	}{{serverAgent, serverID}, {clientAgent, clientID}} {
		c := tc.agent.FetchX509Context(t)
		if len(c.SVIDs) != 1 || c.SVIDs[0].ID != tc.want {
			var ids []string
			for _, svid := range c.SVIDs {
				ids = append(ids, svid.ID.String())
			}
			t.Fatalf("agent %s serves %v, want only %s", tc.agent.NodeID(), ids, tc.want)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	serverSource := source(ctx, t, serverAgent.WorkloadAPIAddr())
	clientSource := source(ctx, t, clientAgent.WorkloadAPIAddr())

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan spiffeid.ID, 1)
	srv := grpc.NewServer(
		grpc.Creds(grpccredentials.MTLSServerCredentials(serverSource, serverSource, tlsconfig.AuthorizeID(clientID))),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if id, ok := grpccredentials.PeerIDFromContext(ctx); ok {
				select {
				case seen <- id:
				default:
				}
			}
			return h(ctx, req)
		}),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	defer func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	call := func(authorize tlsconfig.Authorizer) error {
		conn, err := grpc.NewClient(lis.Addr().String(),
			grpc.WithTransportCredentials(grpccredentials.MTLSClientCredentials(clientSource, clientSource, authorize)))
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	if err := call(tlsconfig.AuthorizeID(serverID)); err != nil {
		t.Fatalf("mTLS call %s -> %s: %v", clientID, serverID, err)
	}
	if got := <-seen; got != clientID {
		t.Errorf("server saw client %s, want %s", got, clientID)
	}
	if err := call(tlsconfig.AuthorizeID(clientID)); err == nil {
		t.Errorf("client accepted server %s while expecting %s", serverID, clientID)
	}
}

func source(ctx context.Context, t *testing.T, addr string) *workloadapi.X509Source {
	t.Helper()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
	if err != nil {
		t.Fatalf("X509Source(%s): %v", addr, err)
	}
	t.Cleanup(func() {
		if err := src.Close(); err != nil {
			t.Errorf("close X509Source: %v", err)
		}
	})
	return src
}

func TestStopStartAgent(t *testing.T) {
	s := spiretest.Start(t, spiretest.Options{})
	id := spiffeid.RequireFromPath(s.TrustDomain(), "/svc/echo")
	s.RegisterWorkload(t, spiretest.Entry{SPIFFEID: id.String()})

	s.StopAgent(t)
	if _, err := os.Stat(s.SocketPath()); !os.IsNotExist(err) {
		t.Errorf("socket %s still there after StopAgent: %v", s.SocketPath(), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(s.WorkloadAPIAddr())); err == nil {
		t.Error("fetched an SVID from a stopped agent")
	}

	// The agent attests again as the same node: its entries come back.
	s.StartAgent(t)
	if got := s.Agent().WaitForSVID(t, id); got.ID != id {
		t.Errorf("after restart the agent serves %s, want %s", got.ID, id)
	}
}

func TestFederatedBundle(t *testing.T) {
	a := spiretest.Start(t, spiretest.Options{TrustDomain: "a.test"})
	b := spiretest.Start(t, spiretest.Options{TrustDomain: "b.test"})
	a.SetFederatedBundle(t, b.Bundle(t))
	id := spiffeid.RequireFromPath(a.TrustDomain(), "/svc/echo")
	a.RegisterWorkload(t, spiretest.Entry{SPIFFEID: id.String(), FederatesWith: []string{"b.test"}})

	deadline := time.Now().Add(testTimeout)
	for {
		c := a.Agent().FetchX509Context(t)
		if got, ok := c.Bundles.Get(b.TrustDomain()); ok {
			if !got.Equal(b.Bundle(t)) {
				t.Errorf("federated bundle differs from b.test's")
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the Workload API never delivered the b.test bundle (has %d bundles)", c.Bundles.Len())
		}
		time.Sleep(200 * time.Millisecond)
	}
}
