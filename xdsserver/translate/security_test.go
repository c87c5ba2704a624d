package translate

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/identity"
	"github.com/trellis-mesh/trellis/internal/bootstrap"
	"github.com/trellis-mesh/trellis/internal/model"
)

// securityGolden is the YAML form of a security test case: a golden input
// plus the security input.
type securityGolden struct {
	goldenInput
	Security goldenSecurity `json:"security"`
}

type goldenSecurity struct {
	TrustDomain string            `json:"trustDomain"`
	Template    string            `json:"template"`
	MTLS        bool              `json:"mtls"`
	Default     string            `json:"default"`
	Intentions  []goldenIntention `json:"intentions"`
}

type goldenIntention struct {
	Source      string             `json:"source"`
	Destination string             `json:"destination"`
	Action      string             `json:"action"`
	Precedence  int                `json:"precedence"`
	Conditions  []string           `json:"conditions"`
	Permissions []goldenPermission `json:"permissions"`
}

// goldenPermission is an L7 permission; an intention with permissions has
// no action of its own, as in Consul.
type goldenPermission struct {
	Action string `json:"action"`
	HTTP   *struct {
		PathExact  string   `json:"pathExact"`
		PathPrefix string   `json:"pathPrefix"`
		PathRegex  string   `json:"pathRegex"`
		Methods    []string `json:"methods"`
		Headers    []struct {
			Name       string `json:"name"`
			Present    bool   `json:"present"`
			Exact      string `json:"exact"`
			Prefix     string `json:"prefix"`
			Suffix     string `json:"suffix"`
			Contains   string `json:"contains"`
			Regex      string `json:"regex"`
			Invert     bool   `json:"invert"`
			IgnoreCase bool   `json:"ignoreCase"`
		} `json:"headers"`
	} `json:"http"`
}

func goldenAction(t *testing.T, what, action string) model.IntentionAction {
	t.Helper()
	switch action {
	case "allow":
		return model.IntentionAllow
	case "deny":
		return model.IntentionDeny
	default:
		t.Fatalf("%s: action %q: want allow or deny", what, action)
		return 0
	}
}

// consulPrecedence is Consul's precedence for intentions in the default
// namespace: exact destination 9, wildcard destination 6, minus one for a
// wildcard source.
func consulPrecedence(source, destination string) int {
	p := 9
	if destination == model.Wildcard {
		p = 6
	}
	if source == model.Wildcard {
		p--
	}
	return p
}

func (g goldenSecurity) security(t *testing.T) *Security {
	t.Helper()
	sec := &Security{MTLS: g.MTLS}
	if g.TrustDomain != "" {
		td, err := spiffeid.TrustDomainFromString(g.TrustDomain)
		if err != nil {
			t.Fatal(err)
		}
		sec.TrustDomain = td
	}
	if g.Template != "" {
		s, err := identity.NewScheme(g.Template)
		if err != nil {
			t.Fatal(err)
		}
		sec.Scheme = s
	}
	switch g.Default {
	case "allow", "":
		sec.DefaultDeny = false
	case "deny":
		sec.DefaultDeny = true
	default:
		t.Fatalf("security.default %q: want allow or deny", g.Default)
	}
	var list []model.Intention
	for _, gi := range g.Intentions {
		in := model.Intention{Source: gi.Source, Destination: gi.Destination, Precedence: gi.Precedence, Conditions: gi.Conditions}
		what := fmt.Sprintf("intention %s -> %s", gi.Source, gi.Destination)
		if len(gi.Permissions) == 0 {
			in.Action = goldenAction(t, what, gi.Action)
		} else if gi.Action != "" {
			t.Fatalf("%s: an intention with permissions has no action of its own", what)
		}
		for i, gp := range gi.Permissions {
			p := model.IntentionPermission{Action: goldenAction(t, fmt.Sprintf("%s permission %d", what, i), gp.Action)}
			if h := gp.HTTP; h != nil {
				p.HTTP = &model.IntentionHTTPMatch{PathExact: h.PathExact, PathPrefix: h.PathPrefix, PathRegex: h.PathRegex, Methods: h.Methods}
				for _, hd := range h.Headers {
					p.HTTP.Headers = append(p.HTTP.Headers, model.IntentionHeaderMatch{Name: hd.Name, Present: hd.Present, Exact: hd.Exact,
						Prefix: hd.Prefix, Suffix: hd.Suffix, Contains: hd.Contains, Regex: hd.Regex, Invert: hd.Invert, IgnoreCase: hd.IgnoreCase})
				}
			}
			in.Permissions = append(in.Permissions, p)
		}
		if in.Precedence == 0 {
			in.Precedence = consulPrecedence(in.Source, in.Destination)
		}
		list = append(list, in)
	}
	sec.Intentions = model.NewIntentions(list)
	return sec
}

