package integration

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc/codes"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	"github.com/trellis-mesh/trellis/internal/testutil/spiretest"
)

// startPeerServer registers service/id in Consul on a free loopback port
// (its server Listener is made from the registration) and runs impl's
// xDS-enabled Echo server there with xDS credentials; with wait, it waits
// until the server reports serving (grpc-js-xds binds only once it has its
// Listener).
func startPeerServer(t *testing.T, impl peerImpl, consul *consultest.Agent, bootstrapPath, service, id string, wait bool, env ...string) *peerProcess {
	t.Helper()
	port := portOf(t, freeAddr(t))
	consul.RegisterService(t, &api.AgentServiceRegistration{ID: id, Name: service, Address: "127.0.0.1", Port: port})
	p := startPeer(t, impl, "server", bootstrapPath, append([]string{"PORT=" + strconv.Itoa(port), "INSTANCE_ID=" + id, "SERVICE=" + service, "CREDS=xds"}, env...)...)
	if wait {
		line, err := p.readLine(60 * time.Second)
		if err != nil || !strings.Contains(line, "serving") {
			t.Fatalf("%s server did not start: %q %v", impl.name, line, err)
		}
	}
	return p
}

// expectPeerCode calls until the peer's calls end with want.
func expectPeerCode(t *testing.T, p *peerProcess, who, target string, want codes.Code) peerResult {
	t.Helper()
	name := map[codes.Code]string{codes.OK: "OK", codes.PermissionDenied: "PERMISSION_DENIED", codes.Unavailable: "UNAVAILABLE"}[want]
	return p.waitPeer(t, 60*time.Second, fmt.Sprintf("%s calling %s: %s", who, target, name),
		peerCall{Target: target, Calls: 3, Creds: "xds", TimeoutMS: 5000}, func(r peerResult) error {
			if r.Codes[name] != 3 {
				return fmt.Errorf("want every call %s", name)
			}
			return nil
		})
}

