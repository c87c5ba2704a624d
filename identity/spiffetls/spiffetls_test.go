package spiffetls_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	grpccertprovider "google.golang.org/grpc/credentials/tls/certprovider"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/trellis-mesh/trellis/identity/certprovider"
	"github.com/trellis-mesh/trellis/identity/internal/testca"
	"github.com/trellis-mesh/trellis/identity/spiffetls"
	"github.com/trellis-mesh/trellis/internal/testutil/spiretest"
)

const testTimeout = 60 * time.Second

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// server serves the gRPC health service with creds on 127.0.0.1 and
// records the SPIFFE ID (or the error) PeerID finds for each call.
type server struct {
	addr string
	mu   sync.Mutex
	seen []string
}

func startServer(t *testing.T, creds credentials.TransportCredentials) *server {
	t.Helper()
	s := &server{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = lis.Addr().String()
	gs := grpc.NewServer(grpc.Creds(creds), grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		id, err := spiffetls.PeerID(ctx)
		s.mu.Lock()
		if err != nil {
			s.seen = append(s.seen, "error: "+err.Error())
		} else {
			s.seen = append(s.seen, id.String())
		}
		s.mu.Unlock()
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	done := make(chan error, 1)
	go func() { done <- gs.Serve(lis) }()
	t.Cleanup(func() {
		gs.Stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

func (s *server) lastPeer() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.seen) == 0 {
		return ""
	}
	return s.seen[len(s.seen)-1]
}

// check makes one health call with creds.
func check(t *testing.T, addr string, creds credentials.TransportCredentials) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func provider(t *testing.T, addr string) *certprovider.Provider {
	t.Helper()
	p, err := certprovider.New(certprovider.Config{WorkloadAPIAddr: addr, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// TestMTLSWithSPIRE runs gRPC over mTLS between two workloads whose SVIDs
// come from a real SPIRE, each side authorizing the other by SPIFFE ID.
func TestMTLSWithSPIRE(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{})
	serverAgent := spire.Agent()
	clientAgent := spire.AddAgent(t)
	td := spire.TrustDomain()
	serverID := spiffeid.RequireFromPath(td, "/trellis/control-plane")
	clientID := spiffeid.RequireFromPath(td, "/ns/default/dc/dc1/svc/client")
	otherID := spiffeid.RequireFromPath(td, "/ns/default/dc/dc1/svc/other")
	serverAgent.Register(t, spiretest.Entry{SPIFFEID: serverID.String()})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: clientID.String()})

	serverSrc := provider(t, serverAgent.WorkloadAPIAddr())
	clientSrc := provider(t, clientAgent.WorkloadAPIAddr())
	srv := startServer(t, spiffetls.ServerCredentials(serverSrc, spiffetls.AuthorizeIDs(clientID)))

	if err := check(t, srv.addr, spiffetls.ClientCredentials(clientSrc, spiffetls.AuthorizeIDs(serverID))); err != nil {
		t.Fatalf("mTLS call from %s to %s: %v", clientID, serverID, err)
	}
	if got := srv.lastPeer(); got != clientID.String() {
		t.Errorf("PeerID on the server = %q, want %s", got, clientID)
	}
	// The trust domain of the client's own SVID, by default.
	if err := check(t, srv.addr, spiffetls.ClientCredentials(clientSrc, spiffetls.AuthorizeTrustDomains())); err != nil {
		t.Fatalf("mTLS call accepting the client's own trust domain: %v", err)
	}

	tests := []struct {
		name    string
		creds   credentials.TransportCredentials
		wantErr string
	}{
		{
			name:    "client refuses a server with another ID",
			creds:   spiffetls.ClientCredentials(clientSrc, spiffetls.AuthorizeIDs(otherID)),
			wantErr: "not one of the accepted SPIFFE IDs",
		},
		{
			name:    "client refuses a server of another trust domain",
			creds:   spiffetls.ClientCredentials(clientSrc, spiffetls.AuthorizeTrustDomains(spiffeid.RequireTrustDomainFromString("other.test"))),
			wantErr: "not in an accepted trust domain",
		},
		{
			name:  "server refuses a client with another ID",
			creds: spiffetls.ClientCredentials(serverSrc, spiffetls.AuthorizeIDs(serverID)),
		},
		{
			name:  "server refuses a plaintext client",
			creds: insecure.NewCredentials(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := check(t, srv.addr, tt.creds)
			if err == nil {
				t.Fatal("call succeeded")
			}
			if tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("call failed with %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// staticSource serves fixed key material, or an error.
type staticSource struct {
	km  *grpccertprovider.KeyMaterial
	err error
}

func (s staticSource) KeyMaterial(context.Context) (*grpccertprovider.KeyMaterial, error) {
	return s.km, s.err
}

func bundleMap(cas ...*testca.CA) map[string]*spiffebundle.Bundle {
	m := map[string]*spiffebundle.Bundle{}
	for _, ca := range cas {
		m[ca.TrustDomain.Name()] = spiffebundle.FromX509Authorities(ca.TrustDomain, []*x509.Certificate{ca.Cert})
	}
	return m
}

// TestHandshakeEdgeCases covers peers a SPIRE deployment does not produce
// on demand: other trust domains, expired SVIDs, certificates without a
// SPIFFE ID, and a local source without key material.
func TestHandshakeEdgeCases(t *testing.T) {
	hour := time.Now().Add(time.Hour)
	trellis := testca.New(t, "trellis.test")
	other := testca.New(t, "other.test")
	serverID := "spiffe://trellis.test/trellis/control-plane"
	serverSrc := staticSource{km: &grpccertprovider.KeyMaterial{
		Certs:           []tls.Certificate{trellis.Issue(t, serverID, hour)},
		SPIFFEBundleMap: bundleMap(trellis, other),
	}}
	srv := startServer(t, spiffetls.ServerCredentials(serverSrc, spiffetls.AuthorizeTrustDomains()))

	client := func(cert tls.Certificate, cas ...*testca.CA) staticSource {
		return staticSource{km: &grpccertprovider.KeyMaterial{Certs: []tls.Certificate{cert}, SPIFFEBundleMap: bundleMap(cas...)}}
	}
	rootsOnly := func(cert tls.Certificate, ca *testca.CA) staticSource {
		pool := x509.NewCertPool()
		pool.AddCert(ca.Cert)
		return staticSource{km: &grpccertprovider.KeyMaterial{Certs: []tls.Certificate{cert}, Roots: pool}}
	}
	tests := []struct {
		name    string
		src     spiffetls.Source
		trust   spiffetls.Authorizer // of the client; default: its own trust domain
		wantErr string               // the client's error, with wantPeer == ""
		// serverErr is the server's error in a handshake it refuses (the
		// client may only see a closed connection).
		serverErr string
		wantPeer  string
	}{
		{
			name:     "same trust domain",
			src:      client(trellis.Issue(t, "spiffe://trellis.test/a", hour), trellis),
			wantPeer: "spiffe://trellis.test/a",
		},
		{
			name:     "roots without a bundle map",
			src:      rootsOnly(trellis.Issue(t, "spiffe://trellis.test/b", hour), trellis),
			wantPeer: "spiffe://trellis.test/b",
		},
		{
			// Its chain verifies (the server holds other.test's bundle)
			// but the server accepts only its own trust domain.
			name:      "client of a federated trust domain not accepted",
			src:       client(other.Issue(t, "spiffe://other.test/a", hour), trellis, other),
			trust:     spiffetls.AuthorizeAny(),
			serverErr: "spiffe://other.test/a is not in an accepted trust domain [trellis.test]",
		},
		{
			name:      "expired client SVID",
			src:       client(trellis.Issue(t, "spiffe://trellis.test/old", time.Now().Add(-time.Minute)), trellis),
			serverErr: "expired",
		},
		{
			name: "client certificate without a SPIFFE ID",
			src:  client(trellis.Issue(t, "", hour), trellis),
			// The client itself refuses to use it.
			wantErr: "not an X.509 SVID",
		},
		{
			name:    "client without trust in the server's trust domain",
			src:     client(other.Issue(t, "spiffe://other.test/b", hour), other),
			wantErr: "trellis.test",
		},
		{
			name:    "client without key material",
			src:     staticSource{err: errors.New("no X.509 SVID from the Workload API at unix:///nowhere.sock")},
			wantErr: "no X.509 SVID from the Workload API",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			trust := tt.trust
			if trust == nil {
				trust = spiffetls.AuthorizeTrustDomains()
			}
			err := check(t, srv.addr, spiffetls.ClientCredentials(tt.src, trust))
			if tt.wantPeer != "" {
				if err != nil {
					t.Fatalf("call failed: %v", err)
				}
				if got := srv.lastPeer(); got != tt.wantPeer {
					t.Fatalf("server saw %q, want %s", got, tt.wantPeer)
				}
				return
			}
			if err == nil {
				t.Fatalf("call succeeded; server saw %q", srv.lastPeer())
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("call failed with %v, want an error containing %q", err, tt.wantErr)
			}
			if tt.serverErr != "" {
				err := serverHandshake(t, spiffetls.ServerConfig(serverSrc, spiffetls.AuthorizeTrustDomains()), tt.src.(staticSource).km)
				if err == nil || !strings.Contains(err.Error(), tt.serverErr) {
					t.Fatalf("server handshake: %v, want an error containing %q", err, tt.serverErr)
				}
			}
		})
	}
}

// serverHandshake runs a TLS handshake between cfg and a client presenting
// km's certificate over an in-memory connection, and returns the server's
// error.
func serverHandshake(t *testing.T, cfg *tls.Config, km *grpccertprovider.KeyMaterial) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	sc, cc := net.Pipe()
	defer sc.Close()
	defer cc.Close()
	clientDone := make(chan struct{})
	go func() {
		defer close(clientDone)
		c := tls.Client(cc, &tls.Config{Certificates: km.Certs, InsecureSkipVerify: true, NextProtos: []string{"h2"}})
		_ = c.HandshakeContext(ctx) // the server's verdict is what matters
		// Read so that the server can complete a TLS 1.3 handshake.
		_, _ = c.Read(make([]byte, 1))
	}()
	err := tls.Server(sc, cfg).HandshakeContext(ctx)
	sc.Close()
	<-clientDone
	return err
}

func TestAuthorizers(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("trellis.test")
	other := spiffeid.RequireTrustDomainFromString("other.test")
	self := spiffeid.RequireFromPath(td, "/self")
	a := spiffeid.RequireFromPath(td, "/a")
	b := spiffeid.RequireFromPath(td, "/b")
	x := spiffeid.RequireFromPath(other, "/x")
	tests := []struct {
		name   string
		auth   spiffetls.Authorizer
		accept []spiffeid.ID
		refuse []spiffeid.ID
	}{
		{name: "any", auth: spiffetls.AuthorizeAny(), accept: []spiffeid.ID{a, x}},
		{name: "IDs", auth: spiffetls.AuthorizeIDs(a), accept: []spiffeid.ID{a}, refuse: []spiffeid.ID{b, x}},
		{name: "no IDs", auth: spiffetls.AuthorizeIDs(), refuse: []spiffeid.ID{a}},
		{name: "own trust domain", auth: spiffetls.AuthorizeTrustDomains(), accept: []spiffeid.ID{a, b}, refuse: []spiffeid.ID{x}},
		{name: "listed trust domain", auth: spiffetls.AuthorizeTrustDomains(other), accept: []spiffeid.ID{x}, refuse: []spiffeid.ID{a}},
		{name: "either", auth: spiffetls.AuthorizeEither(spiffetls.AuthorizeIDs(a), spiffetls.AuthorizeTrustDomains(other)), accept: []spiffeid.ID{a, x}, refuse: []spiffeid.ID{b}},
		{name: "either of none", auth: spiffetls.AuthorizeEither(), refuse: []spiffeid.ID{a}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, id := range tt.accept {
				if err := tt.auth(id, self); err != nil {
					t.Errorf("refused %s: %v", id, err)
				}
			}
			for _, id := range tt.refuse {
				if err := tt.auth(id, self); err == nil {
					t.Errorf("accepted %s", id)
				} else if !strings.Contains(err.Error(), id.String()) {
					t.Errorf("refusal of %s does not name it: %v", id, err)
				}
			}
		})
	}
}

// otherAuth is the auth info of a non-TLS transport.
type otherAuth struct{}

func (otherAuth) AuthType() string { return "alts" }

func TestPeerIDFromAuthInfo(t *testing.T) {
	ca := testca.New(t, "trellis.test")
	svid := ca.Issue(t, "spiffe://trellis.test/a", time.Now().Add(time.Hour))
	plain := ca.Issue(t, "", time.Now().Add(time.Hour))
	id, _ := url.Parse("spiffe://trellis.test/b")
	tests := []struct {
		name    string
		info    credentials.AuthInfo
		want    string
		wantErr string
	}{
		{name: "no auth info", info: nil, wantErr: "not connect over TLS"},
		{name: "not TLS", info: otherAuth{}, wantErr: "connected with alts"},
		{name: "SPIFFE ID found by grpc", info: credentials.TLSInfo{SPIFFEID: id}, want: "spiffe://trellis.test/b"},
		{name: "leaf certificate", info: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{svid.Leaf}}}, want: "spiffe://trellis.test/a"},
		{name: "pointer", info: &credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{svid.Leaf}}}, want: "spiffe://trellis.test/a"},
		{name: "no certificate", info: credentials.TLSInfo{}, wantErr: "no certificate"},
		{name: "not an SVID", info: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{plain.Leaf}}}, wantErr: "not an X.509 SVID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := spiffetls.PeerIDFromAuthInfo(tt.info)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("PeerIDFromAuthInfo = %v, %v; want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got.String() != tt.want {
				t.Fatalf("PeerIDFromAuthInfo = %v, %v; want %s", got, err, tt.want)
			}
		})
	}
}

