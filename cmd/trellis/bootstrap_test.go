package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/identity/certprovider"
	"github.com/trellis-mesh/trellis/identity/spiffetls"
	"github.com/trellis-mesh/trellis/internal/bootstrap"
	"github.com/trellis-mesh/trellis/internal/clients"
	"github.com/trellis-mesh/trellis/internal/testutil/spiretest"
	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// bootstrapJSON is the part of a bootstrap the identity flags write.
type bootstrapJSON struct {
	XDSServers []struct {
		ServerURI    string            `json:"server_uri"`
		ChannelCreds []json.RawMessage `json:"channel_creds"`
	} `json:"xds_servers"`
	CertificateProviders map[string]json.RawMessage `json:"certificate_providers"`
	Node                 struct {
		Metadata map[string]string `json:"metadata"`
	} `json:"node"`
}

func TestBootstrapIdentityFlags(t *testing.T) {
	dir := t.TempDir()
	files := identity.SyncedFiles(dir)
	base := []string{"bootstrap", "--xds-server", "127.0.0.1:18000", "--xds-server", "127.0.0.1:18002", "--node-id", "echo-1"}
	tests := []struct {
		name      string
		args      []string
		provider  string // JSON of certificate_providers.trellis; "" for none
		ownTD     string // JSON of certificate_providers.trellis-own-td; "" for none
		creds     string // JSON of each server's channel_creds[0]
		wantWarn  string
		wantNoOut bool
	}{
		{
			name:  "plaintext",
			creds: `{"type":"insecure"}`,
		},
		{
			name:     "in-process SVID",
			args:     []string{"--spiffe", "--workload-api-addr", "unix:///run/spire/agent.sock", "--spiffe-id", "spiffe://trellis.test/echo"},
			provider: `{"plugin_name":"trellis_spiffe","config":{"workload_api_addr":"unix:///run/spire/agent.sock","spiffe_id":"spiffe://trellis.test/echo"}}`,
			ownTD:    `{"plugin_name":"trellis_spiffe","config":{"workload_api_addr":"unix:///run/spire/agent.sock","spiffe_id":"spiffe://trellis.test/echo","roots":"own_trust_domain"}}`,
			creds:    `{"type":"insecure"}`,
			wantWarn: "warning: --workload-api-addr unix:///run/spire/agent.sock",
		},
		{
			name:     "in-process SVID from the workload's environment",
			args:     []string{"--spiffe"},
			provider: `{"plugin_name":"trellis_spiffe","config":{}}`,
			ownTD:    `{"plugin_name":"trellis_spiffe","config":{"roots":"own_trust_domain"}}`,
			creds:    `{"type":"insecure"}`,
		},
		{
			name:     "in-process SVID without the own-trust-domain instance",
			args:     []string{"--spiffe", "--own-trust-domain-roots=false"},
			provider: `{"plugin_name":"trellis_spiffe","config":{}}`,
			creds:    `{"type":"insecure"}`,
		},
		{
			name: "files",
			args: []string{"--spiffe-files", dir, "--spiffe-files-refresh", "5s"},
			provider: fmt.Sprintf(`{"plugin_name":"file_watcher","config":{"certificate_file":%q,"private_key_file":%q,"ca_certificate_file":%q,"spiffe_trust_bundle_map_file":%q,"refresh_interval":"5s"}}`,
				files.Cert, files.Key, files.CA, files.BundleMap),
			creds: `{"type":"insecure"}`,
		},
		{
			name:     "xDS over mTLS in process",
			args:     []string{"--spiffe", "--xds-server-tls", "spiffe", "--xds-server-spiffe-id", "spiffe://trellis.test/trellis/control-plane"},
			provider: `{"plugin_name":"trellis_spiffe","config":{}}`,
			ownTD:    `{"plugin_name":"trellis_spiffe","config":{"roots":"own_trust_domain"}}`,
			creds:    `{"type":"trellis_spiffe","config":{"server_spiffe_ids":["spiffe://trellis.test/trellis/control-plane"]}}`,
		},
		{
			name:  "xDS over mTLS in process, server of a trust domain, no provider",
			args:  []string{"--xds-server-tls", "spiffe", "--xds-server-trust-domain", "trellis.test", "--workload-api-addr", "tcp://127.0.0.1:8999"},
			creds: `{"type":"trellis_spiffe","config":{"workload_api_addr":"tcp://127.0.0.1:8999","server_trust_domains":["trellis.test"]}}`,
		},
		{
			name: "xDS over mTLS with files",
			args: []string{"--spiffe-files", dir, "--xds-server-tls", "files"},
			provider: fmt.Sprintf(`{"plugin_name":"file_watcher","config":{"certificate_file":%q,"private_key_file":%q,"ca_certificate_file":%q,"spiffe_trust_bundle_map_file":%q,"refresh_interval":"60s"}}`,
				files.Cert, files.Key, files.CA, files.BundleMap),
			creds: fmt.Sprintf(`{"type":"tls","config":{"certificate_file":%q,"private_key_file":%q,"ca_certificate_file":%q,"spiffe_trust_bundle_map_file":%q,"refresh_interval":"60s"}}`,
				files.Cert, files.Key, files.CA, files.BundleMap),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := newRootCommand()
			var stdout, stderr syncBuffer
			cmd.SetOut(&stdout)
			cmd.SetErr(&stderr)
			cmd.SetArgs(append(append([]string{}, base...), tt.args...))
			if err := cmd.Execute(); err != nil {
				t.Fatalf("bootstrap: %v\n%s", err, stderr.String())
			}
			var got bootstrapJSON
			if err := json.Unmarshal([]byte(stdout.String()), &got); err != nil {
				t.Fatalf("output is not JSON: %v\n%s", err, stdout.String())
			}
			if tt.provider == "" {
				if len(got.CertificateProviders) != 0 {
					t.Errorf("certificate_providers = %v, want none", got.CertificateProviders)
				}
			} else {
				want := 1
				if tt.ownTD != "" {
					want = 2
					requireJSON(t, "own-trust-domain certificate provider", got.CertificateProviders[bootstrap.OwnTrustDomainProviderInstance], tt.ownTD)
				}
				if len(got.CertificateProviders) != want {
					t.Errorf("certificate_providers has %d instances, want %d", len(got.CertificateProviders), want)
				}
				requireJSON(t, "certificate provider", got.CertificateProviders[bootstrap.CertificateProviderInstance], tt.provider)
			}
			// The node declares the own-trust-domain instance exactly
			// when the file defines it.
			if declared := got.Node.Metadata[clients.OwnTrustDomainRootsMetadataKey] == "true"; declared != (tt.ownTD != "") {
				t.Errorf("node metadata %s declared: %v, want %v (metadata %v)", clients.OwnTrustDomainRootsMetadataKey, declared, tt.ownTD != "", got.Node.Metadata)
			}
			if len(got.XDSServers) != 2 {
				t.Fatalf("%d xds_servers, want 2", len(got.XDSServers))
			}
			for _, s := range got.XDSServers {
				if len(s.ChannelCreds) != 1 {
					t.Fatalf("server %s: %d channel_creds, want 1", s.ServerURI, len(s.ChannelCreds))
				}
				requireJSON(t, "channel_creds of "+s.ServerURI, s.ChannelCreds[0], tt.creds)
			}
			if tt.wantWarn != "" && !strings.Contains(stderr.String(), tt.wantWarn) {
				t.Errorf("stderr %q does not warn %q", stderr.String(), tt.wantWarn)
			}
			if tt.wantWarn == "" && stderr.String() != "" {
				t.Errorf("unexpected stderr: %s", stderr.String())
			}
		})
	}
}

