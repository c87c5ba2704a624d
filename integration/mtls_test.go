package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/xds"

	"github.com/trellis-mesh/trellis/identity"
	_ "github.com/trellis-mesh/trellis/identity/certprovider" // the trellis_spiffe certificate provider
	"github.com/trellis-mesh/trellis/internal/bootstrap"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	"github.com/trellis-mesh/trellis/internal/testutil/spiretest"
	echov1 "github.com/trellis-mesh/trellis/proto/trellis/echo/v1"
)

// mtlsTrustDomain is the trust domain of the mesh in these tests.
const mtlsTrustDomain = "trellis.test"

// mtlsID is the SPIFFE ID of a service under Trellis's default scheme, the
// one Consul uses, in the test agent's datacenter dc1.
func mtlsID(td, service string) string {
	return spiffeid.RequireFromSegments(spiffeid.RequireTrustDomainFromString(td), "ns", "default", "dc", "dc1", "svc", service).String()
}

// mtlsBootstrap is the bootstrap of a workload whose certificate provider
// "trellis" fetches the SVID id from the Workload API at addr.
func mtlsBootstrap(t testing.TB, trellis *trellisServer, nodeID, workloadAPIAddr, id string) []byte {
	t.Helper()
	provider, err := identity.ProviderFragment(identity.ProviderConfig{WorkloadAPIAddr: workloadAPIAddr, SPIFFEID: id})
	if err != nil {
		t.Fatal(err)
	}
	out, err := bootstrap.Generate(bootstrap.Config{
		Servers:              []string{trellis.xdsAddr},
		NodeID:               nodeID,
		CertificateProviders: map[string]json.RawMessage{bootstrap.CertificateProviderInstance: provider},
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// dialXDSCreds opens an xDS client channel with xDS credentials: mTLS when
// the control plane configures it, plaintext otherwise.
func dialXDSCreds(t testing.TB, bootstrapJSON []byte, target string) *grpc.ClientConn {
	t.Helper()
	resolver, err := xds.NewXDSResolverWithConfigForTesting(bootstrapJSON)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds), grpc.WithResolvers(resolver))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// mtlsEcho is an xDS-enabled Echo server (xds.NewGRPCServer with xDS
// credentials falling back to plaintext) registered in Consul. It answers
// with the caller's SPIFFE ID as its handler sees it.
type mtlsEcho struct {
	echov1.UnimplementedEchoServer
	id      string
	addr    string
	serving chan struct{}

	mu    sync.Mutex
	peers []string
}

func (e *mtlsEcho) Echo(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	caller := ""
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && info.SPIFFEID != nil {
			caller = info.SPIFFEID.String()
		}
	}
	e.mu.Lock()
	e.peers = append(e.peers, caller)
	e.mu.Unlock()
	return &echov1.EchoResponse{Message: req.GetMessage(), InstanceId: e.id, PeerIdentity: caller}, nil
}

// callers returns the identities the handler has seen, in order.
func (e *mtlsEcho) callers() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.peers...)
}

