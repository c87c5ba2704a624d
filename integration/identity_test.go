package integration

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
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
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/xds"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/identity/certprovider"
	"github.com/trellis-mesh/trellis/identity/spiffetls"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	"github.com/trellis-mesh/trellis/internal/testutil/spiretest"
	echov1 "github.com/trellis-mesh/trellis/proto/trellis/echo/v1"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// controlPlaneID is the control plane's SPIFFE ID in these tests.
var controlPlaneID = "spiffe://" + mtlsTrustDomain + "/trellis/control-plane"

// bootstrapCLI runs `trellis bootstrap ARGS...` and returns the bootstrap
// it writes.
func bootstrapCLI(t testing.TB, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, trellisBin, append([]string{"bootstrap"}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("trellis bootstrap %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return stdout.Bytes()
}

// identitySync is a `trellis identity sync` process.
type identitySync struct {
	t       testing.TB
	dir     string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
	once    sync.Once
}

// startIdentitySync runs `trellis identity sync` for the Workload API at
// addr, with extra flags, keeping the files in a new directory, and waits
// for the first SVID on disk.
func startIdentitySync(t testing.TB, addr string, extra ...string) *identitySync {
	t.Helper()
	s := &identitySync{t: t, dir: filepath.Join(t.TempDir(), "identity"), logPath: filepath.Join(t.TempDir(), "identity-sync.log"), done: make(chan struct{})}
	logFile, err := os.Create(s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(trellisBin, append([]string{"identity", "sync", "--dir", s.dir, "--workload-api-addr", addr}, extra...)...)
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.err = s.cmd.Wait()
		logFile.Close()
		close(s.done)
	}()
	t.Cleanup(func() {
		s.Interrupt()
		if t.Failed() {
			t.Logf("identity sync log:\n%s", s.Log())
		}
	})
	waitFor(t, 30*time.Second, "the first SVID files", func() error {
		_, err := s.SVID()
		return err
	})
	return s
}

// SVID reads the SVID on disk.
func (s *identitySync) SVID() (*x509svid.SVID, error) {
	f := identity.SyncedFiles(s.dir)
	return x509svid.Load(f.Cert, f.Key)
}

// Writes counts the SVID updates written to disk.
func (s *identitySync) Writes() int { return strings.Count(s.Log(), "SVID files written") }

func (s *identitySync) Log() string {
	raw, _ := os.ReadFile(s.logPath)
	return string(raw)
}

// Interrupt sends SIGINT, as Ctrl-C does, and returns the exit error.
func (s *identitySync) Interrupt() error {
	s.once.Do(func() {
		s.cmd.Process.Signal(os.Interrupt)
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
			s.cmd.Process.Kill()
			<-s.done
			s.t.Errorf("trellis identity sync did not stop within 15s of SIGINT")
		}
	})
	return s.err
}

// hasStream reports whether nodeID has an open ADS stream, and the SPIFFE
// ID the control plane saw on it.
func (s *trellisServer) hasStream(t testing.TB, nodeID string) (peerID string, ok bool) {
	t.Helper()
	for _, st := range s.streams(t) {
		if st.NodeID == nodeID {
			return st.PeerSPIFFEID, true
		}
	}
	return "", false
}

// requireRefused makes calls on conn for a few seconds and requires every
// one to fail with Unavailable, and, when wantErr is set, the last one to
// say wantErr.
func requireRefused(t testing.TB, conn *grpc.ClientConn, who, wantErr string) {
	t.Helper()
	var last error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		r := callEcho(t, conn, 1)
		if r.ok() > 0 {
			t.Fatalf("%s got configuration and made a call", who)
		}
		last = r.failures[0]
	}
	if statusCode(last) != codes.Unavailable || !strings.Contains(last.Error(), wantErr) {
		t.Errorf("%s: calls fail with %v, want Unavailable saying %q", who, last, wantErr)
	}
}

