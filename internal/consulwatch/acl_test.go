package consulwatch

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// aclHCL runs Consul with ACLs in default-deny mode.
const aclHCL = `acl { enabled = true, default_policy = "deny", tokens { initial_management = "root", agent = "root" } }`

// aclRules returns the minimal policy's rules without the left-out
// permissions. Consul wants a policy in every service_prefix block, and a
// service read policy grants intentions read unless they are denied.
func aclRules(leftOut ...string) string {
	service, intentions := "read", "read"
	if slices.Contains(leftOut, PermServiceRead) {
		service = "deny"
	}
	if slices.Contains(leftOut, PermIntentionRead) {
		intentions = "deny"
	}
	rules := []string{fmt.Sprintf(`service_prefix "" { policy = %q intentions = %q }`, service, intentions)}
	if !slices.Contains(leftOut, PermNodeRead) {
		rules = append(rules, `node_prefix "" { policy = "read" }`)
	}
	if !slices.Contains(leftOut, KeyPermission("read", "trellis/policies/")) {
		rules = append(rules, `key_prefix "trellis/policies/" { policy = "read" }`)
	}
	return strings.Join(rules, "\n")
}

var testNeeds = []ACLNeed{
	{Component: "catalog", Permission: PermServiceRead, Resource: "service", Access: "read", What: "list the services"},
	{Component: "catalog", Permission: PermNodeRead, Resource: "node", Access: "read", What: "see any instance"},
	{Component: "policy", Permission: KeyPermission("read", "trellis/policies/"), Resource: "key", Segment: "trellis/policies/", Access: "read", What: "read the policies"},
	{Component: "intentions", Permission: PermIntentionRead, Resource: "intention", Access: "read", What: "read the intentions"},
}

