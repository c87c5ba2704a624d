package integration

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/trellis-mesh/trellis/internal/bootstrap"
	"github.com/trellis-mesh/trellis/internal/clients"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	"github.com/trellis-mesh/trellis/internal/testutil/spiretest"
	statusv1 "github.com/trellis-mesh/trellis/proto/trellis/status/v1"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
)

// cliBootstrap is the bootstrap `trellis bootstrap --spiffe` writes for a
// Go workload with the SVID id from the Workload API at addr: both
// certificate provider instances, the node declaring the own-trust-domain
// one.
func cliBootstrap(t testing.TB, trellis *trellisServer, nodeID, workloadAPIAddr, id string) []byte {
	t.Helper()
	out, err := exec.Command(trellisBin, "bootstrap", "--xds-server", trellis.xdsAddr, "--node-id", nodeID,
		"--spiffe", "--workload-api-addr", workloadAPIAddr, "--spiffe-id", id).Output()
	if err != nil {
		t.Fatalf("trellis bootstrap: %v", err)
	}
	if !strings.Contains(string(out), bootstrap.OwnTrustDomainProviderInstance) || !strings.Contains(string(out), clients.OwnTrustDomainRootsMetadataKey) {
		t.Fatalf("trellis bootstrap --spiffe wrote no own-trust-domain instance:\n%s", out)
	}
	return out
}

// servedServerListener is what the xDS server serves now to the stream of
// nodeID for the server Listener of addr: its profile, whether it carries
// the RBAC filter, and the certificate provider instance of its
// DownstreamTlsContext.
func servedServerListener(t testing.TB, api statusv1.StatusServiceClient, nodeID, addr string) (profile string, rbac bool, instance string) {
	t.Helper()
	name := translate.ServerListenerName(addr)
	resp, err := api.GetResources(authed(t), &statusv1.GetResourcesRequest{NodeId: nodeID,
		Resources: []*statusv1.ResourceRef{{TypeUrl: resource.ListenerType, Name: name}}})
	if err != nil {
		t.Fatalf("GetResources %s: %v", name, err)
	}
	if resp.GetProfileSource() != "stream" {
		t.Fatalf("GetResources for %s: profile %s from %s, want the one of its open stream", nodeID, resp.GetProfile(), resp.GetProfileSource())
	}
	r := resp.GetResources()[0]
	if !r.GetServed() {
		t.Fatalf("server Listener %s is not served to %s", name, nodeID)
	}
	l := &listenerv3.Listener{}
	if err := r.GetResource().UnmarshalTo(l); err != nil {
		t.Fatal(err)
	}
	chain := l.GetFilterChains()[0]
	hcm := &hcmv3.HttpConnectionManager{}
	if err := chain.GetFilters()[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	for _, f := range hcm.GetHttpFilters() {
		rbac = rbac || f.GetName() == translate.RBACFilterName
	}
	tlsCtx := &tlsv3.DownstreamTlsContext{}
	if err := chain.GetTransportSocket().GetTypedConfig().UnmarshalTo(tlsCtx); err != nil {
		t.Fatalf("server Listener %s has no DownstreamTlsContext: %v", name, err)
	}
	common := tlsCtx.GetCommonTlsContext()
	if id, roots := common.GetTlsCertificateProviderInstance().GetInstanceName(), common.GetValidationContext().GetCaCertificateProviderInstance().GetInstanceName(); id != roots {
		t.Fatalf("server Listener %s: identity from %q, roots from %q", name, id, roots)
	}
	return resp.GetProfile(), rbac, common.GetValidationContext().GetCaCertificateProviderInstance().GetInstanceName()
}

// refusedFor calls on conn for d and returns the last error, or an error
// saying the call got through.
func refusedFor(conn *grpc.ClientConn, d time.Duration) error {
	var last error
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		resp, err := mtlsCall(conn)
		if err == nil {
			return fmt.Errorf("got through: the server saw %q", resp.GetPeerIdentity())
		}
		last = err
	}
	return last
}

