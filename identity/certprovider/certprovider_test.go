package certprovider_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	grpccertprovider "google.golang.org/grpc/credentials/tls/certprovider"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/identity/certprovider"
	"github.com/trellis-mesh/trellis/internal/testutil/logtest"
	"github.com/trellis-mesh/trellis/internal/testutil/spiretest"
)

const testTimeout = 90 * time.Second

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func serviceID(t *testing.T, td spiffeid.TrustDomain, service string) spiffeid.ID {
	t.Helper()
	id, err := identity.DefaultScheme().ID(identity.Workload{TrustDomain: td, Datacenter: "dc1", Service: service})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// buildFromBootstrap builds a provider the way grpc-go's xDS credentials
// do: from the bootstrap fragment, through the plugin registry.
func buildFromBootstrap(t *testing.T, cfg identity.ProviderConfig) grpccertprovider.Provider {
	t.Helper()
	frag, err := identity.ProviderFragment(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var entry struct {
		PluginName string          `json:"plugin_name"`
		Config     json.RawMessage `json:"config"`
	}
	if err := json.Unmarshal(frag, &entry); err != nil {
		t.Fatal(err)
	}
	p, err := grpccertprovider.GetProvider(entry.PluginName, entry.Config, grpccertprovider.BuildOptions{WantIdentity: true, WantRoot: true})
	if err != nil {
		t.Fatalf("GetProvider(%s): %v", frag, err)
	}
	t.Cleanup(p.Close)
	return p
}

func keyMaterial(t *testing.T, p grpccertprovider.Provider) *grpccertprovider.KeyMaterial {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	km, err := p.KeyMaterial(ctx)
	if err != nil {
		t.Fatalf("KeyMaterial: %v", err)
	}
	return km
}

func leafID(t *testing.T, km *grpccertprovider.KeyMaterial) spiffeid.ID {
	t.Helper()
	if len(km.Certs) != 1 || km.Certs[0].Leaf == nil || len(km.Certs[0].Leaf.URIs) != 1 {
		t.Fatalf("KeyMaterial has %d certificates, want one leaf with one URI SAN", len(km.Certs))
	}
	id, err := spiffeid.FromURI(km.Certs[0].Leaf.URIs[0])
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestPluginServesSVID(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{})
	want := serviceID(t, spire.TrustDomain(), "echo")
	spire.RegisterWorkload(t, spiretest.Entry{SPIFFEID: want.String()})

	p := buildFromBootstrap(t, identity.ProviderConfig{WorkloadAPIAddr: spire.WorkloadAPIAddr()})
	km := keyMaterial(t, p)

	if got := leafID(t, km); got != want {
		t.Errorf("SVID is %s, want %s", got, want)
	}
	leaf := km.Certs[0].Leaf
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: km.Roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("SVID does not verify against Roots: %v", err)
	}
	bundle, ok := km.SPIFFEBundleMap[spire.TrustDomain().Name()]
	if !ok || len(km.SPIFFEBundleMap) != 1 {
		t.Fatalf("SPIFFEBundleMap has %d trust domains, want only %s", len(km.SPIFFEBundleMap), spire.TrustDomain())
	}
	for _, ca := range spire.Bundle(t).X509Authorities() {
		if !bundle.HasX509Authority(ca) {
			t.Errorf("SPIFFEBundleMap lacks the server CA %s", ca.Subject)
		}
	}
}

// TestPluginOwnTrustDomainRoots: a workload whose entry federates with
// another trust domain gets that domain's bundle from the Workload API;
// with roots "own_trust_domain" the provider hands gRPC only its own.
func TestPluginOwnTrustDomainRoots(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{TrustDomain: "trellis.test"})
	other := spiretest.Start(t, spiretest.Options{TrustDomain: "other.test"})
	spire.SetFederatedBundle(t, other.Bundle(t))
	id := serviceID(t, spire.TrustDomain(), "echo")
	spire.RegisterWorkload(t, spiretest.Entry{SPIFFEID: id.String(), FederatesWith: []string{"other.test"}})

	domains := func(km *grpccertprovider.KeyMaterial) []string {
		var out []string
		for td := range km.SPIFFEBundleMap {
			out = append(out, td)
		}
		slices.Sort(out)
		return out
	}
	all := buildFromBootstrap(t, identity.ProviderConfig{WorkloadAPIAddr: spire.WorkloadAPIAddr()})
	// The federated bundle reaches the agent some time after the entry.
	deadline := time.Now().Add(testTimeout)
	for got := domains(keyMaterial(t, all)); !slices.Equal(got, []string{"other.test", "trellis.test"}); got = domains(keyMaterial(t, all)) {
		if time.Now().After(deadline) {
			t.Fatalf("roots \"all\": trust domains %v, want other.test and trellis.test", got)
		}
		time.Sleep(200 * time.Millisecond)
	}
	own := keyMaterial(t, buildFromBootstrap(t, identity.ProviderConfig{WorkloadAPIAddr: spire.WorkloadAPIAddr(), Roots: identity.RootsOwnTrustDomain}))
	if got := domains(own); !slices.Equal(got, []string{"trellis.test"}) {
		t.Errorf("roots \"own_trust_domain\": trust domains %v, want only trellis.test", got)
	}
	if got := leafID(t, own); got != id {
		t.Errorf("SVID is %s, want %s", got, id)
	}
	for _, ca := range other.Bundle(t).X509Authorities() {
		if _, err := ca.Verify(x509.VerifyOptions{Roots: own.Roots}); err == nil {
			t.Errorf("Roots of own_trust_domain hold the other.test CA %s", ca.Subject)
		}
	}
}