// aclTestToken creates a policy with the rules of every permission but
// the left-out ones, and a token holding it.
func aclTestToken(t *testing.T, root *api.Client, name string, leftOut ...string) string {
	t.Helper()
	p, _, err := root.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: aclRules(leftOut...)}, nil)
	if err != nil {
		t.Fatalf("create policy %s: %v", name, err)
	}
	tok, _, err := root.ACL().TokenCreate(&api.ACLToken{Description: name, Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
	if err != nil {
		t.Fatalf("create token %s: %v", name, err)
	}
	return tok.SecretID
}

func newTestACL(t *testing.T, addr, token string, logs *bytes.Buffer) (*ACL, *api.Client, *prometheus.Registry) {
	t.Helper()
	cfg := api.DefaultNonPooledConfig()
	cfg.Address, cfg.Scheme, cfg.Token, cfg.Datacenter = addr, "http", token, ""
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	logger := slog.New(slog.DiscardHandler)
	if logs != nil {
		logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	a, err := NewACL(ACLConfig{Client: client, API: cfg, Needs: testNeeds, Logger: logger, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return a, client, reg
}

func permissions(ps []ACLProblem) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Permission)
	}
	slices.Sort(out)
	return out
}

// TestACLWithConsul checks tokens against a real Consul in default-deny
// mode: the minimal policy lacks nothing, each policy with one rule left
// out lacks exactly that permission, the anonymous token lacks every one,
// and a token Consul does not know is said to be unknown. Then it follows
// real answers: a health read filtered for want of node:read, a 403 for
// want of key:write.
func TestACLWithConsul(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{HCL: []string{aclHCL}, Token: "root"})
	root := consul.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("minimal policy", func(t *testing.T) {
		var logs bytes.Buffer
		a, _, reg := newTestACL(t, consul.HTTPAddr(), aclTestToken(t, root, "full"), &logs)
		a.Check(ctx)
		if ps := a.Problems(); len(ps) != 0 {
			t.Errorf("problems with the minimal policy: %v", ps)
		}
		info := a.Token()
		if !info.Checked || info.Error != "" || info.AccessorID == "" || !info.Configured || !slices.Equal(info.Policies, []string{"full"}) {
			t.Errorf("token info %+v, want a checked, configured token with policy full", info)
		}
		if info.RulesReadable {
			t.Error("policy rules readable without acl:read")
		}
		if !strings.Contains(logs.String(), "acl:read") {
			t.Errorf("the log does not say the rules need acl:read:\n%s", logs.String())
		}
		if v := testutil.ToFloat64(mustGauge(t, a, "catalog", PermNodeRead)); v != 0 {
			t.Errorf("gauge %v, want 0", v)
		}
		if n, err := testutil.GatherAndCount(reg, "trellis_consul_acl_problems"); err != nil || n != len(testNeeds) {
			t.Errorf("trellis_consul_acl_problems series %d (%v), want one per need (%d)", n, err, len(testNeeds))
		}
	})
	for _, need := range testNeeds {
		t.Run("without "+need.Permission, func(t *testing.T) {
			var logs bytes.Buffer
			a, _, _ := newTestACL(t, consul.HTTPAddr(), aclTestToken(t, root, "no-"+strings.NewReplacer(":", "-", " ", "-", "/", "-").Replace(need.Permission), need.Permission), &logs)
			a.Check(ctx)
			a.Check(ctx) // a second check logs nothing new
			ps := a.Problems()
			if got := permissions(ps); !slices.Equal(got, []string{need.Permission}) {
				t.Fatalf("missing %v, want [%s]", got, need.Permission)
			}
			if ps[0].Component != need.Component || !strings.Contains(ps[0].Hides, need.What) {
				t.Errorf("problem %+v, want component %s and what it is for (%q)", ps[0], need.Component, need.What)
			}
			if v := testutil.ToFloat64(mustGauge(t, a, need.Component, need.Permission)); v != 1 {
				t.Errorf("gauge %v, want 1", v)
			}
			if n := strings.Count(logs.String(), "the Consul ACL token lacks "+need.Permission); n != 1 {
				t.Errorf("%d log lines for the missing %s, want 1:\n%s", n, need.Permission, logs.String())
			}
		})
	}
	t.Run("anonymous", func(t *testing.T) {
		a, _, _ := newTestACL(t, consul.HTTPAddr(), "", nil)
		a.Check(ctx)
		var want []string
		for _, n := range testNeeds {
			want = append(want, n.Permission)
		}
		slices.Sort(want)
		if got := permissions(a.Problems()); !slices.Equal(got, want) {
			t.Errorf("anonymous token lacks %v, want %v", got, want)
		}
		if a.Token().Configured {
			t.Error("no token configured, but Token().Configured")
		}
		for _, p := range a.Problems() {
			if !strings.Contains(p.Hides, "anonymous") {
				t.Errorf("problem %q does not say requests are anonymous", p.Hides)
			}
		}
	})
	t.Run("unknown token", func(t *testing.T) {
		a, _, _ := newTestACL(t, consul.HTTPAddr(), "00000000-1111-2222-3333-444444444444", nil)
		a.Check(ctx)
		ps := a.Problems()
		if len(ps) != 1 || ps[0].Permission != PermToken || !strings.Contains(ps[0].String(), ACLNotFoundMessage) {
			t.Errorf("problems %v, want one saying %q", ps, ACLNotFoundMessage)
		}
	})
	t.Run("root reads its rules", func(t *testing.T) {
		a, _, _ := newTestACL(t, consul.HTTPAddr(), "root", nil)
		a.Check(ctx)
		if info := a.Token(); !info.RulesReadable || len(a.Problems()) != 0 {
			t.Errorf("root: rules readable %t, problems %v; want readable, none", info.RulesReadable, a.Problems())
		}
	})
	t.Run("answers", func(t *testing.T) {
		consul.RegisterService(t, &api.AgentServiceRegistration{ID: "web-1", Name: "web", Address: "127.0.0.1", Port: 9000})
		var logs bytes.Buffer
		a, client, _ := newTestACL(t, consul.HTTPAddr(), aclTestToken(t, root, "answers", PermNodeRead), &logs)
		entries, meta, err := client.Health().Service("web", "", false, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 0 || !meta.ResultsFilteredByACLs {
			t.Fatalf("health read without node:read: %d entries, filtered %t; want 0, true", len(entries), meta.ResultsFilteredByACLs)
		}
		for range 3 {
			a.Answered("catalog", "service reads", meta.ResultsFilteredByACLs, PermNodeRead, "the instances of web")
		}
		if got := permissions(a.Problems()); !slices.Equal(got, []string{PermNodeRead}) {
			t.Errorf("after filtered answers: %v, want [node:read]", got)
		}
		_, err = client.KV().Put(&api.KVPair{Key: "trellis/policies/web", Value: []byte("{}")}, (&api.WriteOptions{}).WithContext(ctx))
		if err == nil {
			t.Fatal("KV write without key:write accepted")
		}
		a.Failed("policy", "policy writes", err)
		ps := a.Problems()
		if got := permissions(ps); !slices.Equal(got, []string{"key:write on trellis/policies/web", PermNodeRead}) {
			t.Errorf("after a 403: %v, want the permission Consul names", got)
		}
		a.Answered("catalog", "service reads", false, PermNodeRead, "")
		a.Answered("policy", "policy writes", false, "", "")
		if ps := a.Problems(); len(ps) != 0 {
			t.Errorf("problems after unfiltered answers: %v", ps)
		}
		if n := strings.Count(logs.String(), "the Consul ACL token lacks node:read"); n != 1 {
			t.Errorf("%d log lines for 3 filtered answers, want 1 (once per transition):\n%s", n, logs.String())
		}
		if n := strings.Count(logs.String(), "no longer hides"); n != 2 {
			t.Errorf("%d resolution log lines, want 2:\n%s", n, logs.String())
		}
		if v := testutil.ToFloat64(mustGauge(t, a, "catalog", PermNodeRead)); v != 0 {
			t.Errorf("gauge after resolution %v, want 0", v)
		}
	})
}

func mustGauge(t *testing.T, a *ACL, component, permission string) prometheus.Gauge {
	t.Helper()
	g, err := a.gauge.GetMetricWithLabelValues(component, permission)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// TestACLDisabled: with Consul's ACLs disabled (an in-process fake, as
// the integration tests' agents run without ACLs) nothing is reported.
func TestACLDisabled(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "ACL support disabled", http.StatusUnauthorized)
	}))
	defer srv.Close()
	a, _, _ := newTestACL(t, strings.TrimPrefix(srv.URL, "http://"), "", nil)
	a.Check(context.Background())
	if info := a.Token(); !info.Disabled || !info.Checked || len(a.Problems()) != 0 {
		t.Errorf("ACLs disabled: info %+v, problems %v; want disabled, none", info, a.Problems())
	}
}

func TestNewACLConfig(t *testing.T) {
	cfg := api.DefaultConfig()
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]ACLConfig{
		"no client":        {API: cfg},
		"no API":           {Client: client},
		"negative recheck": {Client: client, API: cfg, RecheckInterval: -time.Second},
		"incomplete need":  {Client: client, API: cfg, Needs: []ACLNeed{{Component: "catalog"}}},
	} {
		if _, err := NewACL(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	var nilACL *ACL
	nilACL.Answered("catalog", "x", true, PermNodeRead, "y")
	nilACL.Failed("catalog", "x", api.StatusError{Code: 403, Body: "ACL not found"})
	if nilACL.Problems() != nil || nilACL.Hidden("catalog") {
		t.Error("a nil ACL reports problems")
	}
}