func requireJSON(t *testing.T, what string, got json.RawMessage, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: %v\n%s", what, err, got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("%s: bad expectation: %v", what, err)
	}
	if diff := cmp.Diff(w, g); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", what, diff)
	}
}

func TestBootstrapIdentityBadInput(t *testing.T) {
	base := []string{"bootstrap", "--xds-server", "127.0.0.1:18000", "--node-id", "echo-1"}
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "both sources", args: []string{"--spiffe", "--spiffe-files", "/id"}, wantErr: "--spiffe and --spiffe-files are exclusive"},
		{name: "unknown transport", args: []string{"--xds-server-tls", "mtls"}, wantErr: `--xds-server-tls "mtls": accepted: insecure, spiffe, files`},
		{name: "address without in-process SVID", args: []string{"--workload-api-addr", "unix:///a.sock"}, wantErr: "--workload-api-addr and --spiffe-id apply to --spiffe and --xds-server-tls spiffe only"},
		{name: "address with files", args: []string{"--spiffe-files", "/id", "--spiffe-id", "spiffe://t.test/a"}, wantErr: "apply to --spiffe and --xds-server-tls spiffe only"},
		{name: "server ID with files", args: []string{"--spiffe-files", "/id", "--xds-server-tls", "files", "--xds-server-spiffe-id", "spiffe://t.test/cp"}, wantErr: "apply to --xds-server-tls spiffe only"},
		{name: "server trust domain without TLS", args: []string{"--xds-server-trust-domain", "t.test"}, wantErr: "apply to --xds-server-tls spiffe only"},
		{name: "files transport without files", args: []string{"--xds-server-tls", "files"}, wantErr: "--xds-server-tls files needs --spiffe-files DIR"},
		{name: "refresh without files", args: []string{"--spiffe", "--spiffe-files-refresh", "1s"}, wantErr: "--spiffe-files-refresh applies to --spiffe-files only"},
		{name: "negative refresh", args: []string{"--spiffe-files", "/id", "--spiffe-files-refresh", "-1s"}, wantErr: "must not be negative"},
		{name: "bad socket address", args: []string{"--spiffe", "--workload-api-addr", "/run/agent.sock"}, wantErr: "--spiffe: identity: workload_api_addr"},
		{name: "bad own ID", args: []string{"--spiffe", "--spiffe-id", "echo"}, wantErr: "spiffe_id"},
		{name: "bad server ID", args: []string{"--xds-server-tls", "spiffe", "--xds-server-spiffe-id", "cp"}, wantErr: `server_spiffe_ids[0] "cp"`},
		{name: "bad server trust domain", args: []string{"--xds-server-tls", "spiffe", "--xds-server-trust-domain", "spiffe://t.test/cp"}, wantErr: "server_trust_domains[0]"},
		{name: "own-trust-domain roots without --spiffe", args: []string{"--spiffe-files", "/id", "--own-trust-domain-roots"}, wantErr: "--own-trust-domain-roots applies to --spiffe with --for go only"},
		{name: "own-trust-domain roots for node", args: []string{"--for", "node", "--spiffe-files", "/id", "--own-trust-domain-roots"}, wantErr: "--own-trust-domain-roots applies to --spiffe with --for go only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runCLI(t, "", append(append([]string{}, base...), tt.args...)...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want one containing %q\noutput: %s", err, tt.wantErr, out)
			}
		})
	}
}