// TestXDSOverMTLS serves xDS over mTLS with the control plane's SVID from a
// real SPIRE: a client with an SVID of the trust domain gets configuration
// and makes calls, and the control plane shows its SPIFFE ID per stream; a
// plaintext client, a client of another trust domain and a client that
// expects another control plane get nothing.
func TestXDSOverMTLS(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{TrustDomain: mtlsTrustDomain})
	other := spiretest.Start(t, spiretest.Options{TrustDomain: "other.test"})
	// The foreign client trusts the mesh's trust domain; the control plane
	// does not trust other.test.
	other.SetFederatedBundle(t, spire.Bundle(t))
	cpAgent, clientAgent := spire.Agent(), spire.AddAgent(t)
	webID, foreignID := mtlsID(mtlsTrustDomain, "web"), mtlsID("other.test", "web")
	cpAgent.Register(t, spiretest.Entry{SPIFFEID: controlPlaneID})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: webID})
	other.Agent().Register(t, spiretest.Entry{SPIFFEID: foreignID, FederatesWith: []string{mtlsTrustDomain}})

	consul := consultest.Start(t, consultest.Options{})
	startBackend(t, consul, "echo", "echo-1", backendOptions{})
	trellis := startTrellis(t, consul.HTTPAddr(), "--xds-tls", "--workload-api-addr", cpAgent.WorkloadAPIAddr())

	web := dialXDS(t, bootstrapCLI(t, "--xds-server", trellis.xdsAddr, "--node-id", "web-1",
		"--xds-server-tls", "spiffe", "--workload-api-addr", clientAgent.WorkloadAPIAddr(), "--xds-server-spiffe-id", controlPlaneID), "xds:///echo")
	waitForInstances(t, web, 30*time.Second, "echo-1")
	if id, ok := trellis.hasStream(t, "web-1"); !ok || id != webID {
		t.Errorf("/debug/xds/streams: stream of web-1 has peer_spiffe_id %q (open: %t), want %s", id, ok, webID)
	}
	code, body, err := trellis.get("/readyz")
	if err != nil || code != 200 || !strings.Contains(body, "control plane SVID: "+controlPlaneID) || !strings.Contains(body, "xds mTLS: accepting trust domains "+mtlsTrustDomain) {
		t.Errorf("/readyz %d %v does not show the control plane's SVID:\n%s", code, err, body)
	}

	refused := []struct {
		name    string
		node    string
		args    []string
		wantErr string
	}{
		{name: "plaintext client", node: "plain-1"},
		{
			name: "client of another trust domain",
			node: "foreign-1",
			args: []string{"--xds-server-tls", "spiffe", "--workload-api-addr", other.Agent().WorkloadAPIAddr(), "--xds-server-spiffe-id", controlPlaneID},
		},
		{
			name:    "client expecting another control plane",
			node:    "wary-1",
			args:    []string{"--xds-server-tls", "spiffe", "--workload-api-addr", clientAgent.WorkloadAPIAddr(), "--xds-server-spiffe-id", "spiffe://trellis.test/trellis/other"},
			wantErr: "is not one of the accepted SPIFFE IDs",
		},
	}
	for _, r := range refused {
		t.Run(r.name, func(t *testing.T) {
			conn := dialXDS(t, bootstrapCLI(t, append([]string{"--xds-server", trellis.xdsAddr, "--node-id", r.node}, r.args...)...), "xds:///echo")
			requireRefused(t, conn, r.name, r.wantErr)
			if _, ok := trellis.hasStream(t, r.node); ok {
				t.Errorf("the control plane has an ADS stream of %s", r.node)
			}
		})
	}
	waitForInstances(t, web, 10*time.Second, "echo-1")
	trellis.requireAllACKed(t)
}