// TestSourceAdapters: a Source seen through go-spiffe's interfaces.
func TestSourceAdapters(t *testing.T) {
	ca := testca.New(t, "trellis.test")
	src := staticSource{km: &grpccertprovider.KeyMaterial{
		Certs:           []tls.Certificate{ca.Issue(t, "spiffe://trellis.test/a", time.Now().Add(time.Hour))},
		SPIFFEBundleMap: bundleMap(ca),
	}}
	svid, err := spiffetls.SVIDSource(src).GetX509SVID()
	if err != nil || svid.ID.String() != "spiffe://trellis.test/a" || len(svid.Certificates) == 0 || svid.PrivateKey == nil {
		t.Fatalf("GetX509SVID = %+v, %v", svid, err)
	}
	td := spiffeid.RequireTrustDomainFromString("trellis.test")
	b, err := spiffetls.BundleSource(src).GetX509BundleForTrustDomain(td)
	if err != nil || !b.HasX509Authority(ca.Cert) {
		t.Fatalf("GetX509BundleForTrustDomain(%s) = %v, %v", td, b, err)
	}
	if _, err := spiffetls.BundleSource(src).GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.test")); err == nil || !strings.Contains(err.Error(), `no trust bundle for trust domain "other.test"`) {
		t.Errorf("bundle of an unknown trust domain: %v", err)
	}
	if _, err := spiffetls.SVIDSource(staticSource{err: errors.New("no SVID yet")}).GetX509SVID(); err == nil || !strings.Contains(err.Error(), "no SVID yet") {
		t.Errorf("SVID of an empty source: %v", err)
	}
	if cfg := spiffetls.ServerConfig(src, spiffetls.AuthorizeAny()); !cfg.SessionTicketsDisabled || cfg.ClientAuth != tls.RequireAnyClientCert {
		t.Errorf("server config: session tickets disabled %t, client auth %v", cfg.SessionTicketsDisabled, cfg.ClientAuth)
	}
}