// TestSecurityGolden translates every testdata/security-<case>.yaml with its
// security input and compares each resource type with
// testdata/security-<case>.<type>.golden.json. Every resource also passes
// the envoy protos' validation, and TestGoldenAcceptedByGRPC serves them
// to grpc-go. Run with -update to rewrite the golden files.
func TestSecurityGolden(t *testing.T) {
	inputs, err := filepath.Glob(filepath.Join("testdata", "security-*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(inputs) == 0 {
		t.Fatal("no security golden inputs in testdata")
	}
	for _, path := range inputs {
		name := strings.TrimSuffix(filepath.Base(path), ".yaml")
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var in securityGolden
			if err := yaml.UnmarshalStrict(raw, &in); err != nil {
				t.Fatalf("parse %s: %v", path, err)
			}
			res := Translate(Input{Catalog: in.snapshot(t), Policies: in.policies(t), Security: in.Security.security(t)}, in.Options)
			compareResult(t, name, res)
		})
	}
}

// TestRBACMatchesIntentions checks, caller by caller, that the RBAC filter
// of an mTLS service lets exactly the calls through that Consul's intention
// semantics allow: the matching intention of highest precedence decides,
// the default when none matches; conditions deny; other trust domains are
// never allowed.
func TestRBACMatchesIntentions(t *testing.T) {
	allow, deny := model.IntentionAllow, model.IntentionDeny
	in := func(src, dst string, a model.IntentionAction, cond ...string) model.Intention {
		return model.Intention{Source: src, Destination: dst, Action: a, Precedence: consulPrecedence(src, dst), Conditions: cond}
	}
	tests := []struct {
		name       string
		def        model.IntentionAction
		intentions []model.Intention
	}{
		{name: "no intentions, default allow", def: allow},
		{name: "no intentions, default deny", def: deny},
		{name: "exact allow, default deny", def: deny, intentions: []model.Intention{in("web", "api", allow)}},
		{name: "exact deny, default allow", def: allow, intentions: []model.Intention{in("web", "api", deny)}},
		{name: "two exact denies, default allow", def: allow, intentions: []model.Intention{in("web", "api", deny), in("batch", "api", deny)}},
		{name: "wildcard source deny beats default allow, exact allow beats it", def: allow,
			intentions: []model.Intention{in("*", "api", deny), in("web", "api", allow)}},
		{name: "wildcard source allow, exact deny", def: deny,
			intentions: []model.Intention{in("*", "api", allow), in("batch", "api", deny)}},
		{name: "exact destination wildcard source outranks wildcard destination exact source", def: deny,
			intentions: []model.Intention{in("*", "api", allow), in("web", "*", deny), in("batch", "*", allow)}},
		{name: "wildcard destination only", def: allow,
			intentions: []model.Intention{in("web", "*", deny), in("*", "*", deny), in("batch", "*", allow)}},
		{name: "any to any allow under default deny", def: deny, intentions: []model.Intention{in("*", "*", allow)}},
		{name: "conditions deny their source", def: allow,
			intentions: []model.Intention{in("web", "api", allow, "HTTP permissions"), in("*", "api", allow)}},
		{name: "conditions on the wildcard", def: allow,
			intentions: []model.Intention{in("*", "api", allow, "JWT requirements"), in("batch", "api", allow)}},
		{name: "other destination ignored", def: deny, intentions: []model.Intention{in("web", "db", allow), in("batch", "api", allow)}},
	}
	td := spiffeid.RequireTrustDomainFromString("trellis.test")
	other := spiffeid.RequireTrustDomainFromString("other.test")
	callers := []string{"web", "batch", "api", "unnamed"}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sec := &Security{TrustDomain: td, MTLS: true, DefaultDeny: tc.def == model.IntentionDeny, Intentions: model.NewIntentions(tc.intentions)}
			snap := model.NewSnapshot([]*model.Service{{Name: "api", Instances: []model.Instance{
				{ID: "api-1", Node: "n", Address: "10.0.0.1", Port: 8080, Datacenter: "dc1", Weights: model.Weights{Passing: 1, Warning: 1}},
			}}})
			res := Translate(Input{Catalog: snap, Security: sec}, Options{})
			lis := res.Resources.Listeners[ServerListenerName("10.0.0.1:8080")]
			if lis == nil {
				t.Fatalf("no server listener; skipped: %v", res.Skipped)
			}
			rules := rbacRules(t, lis)
			for _, caller := range callers {
				for _, callerTD := range []spiffeid.TrustDomain{td, other} {
					id := spiffeid.RequireFromSegments(callerTD, "ns", "default", "dc", "dc1", "svc", caller).String()
					want := callerTD == td && consulAllows(tc.intentions, tc.def, caller, "api")
					if got := rbacAllows(rules, id); got != want {
						t.Errorf("caller %s: RBAC allows %t, intentions %t\nrules: %v", id, got, want, rules)
					}
				}
			}
		})
	}
}