// TestMTLSHandshakeAuthorizesOwnTrustDomain: an xDS server whose bootstrap
// (`trellis bootstrap --spiffe`) defines the own-trust-domain certificate
// provider, serving a service every workload of the trust domain may call,
// gets a server Listener without the RBAC filter whose roots are its own
// trust domain's. It trusts a federated trust domain (its SVID's entry
// federates with it, so its Workload API serves that bundle): a caller of
// that domain is refused in the handshake, a local caller gets through.
// An intention denying one source brings back the roots of every trust
// domain and RBAC: the federated caller then passes the handshake and is
// refused by RBAC. Every Listener is ACKed.
func TestMTLSHandshakeAuthorizesOwnTrustDomain(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{TrustDomain: mtlsTrustDomain})
	other := spiretest.Start(t, spiretest.Options{TrustDomain: "other.test"})
	spire.SetFederatedBundle(t, other.Bundle(t))
	other.SetFederatedBundle(t, spire.Bundle(t))
	serverAgent, clientAgent := spire.Agent(), spire.AddAgent(t)
	echoID, webID, batchID := mtlsID(mtlsTrustDomain, "echo"), mtlsID(mtlsTrustDomain, "web"), mtlsID(mtlsTrustDomain, "batch")
	foreignWebID := mtlsID("other.test", "web")
	serverAgent.Register(t, spiretest.Entry{SPIFFEID: echoID, FederatesWith: []string{"other.test"}})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: webID})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: batchID})
	other.Agent().Register(t, spiretest.Entry{SPIFFEID: foreignWebID, FederatesWith: []string{mtlsTrustDomain}})

	consul := consultest.Start(t, consultest.Options{})
	trellis := startTrellisWithAPI(t, consul, "--mtls", "--trust-domain", mtlsTrustDomain)
	status := trellis.statusClient(t)
	// No intention names echo and the default allows: the only rule is
	// "any workload of trellis.test".
	server := startMTLSEcho(t, consul, cliBootstrap(t, trellis, "echo-1", serverAgent.WorkloadAPIAddr(), echoID), "127.0.0.1", "echo", "echo-1", nil)

	profile, rbac, instance := servedServerListener(t, status, "echo-1", server.addr)
	if profile != clients.GoOwnTDName || rbac || instance != bootstrap.OwnTrustDomainProviderInstance {
		t.Fatalf("echo-1 (profile %s) is served a server Listener with RBAC %v and roots from %q; want profile %s, no RBAC, roots from %q",
			profile, rbac, instance, clients.GoOwnTDName, bootstrap.OwnTrustDomainProviderInstance)
	}

	web := dialXDSCreds(t, cliBootstrap(t, trellis, "web-1", clientAgent.WorkloadAPIAddr(), webID), "xds:///echo")
	batch := dialXDSCreds(t, mtlsBootstrap(t, trellis, "batch-1", clientAgent.WorkloadAPIAddr(), batchID), "xds:///echo")
	foreign := dialXDSCreds(t, mtlsBootstrap(t, trellis, "foreign-1", other.Agent().WorkloadAPIAddr(), foreignWebID), "xds:///echo")
	expectCode(t, web, "web", codes.OK, 60*time.Second)
	expectCode(t, batch, "batch", codes.OK, 30*time.Second)
	if resp, err := mtlsCall(web); err != nil || resp.GetPeerIdentity() != webID {
		t.Errorf("web call: %v, server saw %q; want success as %s", err, resp.GetPeerIdentity(), webID)
	}
	seen := len(server.callers())
	// The federated caller trusts trellis.test and gets echo's Cluster; the
	// handshake refuses it (Unavailable), never RBAC (PermissionDenied).
	err := refusedFor(foreign, 5*time.Second)
	if got := statusCode(err); got != codes.Unavailable {
		t.Errorf("caller of the federated trust domain, no RBAC filter: %s (%v), want refused in the handshake (%s)", got, err, codes.Unavailable)
	} else {
		t.Logf("caller of the federated trust domain refused: %v", err)
	}
	if got := server.callers()[seen:]; len(got) != 0 {
		t.Errorf("refused callers reached the handler: %v", got)
	}
	requireListenerACKed(t, status, "echo-1")

	// A deny: full roots and RBAC again, for the same server.
	setIntentions(t, consul, "echo", map[string]api.IntentionAction{"batch": api.IntentionActionDeny})
	waitFor(t, 20*time.Second, "echo-1's server Listener to carry RBAC", func() error {
		if profile, rbac, instance := servedServerListener(t, status, "echo-1", server.addr); !rbac || instance != bootstrap.CertificateProviderInstance {
			return fmt.Errorf("profile %s, RBAC %v, roots from %q", profile, rbac, instance)
		}
		return nil
	})
	expectCode(t, batch, "batch denied", codes.PermissionDenied, 20*time.Second)
	expectCode(t, web, "web with batch denied", codes.OK, 10*time.Second)
	// Now the federated caller passes the handshake (echo trusts every
	// trust domain its Workload API serves) and RBAC refuses it.
	expectCode(t, foreign, "caller of the federated trust domain, with RBAC", codes.PermissionDenied, 20*time.Second)
	requireListenerACKed(t, status, "echo-1")

	// Every source allowed again: back to the handshake.
	setIntentions(t, consul, "echo", map[string]api.IntentionAction{"*": api.IntentionActionAllow})
	waitFor(t, 20*time.Second, "echo-1's server Listener to lose RBAC", func() error {
		if profile, rbac, instance := servedServerListener(t, status, "echo-1", server.addr); rbac || instance != bootstrap.OwnTrustDomainProviderInstance {
			return fmt.Errorf("profile %s, RBAC %v, roots from %q", profile, rbac, instance)
		}
		return nil
	})
	expectCode(t, batch, "batch with * allowed", codes.OK, 20*time.Second)
	expectCode(t, foreign, "caller of the federated trust domain, handshake again", codes.Unavailable, 20*time.Second)
	requireListenerACKed(t, status, "echo-1")
	trellis.requireAllACKed(t)
}

// requireListenerACKed waits until the stream of nodeID has ACKed the
// Listeners the server serves it now.
func requireListenerACKed(t testing.TB, api statusv1.StatusServiceClient, nodeID string) {
	t.Helper()
	waitFor(t, 15*time.Second, nodeID+" to ACK its Listeners", func() error {
		c, err := clientState(t, api, nodeID, 10*time.Second)
		if err != nil {
			return err
		}
		ty := typeOf(c, resource.ListenerType)
		switch {
		case ty == nil:
			return fmt.Errorf("%s subscribes to no Listener", nodeID)
		case ty.GetNacks() > 0:
			t.Fatalf("%s NACKed its Listeners: %v", nodeID, ty.GetNackHistory())
		case ty.GetState() != statusv1.SyncState_SYNC_STATE_SYNCED:
			return fmt.Errorf("Listeners %s: %s", ty.GetState(), ty.GetReason())
		}
		return nil
	})
}