// startMTLSEcho starts an xDS Echo server on host (127.0.0.1 or ::1) with
// bootstrapJSON, registers it in Consul as an instance of service with a
// passing TTL check and meta, and waits until it serves.
func startMTLSEcho(t testing.TB, consul *consultest.Agent, bootstrapJSON []byte, host, service, id string, meta map[string]string) *mtlsEcho {
	t.Helper()
	lis, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	e := &mtlsEcho{id: id, addr: lis.Addr().String(), serving: make(chan struct{})}
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	srv, err := xds.NewGRPCServer(grpc.Creds(creds), xds.BootstrapContentsForTesting(bootstrapJSON),
		xds.ServingModeCallback(func(_ net.Addr, args xds.ServingModeChangeArgs) {
			if args.Mode == connectivity.ServingModeServing {
				once.Do(func() { close(e.serving) })
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	echov1.RegisterEchoServer(srv, e)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	tcp := lis.Addr().(*net.TCPAddr)
	consul.RegisterService(t, &api.AgentServiceRegistration{ID: id, Name: service, Address: tcp.IP.String(), Port: tcp.Port, Meta: meta})
	select {
	case <-e.serving:
	case <-time.After(60 * time.Second):
		t.Fatalf("xDS server %s at %s not serving after 60s: its server Listener never arrived", id, e.addr)
	}
	return e
}

// mtlsCall makes one Echo call.
func mtlsCall(conn *grpc.ClientConn) (*echov1.EchoResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return echov1.NewEchoClient(conn).Echo(ctx, &echov1.EchoRequest{Message: "hi"})
}

// expectCode polls until a call on conn ends with want (codes.OK for a
// success), and returns how long that took.
func expectCode(t testing.TB, conn *grpc.ClientConn, who string, want codes.Code, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	waitFor(t, timeout, fmt.Sprintf("%s to get %s", who, want), func() error {
		_, err := mtlsCall(conn)
		if got := statusCode(err); got != want {
			return fmt.Errorf("got %s (%v)", got, err)
		}
		return nil
	})
	return time.Since(start)
}

// setIntentions replaces the intentions of destination: sources maps a
// source service to "allow" or "deny".
func setIntentions(t testing.TB, consul *consultest.Agent, destination string, sources map[string]api.IntentionAction) {
	t.Helper()
	entry := &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: destination}
	for name, action := range sources {
		entry.Sources = append(entry.Sources, &api.SourceIntention{Name: name, Action: action})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := consul.Client(t).ConfigEntries().Set(entry, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		t.Fatalf("set intentions of %s: %v", destination, err)
	}
}

// TestMTLSWithIntentions runs a mesh in mTLS mode with a real SPIRE (the
// server's SVID from one agent, the callers' from another) and real grpc-go
// xDS clients and server: an allowed caller reaches the server, which sees
// its SPIFFE ID; a denied one gets PermissionDenied; swapping the
// intentions swaps the outcomes within seconds; plaintext callers are
// refused, and so are callers of another trust domain: by the server's TLS
// when it does not trust that domain, by the client's when the client does
// not trust the mesh's, and by RBAC when the server trusts it (federation):
// "*" and the intentions only ever name workloads of the mesh's own trust
// domain.
func TestMTLSWithIntentions(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{TrustDomain: mtlsTrustDomain})
	other := spiretest.Start(t, spiretest.Options{TrustDomain: "other.test"})
	// echo trusts other.test too (federation), so that other.test callers
	// pass its TLS and meet its RBAC rules; strict does not. The foreign
	// caller trusts trellis.test; the stranger, on its own agent, does not.
	spire.SetFederatedBundle(t, other.Bundle(t))
	other.SetFederatedBundle(t, spire.Bundle(t))
	serverAgent, clientAgent, strictAgent := spire.Agent(), spire.AddAgent(t), spire.AddAgent(t)
	echoID, webID, batchID := mtlsID(mtlsTrustDomain, "echo"), mtlsID(mtlsTrustDomain, "web"), mtlsID(mtlsTrustDomain, "batch")
	strictID := mtlsID(mtlsTrustDomain, "strict")
	foreignWebID, strangerID := mtlsID("other.test", "web"), mtlsID("other.test", "stranger")
	strangerAgent := other.AddAgent(t)
	serverAgent.Register(t, spiretest.Entry{SPIFFEID: echoID, FederatesWith: []string{"other.test"}})
	strictAgent.Register(t, spiretest.Entry{SPIFFEID: strictID})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: webID})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: batchID})
	other.Agent().Register(t, spiretest.Entry{SPIFFEID: foreignWebID, FederatesWith: []string{mtlsTrustDomain}})
	strangerAgent.Register(t, spiretest.Entry{SPIFFEID: strangerID})

	consul := consultest.Start(t, consultest.Options{})
	setIntentions(t, consul, "echo", map[string]api.IntentionAction{"web": api.IntentionActionAllow, "batch": api.IntentionActionDeny})
	trellis := startTrellis(t, consul.HTTPAddr(), "--mtls", "--trust-domain", mtlsTrustDomain)
	server := startMTLSEcho(t, consul, mtlsBootstrap(t, trellis, "echo-1", serverAgent.WorkloadAPIAddr(), echoID), "127.0.0.1", "echo", "echo-1", nil)
	setIntentions(t, consul, "strict", map[string]api.IntentionAction{"*": api.IntentionActionAllow})
	strict := startMTLSEcho(t, consul, mtlsBootstrap(t, trellis, "strict-1", strictAgent.WorkloadAPIAddr(), strictID), "127.0.0.1", "strict", "strict-1", nil)

	web := dialXDSCreds(t, mtlsBootstrap(t, trellis, "web-1", clientAgent.WorkloadAPIAddr(), webID), "xds:///echo")
	batch := dialXDSCreds(t, mtlsBootstrap(t, trellis, "batch-1", clientAgent.WorkloadAPIAddr(), batchID), "xds:///echo")
	expectCode(t, web, "web", codes.OK, 60*time.Second)
	resp, err := mtlsCall(web)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetPeerIdentity() != webID {
		t.Errorf("the server saw caller %q, want %q", resp.GetPeerIdentity(), webID)
	}
	expectCode(t, batch, "batch", codes.PermissionDenied, 30*time.Second)

	// Swap the intentions: both outcomes follow within a few seconds.
	setIntentions(t, consul, "echo", map[string]api.IntentionAction{"web": api.IntentionActionDeny, "batch": api.IntentionActionAllow})
	if d := expectCode(t, batch, "batch after the swap", codes.OK, 20*time.Second); d > 5*time.Second {
		t.Errorf("batch allowed %s after the intention changed, want within 5s", d.Round(time.Millisecond))
	} else {
		t.Logf("batch allowed %s after the intention changed", d.Round(time.Millisecond))
	}
	if d := expectCode(t, web, "web after the swap", codes.PermissionDenied, 20*time.Second); d > 5*time.Second {
		t.Errorf("web denied %s after the intention changed, want within 5s", d.Round(time.Millisecond))
	}
	resp, err = mtlsCall(batch)
	if err != nil || resp.GetPeerIdentity() != batchID {
		t.Errorf("batch call: %v, server saw %q; want success as %s", err, resp.GetPeerIdentity(), batchID)
	}

	// Refused callers, all with the wildcard allowed: they must be refused
	// for who they are, not for a missing intention.
	setIntentions(t, consul, "echo", map[string]api.IntentionAction{"*": api.IntentionActionAllow})
	expectCode(t, web, "web with * allowed", codes.OK, 20*time.Second)
	expectCode(t, dialXDSCreds(t, mtlsBootstrap(t, trellis, "web-2", clientAgent.WorkloadAPIAddr(), webID), "xds:///strict"),
		"web calling strict", codes.OK, 30*time.Second)
	seen, strictSeen := len(server.callers()), len(strict.callers())

	// A plaintext caller through xDS and one dialing the address directly.
	// The xDS one has the certificate provider in its bootstrap but
	// plaintext credentials: without the provider, grpc-go NACKs the
	// Clusters of mTLS services.
	plainXDS := dialXDS(t, mtlsBootstrap(t, trellis, "plain-1", clientAgent.WorkloadAPIAddr(), webID), "xds:///echo")
	plainDirect, err := grpc.NewClient(server.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plainDirect.Close()
	// A caller of another trust domain that trusts ours: strict's TLS
	// refuses it; echo trusts its domain and lets it through TLS, and RBAC
	// must refuse it: its "web" is not the mesh's web.
	foreignBootstrap := mtlsBootstrap(t, trellis, "foreign-1", other.Agent().WorkloadAPIAddr(), foreignWebID)
	foreignToStrict := dialXDSCreds(t, foreignBootstrap, "xds:///strict")
	foreignToEcho := dialXDSCreds(t, foreignBootstrap, "xds:///echo")
	// A caller of another trust domain that does not trust ours.
	stranger := dialXDSCreds(t, mtlsBootstrap(t, trellis, "stranger-1", strangerAgent.WorkloadAPIAddr(), strangerID), "xds:///echo")
	refused := []struct {
		name string
		conn *grpc.ClientConn
		want codes.Code
	}{
		{"plaintext caller through xDS", plainXDS, codes.Unavailable},
		{"plaintext caller dialing the server", plainDirect, codes.Unavailable},
		{"caller of another trust domain, to a server that does not trust it", foreignToStrict, codes.Unavailable},
		{"caller of another trust domain, to a server that trusts it", foreignToEcho, codes.PermissionDenied},
		{"caller that does not trust the mesh's trust domain", stranger, codes.Unavailable},
	}
	// Give every caller, concurrently, time to get its configuration, and
	// require that none ever gets through.
	outcomes := make([]error, len(refused))
	var wg sync.WaitGroup
	for i, c := range refused {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
				resp, err := mtlsCall(c.conn)
				if err == nil {
					outcomes[i] = fmt.Errorf("got through: the server saw %q", resp.GetPeerIdentity())
					return
				}
				outcomes[i] = err
			}
		}()
	}
	wg.Wait()
	for i, c := range refused {
		if got := statusCode(outcomes[i]); got != c.want {
			t.Errorf("%s: %s (%v), want refused with %s", c.name, got, outcomes[i], c.want)
		}
	}
	if got, gotStrict := server.callers()[seen:], strict.callers()[strictSeen:]; len(got)+len(gotStrict) != 0 {
		t.Errorf("refused callers reached the handlers: echo %v, strict %v", got, gotStrict)
	}
	expectCode(t, web, "web after the refused callers", codes.OK, 10*time.Second)
	trellis.requireAllACKed(t)
}

