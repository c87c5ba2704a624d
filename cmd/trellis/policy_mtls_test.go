package main

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/trellis-mesh/trellis/internal/policy"
	"github.com/trellis-mesh/trellis/internal/policy/store"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	"github.com/trellis-mesh/trellis/internal/testutil/spiretest"
	"github.com/trellis-mesh/trellis/xdsserver/admin"
	"github.com/trellis-mesh/trellis/xdsserver/policyapi"
)

// mtlsPolicyAPI is the policy API as `trellis server --api-tls-listen ...
// --api-allowed-spiffe-id ...` serves it: over mTLS with the control
// plane's SVID, and in plaintext on the admin listener, both backed by the
// same store in a real Consul and accepting the bearer token cliToken.
type mtlsPolicyAPI struct {
	mtlsAddr  string
	adminAddr string
	store     *store.Store
}

func startPolicyAPIOverMTLS(t *testing.T, workloadAPIAddr string, cp, allowed spiffeid.ID) mtlsPolicyAPI {
	t.Helper()
	agent := consultest.Start(t, consultest.Options{})
	st, err := store.New(store.Config{Client: agent.Client(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	startCtx, cancelStart := context.WithTimeout(ctx, time.Minute)
	defer cancelStart()
	stls, err := newServerTLS(startCtx, serverTLSOptions{
		workloadAPIAddr: workloadAPIAddr,
		spiffeID:        cp.String(),
		apiTLSListen:    "127.0.0.1:0",
		apiAllowedIDs:   []string{allowed.String()},
		svidTimeout:     30 * time.Second,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stls.Close) // after the servers stopped
	auths, err := policyAuthenticators("", cliToken)
	if err != nil {
		t.Fatal(err)
	}
	gs, err := policyapi.NewGRPCServer(policyapi.Config{Store: st, Authenticators: append(auths, stls.policyAuthenticators()...)})
	if err != nil {
		t.Fatal(err)
	}
	adminLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	api := mtlsPolicyAPI{mtlsAddr: stls.apiLis.Addr().String(), adminAddr: adminLis.Addr().String(), store: st}
	done := make(chan error, 2)
	go func() { done <- stls.serveAPI(ctx, gs) }()
	go func() { done <- admin.New(admin.Config{GRPC: gs}).Serve(ctx, adminLis) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("policy API server: %v", err)
				}
			case <-time.After(time.Minute):
				t.Error("policy API server did not stop")
			}
		}
		gs.Stop()
	})
	return api
}

// TestPolicyCommandsOverMTLS runs the policy commands against the policy
// API's mTLS listener with SVIDs from a real SPIRE: the control plane's on
// one agent, the callers' on another.
func TestPolicyCommandsOverMTLS(t *testing.T) {
	spire := spiretest.Start(t, spiretest.Options{})
	cpAgent, clientAgent := spire.Agent(), spire.AddAgent(t)
	td := spire.TrustDomain()
	cp := spiffeid.RequireFromPath(td, "/trellis/control-plane")
	adminID := spiffeid.RequireFromPath(td, "/ops/admin")
	webID := spiffeid.RequireFromPath(td, "/web")
	cpAgent.Register(t, spiretest.Entry{SPIFFEID: cp.String()})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: adminID.String()})
	clientAgent.Register(t, spiretest.Entry{SPIFFEID: webID.String()})

	api := startPolicyAPIOverMTLS(t, cpAgent.WorkloadAPIAddr(), cp, adminID)
	file := filepath.Join(t.TempDir(), "policies.yaml")
	if err := os.WriteFile(file, []byte(applyPolicies), 0o644); err != nil {
		t.Fatal(err)
	}
	// The test process has no SPIFFE_ENDPOINT_SOCKET of its own: every
	// call names the Workload API.
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "")
	as := func(id spiffeid.ID, server ...string) []string {
		if len(server) == 0 {
			server = []string{"--server-spiffe-id", cp.String()}
		}
		return append([]string{"--server", api.mtlsAddr, "--spiffe", "--workload-api-addr", clientAgent.WorkloadAPIAddr(), "--spiffe-id", id.String()}, server...)
	}

	// An allowed caller applies without a token.
	out, err := runCLI(t, "", append([]string{"policy", "apply", "-f", file}, as(adminID)...)...)
	if err != nil {
		t.Fatalf("apply as %s: %v\n%s", adminID, err, out)
	}
	echo, err := api.store.Get(context.Background(), "echo")
	if err != nil {
		t.Fatalf("the policy applied over mTLS is not stored: %v", err)
	}
	if !strings.Contains(out, "echo: revision "+itoa(echo.Revision)+"\n") {
		t.Errorf("apply output:\n%s\nwant echo at revision %d", out, echo.Revision)
	}

	// get, accepting the server by its trust domain, returns it.
	out, err = runCLI(t, "", append([]string{"policy", "get", "echo", "-o", "json"}, as(adminID, "--server-trust-domain", td.Name())...)...)
	if err != nil {
		t.Fatalf("get as %s: %v\n%s", adminID, err, out)
	}
	want, err := policy.ParseDocuments(strings.NewReader(applyPolicies))
	if err != nil {
		t.Fatal(err)
	}
	got, err := policy.ParseDocuments(strings.NewReader(out))
	if err != nil || len(got) != 1 || !proto.Equal(got[0], policy.Normalize(want[0])) {
		t.Errorf("get = %v (%v), want %v", got, err, policy.Normalize(want[0]))
	}

	tests := []struct {
		name    string
		args    []string
		want    string // in the output
		wantErr string
	}{
		{
			name:    "caller not allowed",
			args:    append([]string{"policy", "list"}, as(webID)...),
			wantErr: "list: refused: SPIFFE ID " + webID.String() + " is not allowed to call the policy API (--api-allowed-spiffe-id)",
		},
		{
			name:    "caller not allowed, wrong token",
			args:    append([]string{"policy", "list", "--token", "nope"}, as(webID)...),
			wantErr: "list: refused: invalid bearer token (token from --token)",
		},
		{
			name: "caller not allowed, with the token",
			args: append([]string{"policy", "list", "--token", cliToken}, as(webID)...),
			want: "echo",
		},
		{
			name: "allowed caller, with the token too",
			args: append([]string{"policy", "list", "--token", cliToken}, as(adminID)...),
			want: "greeter",
		},
		{
			name:    "server ID not accepted",
			args:    append([]string{"policy", "list"}, as(adminID, "--server-spiffe-id", spiffeid.RequireFromPath(td, "/other").String())...),
			wantErr: "the server's SVID does not match --server-spiffe-id / --server-trust-domain",
		},
		{
			name:    "server trust domain not accepted",
			args:    append([]string{"policy", "list"}, as(adminID, "--server-trust-domain", "elsewhere.test")...),
			wantErr: "peer " + cp.String() + " is not in an accepted trust domain [elsewhere.test]",
		},
		{
			name:    "caller SVID not offered",
			args:    append([]string{"policy", "list"}, as(spiffeid.RequireFromPath(td, "/nobody"))...),
			wantErr: "no X.509 SVID for " + spiffeid.RequireFromPath(td, "/nobody").String() + "; the Workload API offers",
		},
		{
			name:    "plaintext admin listener",
			args:    []string{"policy", "list", "--server", api.adminAddr, "--spiffe", "--workload-api-addr", clientAgent.WorkloadAPIAddr(), "--spiffe-id", adminID.String(), "--server-spiffe-id", cp.String()},
			wantErr: "with --spiffe, --server must be the server's --api-tls-listen address",
		},
		{
			name: "plaintext admin listener with the token",
			args: []string{"policy", "list", "--server", api.adminAddr, "--token", cliToken},
			want: "echo",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runCLI(t, "", tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q\n%s", err, tt.wantErr, out)
				}
				t.Logf("error: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if !strings.Contains(out, tt.want) {
				t.Errorf("output does not contain %q:\n%s", tt.want, out)
			}
		})
	}
}