// TestBootstrapWithRealXDS runs real grpc-go xDS clients from bootstraps
// that the bootstrap command writes, against an xDS server over mTLS: the
// channel credentials reach it with the client's SVID, and the certificate
// provider carries mTLS to a backend, both in process and from the files
// trellis identity sync keeps.
func TestBootstrapWithRealXDS(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{})
	td := spire.TrustDomain()
	serverAgent := spire.Agent() // the control plane and the backend
	clientAgent := spire.AddAgent(t)
	cpID := spiffeid.RequireFromPath(td, "/trellis/control-plane")
	backendID := spiffeid.RequireFromPath(td, "/ns/default/dc/dc1/svc/backend")
	clientID := spiffeid.RequireFromPath(td, "/ns/default/dc/dc1/svc/client")
	// The DNS SAN lets gRPC's stock "tls" credentials check the host name.
	serverAgent.Register(t, spiretest.Entry{SPIFFEID: cpID.String(), DNSNames: []string{"localhost"}})
	serverAgent.Register(t, spiretest.Entry{SPIFFEID: backendID.String()})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: clientID.String()})

	cpSrc := newProvider(t, serverAgent.WorkloadAPIAddr(), cpID)
	backendSrc := newProvider(t, serverAgent.WorkloadAPIAddr(), backendID)

	backend := startTLSBackend(t, backendSrc)
	cache := xdscache.New(xdscache.Config{Logger: slog.New(slog.DiscardHandler)})
	if res := cache.Apply(mtlsClientResources(t, "svc", backend, backendID)); res.Err != nil {
		t.Fatal(res.Err)
	}
	srv, xdsAddr := startXDS(t, cache, spiffetls.ServerCredentials(cpSrc, spiffetls.AuthorizeTrustDomains()))
	_, port, err := net.SplitHostPort(xdsAddr)
	if err != nil {
		t.Fatal(err)
	}

	// The files mode reads what identity sync keeps for the client.
	dir := filepath.Join(t.TempDir(), "identity")
	syncOut, _ := background(t, "identity", "sync", "--dir", dir, "--workload-api-addr", clientAgent.WorkloadAPIAddr())
	waitUntil(t, 30*time.Second, func() string {
		if _, err := svidOnDisk(dir); err != nil {
			return fmt.Sprintf("no SVID files yet: %v\n%s", err, syncOut)
		}
		return ""
	})

	tests := []struct {
		name   string
		server string
		args   []string
	}{
		{
			name:   "in process",
			server: xdsAddr,
			args: []string{"--spiffe", "--workload-api-addr", clientAgent.WorkloadAPIAddr(),
				"--xds-server-tls", "spiffe", "--xds-server-spiffe-id", cpID.String()},
		},
		{
			// gRPC's "tls" credentials check the host name: localhost, the
			// DNS SAN of the control plane's SVID.
			name:   "files",
			server: net.JoinHostPort("localhost", port),
			args:   []string{"--spiffe-files", dir, "--spiffe-files-refresh", "1s", "--xds-server-tls", "files"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node := "node-" + strings.ReplaceAll(tt.name, " ", "-")
			out, err := runCLI(t, "", append([]string{"bootstrap", "--xds-server", tt.server, "--node-id", node}, tt.args...)...)
			if err != nil {
				t.Fatalf("bootstrap: %v\n%s", err, out)
			}
			resolver, err := xds.NewXDSResolverWithConfigForTesting([]byte(out))
			if err != nil {
				t.Fatalf("grpc-go rejects the bootstrap: %v\n%s", err, out)
			}
			creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
			if err != nil {
				t.Fatal(err)
			}
			conn, err := grpc.NewClient("xds:///svc", grpc.WithTransportCredentials(creds), grpc.WithResolvers(resolver))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
			defer cancel()
			if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
				t.Fatalf("call over xds:///svc: %v\nstreams: %+v", err, srv.Streams())
			}
			if got := backend.lastPeer(); got != clientID.String() {
				t.Errorf("backend saw caller %q, want %s (mTLS with the bootstrap's certificate provider)", got, clientID)
			}
			var found bool
			for _, st := range srv.Streams() {
				if st.NodeID == node {
					found = true
					if st.PeerSPIFFEID != clientID.String() {
						t.Errorf("xDS stream of %s: PeerSPIFFEID %q, want %s", node, st.PeerSPIFFEID, clientID)
					}
				}
			}
			if !found {
				t.Errorf("no xDS stream of %s: %+v", node, srv.Streams())
			}
		})
	}
}

