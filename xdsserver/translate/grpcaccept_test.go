package translate

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/bootstrap"
	"github.com/trellis-mesh/trellis/internal/clients"
	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// goldenCase is one golden test case as translated in production.
type goldenCase struct {
	name string
	in   Input
	opts Options
}

// goldenCases loads every golden case of the three suites:
// testdata/*.in.yaml with the default security settings,
// testdata/security-*.yaml with their own, and testdata/clients-*.yaml for
// every client profile.
func goldenCases(t *testing.T) []goldenCase {
	t.Helper()
	var out []goldenCase
	plain, err := filepath.Glob(filepath.Join("testdata", "*.in.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range plain {
		var in goldenInput
		readYAML(t, path, &in)
		out = append(out, goldenCase{name: strings.TrimSuffix(filepath.Base(path), ".in.yaml"),
			in: Input{Catalog: in.snapshot(t), Policies: in.policies(t), Security: &Security{}}, opts: in.Options})
	}
	secured, err := filepath.Glob(filepath.Join("testdata", "security-*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range secured {
		var in securityGolden
		readYAML(t, path, &in)
		out = append(out, goldenCase{name: strings.TrimSuffix(filepath.Base(path), ".yaml"),
			in: Input{Catalog: in.snapshot(t), Policies: in.policies(t), Security: in.Security.security(t)}, opts: in.Options})
	}
	matrix, err := filepath.Glob(filepath.Join("testdata", "clients-*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range matrix {
		var in securityGolden
		readYAML(t, path, &in)
		for _, p := range clients.Profiles() {
			opts := in.Options
			opts.Client = &p
			out = append(out, goldenCase{name: strings.TrimSuffix(filepath.Base(path), ".yaml") + "." + p.Name,
				in: Input{Catalog: in.snapshot(t), Policies: in.policies(t), Security: in.Security.security(t)}, opts: opts})
		}
	}
	if len(out) == 0 {
		t.Fatal("no golden cases in testdata")
	}
	return out
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(raw, v); err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
}

// TestGoldenAcceptedByGRPC serves the resources of every golden case over
// a real ADS server on 127.0.0.1 to real grpc-go xDS clients, and checks
// that they ACK every resource: a channel dialing xds:///<service> for
// every client Listener (which asks for its route configuration, the
// clusters it routes to and their endpoints), a channel through a probe
// route configuration that routes to every Cluster (so that subset
// clusters no route names are fetched too), and an xds.NewGRPCServer for
// every server Listener. A server Listener is served under the name and
// address of a port on 127.0.0.1, the rest of it as translated.
func TestGoldenAcceptedByGRPC(t *testing.T) {
	certDir := writeCertificates(t)
	for _, gc := range goldenCases(t) {
		t.Run(gc.name, func(t *testing.T) {
			if why := serveToGRPC(t, Translate(gc.in, gc.opts), nil, certDir, ownTrustDomainInstance(gc.opts)); why != "" {
				t.Fatal(why)
			}
		})
	}
}

// TestAcceptanceCatchesNACK checks that TestGoldenAcceptedByGRPC can fail:
// resources grpc-go rejects, on the client side and on the server side,
// are NACKed.
func TestAcceptanceCatchesNACK(t *testing.T) {
	cases := map[string]goldenCase{}
	for _, gc := range goldenCases(t) {
		cases[gc.name] = gc
	}
	certDir := writeCertificates(t)
	tests := []struct {
		name, golden string
		edit         func(xdscache.Resources)
	}{
		{"cluster with an unsupported load balancing policy", "basic", func(state xdscache.Resources) {
			for _, r := range state[resource.ClusterType] {
				r.(*clusterv3.Cluster).LbPolicy = clusterv3.Cluster_MAGLEV
			}
		}},
		{"server Listener with use_original_dst", "security-mtls", func(state xdscache.Resources) {
			for _, r := range state[resource.ListenerType] {
				if l := r.(*listenerv3.Listener); l.GetApiListener() == nil {
					l.UseOriginalDst = wrapperspb.Bool(true)
				}
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			gc, ok := cases[tc.golden]
			if !ok {
				t.Fatalf("no golden case %q", tc.golden)
			}
			if why := serveToGRPC(t, Translate(gc.in, gc.opts), tc.edit, certDir, ownTrustDomainInstance(gc.opts)); !strings.HasPrefix(why, "NACK") {
				t.Fatalf("not NACKed: %q", why)
			}
		})
	}
	// The own-trust-domain profile's server Listeners, served to a
	// bootstrap without the instance they name, are NACKed: that is why
	// only clients declaring the instance get them.
	t.Run("own-trust-domain Listener to a bootstrap without the instance", func(t *testing.T) {
		const golden = "clients-own-trust-domain." + clients.GoOwnTDName
		gc, ok := cases[golden]
		if !ok {
			t.Fatalf("no golden case %q", golden)
		}
		if why := serveToGRPC(t, Translate(gc.in, gc.opts), nil, certDir, false); !strings.HasPrefix(why, "NACK") {
			t.Fatalf("not NACKed: %q", why)
		}
	})
}

// ownTrustDomainInstance reports whether the bootstrap of clients of the
// translation's profile defines the own-trust-domain certificate provider
// instance.
func ownTrustDomainInstance(opts Options) bool {
	return opts.Client != nil && opts.Client.Caps.OwnTrustDomainRoots
}

// serveToGRPC serves the resources of res (changed by edit, when not nil)
// as TestGoldenAcceptedByGRPC describes, and returns "" when every one was
// ACKed, or what went wrong. The clients' bootstrap defines the
// own-trust-domain certificate provider instance when ownTD is set, as the
// bootstraps of clients declaring it do.
func serveToGRPC(t *testing.T, res *Result, edit func(xdscache.Resources), certDir string, ownTD bool) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))

	state := xdscache.Resources{}
	for typeURL, byName := range res.Resources.ByTypeURL() {
		state[typeURL] = map[string]types.Resource{}
		for name, r := range byName {
			state[typeURL][name] = proto.Clone(r)
		}
	}
	if edit != nil {
		edit(state)
	}
	// Server Listeners move to ports of 127.0.0.1.
	var serverListeners []net.Listener
	for name, r := range state[resource.ListenerType] {
		l := r.(*listenerv3.Listener)
		if l.GetApiListener() != nil {
			continue
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		serverListeners = append(serverListeners, lis)
		moved := proto.CloneOf(l)
		moved.Name = ServerListenerName(lis.Addr().String())
		port := lis.Addr().(*net.TCPAddr).Port
		moved.Address = socketAddress("127.0.0.1", port)
		delete(state[resource.ListenerType], name)
		state[resource.ListenerType][moved.Name] = moved
	}
	// The probe routes to every Cluster.
	const probe = "trellis-acceptance-probe"
	clusters := slices.Sorted(maps.Keys(state[resource.ClusterType]))
	if len(clusters) > 0 {
		probeListener, err := clientListener(probe, false)
		if err != nil {
			t.Fatal(err)
		}
		rc := &routev3.RouteConfiguration{Name: probe, VirtualHosts: []*routev3.VirtualHost{{Name: probe, Domains: []string{"*"}}}}
		for i, c := range clusters {
			rc.VirtualHosts[0].Routes = append(rc.VirtualHosts[0].Routes, &routev3.Route{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/probe" + strconv.Itoa(i) + "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: c}}},
			})
		}
		state[resource.ListenerType][probe] = probeListener
		state[resource.RouteType][probe] = rc
	}

	cache := xdscache.New(xdscache.Config{Logger: logger})
	if r := cache.Apply(state); r.Err != nil {
		t.Fatalf("apply: %v", r.Err)
	}
	srv, err := xdsserver.New(xdsserver.Config{Cache: cache, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	adsLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveCtx, stopServe := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx, adsLis) }()
	defer func() {
		stopServe()
		if err := <-served; err != nil {
			t.Errorf("ADS server: %v", err)
		}
	}()
	boot := acceptanceBootstrap(t, adsLis.Addr().String(), certDir, ownTD)

	// Clients: one channel per client Listener.
	for name, r := range state[resource.ListenerType] {
		if r.(*listenerv3.Listener).GetApiListener() == nil {
			continue
		}
		builder, err := xds.NewXDSResolverWithConfigForTesting(boot)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient("xds:///"+name, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(builder))
		if err != nil {
			t.Fatalf("dial %s: %v", name, err)
		}
		defer conn.Close()
		conn.Connect()
	}
	// Servers: one xDS-enabled gRPC server per server Listener.
	for _, lis := range serverListeners {
		gs, err := xds.NewGRPCServer(grpc.Creds(insecure.NewCredentials()), xds.BootstrapContentsForTesting(boot))
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = gs.Serve(lis) // returns when stopped
		}()
		defer func() {
			gs.Stop()
			<-done
		}()
	}

	// Every resource must have been asked for and the last response of
	// every stream ACKed; a single NACK ends the wait.
	for {
		why := acceptanceState(srv, cache)
		if why == "" || strings.HasPrefix(why, "NACK") {
			return why
		}
		select {
		case <-ctx.Done():
			return "not every resource was ACKed before the deadline: " + why
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// acceptanceState returns "" when every resource of the cache was
// requested by some stream and every stream ACKed its last response, a
// message starting with NACK when a client rejected something, and what is
// still missing otherwise.
func acceptanceState(srv *xdsserver.Server, cache *xdscache.Cache) string {
	requested := map[string]map[string]bool{}
	for _, st := range srv.Streams() {
		for _, ts := range st.Types {
			if ts.NACKs > 0 {
				return fmt.Sprintf("NACK of %s: %s", ts.TypeURL, ts.LastNACKError)
			}
			if ts.Pending || ts.AckedVersion != ts.SentVersion {
				return fmt.Sprintf("stream %d: %s response not ACKed yet", st.ID, ts.TypeURL)
			}
			if requested[ts.TypeURL] == nil {
				requested[ts.TypeURL] = map[string]bool{}
			}
			for _, n := range ts.ResourceNames {
				requested[ts.TypeURL][n] = true
			}
		}
	}
	for _, typeURL := range []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType} {
		for _, name := range cache.Names(typeURL) {
			if !requested[typeURL][name] {
				return fmt.Sprintf("%s %q not requested yet", typeURL, name)
			}
		}
	}
	return ""
}

// acceptanceBootstrap is a grpc-go bootstrap with the server Listener
// template and the certificate provider instance the translation names;
// with ownTD, the own-trust-domain instance too.
func acceptanceBootstrap(t *testing.T, adsAddr, certDir string, ownTD bool) []byte {
	t.Helper()
	provider := map[string]any{
		"plugin_name": "file_watcher",
		"config": map[string]any{
			"certificate_file":    filepath.Join(certDir, "cert.pem"),
			"private_key_file":    filepath.Join(certDir, "key.pem"),
			"ca_certificate_file": filepath.Join(certDir, "ca.pem"),
			"refresh_interval":    "600s",
		},
	}
	providers := map[string]any{bootstrap.CertificateProviderInstance: provider}
	if ownTD {
		providers[bootstrap.OwnTrustDomainProviderInstance] = provider
	}
	b, err := json.Marshal(map[string]any{
		"xds_servers":                            []any{map[string]any{"server_uri": adsAddr, "channel_creds": []any{map[string]any{"type": "insecure"}}, "server_features": []string{"xds_v3"}}},
		"node":                                   map[string]any{"id": "acceptance"},
		"server_listener_resource_name_template": bootstrap.ServerListenerTemplate,
		"certificate_providers":                  providers,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeCertificates writes a CA and a workload certificate with its key,
// for the file_watcher certificate provider.
func writeCertificates(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "acceptance"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	for file, data := range map[string][]byte{
		"ca.pem": certPEM, "cert.pem": certPEM,
		"key.pem": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	} {
		if err := os.WriteFile(filepath.Join(dir, file), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
