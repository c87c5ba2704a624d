package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/trellis-mesh/trellis/internal/clients"
	"github.com/trellis-mesh/trellis/internal/policy"
	"github.com/trellis-mesh/trellis/internal/policy/store"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	"github.com/trellis-mesh/trellis/xdsserver/admin"
	"github.com/trellis-mesh/trellis/xdsserver/policyapi"
)

const cliToken = "cli-test-token"

// startPolicyAPI serves the policy API on an admin listener, as trellis
// server does, backed by a real Consul, and returns the admin address.
func startPolicyAPI(t *testing.T) (string, *store.Store) {
	t.Helper()
	addr, st, _ := startPolicyAPIAgent(t)
	return addr, st
}

// startPolicyAPIAgent is startPolicyAPI, also returning the Consul agent.
func startPolicyAPIAgent(t *testing.T) (string, *store.Store, *consultest.Agent) {
	t.Helper()
	agent := consultest.Start(t, consultest.Options{})
	st, err := store.New(store.Config{Client: agent.Client(t)})
	if err != nil {
		t.Fatal(err)
	}
	auths, err := policyAuthenticators("", cliToken)
	if err != nil {
		t.Fatal(err)
	}
	gs, err := policyapi.NewGRPCServer(policyapi.Config{Store: st, Authenticators: auths})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- admin.New(admin.Config{GRPC: gs}).Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		gs.Stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("admin server: %v", err)
			}
		case <-time.After(time.Minute):
			t.Error("admin server did not stop")
		}
	})
	return lis.Addr().String(), st, agent
}

