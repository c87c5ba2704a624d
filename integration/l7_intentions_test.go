package integration

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	"github.com/trellis-mesh/trellis/internal/testutil/spiretest"
	echov1 "github.com/trellis-mesh/trellis/proto/trellis/echo/v1"
)

// setL7Intention replaces the intentions of destination with one L7
// intention from source, and a plain one for each of plain.
func setL7Intention(t testing.TB, consul *consultest.Agent, destination, source string, perms []*api.IntentionPermission, plain map[string]api.IntentionAction) {
	t.Helper()
	entry := &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: destination,
		Sources: []*api.SourceIntention{{Name: source, Permissions: perms}}}
	for name, action := range plain {
		entry.Sources = append(entry.Sources, &api.SourceIntention{Name: name, Action: action})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := consul.Client(t).ConfigEntries().Set(entry, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		t.Fatalf("set intentions of %s: %v", destination, err)
	}
}

// expectMethodCode polls until a call of method (Echo or Reverse, with
// the metadata md as key, value pairs) on conn ends with want.
func expectMethodCode(t testing.TB, conn *grpc.ClientConn, who, method string, want codes.Code, timeout time.Duration, md ...string) {
	t.Helper()
	waitFor(t, timeout, who+" "+method+" to get "+want.String(), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, md...)
		client := echov1.NewEchoClient(conn)
		var err error
		if method == "Reverse" {
			_, err = client.Reverse(ctx, &echov1.EchoRequest{Message: "hi"})
		} else {
			_, err = client.Echo(ctx, &echov1.EchoRequest{Message: "hi"})
		}
		if got := statusCode(err); got != want {
			return &codeError{got: got, err: err}
		}
		return nil
	})
}

type codeError struct {
	got codes.Code
	err error
}

func (e *codeError) Error() string { return "got " + e.got.String() + ": " + errString(e.err) }

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}

// TestL7Intentions: an L7 intention (Consul's HTTP permissions) on a
// real mTLS mesh (real SPIRE, grpc-go xDS client and server) allows its
// source the methods and headers its permissions allow and denies the
// rest, in order: web may call Echo, except with an x-debug header, and
// nothing else (the default is deny); Reverse, which the echo server does
// not implement, is refused by RBAC with PermissionDenied before it could
// answer Unimplemented. A permission-only change (same source, same
// precedence) moves the outcomes; a plain deny for batch stays a deny;
// every version is ACKed.
func TestL7Intentions(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{TrustDomain: mtlsTrustDomain})
	serverAgent, clientAgent := spire.Agent(), spire.AddAgent(t)
	echoID, webID, batchID := mtlsID(mtlsTrustDomain, "echo"), mtlsID(mtlsTrustDomain, "web"), mtlsID(mtlsTrustDomain, "batch")
	serverAgent.Register(t, spiretest.Entry{SPIFFEID: echoID})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: webID})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: batchID})

	consul := consultest.Start(t, consultest.Options{})
	// L7 intentions need an HTTP-based protocol.
	writeEntry(t, consul.Client(t), `{"Kind": "service-defaults", "Name": "echo", "Protocol": "grpc"}`)
	const echoPath, reversePath = "/trellis.echo.v1.Echo/Echo", "/trellis.echo.v1.Echo/Reverse"
	setL7Intention(t, consul, "echo", "web", []*api.IntentionPermission{
		{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{Header: []api.IntentionHTTPHeaderPermission{{Name: "X-Debug", Present: true}}}},
		{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathExact: echoPath, Methods: []string{"POST"}}},
	}, map[string]api.IntentionAction{"batch": api.IntentionActionDeny})
	trellis := startTrellis(t, consul.HTTPAddr(), "--mtls", "--trust-domain", mtlsTrustDomain, "--intention-default", "deny")
	startMTLSEcho(t, consul, mtlsBootstrap(t, trellis, "echo-1", serverAgent.WorkloadAPIAddr(), echoID), "127.0.0.1", "echo", "echo-1", nil)

	web := dialXDSCreds(t, mtlsBootstrap(t, trellis, "web-1", clientAgent.WorkloadAPIAddr(), webID), "xds:///echo")
	batch := dialXDSCreds(t, mtlsBootstrap(t, trellis, "batch-1", clientAgent.WorkloadAPIAddr(), batchID), "xds:///echo")
	expectMethodCode(t, web, "web", "Echo", codes.OK, 60*time.Second)
	expectMethodCode(t, web, "web", "Reverse", codes.PermissionDenied, 10*time.Second)
	expectMethodCode(t, web, "web with x-debug", "Echo", codes.PermissionDenied, 10*time.Second, "x-debug", "1")
	expectMethodCode(t, batch, "batch", "Echo", codes.PermissionDenied, 30*time.Second)

	// Only the permissions change: Reverse is allowed (and reaches the
	// server, which does not implement it), Echo is not.
	setL7Intention(t, consul, "echo", "web", []*api.IntentionPermission{
		{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathExact: reversePath}},
	}, map[string]api.IntentionAction{"batch": api.IntentionActionDeny})
	expectMethodCode(t, web, "web after the change", "Reverse", codes.Unimplemented, 20*time.Second)
	expectMethodCode(t, web, "web after the change", "Echo", codes.PermissionDenied, 10*time.Second)
	expectMethodCode(t, batch, "batch after the change", "Echo", codes.PermissionDenied, 10*time.Second)
	trellis.requireAllACKed(t)
}