// TestMTLSPerServiceAndExampleServer: with the mesh default in plaintext, a
// service opts into mTLS through its instances' meta. The example echo
// server (--xds, run as its own process) serves it over IPv6 loopback with
// its SVID and reports the caller's SPIFFE ID; a plaintext service next to
// it keeps serving callers with and without xDS credentials.
func TestMTLSPerServiceAndExampleServer(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{TrustDomain: mtlsTrustDomain})
	serverAgent, clientAgent := spire.Agent(), spire.AddAgent(t)
	secureID, webID := mtlsID(mtlsTrustDomain, "secure"), mtlsID(mtlsTrustDomain, "web")
	serverAgent.Register(t, spiretest.Entry{SPIFFEID: secureID})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: webID})

	consul := consultest.Start(t, consultest.Options{})
	trellis := startTrellis(t, consul.HTTPAddr(), "--trust-domain", mtlsTrustDomain)

	// The example server on [::1], registered by the test with a TTL check
	// (a Consul gRPC check cannot present a client certificate).
	lis, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatalf("IPv6 loopback: %v", err)
	}
	addr := lis.Addr().(*net.TCPAddr)
	lis.Close()
	dir := t.TempDir()
	bsPath := filepath.Join(dir, "bootstrap.json")
	if err := os.WriteFile(bsPath, mtlsBootstrap(t, trellis, "secure-1", serverAgent.WorkloadAPIAddr(), secureID), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "echo-server.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(echoServerBin, "--xds", "--listen", addr.String(), "--instance-id", "secure-1",
		"--service", "secure", "--consul-register=false")
	cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP="+bsPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		logFile.Close()
		if t.Failed() {
			raw, _ := os.ReadFile(logPath)
			t.Logf("echo-server log:\n%s", raw)
		}
	})
	consul.RegisterService(t, &api.AgentServiceRegistration{ID: "secure-1", Name: "secure", Address: "::1", Port: addr.Port,
		Meta: map[string]string{"trellis-mtls": "true"}})

	plain := startMTLSEcho(t, consul, trellis.bootstrapFor(t, "plain-1"), "127.0.0.1", "plain", "plain-1", nil)

	web := mtlsBootstrap(t, trellis, "web-1", clientAgent.WorkloadAPIAddr(), webID)
	secure := dialXDSCreds(t, web, "xds:///secure")
	expectCode(t, secure, "web calling secure", codes.OK, 60*time.Second)
	resp, err := mtlsCall(secure)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetPeerIdentity() != webID || resp.GetInstanceId() != "secure-1" {
		t.Errorf("secure answered %+v, want instance secure-1 seeing caller %s", resp, webID)
	}
	raw, _ := os.ReadFile(logPath)
	if !strings.Contains(string(raw), "mode=SERVING") {
		t.Errorf("the example server never logged SERVING:\n%s", raw)
	}
	// A plaintext caller of the mTLS service is refused.
	r := callEcho(t, dialXDS(t, web, "xds:///secure"), 3)
	if len(r.failures) != 3 || statusCode(r.failures[0]) != codes.Unavailable {
		t.Errorf("plaintext calls to secure: %v, failures %v; want all refused (Unavailable)", r.byInstance, r.failures)
	}

	// The plaintext service serves callers with and without xDS
	// credentials, and sees no identity.
	for name, conn := range map[string]*grpc.ClientConn{
		"xds credentials": dialXDSCreds(t, web, "xds:///plain"),
		"plaintext":       dialXDS(t, trellis.bootstrapFor(t, "plain-caller-2"), "xds:///plain"),
	} {
		expectCode(t, conn, "caller with "+name+" calling plain", codes.OK, 30*time.Second)
		resp, err := mtlsCall(conn)
		if err != nil || resp.GetPeerIdentity() != "" {
			t.Errorf("caller with %s: %v, peer identity %q; want plaintext success", name, err, resp.GetPeerIdentity())
		}
	}
	if got := plain.callers(); len(got) == 0 {
		t.Error("the plaintext server saw no call")
	}
	trellis.requireAllACKed(t)
}