// runCLI runs `trellis ARGS...` and returns its output.
func runCLI(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

// The greeter policy comes second, but echo routes to one of its subsets:
// apply must store it first.
const applyPolicies = `# echo routes its canary calls to greeter's blue subset.
service: echo
routes:
  - name: canary
    match: {headers: [{name: x-canary, exact: "1"}]}
    destination: {service: greeter, subset: blue}
  - match: {service_prefix: /trellis.echo.v1.Echo/}
    settings:
      timeout: 2s
      retry: {retry_on: [unavailable], num_retries: 2}
---
service: greeter
subsets:
  - {name: blue, tags: [blue]}
load_balancing: {least_request: {choice_count: 3}}
`

const refusedPolicies = `service: alpha
---
service: beta
routes:
  - match: {method_exact: Greet}
    settings: {retry: {retry_on: [UNAVAILABLE], num_retries: 9}}
---
service: gamma
`

func TestPolicyCommands(t *testing.T) {
	addr, st := startPolicyAPI(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "policies.yaml")
	if err := os.WriteFile(file, []byte(applyPolicies), 0o644); err != nil {
		t.Fatal(err)
	}
	conn := []string{"--server", addr, "--token", cliToken}

	out, err := runCLI(t, "", append([]string{"policy", "apply", "-f", file}, conn...)...)
	if err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	greeter, err := st.Get(context.Background(), "greeter")
	if err != nil {
		t.Fatal(err)
	}
	echo, err := st.Get(context.Background(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := policy.ParseDocuments(strings.NewReader(applyPolicies))
	if err != nil {
		t.Fatal(err)
	}
	wantOut := ""
	for _, svc := range []struct {
		name string
		rev  uint64
	}{{"greeter", greeter.Revision}, {"echo", echo.Revision}} {
		wantOut += svc.name + ": revision " + itoa(svc.rev) + "\n"
		for _, d := range docs {
			if d.GetService() == svc.name {
				// What some gRPC implementations get instead.
				for _, g := range clients.PolicyGaps(d) {
					wantOut += "  warning: " + g.String() + "\n"
				}
			}
		}
	}
	if out != wantOut {
		t.Errorf("apply output:\n%s\nwant:\n%s", out, wantOut)
	}

	// get returns what was applied, in canonical form, in a form apply
	// reads back.
	want, err := policy.ParseDocuments(strings.NewReader(applyPolicies))
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"yaml", "json"} {
		out, err := runCLI(t, "", append([]string{"policy", "get", "echo", "-o", format}, conn...)...)
		if err != nil {
			t.Fatalf("get -o %s: %v\n%s", format, err, out)
		}
		got, err := policy.ParseDocuments(strings.NewReader(out))
		if err != nil || len(got) != 1 {
			t.Fatalf("get -o %s output does not parse back (%v):\n%s", format, err, out)
		}
		if !proto.Equal(got[0], policy.Normalize(want[0])) {
			t.Errorf("get -o %s = %v, want %v", format, got[0], policy.Normalize(want[0]))
		}
		if format == "yaml" && !strings.HasPrefix(out, "# echo at revision "+itoa(echo.Revision)+"\n") {
			t.Errorf("get -o yaml does not start with the revision:\n%s", out)
		}
	}
	// The default format is YAML; applying get's output again works.
	out, err = runCLI(t, "", append([]string{"policy", "get", "greeter"}, conn...)...)
	if err != nil || !strings.Contains(out, "least_request:") {
		t.Fatalf("get greeter: %v\n%s", err, out)
	}
	reapplied, err := runCLI(t, out, append([]string{"policy", "apply", "-f", "-"}, conn...)...)
	if err != nil || !strings.HasPrefix(reapplied, "greeter: revision ") {
		t.Errorf("apply of get's output: %v\n%s", err, reapplied)
	}

	out, err = runCLI(t, "", append([]string{"policy", "list"}, conn...)...)
	if err != nil {
		t.Fatalf("list: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || strings.Fields(lines[0])[0] != "SERVICE" ||
		strings.Join(strings.Fields(lines[1]), " ") != "echo "+itoa(echo.Revision)+" 2" ||
		!strings.HasPrefix(strings.Join(strings.Fields(lines[2]), " "), "greeter ") || !strings.HasSuffix(lines[2], " 0") {
		t.Errorf("list output:\n%s", out)
	}

	out, err = runCLI(t, "", append([]string{"policy", "delete", "echo"}, conn...)...)
	if err != nil || out != "echo: deleted\n" {
		t.Errorf("delete: %v\n%s", err, out)
	}
	out, err = runCLI(t, "", append([]string{"policy", "get", "echo"}, conn...)...)
	if err == nil || !strings.Contains(err.Error(), `service "echo" has no policy`) {
		t.Errorf("get after delete: %v\n%s", err, out)
	}
	out, err = runCLI(t, "", append([]string{"policy", "delete", "greeter", "--revision", "1"}, conn...)...)
	if err == nil || !strings.Contains(err.Error(), "is at revision") {
		t.Errorf("delete at a stale revision: %v\n%s", err, out)
	}
}

func TestPolicyApplyRefused(t *testing.T) {
	addr, st := startPolicyAPI(t)
	conn := []string{"--server", addr, "--token", cliToken}

	// The second document is refused: the first stays applied, the third
	// is not attempted, and every violation is on its own line.
	out, err := runCLI(t, refusedPolicies, append([]string{"policy", "apply", "-f", "-"}, conn...)...)
	if err == nil {
		t.Fatalf("apply succeeded:\n%s", out)
	}
	if !strings.HasPrefix(out, "alpha: revision ") || strings.Count(out, "\n") != 1 {
		t.Errorf("output:\n%s\nwant alpha's revision only", out)
	}
	wantErr := "apply <stdin>: document 2 (service beta): refused:\n" +
		"  routes[0].match.method_exact: "
	if !strings.HasPrefix(err.Error(), wantErr) {
		t.Errorf("error:\n%v\nwant it to start with:\n%s", err, wantErr)
	}
	errLines := strings.Split(err.Error(), "\n")
	if len(errLines) != 4 || !strings.HasPrefix(errLines[2], "  routes[0].settings.retry.num_retries: ") || errLines[3] != "1 of 3 policies applied; 1 not attempted" {
		t.Errorf("error lines:\n%s", err)
	}
	ctx := context.Background()
	if _, err := st.Get(ctx, "alpha"); err != nil {
		t.Errorf("alpha: %v", err)
	}
	for _, svc := range []string{"beta", "gamma"} {
		if _, err := st.Get(ctx, svc); err == nil {
			t.Errorf("%s was stored", svc)
		}
	}

	// A document that cannot be parsed: nothing is applied.
	out, err = runCLI(t, "service: delta\n---\nservice: epsilon\nroutes: [{timeout: 1s}]\n", append([]string{"policy", "apply", "-f", "-"}, conn...)...)
	if err == nil || !strings.Contains(err.Error(), "nothing applied") || !strings.Contains(err.Error(), "routes[0].timeout: unknown field") {
		t.Errorf("apply of an unparsable input: %v\n%s", err, out)
	}
	if _, err := st.Get(ctx, "delta"); err == nil {
		t.Error("delta was stored although another document could not be parsed")
	}
}

func TestPolicyCredentials(t *testing.T) {
	addr, _ := startPolicyAPI(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(cliToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		wantErr string
	}{
		{name: "no token", args: []string{"--server", addr}, wantErr: "needs a token: pass --token or --token-file, or set TRELLIS_API_TOKEN"},
		{name: "wrong token", args: []string{"--server", addr, "--token", "nope"}, wantErr: "refused: invalid bearer token (token from --token)"},
		{name: "token file", args: []string{"--server", addr, "--token-file", tokenFile}},
		{name: "token and server from the environment", env: map[string]string{"TRELLIS_API_TOKEN": cliToken, "TRELLIS_SERVER": addr}},
		{name: "flags win over the environment", env: map[string]string{"TRELLIS_API_TOKEN": "nope", "TRELLIS_SERVER": "127.0.0.1:1"}, args: []string{"--server", addr, "--token", cliToken}},
		{name: "both token flags", args: []string{"--server", addr, "--token", cliToken, "--token-file", tokenFile}, wantErr: "exclusive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("TRELLIS_API_TOKEN", "")
			t.Setenv("TRELLIS_SERVER", "")
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			out, err := runCLI(t, "", append([]string{"policy", "list"}, tt.args...)...)
			if tt.wantErr == "" {
				if err != nil || !strings.HasPrefix(out, "SERVICE") {
					t.Errorf("list: %v\n%s", err, out)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("list: err = %v, want it to contain %q\n%s", err, tt.wantErr, out)
			}
		})
	}
}

func TestPolicyAPIDisabled(t *testing.T) {
	auths, err := policyAuthenticators("", "  ")
	if err != nil || len(auths) != 0 {
		t.Errorf("blank environment token: %d authenticators, %v; want none", len(auths), err)
	}
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := policyAuthenticators(empty, "from-env"); err == nil {
		t.Error("an empty --api-token-file was accepted")
	}
	if _, err := policyAuthenticators(filepath.Join(dir, "missing"), ""); err == nil {
		t.Error("a missing --api-token-file was accepted")
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