func TestPluginPicksSVIDBySPIFFEID(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{})
	first := serviceID(t, spire.TrustDomain(), "first")
	second := serviceID(t, spire.TrustDomain(), "second")
	spire.RegisterWorkload(t, spiretest.Entry{SPIFFEID: first.String()})
	spire.RegisterWorkload(t, spiretest.Entry{SPIFFEID: second.String()})

	for _, want := range []spiffeid.ID{first, second} {
		p := buildFromBootstrap(t, identity.ProviderConfig{WorkloadAPIAddr: spire.WorkloadAPIAddr(), SPIFFEID: want.String()})
		if got := leafID(t, keyMaterial(t, p)); got != want {
			t.Errorf("spiffe_id %s: SVID is %s", want, got)
		}
	}
}

func TestProviderRotates(t *testing.T) {
	// SPIRE backdates SVIDs by 10 s and the agent rotates at half life:
	// with a 30 s TTL a new SVID comes about 10 s after the first.
	spire := spiretest.Start(t, spiretest.Options{})
	want := serviceID(t, spire.TrustDomain(), "echo")
	spire.RegisterWorkload(t, spiretest.Entry{SPIFFEID: want.String(), X509SVIDTTL: 30 * time.Second})

	p := buildFromBootstrap(t, identity.ProviderConfig{WorkloadAPIAddr: spire.WorkloadAPIAddr()})
	first := keyMaterial(t, p).Certs[0].Leaf

	deadline := time.Now().Add(testTimeout)
	for {
		km := keyMaterial(t, p)
		leaf := km.Certs[0].Leaf
		if leaf.SerialNumber.Cmp(first.SerialNumber) != 0 {
			if got := leafID(t, km); got != want {
				t.Errorf("rotated SVID is %s, want %s", got, want)
			}
			if !leaf.NotAfter.After(first.NotAfter) {
				t.Errorf("rotated SVID expires %s, not after the first (%s)", leaf.NotAfter, first.NotAfter)
			}
			// The identity certificate must still match its key.
			if _, err := tls.X509KeyPair(encodePEM(km.Certs[0]), encodeKey(t, km.Certs[0])); err != nil {
				t.Errorf("rotated certificate and key do not match: %v", err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no rotation within %s; SVID %s expires %s", testTimeout, first.SerialNumber, first.NotAfter)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func TestProviderWithoutWorkloadAPI(t *testing.T) {
	addr := "unix://" + filepath.Join(t.TempDir(), "missing.sock")
	p, err := certprovider.New(certprovider.Config{WorkloadAPIAddr: addr, Logger: discardLogger()})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer p.Close()

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	_, err = p.KeyMaterial(ctx)
	if err == nil {
		t.Fatal("KeyMaterial succeeded without a Workload API")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("KeyMaterial blocked until the deadline instead of reporting the failure: %v", err)
	}
	t.Logf("KeyMaterial error: %v", err)
	for _, want := range []string{"certprovider:", "no X.509 SVID from the Workload API at " + addr, "no such file or directory"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("KeyMaterial error %q does not contain %q", err, want)
		}
	}
}

func TestPluginConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		env     string
		config  string
		wantErr string
	}{
		{name: "no address anywhere", config: `{}`, wantErr: "SPIFFE_ENDPOINT_SOCKET"},
		{name: "unknown field", env: "unix:///a.sock", config: `{"workload_api_socket": "unix:///a.sock"}`, wantErr: "unknown field"},
		{name: "relative socket", config: `{"workload_api_addr": "unix://a.sock"}`, wantErr: "workload_api_addr"},
		{name: "bad spiffe_id", env: "unix:///a.sock", config: `{"spiffe_id": "echo"}`, wantErr: "spiffe_id"},
		{name: "not an object", config: `[]`, wantErr: "fields: workload_api_addr, spiffe_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("SPIFFE_ENDPOINT_SOCKET", tt.env)
			_, err := grpccertprovider.ParseConfig(certprovider.PluginName, json.RawMessage(tt.config))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseConfig(%s) error = %v, want it to contain %q", tt.config, err, tt.wantErr)
			}
		})
	}

	t.Run("address from the environment", func(t *testing.T) {
		t.Setenv("SPIFFE_ENDPOINT_SOCKET", "unix:///run/spire/agent.sock")
		bc, err := grpccertprovider.ParseConfig(certprovider.PluginName, json.RawMessage(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(bc.String(), "unix:///run/spire/agent.sock") {
			t.Errorf("config %s does not use SPIFFE_ENDPOINT_SOCKET", bc)
		}
	})
}

// TestProviderSurvivesAgentRestart: an agent that is down before the first
// SVID gives a clear error and the provider keeps retrying; once it has an
// SVID, an agent outage keeps the last SVID served.
func TestProviderSurvivesAgentRestart(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{})
	want := serviceID(t, spire.TrustDomain(), "echo")
	spire.RegisterWorkload(t, spiretest.Entry{SPIFFEID: want.String()})
	spire.StopAgent(t)

	logs := &logtest.Recorder{}
	p, err := certprovider.New(certprovider.Config{WorkloadAPIAddr: spire.WorkloadAPIAddr(), Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, err := p.KeyMaterial(ctx); err == nil || !strings.Contains(err.Error(), spire.SocketPath()) {
		t.Fatalf("KeyMaterial with the agent down = %v, want an error naming %s", err, spire.SocketPath())
	}

	spire.StartAgent(t)
	var km *grpccertprovider.KeyMaterial
	for km == nil {
		km, err = p.KeyMaterial(ctx)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("no SVID after the agent came back: %v", err)
			}
			km = nil
			time.Sleep(200 * time.Millisecond)
		}
	}
	if got := leafID(t, km); got != want {
		t.Fatalf("SVID is %s, want %s", got, want)
	}
	serial := km.Certs[0].Leaf.SerialNumber

	spire.StopAgent(t)
	logs.WaitFor(t, "Workload API failed; serving the last X.509 SVID", testTimeout)
	km, err = p.KeyMaterial(ctx)
	if err != nil {
		t.Fatalf("KeyMaterial with the agent down after an SVID: %v", err)
	}
	if km.Certs[0].Leaf.SerialNumber.Cmp(serial) != 0 {
		t.Errorf("SVID changed while the agent was down")
	}
}