// consulAllows evaluates intentions the way Consul does, by brute force.
func consulAllows(intentions []model.Intention, def model.IntentionAction, source, destination string) bool {
	var best *model.Intention
	for i, in := range intentions {
		if (in.Source != source && in.Source != model.Wildcard) || (in.Destination != destination && in.Destination != model.Wildcard) {
			continue
		}
		if best == nil || in.Precedence > best.Precedence {
			best = &intentions[i]
		}
	}
	if best == nil {
		return def == model.IntentionAllow
	}
	return best.Action == model.IntentionAllow && len(best.Conditions) == 0
}

func rbacRules(t *testing.T, l *listenerv3.Listener) *rbacconfigv3.RBAC {
	t.Helper()
	hcm := &hcmv3.HttpConnectionManager{}
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	for _, f := range hcm.GetHttpFilters() {
		if f.GetName() != RBACFilterName {
			continue
		}
		cfg := &rbacv3.RBAC{}
		if err := f.GetTypedConfig().UnmarshalTo(cfg); err != nil {
			t.Fatal(err)
		}
		if cfg.GetRules() == nil {
			t.Fatal("RBAC filter without rules enforces nothing")
		}
		return cfg.GetRules()
	}
	t.Fatal("no RBAC filter")
	return nil
}

// rbacAllows evaluates rules for a caller presenting a certificate with
// the URI SAN id, as grpc-go's RBAC engine does for the matchers the
// translator emits.
func rbacAllows(rules *rbacconfigv3.RBAC, id string) bool {
	matched := false
	for _, p := range rules.GetPolicies() {
		pm := false
		for _, pr := range p.GetPrincipals() {
			if principalMatches(pr, id) {
				pm = true
			}
		}
		perm := false
		for _, pe := range p.GetPermissions() {
			if pe.GetAny() {
				perm = true
			}
		}
		if pm && perm {
			matched = true
		}
	}
	if rules.GetAction() == rbacconfigv3.RBAC_ALLOW {
		return matched
	}
	return !matched
}

func principalMatches(p *rbacconfigv3.Principal, id string) bool {
	switch x := p.GetIdentifier().(type) {
	case *rbacconfigv3.Principal_Any:
		return x.Any
	case *rbacconfigv3.Principal_Authenticated_:
		m := x.Authenticated.GetPrincipalName()
		switch {
		case m == nil:
			return true
		case m.GetExact() != "":
			return id == m.GetExact()
		case m.GetPrefix() != "":
			return strings.HasPrefix(id, m.GetPrefix())
		default:
			panic(fmt.Sprintf("unexpected matcher %v", m))
		}
	case *rbacconfigv3.Principal_AndIds:
		for _, sub := range x.AndIds.GetIds() {
			if !principalMatches(sub, id) {
				return false
			}
		}
		return true
	case *rbacconfigv3.Principal_OrIds:
		for _, sub := range x.OrIds.GetIds() {
			if principalMatches(sub, id) {
				return true
			}
		}
		return false
	case *rbacconfigv3.Principal_NotId:
		return !principalMatches(x.NotId, id)
	default:
		panic(fmt.Sprintf("unexpected principal %T", x))
	}
}

// TestServerListenerNameMatchesListenAddr checks that the server Listener of
// an instance is named exactly as an xds.NewGRPCServer listening on the
// instance's address asks for it, for IPv4 and IPv6.
func TestServerListenerNameMatchesListenAddr(t *testing.T) {
	for _, network := range []struct{ name, addr string }{{"ipv4", "127.0.0.1:0"}, {"ipv6", "[::1]:0"}} {
		t.Run(network.name, func(t *testing.T) {
			lis, err := net.Listen("tcp", network.addr)
			if err != nil {
				t.Fatalf("listen %s: %v (the tests need IPv4 and IPv6 loopback)", network.addr, err)
			}
			defer lis.Close()
			tcp := lis.Addr().(*net.TCPAddr)
			snap := model.NewSnapshot([]*model.Service{{Name: "echo", Instances: []model.Instance{
				{ID: "e1", Node: "n", Address: tcp.IP.String(), Port: tcp.Port, Datacenter: "dc1", Weights: model.Weights{Passing: 1, Warning: 1}},
			}}})
			res := Translate(Input{Catalog: snap, Security: &Security{}}, Options{})
			want := strings.ReplaceAll(bootstrap.ServerListenerTemplate, "%s", lis.Addr().String())
			l, ok := res.Resources.Listeners[want]
			if !ok {
				t.Fatalf("no listener %q; have %v", want, sortedKeys(res.Resources.Listeners))
			}
			sa := l.GetAddress().GetSocketAddress()
			host, _, _ := net.SplitHostPort(lis.Addr().String())
			if sa.GetAddress() != host || int(sa.GetPortValue()) != tcp.Port {
				t.Errorf("socket address %s:%d, want %s:%d", sa.GetAddress(), sa.GetPortValue(), host, tcp.Port)
			}
		})
	}
}