func newProvider(t *testing.T, addr string, id spiffeid.ID) *certprovider.Provider {
	t.Helper()
	p, err := certprovider.New(certprovider.Config{WorkloadAPIAddr: addr, SPIFFEID: id, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// tlsBackend serves the gRPC health service over mTLS and records the
// SPIFFE ID of its last caller.
type tlsBackend struct {
	addr *net.TCPAddr
	mu   sync.Mutex
	last string
}

func (b *tlsBackend) lastPeer() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}

func startTLSBackend(t *testing.T, src spiffetls.Source) *tlsBackend {
	t.Helper()
	b := &tlsBackend{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = lis.Addr().(*net.TCPAddr)
	gs := grpc.NewServer(grpc.Creds(spiffetls.ServerCredentials(src, spiffetls.AuthorizeTrustDomains())),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if id, err := spiffetls.PeerID(ctx); err == nil {
				b.mu.Lock()
				b.last = id.String()
				b.mu.Unlock()
			}
			return h(ctx, req)
		}))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	done := make(chan error, 1)
	go func() { done <- gs.Serve(lis) }()
	t.Cleanup(func() {
		gs.Stop()
		if err := <-done; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("backend: %v", err)
		}
	})
	return b
}

// startXDS serves cache over ADS with creds on 127.0.0.1 until the test
// ends.
func startXDS(t *testing.T, cache *xdscache.Cache, creds credentials.TransportCredentials) (*xdsserver.Server, string) {
	t.Helper()
	srv, err := xdsserver.New(xdsserver.Config{
		Cache:         cache,
		Registerer:    prometheus.NewRegistry(),
		Logger:        slog.New(slog.DiscardHandler),
		ServerOptions: []grpc.ServerOption{grpc.Creds(creds)},
	})
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
			t.Errorf("xDS server: %v", err)
		}
	})
	return srv, lis.Addr().String()
}