// TestXDSOverMTLSWithSyncedFiles: a client reaching the xDS server with
// gRPC's stock "tls" credentials reads the files `trellis identity sync`
// keeps; its SVID lives 30s, and the client keeps its configuration and
// its calls across rotations. Once its first SVID has expired, the control
// plane restarts: the client reconnects with the rotated files and gets
// new configuration. SIGINT stops identity sync cleanly.
func TestXDSOverMTLSWithSyncedFiles(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{TrustDomain: mtlsTrustDomain})
	cpAgent, clientAgent := spire.Agent(), spire.AddAgent(t)
	webID := mtlsID(mtlsTrustDomain, "web")
	// gRPC's "tls" credentials check the host name: the control plane's
	// SVID names localhost, which the bootstrap dials.
	cpAgent.Register(t, spiretest.Entry{SPIFFEID: controlPlaneID, DNSNames: []string{"localhost"}})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: webID, X509SVIDTTL: 30 * time.Second})
	sync := startIdentitySync(t, clientAgent.WorkloadAPIAddr())
	first, err := sync.SVID()
	if err != nil {
		t.Fatal(err)
	}
	if first.ID.String() != webID {
		t.Fatalf("identity sync keeps %s, want %s", first.ID, webID)
	}

	consul := consultest.Start(t, consultest.Options{})
	startBackend(t, consul, "echo", "echo-1", backendOptions{})
	trellis := startTrellis(t, consul.HTTPAddr(), "--xds-tls", "--workload-api-addr", cpAgent.WorkloadAPIAddr())
	_, port, err := net.SplitHostPort(trellis.xdsAddr)
	if err != nil {
		t.Fatal(err)
	}
	web := dialXDS(t, bootstrapCLI(t, "--xds-server", net.JoinHostPort("localhost", port), "--node-id", "web-1",
		"--spiffe-files", sync.dir, "--spiffe-files-refresh", "1s", "--xds-server-tls", "files"), "xds:///echo")
	waitForInstances(t, web, 30*time.Second, "echo-1")
	traffic := startTraffic(t, web, 50*time.Millisecond)

	// Two rotations, and the first SVID expired.
	waitFor(t, 60*time.Second, "two rotations and the first SVID's expiry", func() error {
		if n := sync.Writes(); n < 3 {
			return fmt.Errorf("%d SVIDs written, want 3", n)
		}
		if left := time.Until(first.Certificates[0].NotAfter); left > 0 {
			return fmt.Errorf("the first SVID expires in %s", left.Round(time.Second))
		}
		return nil
	})
	now, err := sync.SVID()
	if err != nil {
		t.Fatal(err)
	}
	if now.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 {
		t.Fatal("the SVID on disk did not change")
	}
	t.Logf("%d SVIDs written by identity sync", sync.Writes())

	// The new connection to the restarted control plane is made with the
	// rotated files: the first SVID has expired.
	trellis.Stop()
	trellis.Start()
	startBackend(t, consul, "echo", "echo-2", backendOptions{})
	waitForInstances(t, web, 30*time.Second, "echo-2")
	waitFor(t, 10*time.Second, "the reconnected stream of web-1", func() error {
		if id, ok := trellis.hasStream(t, "web-1"); !ok || id != webID {
			return fmt.Errorf("stream of web-1: peer_spiffe_id %q (open: %t), want %s", id, ok, webID)
		}
		return nil
	})
	traffic.Stop()
	counts, failures := traffic.snapshot()
	if len(failures) > 0 {
		t.Errorf("%d of %d calls failed across rotations and a control plane restart; first: %v", len(failures), len(failures)+counts["echo-1"]+counts["echo-2"], failures[0])
	}
	if err := sync.Interrupt(); err != nil {
		t.Errorf("identity sync exited with %v after SIGINT", err)
	}
	if !strings.Contains(sync.Log(), "stopped keeping SVID files") {
		t.Errorf("identity sync did not log its stop:\n%s", sync.Log())
	}
	trellis.requireAllACKed(t)
}