// TestServiceMTLSMode checks how the instances' meta sets a service's
// transport.
func TestServiceMTLSMode(t *testing.T) {
	inst := func(id, v string) model.Instance {
		i := model.Instance{ID: id, Node: "n"}
		if v != "-" {
			i.Meta = map[string]string{MTLSMetaKey: v}
		}
		return i
	}
	tests := []struct {
		name      string
		meshMTLS  bool
		instances []model.Instance
		want      bool
		wantSkips int
	}{
		{name: "no meta, mesh off", instances: []model.Instance{inst("a", "-")}, want: false},
		{name: "no meta, mesh on", meshMTLS: true, instances: []model.Instance{inst("a", "-")}, want: true},
		{name: "true, mesh off", instances: []model.Instance{inst("a", "true"), inst("b", "-")}, want: true},
		{name: "false, mesh on", meshMTLS: true, instances: []model.Instance{inst("a", "false"), inst("b", "-")}, want: false},
		{name: "true wins over false", instances: []model.Instance{inst("a", "false"), inst("b", "true")}, want: true, wantSkips: 1},
		{name: "case and spaces", instances: []model.Instance{inst("a", " TRUE ")}, want: true},
		{name: "invalid value ignored", meshMTLS: true, instances: []model.Instance{inst("a", "yes"), inst("b", "-")}, want: true, wantSkips: 1},
		{name: "invalid value does not turn mTLS on", instances: []model.Instance{inst("a", "1")}, want: false, wantSkips: 1},
		{name: "no instances", meshMTLS: true, want: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sec := &Security{MTLS: tc.meshMTLS}
			got, skips := sec.serviceMTLS(&model.Service{Name: "svc", Instances: tc.instances})
			if got != tc.want || len(skips) != tc.wantSkips {
				t.Errorf("mTLS %t with %d skips (%v), want %t with %d", got, len(skips), skips, tc.want, tc.wantSkips)
			}
		})
	}
}

// TestSecurityDoesNotChangeClientResources checks that a Security input
// adds TLS to Clusters and server Listeners, and leaves the client
// Listeners, routes and endpoints as they are without it.
func TestSecurityDoesNotChangeClientResources(t *testing.T) {
	snap := model.NewSnapshot([]*model.Service{{Name: "echo", Instances: []model.Instance{
		{ID: "e1", Node: "n", Address: "10.0.0.1", Port: 80, Datacenter: "dc1", Weights: model.Weights{Passing: 1, Warning: 1}},
	}}})
	plain := Translate(Input{Catalog: snap}, Options{})
	secured := Translate(Input{Catalog: snap, Security: &Security{MTLS: true, TrustDomain: spiffeid.RequireTrustDomainFromString("td")}}, Options{})
	if !proto.Equal(plain.Resources.Listeners["echo"], secured.Resources.Listeners["echo"]) ||
		!proto.Equal(plain.Resources.Routes["echo"], secured.Resources.Routes["echo"]) ||
		!proto.Equal(plain.Resources.Endpoints["echo"], secured.Resources.Endpoints["echo"]) {
		t.Error("security changed a client listener, route or endpoints")
	}
	c := proto.CloneOf(secured.Resources.Clusters["echo"])
	if c.GetTransportSocket() == nil {
		t.Fatal("mTLS cluster without transport socket")
	}
	c.TransportSocket = nil
	if !proto.Equal(plain.Resources.Clusters["echo"], c) {
		t.Error("security changed more than the cluster's transport socket")
	}
	var names []string
	for n := range secured.Resources.Listeners {
		names = append(names, n)
	}
	sort.Strings(names)
	if diff := cmp.Diff([]string{"echo", ServerListenerName("10.0.0.1:80")}, names); diff != "" {
		t.Errorf("listeners (-want +got):\n%s", diff)
	}
}