// TestPolicySPIFFEFlags covers the --spiffe flags that fail before any
// connection.
func TestPolicySPIFFEFlags(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.sock")
	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	const server = "spiffe://trellis.test/trellis/control-plane"
	tests := []struct {
		name    string
		args    []string
		env     string
		wantErr string
	}{
		{name: "SPIFFE flags without --spiffe", args: []string{"--server-spiffe-id", server}, wantErr: "apply to --spiffe only"},
		{name: "no server identity", args: []string{"--spiffe"}, env: "unix://" + regular, wantErr: "--spiffe needs --server-spiffe-id"},
		{name: "bad server ID", args: []string{"--spiffe", "--server-spiffe-id", "control-plane"}, env: "unix://" + regular, wantErr: `--server-spiffe-id "control-plane"`},
		{name: "bad server trust domain", args: []string{"--spiffe", "--server-trust-domain", "spiffe://trellis.test/x"}, env: "unix://" + regular, wantErr: `--server-trust-domain "spiffe://trellis.test/x"`},
		{name: "bad own ID", args: []string{"--spiffe", "--server-spiffe-id", server, "--spiffe-id", "admin"}, env: "unix://" + regular, wantErr: `--spiffe-id "admin"`},
		{name: "no Workload API address", args: []string{"--spiffe", "--server-spiffe-id", server}, wantErr: "set SPIFFE_ENDPOINT_SOCKET"},
		{name: "relative socket path", args: []string{"--spiffe", "--server-spiffe-id", server, "--workload-api-addr", "unix://agent.sock"}, wantErr: "--workload-api-addr: identity: Workload API address"},
		{
			name:    "missing socket",
			args:    []string{"--spiffe", "--server-spiffe-id", server, "--workload-api-addr", "unix://" + missing},
			wantErr: "no Workload API socket at " + missing + " (--workload-api-addr)",
		},
		{
			name:    "missing socket from the environment",
			args:    []string{"--spiffe", "--server-spiffe-id", server},
			env:     "unix://" + missing,
			wantErr: "no Workload API socket at " + missing + " (SPIFFE_ENDPOINT_SOCKET)",
		},
		{
			name:    "not a socket",
			args:    []string{"--spiffe", "--server-spiffe-id", server, "--workload-api-addr", "unix://" + regular},
			wantErr: regular + " (--workload-api-addr) is not a socket",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("SPIFFE_ENDPOINT_SOCKET", tt.env)
			out, err := runCLI(t, "", append([]string{"policy", "list", "--server", "127.0.0.1:1"}, tt.args...)...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want one containing %q\n%s", err, tt.wantErr, out)
			}
		})
	}
}
