package certprovider_test

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	xdsbootstrap "google.golang.org/grpc/xds/bootstrap"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/identity/certprovider"
	"github.com/trellis-mesh/trellis/identity/spiffetls"
	"github.com/trellis-mesh/trellis/internal/testutil/spiretest"
)

// buildChannelCreds builds the channel credentials the way grpc-go's xDS
// bootstrap does: from the channel_creds entry, through the registry.
func buildChannelCreds(t *testing.T, cfg identity.ChannelCredsConfig) grpc.DialOption {
	t.Helper()
	entry, err := identity.ChannelCreds(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var cc struct {
		Type   string          `json:"type"`
		Config json.RawMessage `json:"config"`
	}
	if err := json.Unmarshal(entry, &cc); err != nil {
		t.Fatal(err)
	}
	builder := xdsbootstrap.GetChannelCredentials(cc.Type)
	if builder == nil {
		t.Fatalf("channel credentials %q are not registered", cc.Type)
	}
	bundle, closeFn, err := builder.Build(cc.Config)
	if err != nil {
		t.Fatalf("Build(%s): %v", cc.Config, err)
	}
	t.Cleanup(closeFn)
	return grpc.WithCredentialsBundle(bundle)
}

// TestChannelCredsWithSPIRE reaches a server over mTLS with the channel
// credentials built from the bootstrap entry, the server's SPIFFE ID
// checked as the entry says.
func TestChannelCredsWithSPIRE(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{})
	serverAgent := spire.Agent()
	clientAgent := spire.AddAgent(t)
	td := spire.TrustDomain()
	serverID := spiffeid.RequireFromPath(td, "/trellis/control-plane")
	clientID := serviceID(t, td, "client")
	serverAgent.Register(t, spiretest.Entry{SPIFFEID: serverID.String()})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: clientID.String()})

	serverSrc, err := certprovider.New(certprovider.Config{WorkloadAPIAddr: serverAgent.WorkloadAPIAddr(), Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer serverSrc.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(spiffetls.ServerCredentials(serverSrc, spiffetls.AuthorizeIDs(clientID))))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	defer func() {
		gs.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	addr := clientAgent.WorkloadAPIAddr()
	tests := []struct {
		name    string
		cfg     identity.ChannelCredsConfig
		wantErr string
	}{
		{name: "server ID", cfg: identity.ChannelCredsConfig{WorkloadAPIAddr: addr, ServerSPIFFEIDs: []string{serverID.String()}}},
		{name: "own trust domain", cfg: identity.ChannelCredsConfig{WorkloadAPIAddr: addr}},
		{name: "listed trust domain", cfg: identity.ChannelCredsConfig{WorkloadAPIAddr: addr, ServerTrustDomains: []string{td.Name()}}},
		{name: "another ID or the trust domain", cfg: identity.ChannelCredsConfig{WorkloadAPIAddr: addr, ServerSPIFFEIDs: []string{clientID.String()}, ServerTrustDomains: []string{td.Name()}}},
		{
			name:    "another server ID",
			cfg:     identity.ChannelCredsConfig{WorkloadAPIAddr: addr, ServerSPIFFEIDs: []string{clientID.String()}},
			wantErr: "is not one of the accepted SPIFFE IDs",
		},
		{
			name:    "another trust domain",
			cfg:     identity.ChannelCredsConfig{WorkloadAPIAddr: addr, ServerTrustDomains: []string{"other.test"}},
			wantErr: "not in an accepted trust domain",
		},
		{
			name:    "no Workload API",
			cfg:     identity.ChannelCredsConfig{WorkloadAPIAddr: "unix://" + t.TempDir() + "/missing.sock"},
			wantErr: "no X.509 SVID from the Workload API",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := grpc.NewClient(lis.Addr().String(), buildChannelCreds(t, tt.cfg))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("call: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("call error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestChannelCredsConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		env     string
		config  string
		wantErr string
	}{
		{name: "no address anywhere", config: `{}`, wantErr: "SPIFFE_ENDPOINT_SOCKET"},
		{name: "unknown field", env: "unix:///a.sock", config: `{"server_id": "spiffe://a.test/cp"}`, wantErr: "unknown field"},
		{name: "bad server ID", env: "unix:///a.sock", config: `{"server_spiffe_ids": ["a.test/cp"]}`, wantErr: "server_spiffe_ids[0]"},
		{name: "bad trust domain", env: "unix:///a.sock", config: `{"server_trust_domains": ["spiffe://a.test/x"]}`, wantErr: "server_trust_domains[0]"},
		{name: "bad spiffe_id", env: "unix:///a.sock", config: `{"spiffe_id": "echo"}`, wantErr: "spiffe_id"},
		{name: "not an object", config: `[]`, wantErr: "fields: workload_api_addr"},
	}
	builder := xdsbootstrap.GetChannelCredentials(certprovider.ChannelCredsType)
	if builder == nil {
		t.Fatalf("channel credentials %q are not registered", certprovider.ChannelCredsType)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("SPIFFE_ENDPOINT_SOCKET", tt.env)
			_, _, err := builder.Build(json.RawMessage(tt.config))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Build(%s) error = %v, want it to contain %q", tt.config, err, tt.wantErr)
			}
		})
	}
}

// TestPluginKeepsLastSVIDAcrossProviders: grpc-go builds a provider per
// connection on xDS servers and closes it with the connection. A provider
// built while the agent is down starts from the last SVID an earlier
// provider of the same config fetched, until it expires; a Provider made
// with New does not share it.
func TestPluginKeepsLastSVIDAcrossProviders(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{})
	want := serviceID(t, spire.TrustDomain(), "echo")
	spire.RegisterWorkload(t, spiretest.Entry{SPIFFEID: want.String()})
	cfg := identity.ProviderConfig{WorkloadAPIAddr: spire.WorkloadAPIAddr()}

	first := buildFromBootstrap(t, cfg)
	km := keyMaterial(t, first)
	first.Close()
	spire.StopAgent(t)

	second := buildFromBootstrap(t, cfg)
	again := keyMaterial(t, second)
	if again.Certs[0].Leaf.SerialNumber.Cmp(km.Certs[0].Leaf.SerialNumber) != 0 || leafID(t, again) != want {
		t.Errorf("a provider built with the agent down serves %s (serial %s), want the last SVID %s (serial %s)",
			leafID(t, again), again.Certs[0].Leaf.SerialNumber, want, km.Certs[0].Leaf.SerialNumber)
	}

	p, err := certprovider.New(certprovider.Config{WorkloadAPIAddr: spire.WorkloadAPIAddr(), Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, err := p.KeyMaterial(ctx); err == nil || !strings.Contains(err.Error(), "no X.509 SVID from the Workload API") {
		t.Errorf("New with the agent down: KeyMaterial = %v, want the Workload API failure", err)
	}
}