// TestPolicyAPIOverMTLS serves the policy API on an mTLS listener with the
// control plane's SVID: a caller whose SPIFFE ID is allowed may call it;
// another is refused unless it also presents the bearer token; a plaintext
// caller cannot connect.
func TestPolicyAPIOverMTLS(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{TrustDomain: mtlsTrustDomain})
	cpAgent, clientAgent := spire.Agent(), spire.AddAgent(t)
	adminID := "spiffe://" + mtlsTrustDomain + "/ops/admin"
	webID := mtlsID(mtlsTrustDomain, "web")
	cpAgent.Register(t, spiretest.Entry{SPIFFEID: controlPlaneID})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: adminID})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: webID})

	consul := consultest.Start(t, consultest.Options{})
	apiAddr := freeAddr(t)
	trellis := startTrellisWithAPI(t, consul, "--workload-api-addr", cpAgent.WorkloadAPIAddr(),
		"--api-tls-listen", apiAddr, "--api-allowed-spiffe-id", adminID)

	dialAs := func(id string) policyv1.PolicyServiceClient {
		p, err := certprovider.New(certprovider.Config{WorkloadAPIAddr: clientAgent.WorkloadAPIAddr(), SPIFFEID: spiffeid.RequireFromString(id), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		creds := spiffetls.ClientCredentials(p, spiffetls.AuthorizeIDs(spiffeid.RequireFromString(controlPlaneID)))
		conn, err := grpc.NewClient(apiAddr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return policyv1.NewPolicyServiceClient(conn)
	}
	ctx := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		t.Cleanup(cancel)
		return ctx
	}

	admin := dialAs(adminID)
	put, err := admin.PutPolicy(ctx(), &policyv1.PutPolicyRequest{Policy: mustPolicy(t, `{"service": "echo", "circuit_breaker": {"max_requests": 100}}`)})
	if err != nil {
		t.Fatalf("allowed SPIFFE ID: PutPolicy: %v", err)
	}
	list, err := admin.ListPolicies(ctx(), &policyv1.ListPoliciesRequest{})
	if err != nil || len(list.GetPolicies()) != 1 {
		t.Fatalf("allowed SPIFFE ID: ListPolicies = %v, %v; want the policy at revision %d", list, err, put.GetRevision())
	}

	web := dialAs(webID)
	_, err = web.ListPolicies(ctx(), &policyv1.ListPoliciesRequest{})
	if statusCode(err) != codes.PermissionDenied || !strings.Contains(err.Error(), webID+" is not allowed") {
		t.Errorf("other SPIFFE ID: %v, want PermissionDenied naming it", err)
	}
	if _, err := web.ListPolicies(metadata.AppendToOutgoingContext(ctx(), "authorization", "Bearer "+apiToken), &policyv1.ListPoliciesRequest{}); err != nil {
		t.Errorf("other SPIFFE ID with the bearer token: %v, want accepted", err)
	}

	plain, err := grpc.NewClient(apiAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := policyv1.NewPolicyServiceClient(plain).ListPolicies(metadata.AppendToOutgoingContext(ctx(), "authorization", "Bearer "+apiToken), &policyv1.ListPoliciesRequest{}); statusCode(err) != codes.Unavailable {
		t.Errorf("plaintext caller on the mTLS listener: %v, want Unavailable", err)
	}
	// The admin listener keeps serving the API with the bearer token, and
	// without it names what is missing.
	api := trellis.policyClient(t)
	if _, err := api.ListPolicies(authed(t), &policyv1.ListPoliciesRequest{}); err != nil {
		t.Errorf("bearer token on the admin listener: %v", err)
	}
	if _, err := api.ListPolicies(ctx(), &policyv1.ListPoliciesRequest{}); statusCode(err) != codes.Unauthenticated {
		t.Errorf("no credentials on the admin listener: %v, want Unauthenticated", err)
	}
	if !strings.Contains(trellis.Log(), "serving the policy API over mTLS") {
		t.Errorf("the server did not log its mTLS policy listener")
	}
}

// TestServerTLSBadInput: the control plane without a Workload API fails at
// startup, saying where it looked.
func TestServerTLSBadInput(t *testing.T) {
	missing := "unix://" + filepath.Join(t.TempDir(), "agent.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, trellisBin, "server", "--xds-tls", "--workload-api-addr", missing, "--workload-api-timeout", "2s",
		"--consul-addr", "127.0.0.1:1", "--xds-listen", freeAddr(t), "--admin-listen", freeAddr(t))
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("trellis server started without a Workload API:\n%s", out)
	}
	if ee, ok := err.(*exec.ExitError); !ok || ee.Sys().(syscall.WaitStatus).Signaled() {
		t.Errorf("trellis server did not exit with an error status: %v", err)
	}
	want := "no X.509 SVID for the control plane from the Workload API at " + missing + " within 2s"
	if !strings.Contains(string(out), want) {
		t.Errorf("output does not say %q:\n%s", want, out)
	}
}

// certLog records the certificates one side of mTLS saw its peers present.
type certLog struct {
	mu       sync.Mutex
	serials  map[string]bool
	notAfter time.Time // of the certificate seen last
}

func (c *certLog) add(certs []*x509.Certificate) {
	if len(certs) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.serials == nil {
		c.serials = map[string]bool{}
	}
	c.serials[certs[0].SerialNumber.String()] = true
	c.notAfter = certs[0].NotAfter
}

// distinct returns how many different certificates were seen, and the
// expiry of the last one.
func (c *certLog) distinct() (int, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.serials), c.notAfter
}