// TestProviderReportsExpiry: an SVID that expires while the agent is down is
// kept and reported.
func TestProviderReportsExpiry(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{})
	want := serviceID(t, spire.TrustDomain(), "echo")
	spire.RegisterWorkload(t, spiretest.Entry{SPIFFEID: want.String(), X509SVIDTTL: 15 * time.Second})

	logs := &logtest.Recorder{}
	p, err := certprovider.New(certprovider.Config{WorkloadAPIAddr: spire.WorkloadAPIAddr(), Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	km := keyMaterial(t, p)
	spire.StopAgent(t)
	// The last SVID received before the agent stopped.
	logs.WaitFor(t, "Workload API failed", testTimeout)
	km = keyMaterial(t, p)
	notAfter := km.Certs[0].Leaf.NotAfter
	if wait := time.Until(notAfter); wait > 30*time.Second {
		t.Fatalf("SVID expires in %s, want at most the 15 s TTL", wait)
	}
	rec := logs.WaitFor(t, "X.509 SVID expired", testTimeout)
	if rec.Level != slog.LevelError {
		t.Errorf("expiry logged at %s, want ERROR", rec.Level)
	}
	if time.Now().Before(notAfter) {
		t.Errorf("expiry reported before NotAfter %s", notAfter)
	}
	after := keyMaterial(t, p)
	if after.Certs[0].Leaf.SerialNumber.Cmp(km.Certs[0].Leaf.SerialNumber) != 0 {
		t.Errorf("the expired SVID was replaced while the agent was down")
	}
}

// TestMTLSWithKeyMaterial runs a gRPC mTLS handshake between two workloads
// with different SPIFFE IDs, each configured only from its provider's
// KeyMaterial the way grpc-go's xDS credentials use it: identity
// certificates, roots per trust domain from SPIFFEBundleMap, and an exact
// match on the peer's SPIFFE ID.
func TestMTLSWithKeyMaterial(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{})
	serverAgent := spire.Agent()
	clientAgent := spire.AddAgent(t)
	serverID := serviceID(t, spire.TrustDomain(), "server")
	clientID := serviceID(t, spire.TrustDomain(), "client")
	serverAgent.Register(t, spiretest.Entry{SPIFFEID: serverID.String()})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: clientID.String()})

	serverKM := keyMaterial(t, buildFromBootstrap(t, identity.ProviderConfig{WorkloadAPIAddr: serverAgent.WorkloadAPIAddr()}))
	clientKM := keyMaterial(t, buildFromBootstrap(t, identity.ProviderConfig{WorkloadAPIAddr: clientAgent.WorkloadAPIAddr()}))
	if leafID(t, serverKM) != serverID || leafID(t, clientKM) != clientID {
		t.Fatalf("SVIDs are %s and %s, want %s and %s", leafID(t, serverKM), leafID(t, clientKM), serverID, clientID)
	}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seenClient string
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{
			Certificates:          serverKM.Certs,
			ClientAuth:            tls.RequireAnyClientCert,
			VerifyPeerCertificate: verifySPIFFE(serverKM, clientID, x509.ExtKeyUsageClientAuth),
		})),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if p, ok := peer.FromContext(ctx); ok {
				if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 && len(ti.State.PeerCertificates[0].URIs) == 1 {
					mu.Lock()
					seenClient = ti.State.PeerCertificates[0].URIs[0].String()
					mu.Unlock()
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

	call := func(expectServer spiffeid.ID, km *grpccertprovider.KeyMaterial) error {
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			Certificates:          km.Certs,
			InsecureSkipVerify:    true, // verified by VerifyPeerCertificate, as xDS credentials do
			VerifyPeerCertificate: verifySPIFFE(km, expectServer, x509.ExtKeyUsageServerAuth),
		})))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}

	if err := call(serverID, clientKM); err != nil {
		t.Fatalf("mTLS call from %s to %s: %v", clientID, serverID, err)
	}
	mu.Lock()
	got := seenClient
	mu.Unlock()
	if got != clientID.String() {
		t.Errorf("server saw client %q, want %s", got, clientID)
	}

	// The client must refuse a server with another SPIFFE ID...
	if err := call(clientID, clientKM); err == nil || !strings.Contains(err.Error(), "SPIFFE ID") {
		t.Errorf("call expecting server %s succeeded or failed for another reason: %v", clientID, err)
	}
	// ...and the server a client with another SPIFFE ID.
	if err := call(serverID, serverKM); err == nil {
		t.Errorf("server accepted a client presenting %s", serverID)
	}
}