// TestPeersMTLS runs mTLS with Consul intentions for grpc-js-xds and C-core
// workloads whose SVIDs come from `trellis identity sync` files through
// file_watcher (bootstraps from `trellis bootstrap --for node|cpp
// --spiffe-files`): as clients of a grpc-go xDS server, web (allowed) gets
// through and the server sees its SPIFFE ID, batch (denied) gets
// PermissionDenied; as xDS servers called by grpc-go clients, the C-core
// server enforces the same intentions; the grpc-js-xds server gets its
// Listener (which carries RBAC) only when it declares the RBAC filter
// (--rbac, GRPC_XDS_EXPERIMENTAL_RBAC=true), and serves nothing otherwise,
// with the reason in the server's log.
func TestPeersMTLS(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{TrustDomain: mtlsTrustDomain})
	serverAgent, clientAgent := spire.Agent(), spire.AddAgent(t)
	echoID, webID, batchID := mtlsID(mtlsTrustDomain, "echo"), mtlsID(mtlsTrustDomain, "web"), mtlsID(mtlsTrustDomain, "batch")
	serverAgent.Register(t, spiretest.Entry{SPIFFEID: echoID})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: webID})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: batchID})
	pyID, nodeID := mtlsID(mtlsTrustDomain, "py-echo"), mtlsID(mtlsTrustDomain, "node-echo")
	serverAgent.Register(t, spiretest.Entry{SPIFFEID: pyID})
	serverAgent.Register(t, spiretest.Entry{SPIFFEID: nodeID})
	webFiles := startIdentitySync(t, clientAgent.WorkloadAPIAddr(), "--spiffe-id", webID)
	batchFiles := startIdentitySync(t, clientAgent.WorkloadAPIAddr(), "--spiffe-id", batchID)

	consul := consultest.Start(t, consultest.Options{})
	allowWeb := map[string]api.IntentionAction{"web": api.IntentionActionAllow, "batch": api.IntentionActionDeny}
	for _, svc := range []string{"echo", "py-echo", "node-echo"} {
		setIntentions(t, consul, svc, allowWeb)
	}
	trellis := startTrellis(t, consul.HTTPAddr(), "--mtls", "--trust-domain", mtlsTrustDomain)
	server := startMTLSEcho(t, consul, mtlsBootstrap(t, trellis, "echo-1", serverAgent.WorkloadAPIAddr(), echoID), "127.0.0.1", "echo", "echo-1", nil)

	for _, impl := range []peerImpl{nodePeer, pythonPeer} {
		t.Run(impl.name+"/client", func(t *testing.T) {
			web := startPeer(t, impl, "client", writePeerBootstrap(t, trellis, impl, impl.name+"-web-1", "--spiffe-files", webFiles.dir, "--spiffe-files-refresh", "1s"))
			batch := startPeer(t, impl, "client", writePeerBootstrap(t, trellis, impl, impl.name+"-batch-1", "--spiffe-files", batchFiles.dir, "--spiffe-files-refresh", "1s"))
			r := expectPeerCode(t, web, "web", "xds:///echo", codes.OK)
			if !r.PeerIdentities[webID] || len(r.PeerIdentities) != 1 {
				t.Errorf("the server saw callers %v, want only %s", r.PeerIdentities, webID)
			}
			seen := len(server.callers())
			expectPeerCode(t, batch, "batch", "xds:///echo", codes.PermissionDenied)
			if got := server.callers()[seen:]; len(got) > 0 {
				t.Errorf("denied calls reached the handler: %v", got)
			}
			trellis.requirePeerStreams(t, impl, impl.name+"-web-1")
		})
	}

	t.Run("python/server", func(t *testing.T) {
		files := startIdentitySync(t, serverAgent.WorkloadAPIAddr(), "--spiffe-id", pyID)
		startPeerServer(t, pythonPeer, consul, writePeerBootstrap(t, trellis, pythonPeer, "py-echo-1", "--spiffe-files", files.dir), "py-echo", "py-echo-1", true)
		web := dialXDSCreds(t, mtlsBootstrap(t, trellis, "go-web-1", clientAgent.WorkloadAPIAddr(), webID), "xds:///py-echo")
		batch := dialXDSCreds(t, mtlsBootstrap(t, trellis, "go-batch-1", clientAgent.WorkloadAPIAddr(), batchID), "xds:///py-echo")
		expectCode(t, web, "web calling the C-core server", codes.OK, 60*time.Second)
		expectCode(t, batch, "batch calling the C-core server", codes.PermissionDenied, 30*time.Second)
		trellis.requirePeerStreams(t, pythonPeer, "py-echo-1")
	})

	t.Run("node/server", func(t *testing.T) {
		files := startIdentitySync(t, serverAgent.WorkloadAPIAddr(), "--spiffe-id", nodeID)
		// Without the RBAC filter declared: the Listener is withheld.
		withheld := startPeerServer(t, nodePeer, consul, writePeerBootstrap(t, trellis, nodePeer, "node-echo-1", "--spiffe-files", files.dir), "node-echo", "node-echo-1", false)
		waitFor(t, 30*time.Second, "the withheld Listener reported", func() error {
			if !strings.Contains(trellis.Log(), "withheld from grpc-js-xds") {
				return fmt.Errorf("no log line on the withheld server Listener")
			}
			return nil
		})
		web := dialXDSCreds(t, mtlsBootstrap(t, trellis, "go-web-2", clientAgent.WorkloadAPIAddr(), webID), "xds:///node-echo")
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
			if resp, err := mtlsCall(web); err == nil {
				t.Fatalf("the grpc-js-xds server served without its Listener: answered as %s", resp.GetInstanceId())
			}
		}
		consul.DeregisterService(t, "node-echo-1")
		withheld.stdin.Close()

		// Declared (--rbac, with the flag set in the workload): served,
		// and the intentions hold.
		startPeerServer(t, nodePeer, consul, writePeerBootstrap(t, trellis, nodePeer, "node-echo-2", "--spiffe-files", files.dir, "--rbac"),
			"node-echo", "node-echo-2", true, "GRPC_XDS_EXPERIMENTAL_RBAC=true")
		expectCode(t, web, "web calling the grpc-js-xds server", codes.OK, 60*time.Second)
		batch := dialXDSCreds(t, mtlsBootstrap(t, trellis, "go-batch-2", clientAgent.WorkloadAPIAddr(), batchID), "xds:///node-echo")
		expectCode(t, batch, "batch calling the grpc-js-xds server", codes.PermissionDenied, 30*time.Second)
		for _, st := range trellis.streams(t) {
			if st.NodeID == "node-echo-2" && st.Profile != "grpc-node-rbac" {
				t.Errorf("node-echo-2 stream profile %q, want grpc-node-rbac", st.Profile)
			}
		}
		trellis.requireAllACKed(t)
	})
}
