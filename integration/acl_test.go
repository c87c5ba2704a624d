package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// aclAgentHCL runs Consul with ACLs in default-deny mode; the agent's own
// token (node updates, anti-entropy) is the management token.
const aclAgentHCL = `acl { enabled = true, default_policy = "deny", tokens { initial_management = "root", agent = "root" } }`

// readmeACLPolicy returns the HCL policy of README.md's "Consul ACLs"
// section, the one the tests give the server.
func readmeACLPolicy(t testing.TB) string {
	t.Helper()
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	i := strings.Index(readme, "### Consul ACLs")
	if i < 0 {
		t.Fatal(`README.md has no "### Consul ACLs" section`)
	}
	m := regexp.MustCompile("(?s)```hcl\n(.*?)```").FindStringSubmatch(readme[i:])
	if m == nil {
		t.Fatal(`README.md's "Consul ACLs" section has no hcl block`)
	}
	return m[1]
}

// aclToken creates a policy with rules and a token holding it.
func aclToken(t testing.TB, root *api.Client, name, rules string) string {
	t.Helper()
	p, _, err := root.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
	if err != nil {
		t.Fatalf("create policy %s: %v\n%s", name, err, rules)
	}
	tok, _, err := root.ACL().TokenCreate(&api.ACLToken{Description: name, Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
	if err != nil {
		t.Fatalf("create token %s: %v", name, err)
	}
	return tok.SecretID
}

// startTrellisWithToken runs `trellis server` with CONSUL_HTTP_TOKEN set to
// token (unset when empty) and, unlike startTrellis, does not wait for
// /readyz: a server whose token hides the catalog never becomes ready.
func startTrellisWithToken(t testing.TB, consulAddr, token string) *trellisServer {
	t.Helper()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONSUL_HTTP_TOKEN") {
			env = append(env, kv)
		}
	}
	env = append(env, "CONSUL_HTTP_ADDR="+consulAddr)
	if token != "" {
		env = append(env, "CONSUL_HTTP_TOKEN="+token)
	}
	s := &trellisServer{
		t:         t,
		xdsAddr:   freeAddr(t),
		adminAddr: freeAddr(t),
		env:       env,
		logPath:   filepath.Join(t.TempDir(), "trellis.log"),
	}
	s.args = []string{"server", "--xds-listen", s.xdsAddr, "--admin-listen", s.adminAddr, "--log-level", "debug"}
	logFile, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(trellisBin, s.args...)
	cmd.Env = s.env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("start trellis: %v", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logFile.Close()
		close(done)
	}()
	s.cmd, s.done = cmd, done
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			s.dumpLog()
		}
	})
	return s
}

// aclMetric returns the value of trellis_consul_acl_problems for a
// component and permission, or -1 when the series is not served.
func (s *trellisServer) aclMetric(t testing.TB, component, permission string) float64 {
	t.Helper()
	code, body, err := s.get("/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	prefix := fmt.Sprintf("trellis_consul_acl_problems{component=%q,permission=%q} ", component, permission)
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return f
		}
	}
	return -1
}