// TestMTLSBadInput: an intention naming a service that does not exist is
// logged and harmless; --mtls without --trust-domain fails at startup with
// a clear error; a default-deny mesh refuses callers without an intention.
func TestMTLSBadInput(t *testing.T) {
	t.Run("mtls without trust domain", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, trellisBin, "server", "--mtls", "--consul-addr", "127.0.0.1:1",
			"--xds-listen", freeAddr(t), "--admin-listen", freeAddr(t)).CombinedOutput()
		if err == nil {
			t.Fatalf("trellis server --mtls without --trust-domain started:\n%s", out)
		}
		if !strings.Contains(string(out), "--mtls requires --trust-domain") {
			t.Errorf("error output does not explain the problem:\n%s", out)
		}
	})

	t.Run("unknown service and default deny", func(t *testing.T) {
		spire := spiretest.Start(t, spiretest.Options{TrustDomain: mtlsTrustDomain})
		serverAgent, clientAgent := spire.Agent(), spire.AddAgent(t)
		echoID, webID := mtlsID(mtlsTrustDomain, "echo"), mtlsID(mtlsTrustDomain, "web")
		serverAgent.Register(t, spiretest.Entry{SPIFFEID: echoID})
		clientAgent.Register(t, spiretest.Entry{SPIFFEID: webID})
		consul := consultest.Start(t, consultest.Options{})
		setIntentions(t, consul, "ghost", map[string]api.IntentionAction{"web": api.IntentionActionAllow})
		trellis := startTrellis(t, consul.HTTPAddr(), "--mtls", "--trust-domain", mtlsTrustDomain, "--intention-default", "deny")
		startMTLSEcho(t, consul, mtlsBootstrap(t, trellis, "echo-1", serverAgent.WorkloadAPIAddr(), echoID), "127.0.0.1", "echo", "echo-1", nil)
		web := dialXDSCreds(t, mtlsBootstrap(t, trellis, "web-1", clientAgent.WorkloadAPIAddr(), webID), "xds:///echo")
		expectCode(t, web, "web without an intention under default deny", codes.PermissionDenied, 60*time.Second)
		setIntentions(t, consul, "echo", map[string]api.IntentionAction{"web": api.IntentionActionAllow})
		expectCode(t, web, "web once allowed", codes.OK, 20*time.Second)
		waitFor(t, 10*time.Second, "the log line about the unknown service", func() error {
			if !strings.Contains(trellis.Log(), "an intention names a service not in the catalog") || !strings.Contains(trellis.Log(), "service=ghost") {
				return fmt.Errorf("not logged yet")
			}
			return nil
		})
		trellis.requireAllACKed(t)
	})
}
