package integration

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	"github.com/trellis-mesh/trellis/internal/testutil/spiretest"
	echov1 "github.com/trellis-mesh/trellis/proto/trellis/echo/v1"
)

// TestXDSScopeByIntentions serves xDS over mTLS with --xds-scope=intentions
// (real SPIRE, real Consul intentions, real grpc-go xDS clients): web may
// call echo and may not call db, so it gets echo's configuration and calls
// it, while its channel to db is told db does not exist, and the withheld
// requests are counted. Allowing web to call db gives it db within
// seconds; denying it echo removes echo from its configuration. An
// xDS-enabled mTLS server gets its own server Listener under the scope, and
// web, allowed to call it, gets through its RBAC with its SPIFFE ID.
func TestXDSScopeByIntentions(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{TrustDomain: mtlsTrustDomain})
	cpAgent, clientAgent, apiAgent := spire.Agent(), spire.AddAgent(t), spire.AddAgent(t)
	webID, apiID := mtlsID(mtlsTrustDomain, "web"), mtlsID(mtlsTrustDomain, "api")
	cpAgent.Register(t, spiretest.Entry{SPIFFEID: controlPlaneID})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: webID})
	apiAgent.Register(t, spiretest.Entry{SPIFFEID: apiID})

	consul := consultest.Start(t, consultest.Options{})
	startBackend(t, consul, "echo", "echo-1", backendOptions{})
	startBackend(t, consul, "db", "db-1", backendOptions{})
	setIntentions(t, consul, "echo", map[string]api.IntentionAction{"web": api.IntentionActionAllow})
	setIntentions(t, consul, "db", map[string]api.IntentionAction{"web": api.IntentionActionDeny})
	setIntentions(t, consul, "api", map[string]api.IntentionAction{"web": api.IntentionActionAllow})
	trellis := startTrellis(t, consul.HTTPAddr(), "--xds-tls", "--workload-api-addr", cpAgent.WorkloadAPIAddr(),
		"--trust-domain", mtlsTrustDomain, "--xds-scope", "intentions")

	dialWeb := func(node, target string) *grpc.ClientConn {
		return dialXDS(t, bootstrapCLI(t, "--xds-server", trellis.xdsAddr, "--node-id", node,
			"--xds-server-tls", "spiffe", "--workload-api-addr", clientAgent.WorkloadAPIAddr(), "--xds-server-spiffe-id", controlPlaneID), target)
	}
	echo := dialWeb("web-1", "xds:///echo")
	waitForInstances(t, echo, 30*time.Second, "echo-1")

	// An mTLS server receives its own server Listener (startMTLSEcho waits
	// for it), and web's calls pass its RBAC.
	mtlsBootstrapCLI := func(node, id, agentAddr string) []byte {
		return bootstrapCLI(t, "--xds-server", trellis.xdsAddr, "--node-id", node, "--spiffe", "--spiffe-id", id,
			"--xds-server-tls", "spiffe", "--workload-api-addr", agentAddr, "--xds-server-spiffe-id", controlPlaneID)
	}
	apiServer := startMTLSEcho(t, consul, mtlsBootstrapCLI("api-1", apiID, apiAgent.WorkloadAPIAddr()), "127.0.0.1", "api", "api-1", map[string]string{"trellis-mtls": "true"})
	webToAPI := dialXDSCreds(t, mtlsBootstrapCLI("web-3", webID, clientAgent.WorkloadAPIAddr()), "xds:///api")
	expectCode(t, webToAPI, "web calling api over mTLS", codes.OK, 30*time.Second)
	if got := apiServer.callers(); len(got) == 0 || got[len(got)-1] != webID {
		t.Errorf("api saw callers %v, want %s", got, webID)
	}

	db := dialWeb("web-2", "xds:///db")
	start := time.Now()
	// A Listener never received is reported absent once gRPC's resource
	// timeout (15 s) passes; grpc-go v1.85 words it "has been removed".
	expectScopeError(t, db, "db", `resource "db" of type "ListenerResource"`, "has been removed", 40*time.Second)
	t.Logf("web's channel to db reported db's Listener absent after %s", time.Since(start).Round(time.Millisecond))
	if n := scopeDenied(t, trellis, "listener"); n < 1 {
		t.Errorf("trellis_xds_scope_denied_total{type=listener} = %v, want at least 1", n)
	}

	// Allowing web to call db gives it db's configuration.
	changed := time.Now()
	setIntentions(t, consul, "db", map[string]api.IntentionAction{"web": api.IntentionActionAllow})
	waitForInstances(t, db, 20*time.Second, "db-1")
	t.Logf("web reached db %s after the intention allowed it", time.Since(changed).Round(time.Millisecond))

	// Denying web echo takes echo out of its configuration.
	changed = time.Now()
	setIntentions(t, consul, "echo", map[string]api.IntentionAction{"web": api.IntentionActionDeny})
	expectScopeError(t, echo, "echo", `resource "echo" of type "ListenerResource"`, "has been removed", 20*time.Second)
	t.Logf("echo removed from web's configuration %s after the intention denied it", time.Since(changed).Round(time.Millisecond))
	waitForInstances(t, db, 10*time.Second, "db-1")
	trellis.requireAllACKed(t)
	trellis.requireNoNACKsInMetrics(t)
}

// expectScopeError polls calls on conn until one fails with an error
// naming the resource and saying what happened to it.
func expectScopeError(t *testing.T, conn *grpc.ClientConn, service, resource, what string, timeout time.Duration) {
	t.Helper()
	client := echov1.NewEchoClient(conn)
	waitFor(t, timeout, service+": "+what, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		resp, err := client.Echo(ctx, &echov1.EchoRequest{Message: "scope"})
		if err == nil {
			return fmt.Errorf("call answered by %s", resp.GetInstanceId())
		}
		if !strings.Contains(err.Error(), resource) || !strings.Contains(err.Error(), what) {
			return fmt.Errorf("call failed with %v", err)
		}
		return nil
	})
}

// scopeDenied reads trellis_xds_scope_denied_total for a resource type.
func scopeDenied(t *testing.T, s *trellisServer, typ string) float64 {
	t.Helper()
	code, body, err := s.get("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	prefix := `trellis_xds_scope_denied_total{type="` + typ + `"} `
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %q: %v", line, err)
			}
			return n
		}
	}
	return 0
}