// mtlsClientResources is what a client dialing xds:///name needs to call
// backend over mTLS: the Cluster's UpstreamTlsContext names the bootstrap's
// certificate provider instance and requires the backend's SPIFFE ID.
func mtlsClientResources(t *testing.T, name string, backend *tlsBackend, backendID spiffeid.ID) xdscache.Resources {
	t.Helper()
	ads := &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: name,
			VirtualHosts: []*routev3.VirtualHost{{
				Name:    name,
				Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: ""}},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{
						ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name},
					}},
				}},
			}},
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})},
		}},
	}
	instance := &tlsv3.CertificateProviderPluginInstance{InstanceName: bootstrap.CertificateProviderInstance}
	upstream := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: instance,
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			CaCertificateProviderInstance: instance,
			MatchSubjectAltNames: []*matcherv3.StringMatcher{{
				MatchPattern: &matcherv3.StringMatcher_Exact{Exact: backendID.String()},
			}},
		}},
	}}
	lis := &listenerv3.Listener{Name: name, ApiListener: &listenerv3.ApiListener{ApiListener: mustAny(t, hcm)}}
	cl := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads, ServiceName: name},
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
		TransportSocket: &corev3.TransportSocket{
			Name:       "envoy.transport_sockets.tls",
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(t, upstream)},
		},
	}
	cla := &endpointv3.ClusterLoadAssignment{
		ClusterName: name,
		Endpoints: []*endpointv3.LocalityLbEndpoints{{
			Locality:            &corev3.Locality{Zone: "zone-a"},
			LoadBalancingWeight: wrapperspb.UInt32(1),
			LbEndpoints: []*endpointv3.LbEndpoint{{
				HealthStatus: corev3.HealthStatus_HEALTHY,
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address:       backend.addr.IP.String(),
						PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(backend.addr.Port)},
					}}},
				}},
			}},
		}},
	}
	for _, m := range []interface{ Validate() error }{lis, hcm, cl, upstream, cla} {
		if err := m.Validate(); err != nil {
			t.Fatalf("invalid test resource %T: %v", m, err)
		}
	}
	return xdscache.Resources{
		resource.ListenerType: {name: lis},
		resource.ClusterType:  {name: cl},
		resource.EndpointType: {name: cla},
	}
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
