package integration

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	statusv1 "github.com/trellis-mesh/trellis/proto/trellis/status/v1"
)

// runExplain runs `trellis explain` against s.
func runExplain(t *testing.T, s *trellisServer, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(trellisBin, append([]string{"explain", "--server", s.adminAddr, "--token", apiToken, "--timeout", "10s"}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func explainJSON(t *testing.T, s *trellisServer, args ...string) (*statusv1.ExplainResponse, error) {
	t.Helper()
	out, err := runExplain(t, s, append(args, "-o", "json")...)
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	resp := &statusv1.ExplainResponse{}
	if err := protojson.Unmarshal([]byte(out), resp); err != nil {
		return nil, fmt.Errorf("decode: %v\n%s", err, out)
	}
	return resp, nil
}

// TestExplain asks `trellis explain` about a real grpc-go client: the
// instance whose check is critical is named as left out with its reason,
// the policy revision and its method route apply, the client ACKed it all;
// and a mistyped target is explained as a service Consul does not know,
// with the name it is close to.
func TestExplain(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	startBackend(t, consul, "echo", "echo-1", backendOptions{})
	_, sickCheck := startBackend(t, consul, "echo", "echo-2", backendOptions{})
	s := startTrellisWithAPI(t, consul)
	revision := putPolicy(t, s.policyClient(t), `{"service": "echo", "defaults": {"timeout": "2s"},
		"routes": [{"name": "echo-fast", "match": {"methodExact": "/trellis.echo.v1.Echo/Echo"}, "settings": {"timeout": "0.25s"}}]}`)
	consul.SetTTL(t, sickCheck, "critical")

	conn := dialXDS(t, s.bootstrapFor(t, "explain-client"), "xds:///echo")
	waitFor(t, 30*time.Second, "calls to reach only the healthy instance", func() error {
		r := callEcho(t, conn, 10)
		if r.ok() != 10 || r.byInstance["echo-1"] != 10 {
			return fmt.Errorf("%d ok, by instance %v", r.ok(), r.byInstance)
		}
		return nil
	})

	var e *statusv1.ExplainResponse
	waitFor(t, 30*time.Second, "an explanation with the policy and the client in sync", func() error {
		var err error
		if e, err = explainJSON(t, s, "explain-client", "xds:///echo"); err != nil {
			return err
		}
		if len(e.GetProblems()) > 0 {
			return fmt.Errorf("problems: %v", e.GetProblems())
		}
		if e.GetPolicy().GetRevision() != revision {
			return fmt.Errorf("policy revision %d, want %d", e.GetPolicy().GetRevision(), revision)
		}
		for _, r := range e.GetResources() {
			if r.GetClientState() != statusv1.SyncState_SYNC_STATE_SYNCED || !r.GetServed() {
				return fmt.Errorf("%s %s: served %t, client %s %s", r.GetTypeUrl(), r.GetName(), r.GetServed(), r.GetClientState(), r.GetClientReason())
			}
		}
		return nil
	})
	if e.GetProfile() != "grpc-go" || e.GetProfileSource() != "stream" || len(e.GetResources()) != 4 {
		t.Fatalf("profile %s from %s, %d resources:\n%v", e.GetProfile(), e.GetProfileSource(), len(e.GetResources()), e)
	}
	if len(e.GetClusters()) != 1 || len(e.GetClusters()[0].GetInstances()) != 2 {
		t.Fatalf("clusters: %v", e.GetClusters())
	}
	for _, in := range e.GetClusters()[0].GetInstances() {
		switch {
		case strings.HasSuffix(in.GetKey(), "/echo-1"):
			if !in.GetIncluded() || in.GetHealth() != "passing" || in.GetWeight() != 1 {
				t.Errorf("echo-1: %v", in)
			}
		case strings.HasSuffix(in.GetKey(), "/echo-2"):
			if in.GetIncluded() || in.GetHealth() != "critical" || !strings.Contains(in.GetReason(), "critical") {
				t.Errorf("echo-2: %v", in)
			}
		default:
			t.Errorf("unexpected instance %v", in)
		}
	}
	routes := e.GetPolicy().GetRoutes()
	if len(routes) != 2 || routes[0].GetMatch() != "path /trellis.echo.v1.Echo/Echo" || routes[0].GetAction() != "cluster echo" ||
		!strings.Contains(strings.Join(routes[0].GetSettings(), " "), "250ms") || !strings.Contains(strings.Join(routes[1].GetSettings(), " "), "2s") {
		t.Fatalf("routes: %v", routes)
	}

	s.requireAllACKed(t)
	text, err := runExplain(t, s, "explain-client", "xds:///echo")
	if err != nil {
		t.Fatalf("trellis explain: %v\n%s", err, text)
	}
	for _, w := range []string{
		"Client explain-client (gRPC Go", "No problem found.",
		fmt.Sprintf("Policy revision %d applies", revision),
		"1. path /trellis.echo.v1.Echo/Echo -> cluster echo (timeout 250ms)",
		"echo-2", "its health checks are critical", "the client ACKed it",
	} {
		if !strings.Contains(text, w) {
			t.Fatalf("trellis explain lacks %q:\n%s", w, text)
		}
	}

	// A client that rejects its Listener (hand-written: no real client
	// NACKs what Trellis sends): the explanation quotes its error.
	const nackText = "listener echo: rejected by the explain test"
	startRawADS(t, s.xdsAddr,
		&corev3.Node{Id: "explain-nacker", UserAgentName: "gRPC Go", UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: "1.85.0"}},
		map[string][]string{resource.ListenerType: {"echo"}},
		func(*discoveryv3.DiscoveryResponse) (bool, string) { return true, nackText })
	waitFor(t, 30*time.Second, "an explanation of the rejected Listener", func() error {
		e, err := explainJSON(t, s, "explain-nacker", "xds:///echo")
		if err != nil {
			return err
		}
		if len(e.GetProblems()) == 0 || !strings.Contains(e.GetProblems()[0], "rejected (NACKed) Listener echo: "+nackText) {
			return fmt.Errorf("problems %v", e.GetProblems())
		}
		if r := e.GetResources()[0]; r.GetClientState() != statusv1.SyncState_SYNC_STATE_NACKED || !strings.Contains(r.GetClientReason(), nackText) {
			return fmt.Errorf("listener %v", r)
		}
		return nil
	})

	// A mistyped name, asked for by a real client: Consul does not know
	// the service, and the explanation says which one is close.
	typo := dialXDS(t, s.bootstrapFor(t, "explain-typo"), "xds:///ecoh")
	typo.Connect() // the channel leaves idle and asks for its Listener
	waitFor(t, 30*time.Second, "an explanation of the unknown service", func() error {
		var err error
		if e, err = explainJSON(t, s, "--node", "explain-typo", "xds:///ecoh"); err != nil {
			return err
		}
		if len(e.GetProblems()) != 1 || !strings.Contains(e.GetProblems()[0], `service "ecoh" is not in the Consul catalog`) ||
			!strings.Contains(e.GetProblems()[0], "listener resource does not exist") {
			return fmt.Errorf("problems %v", e.GetProblems())
		}
		if len(e.GetNearMatches()) != 1 || e.GetNearMatches()[0] != "echo" {
			return fmt.Errorf("near matches %v", e.GetNearMatches())
		}
		if r := e.GetResources(); len(r) != 1 || r[0].GetServed() {
			return fmt.Errorf("resources %v", r)
		}
		return nil
	})
	text, err = runExplain(t, s, "explain-typo", "xds:///ecoh")
	if err != nil || !strings.Contains(text, "did you mean echo?") {
		t.Fatalf("trellis explain of the typo: %v\n%s", err, text)
	}
}