// verifySPIFFE verifies a peer chain against the roots of the peer's trust
// domain in km.SPIFFEBundleMap and requires its SPIFFE ID to be want.
func verifySPIFFE(km *grpccertprovider.KeyMaterial, want spiffeid.ID, usage x509.ExtKeyUsage) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		var certs []*x509.Certificate
		for _, r := range raw {
			c, err := x509.ParseCertificate(r)
			if err != nil {
				return err
			}
			certs = append(certs, c)
		}
		if len(certs) == 0 || len(certs[0].URIs) != 1 {
			return errors.New("peer has no SPIFFE ID")
		}
		id, err := spiffeid.FromURI(certs[0].URIs[0])
		if err != nil {
			return err
		}
		bundle, ok := km.SPIFFEBundleMap[id.TrustDomain().Name()]
		if !ok {
			return fmt.Errorf("no bundle for trust domain %s", id.TrustDomain())
		}
		roots := x509.NewCertPool()
		for _, c := range bundle.X509Authorities() {
			roots.AddCert(c)
		}
		inter := x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
		if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return err
		}
		if id != want {
			return fmt.Errorf("peer SPIFFE ID %s, want %s", id, want)
		}
		return nil
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func encodePEM(c tls.Certificate) []byte {
	var out []byte
	for _, der := range c.Certificate {
		out = append(out, pemBlock("CERTIFICATE", der)...)
	}
	return out
}

func encodeKey(t *testing.T, c tls.Certificate) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return pemBlock("PRIVATE KEY", der)
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