// TestConsulACLs runs the real server against one Consul agent in
// default-deny mode, with a service, a stored policy and an intention, and
// tokens created through the ACL API: with README's minimal policy it is
// ready and serves a real grpc-go xDS client, which ACKs everything; with
// each rule taken out, with no token, and with a token Consul does not
// know, /readyz answers 503 naming what is missing for what, the log says
// it once, and trellis_consul_acl_problems is 1 for it.
func TestConsulACLs(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{HCL: []string{aclAgentHCL}, Token: "root"})
	root := consul.Client(t)
	startBackend(t, consul, "echo", "echo-1", backendOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := root.KV().Put(&api.KVPair{Key: "trellis/policies/echo", Value: []byte(`{"service":"echo"}`)}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	setIntentions(t, consul, "echo", map[string]api.IntentionAction{"caller": api.IntentionActionAllow})

	policy := readmeACLPolicy(t)
	without := func(old, new string) string {
		t.Helper()
		if !strings.Contains(policy, old) {
			t.Fatalf("README's ACL policy has no %q:\n%s", old, policy)
		}
		return strings.Replace(policy, old, new, 1)
	}
	type aclCase struct {
		name      string
		token     string
		component string
		perm      string
		// readyz and log must contain these.
		readyz, log []string
		// ready: the server stays ready (a missing write permission).
		ready bool
	}
	cases := []aclCase{
		{name: "no service:read", component: "catalog", perm: "service:read",
			token:  aclToken(t, root, "no-service-read", without("policy     = \"read\"\n  intentions", "policy     = \"deny\"\n  intentions")),
			readyz: []string{"catalog: the token lacks service:read", "list the services", "the service list is filtered by ACLs"},
			log:    []string{"the Consul ACL token lacks service:read"}},
		{name: "no node:read", component: "catalog", perm: "node:read",
			token:  aclToken(t, root, "no-node-read", without("node_prefix \"\" {\n  policy = \"read\"\n}\n", "")),
			readyz: []string{"catalog: the token lacks node:read", "services whose instances the ACL token hides (last complete read kept, or not served): ", "echo", "services: 0"},
			log:    []string{"the Consul ACL token lacks node:read"}},
		{name: "no key:read", component: "policy", perm: "key:read on trellis/policies/",
			token:  aclToken(t, root, "no-key-read", without("key_prefix \"trellis/policies/\" {\n  policy = \"read\"\n}\n", "")),
			readyz: []string{"policy: the token lacks key:read on trellis/policies/", "the key list is filtered by ACLs"},
			log:    []string{"the Consul ACL token lacks key:read on trellis/policies/"}},
		{name: "no intentions read", component: "intentions", perm: "intention:read",
			token:  aclToken(t, root, "no-intentions", without("intentions = \"read\"", "intentions = \"deny\"")),
			readyz: []string{"intentions: the token lacks intention:read", "service-intentions config entries are filtered by ACLs"},
			log:    []string{"the Consul ACL token lacks intention:read"}},
		{name: "no registration", component: "registration", perm: "service:write on trellis-xds",
			token:  aclToken(t, root, "no-registration", without("service \"trellis-xds\" {\n  policy = \"write\"\n}\n", "")),
			readyz: []string{"registration: the token lacks service:write on trellis-xds"}, ready: true,
			log: []string{"the Consul ACL token lacks service:write on trellis-xds"}},
		{name: "anonymous", component: "catalog", perm: "service:read",
			readyz: []string{"none configured: anonymous", "requests are anonymous", `the service list is empty, and Consul always lists its own "consul" service`},
			log:    []string{"the Consul ACL token lacks service:read"}},
		{name: "unknown token", component: "consul", perm: "token", token: "00000000-1111-2222-3333-444444444444",
			readyz: []string{"Consul does not know the ACL token (403 ACL not found)"},
			log:    []string{`msg="Consul does not know the ACL token (403 ACL not found)"`}},
	}

	// Every server runs at once, on the one agent.
	fullPolicy, _, err := root.ACL().PolicyCreate(&api.ACLPolicy{Name: "trellis-server", Rules: policy}, nil)
	if err != nil {
		t.Fatalf("README's ACL policy refused by Consul: %v\n%s", err, policy)
	}
	fullToken, _, err := root.ACL().TokenCreate(&api.ACLToken{Description: "trellis-server", Policies: []*api.ACLTokenPolicyLink{{ID: fullPolicy.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	full := startTrellisWithToken(t, consul.HTTPAddr(), fullToken.SecretID)
	servers := make([]*trellisServer, len(cases))
	for i, c := range cases {
		servers[i] = startTrellisWithToken(t, consul.HTTPAddr(), c.token)
	}

	t.Run("README policy", func(t *testing.T) {
		waitFor(t, 60*time.Second, "/readyz 200", func() error {
			code, body, err := full.get("/readyz")
			if err != nil {
				return err
			}
			if code != http.StatusOK {
				return fmt.Errorf("readyz %d:\n%s", code, body)
			}
			return nil
		})
		_, body, _ := full.get("/readyz")
		for _, want := range []string{"policies in effect: 1", "intentions in effect: 1", "consul acl token: "} {
			if !strings.Contains(body, want) {
				t.Errorf("/readyz has no %q:\n%s", want, body)
			}
		}
		if strings.Contains(body, "consul acl problem") {
			t.Errorf("/readyz reports an ACL problem with README's policy:\n%s", body)
		}
		conn := dialXDS(t, full.bootstrapFor(t, "acl-client"), "xds:///echo")
		waitForInstances(t, conn, 30*time.Second, "echo-1")
		if r := callEcho(t, conn, 20); r.ok() != 20 {
			t.Errorf("%d of 20 calls succeeded: %v", r.ok(), firstErr(r.failures))
		}
		full.requireAllACKed(t)
		for _, c := range cases[:5] {
			if v := full.aclMetric(t, c.component, c.perm); v != 0 {
				t.Errorf("trellis_consul_acl_problems{%s,%s} = %v, want 0", c.component, c.perm, v)
			}
		}
		if strings.Contains(full.Log(), "the Consul ACL token lacks") {
			t.Errorf("the log reports a missing permission with README's policy")
		}
	})
	for i, c := range cases {
		s := servers[i]
		t.Run(c.name, func(t *testing.T) {
			var body string
			wantCode := http.StatusServiceUnavailable
			if c.ready {
				wantCode = http.StatusOK
			}
			waitFor(t, 30*time.Second, "/readyz to name "+c.perm, func() error {
				code, b, err := s.get("/readyz")
				if err != nil {
					return err
				}
				body = b
				if code != wantCode {
					return fmt.Errorf("readyz %d, want %d:\n%s", code, wantCode, b)
				}
				for _, want := range c.readyz {
					if !strings.Contains(b, want) {
						return fmt.Errorf("/readyz has no %q:\n%s", want, b)
					}
				}
				if v := s.aclMetric(t, c.component, c.perm); v != 1 {
					return fmt.Errorf("trellis_consul_acl_problems{%s,%s} = %v, want 1", c.component, c.perm, v)
				}
				return nil
			})
			if strings.Contains(body, "unreachable") {
				t.Errorf("/readyz calls an ACL problem unreachable:\n%s", body)
			}
			log := s.Log()
			for _, want := range c.log {
				if n := strings.Count(log, want); n == 0 {
					t.Errorf("the log has no %q", want)
				}
			}
			// Once per transition: the watches answer again and again,
			// the token check runs once a minute.
			warnings := regexp.MustCompile(`(?m)^.*level=WARN msg="the Consul ACL token lacks `+regexp.QuoteMeta(c.perm)+`".*component=`+c.component+` .*source=(.*)$`).FindAllStringSubmatch(log, -1)
			seen := map[string]int{}
			for _, w := range warnings {
				seen[w[1]]++
			}
			for source, n := range seen {
				if n != 1 {
					t.Errorf("%d log lines for %s from %s, want 1", n, c.perm, source)
				}
			}
			t.Logf("/readyz of the server %s:\n%s", c.name, body)
		})
	}

	// The server's token loses node:read while it serves: a new instance
	// makes it read echo again, the read is filtered, and echo keeps its
	// last complete read (echo-1) instead of an empty endpoint list.
	t.Run("token loses node:read while serving", func(t *testing.T) {
		conn := dialXDS(t, full.bootstrapFor(t, "acl-client-2"), "xds:///echo")
		waitForInstances(t, conn, 30*time.Second, "echo-1")
		update := *fullPolicy
		update.Rules = without("node_prefix \"\" {\n  policy = \"read\"\n}\n", "")
		if _, _, err := root.ACL().PolicyUpdate(&update, nil); err != nil {
			t.Fatal(err)
		}
		startBackend(t, consul, "echo", "echo-2", backendOptions{})
		waitFor(t, 30*time.Second, "/readyz to report echo hidden", func() error {
			code, body, err := full.get("/readyz")
			if err != nil {
				return err
			}
			if code != http.StatusServiceUnavailable || !strings.Contains(body, "catalog: the token lacks node:read") ||
				!regexp.MustCompile(`services whose instances the ACL token hides.*\becho\b`).MatchString(body) {
				return fmt.Errorf("readyz %d:\n%s", code, body)
			}
			return nil
		})
		r := callEcho(t, conn, 40)
		if r.ok() != 40 || r.byInstance["echo-1"] != 40 {
			t.Errorf("calls while echo is hidden: %v, %d failed (%v); want all 40 on echo-1, its last complete read", r.byInstance, len(r.failures), firstErr(r.failures))
		}
		if v := full.aclMetric(t, "catalog", "node:read"); v != 1 {
			t.Errorf("trellis_consul_acl_problems{catalog,node:read} = %v, want 1", v)
		}
		// node:read back: the hidden service is read again (its retries
		// back off to 30s) and served whole. The other findings clear
		// with the next answer of each watch and the next token check
		// (about a minute): not waited for here.
		update.Rules = policy
		if _, _, err := root.ACL().PolicyUpdate(&update, nil); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		waitForInstances(t, conn, 45*time.Second, "echo-1", "echo-2")
		t.Logf("echo-2 served %.1fs after node:read was granted again", time.Since(start).Seconds())
		waitFor(t, 45*time.Second, "/readyz to list no hidden service", func() error {
			_, body, err := full.get("/readyz")
			if err != nil {
				return err
			}
			if strings.Contains(body, "services whose instances the ACL token hides") || strings.Contains(body, "(seen by service reads)") {
				return fmt.Errorf("readyz:\n%s", body)
			}
			return nil
		})
		full.requireAllACKed(t)
	})
}

// TestConsulACLsOverHTTPS checks the token over Consul's HTTPS API with
// client certificates (Consul's authorization check is sent on its own
// connection, with the same TLS settings): README's policy is found
// complete, and a token without node:read is reported by the token check.
func TestConsulACLsOverHTTPS(t *testing.T) {
	certs := newConsulTLS(t)
	consul := consultest.Start(t, consultest.Options{HTTPS: true, Token: "root", HCL: []string{aclAgentHCL, certs.agentHCL()}})
	root := consul.Client(t)
	startBackend(t, consul, "echo", "echo-1", backendOptions{})
	policy := readmeACLPolicy(t)
	noNode := strings.Replace(policy, "node_prefix \"\" {\n  policy = \"read\"\n}\n", "", 1)
	if noNode == policy {
		t.Fatalf("README's ACL policy has no node_prefix rule:\n%s", policy)
	}

	certs.setClientEnv(t)
	full := startTrellisWithToken(t, consul.HTTPSAddr(), aclToken(t, root, "https-full", policy))
	partial := startTrellisWithToken(t, consul.HTTPSAddr(), aclToken(t, root, "https-no-node", noNode))

	waitFor(t, 60*time.Second, "README's policy ready over HTTPS", func() error {
		code, body, err := full.get("/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusOK || !strings.Contains(body, "consul acl token: ") || strings.Contains(body, "consul acl check:") {
			return fmt.Errorf("readyz %d:\n%s", code, body)
		}
		return nil
	})
	conn := dialXDS(t, full.bootstrapFor(t, "acl-https-client"), "xds:///echo")
	waitForInstances(t, conn, 30*time.Second, "echo-1")
	full.requireAllACKed(t)
	waitFor(t, 30*time.Second, "node:read reported by the token check over HTTPS", func() error {
		code, body, err := partial.get("/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "(seen by token check (node:read))") {
			return fmt.Errorf("readyz %d:\n%s", code, body)
		}
		return nil
	})
}