// rotatingEcho is an xDS-enabled Echo server with xDS credentials that
// closes every connection after about two seconds (MaxConnectionAge), so
// that clients keep making new TLS handshakes with the SVIDs of the
// moment. It records the client certificates it sees.
type rotatingEcho struct {
	echov1.UnimplementedEchoServer
	id      string
	clients certLog
}

func (e *rotatingEcho) Echo(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			e.clients.add(info.State.PeerCertificates)
		}
	}
	return &echov1.EchoResponse{Message: req.GetMessage(), InstanceId: e.id}, nil
}

// startRotatingEcho starts a rotatingEcho on 127.0.0.1 with bootstrapJSON,
// registers it in Consul as service, and waits until it serves.
func startRotatingEcho(t testing.TB, consul *consultest.Agent, bootstrapJSON []byte, service, id string) *rotatingEcho {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &rotatingEcho{id: id}
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	serving := make(chan struct{})
	var once sync.Once
	srv, err := xds.NewGRPCServer(grpc.Creds(creds), xds.BootstrapContentsForTesting(bootstrapJSON),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: 2 * time.Second, MaxConnectionAgeGrace: time.Second}),
		xds.ServingModeCallback(func(_ net.Addr, args xds.ServingModeChangeArgs) {
			if args.Mode == connectivity.ServingModeServing {
				once.Do(func() { close(serving) })
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	echov1.RegisterEchoServer(srv, e)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	tcp := lis.Addr().(*net.TCPAddr)
	consul.RegisterService(t, &api.AgentServiceRegistration{ID: id, Name: service, Address: tcp.IP.String(), Port: tcp.Port})
	select {
	case <-serving:
	case <-time.After(60 * time.Second):
		t.Fatalf("xDS server %s not serving after 60s", id)
	}
	return e
}

// mtlsTraffic calls continuously over one channel, records every failure
// and the server certificates the calls went over.
type mtlsTraffic struct {
	cancel  context.CancelFunc
	done    chan struct{}
	servers certLog

	mu       sync.Mutex
	ok       int
	failures []error
	lastOK   time.Time
}

func startMTLSTraffic(t testing.TB, conn *grpc.ClientConn) *mtlsTraffic {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &mtlsTraffic{cancel: cancel, done: make(chan struct{})}
	client := echov1.NewEchoClient(conn)
	go func() {
		defer close(l.done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			var p peer.Peer
			_, err := client.Echo(cctx, &echov1.EchoRequest{Message: "rotation"}, grpc.Peer(&p))
			ccancel()
			if ctx.Err() != nil {
				return
			}
			l.mu.Lock()
			if err != nil {
				l.failures = append(l.failures, err)
			} else {
				l.ok++
				l.lastOK = time.Now()
			}
			l.mu.Unlock()
			if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && err == nil {
				l.servers.add(info.State.PeerCertificates)
			}
		}
	}()
	t.Cleanup(l.Stop)
	return l
}

func (l *mtlsTraffic) Stop() {
	l.cancel()
	<-l.done
}

// results returns the calls that succeeded and the failures so far.
func (l *mtlsTraffic) results() (int, []error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok, append([]error(nil), l.failures...)
}

// rotationPair is one client and one server whose SVIDs rotate.
type rotationPair struct {
	name    string
	server  *rotatingEcho
	traffic *mtlsTraffic
}

// check returns nil once the server has seen three client SVIDs and the
// client three server SVIDs (two rotations on each side) with no failed
// call, and what is missing otherwise.
func (p rotationPair) check() error {
	clients, _ := p.server.clients.distinct()
	servers, _ := p.traffic.servers.distinct()
	ok, failures := p.traffic.results()
	if len(failures) > 0 {
		return fmt.Errorf("%s: %d calls failed (%d succeeded); first: %v", p.name, len(failures), ok, failures[0])
	}
	if clients < 3 || servers < 3 {
		return fmt.Errorf("%s: the server saw %d client SVIDs and the client %d server SVIDs, want 3 each (two rotations)", p.name, clients, servers)
	}
	return nil
}

// TestSVIDRotationUnderMTLSTraffic: SVIDs that live 30 s rotate every ten
// seconds or so under continuous mTLS traffic between services, whose
// servers close every connection after two seconds so that handshakes keep
// happening with the SVIDs of the moment; both the in-process certificate
// provider and file_watcher with `trellis identity sync` go through two
// rotations on both sides without a single failed call.
func TestSVIDRotationUnderMTLSTraffic(t *testing.T) {
	const ttl = 30 * time.Second
	spire := spiretest.Start(t, spiretest.Options{TrustDomain: mtlsTrustDomain})
	serverAgent, clientAgent := spire.Agent(), spire.AddAgent(t)
	echoID, filesID, webID := mtlsID(mtlsTrustDomain, "echo"), mtlsID(mtlsTrustDomain, "echo-files"), mtlsID(mtlsTrustDomain, "web")
	serverAgent.Register(t, spiretest.Entry{SPIFFEID: echoID, X509SVIDTTL: ttl})
	serverAgent.Register(t, spiretest.Entry{SPIFFEID: filesID, X509SVIDTTL: ttl})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: webID, X509SVIDTTL: ttl})
	serverFiles := startIdentitySync(t, serverAgent.WorkloadAPIAddr(), "--spiffe-id", filesID)
	clientFiles := startIdentitySync(t, clientAgent.WorkloadAPIAddr())

	consul := consultest.Start(t, consultest.Options{})
	trellis := startTrellis(t, consul.HTTPAddr(), "--mtls", "--trust-domain", mtlsTrustDomain)
	inProcess := func(node, addr, id string) []byte {
		return bootstrapCLI(t, "--xds-server", trellis.xdsAddr, "--node-id", node, "--spiffe", "--workload-api-addr", addr, "--spiffe-id", id)
	}
	files := func(node, dir string) []byte {
		return bootstrapCLI(t, "--xds-server", trellis.xdsAddr, "--node-id", node, "--spiffe-files", dir, "--spiffe-files-refresh", "1s")
	}
	pairs := []rotationPair{
		{name: "in-process provider", server: startRotatingEcho(t, consul, inProcess("echo-1", serverAgent.WorkloadAPIAddr(), echoID), "echo", "echo-1")},
		{name: "file_watcher", server: startRotatingEcho(t, consul, files("echo-files-1", serverFiles.dir), "echo-files", "echo-files-1")},
	}
	conns := []*grpc.ClientConn{
		dialXDSCreds(t, inProcess("web-1", clientAgent.WorkloadAPIAddr(), webID), "xds:///echo"),
		dialXDSCreds(t, files("web-2", clientFiles.dir), "xds:///echo-files"),
	}
	for i := range pairs {
		expectCode(t, conns[i], pairs[i].name, codes.OK, 60*time.Second)
	}
	start := time.Now()
	for i := range pairs {
		pairs[i].traffic = startMTLSTraffic(t, conns[i])
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		var errs []string
		for _, p := range pairs {
			if err := p.check(); err != nil {
				if ok, failures := p.traffic.results(); len(failures) > 0 {
					t.Fatalf("%s: %d of %d calls failed during rotations; first: %v", p.name, len(failures), ok+len(failures), failures[0])
				}
				errs = append(errs, err.Error())
			}
		}
		if len(errs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", time.Since(start).Round(time.Second), strings.Join(errs, "; "))
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, p := range pairs {
		p.traffic.Stop()
		ok, _ := p.traffic.results()
		clients, _ := p.server.clients.distinct()
		servers, _ := p.traffic.servers.distinct()
		t.Logf("%s: %d calls in %s, none failed; the server saw %d client SVIDs, the client %d server SVIDs",
			p.name, ok, time.Since(start).Round(time.Second), clients, servers)
	}
	trellis.requireAllACKed(t)
}

// TestSPIREAgentStopped: with the SPIRE agents of a client and a server
// stopped, existing connections and new ones (every two seconds) keep
// working on the last SVIDs until they expire; then new handshakes fail;
// once the agents are back, calls succeed again.
func TestSPIREAgentStopped(t *testing.T) {
	const ttl = 20 * time.Second
	spire := spiretest.Start(t, spiretest.Options{TrustDomain: mtlsTrustDomain})
	serverAgent, clientAgent := spire.Agent(), spire.AddAgent(t)
	echoID, webID := mtlsID(mtlsTrustDomain, "echo"), mtlsID(mtlsTrustDomain, "web")
	serverAgent.Register(t, spiretest.Entry{SPIFFEID: echoID, X509SVIDTTL: ttl})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: webID, X509SVIDTTL: ttl})

	consul := consultest.Start(t, consultest.Options{})
	trellis := startTrellis(t, consul.HTTPAddr(), "--mtls", "--trust-domain", mtlsTrustDomain)
	server := startRotatingEcho(t, consul, mtlsBootstrap(t, trellis, "echo-1", serverAgent.WorkloadAPIAddr(), echoID), "echo", "echo-1")
	conn := dialXDSCreds(t, mtlsBootstrap(t, trellis, "web-1", clientAgent.WorkloadAPIAddr(), webID), "xds:///echo")
	expectCode(t, conn, "web", codes.OK, 60*time.Second)
	traffic := startMTLSTraffic(t, conn)
	waitFor(t, 10*time.Second, "calls over mTLS", func() error {
		if ok, _ := traffic.results(); ok < 10 {
			return fmt.Errorf("%d calls", ok)
		}
		return nil
	})

	serverAgent.Stop(t)
	clientAgent.Stop(t)
	stopped := time.Now()
	// Both sides now hold their last SVIDs: wait for a handshake with each
	// (connections last two seconds) to learn when they expire.
	time.Sleep(3 * time.Second)
	_, clientExpiry := server.clients.distinct()
	_, serverExpiry := traffic.servers.distinct()
	expiry := clientExpiry
	if serverExpiry.Before(expiry) {
		expiry = serverExpiry
	}
	t.Logf("agents stopped; the last SVIDs expire in %s", time.Until(expiry).Round(time.Second))
	// Until shortly before expiry, no call fails.
	waitFor(t, ttl+5*time.Second, "the eve of the SVIDs' expiry", func() error {
		if _, failures := traffic.results(); len(failures) > 0 {
			t.Fatalf("%d calls failed %s after the agents stopped, before the SVIDs expired at %s; first: %v",
				len(failures), time.Since(stopped).Round(time.Second), expiry.UTC().Format(time.TimeOnly), failures[0])
		}
		if left := time.Until(expiry); left > time.Second {
			return fmt.Errorf("%s left", left.Round(time.Second))
		}
		return nil
	})
	ok, _ := traffic.results()
	t.Logf("%d calls succeeded, none failed, in the %s between the agents stopping and the SVIDs' expiry", ok, time.Since(stopped).Round(time.Second))

	// After expiry, new handshakes fail.
	waitFor(t, 20*time.Second, "calls to fail with expired SVIDs", func() error {
		if _, failures := traffic.results(); len(failures) == 0 {
			return fmt.Errorf("no failure yet")
		}
		return nil
	})
	traffic.Stop()

	// The agents come back with new SVIDs, and so do the calls.
	serverAgent.Start(t)
	clientAgent.Start(t)
	expectCode(t, conn, "web once the agents are back", codes.OK, 60*time.Second)
	trellis.requireAllACKed(t)
}
