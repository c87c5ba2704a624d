package translate

import (
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"

	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trellis-mesh/trellis/internal/model"
)

// l7Call is a gRPC call as an RBAC engine sees it: the method path and
// the request headers (a missing key is an absent header).
type l7Call struct {
	path    string
	headers map[string]string
}

// consulL7Allows decides a call by an intention's permissions as Consul's
// Envoy does: the first permission matching the call decides, and a call
// no permission matches gets the default. Header matching follows Envoy:
// an inverted matcher matches an absent header; IgnoreCase compares ASCII
// case-insensitively and has no effect on a regex.
func consulL7Allows(perms []model.IntentionPermission, defaultAllow bool, c l7Call) bool {
	for _, p := range perms {
		if envoyMatches(p.HTTP, c) {
			return p.Action == model.IntentionAllow
		}
	}
	return defaultAllow
}

func envoyMatches(h *model.IntentionHTTPMatch, c l7Call) bool {
	if h == nil {
		return true
	}
	switch {
	case h.PathExact != "" && c.path != h.PathExact,
		h.PathPrefix != "" && !strings.HasPrefix(c.path, h.PathPrefix),
		h.PathRegex != "" && !fullMatch(h.PathRegex, c.path):
		return false
	}
	if len(h.Methods) > 0 && !contains(h.Methods, "POST") {
		return false
	}
	for _, hd := range h.Headers {
		v, present := c.headers[hd.Name]
		var m bool
		switch {
		case hd.Present:
			m = present
		case !present:
			m = false
		case hd.Regex != "":
			m = fullMatch(hd.Regex, v)
		default:
			val, want := v, hd.Exact+hd.Prefix+hd.Suffix+hd.Contains
			if hd.IgnoreCase {
				val, want = strings.ToLower(val), strings.ToLower(want)
			}
			switch {
			case hd.Exact != "":
				m = val == want
			case hd.Prefix != "":
				m = strings.HasPrefix(val, want)
			case hd.Suffix != "":
				m = strings.HasSuffix(val, want)
			default:
				m = strings.Contains(val, want)
			}
		}
		if m == hd.Invert {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func fullMatch(pattern, s string) bool {
	return regexp.MustCompile(`^(?:` + pattern + `)$`).MatchString(s)
}

// grpcPermission evaluates an RBAC permission as grpc-go's engine does,
// for the rules the translator emits: its header matchers never match an
// absent header (inverted or not), and its present matcher wants a
// non-empty value.
func grpcPermission(t *testing.T, p *rbacconfigv3.Permission, c l7Call) bool {
	switch r := p.GetRule().(type) {
	case *rbacconfigv3.Permission_Any:
		return r.Any
	case *rbacconfigv3.Permission_AndRules:
		for _, sub := range r.AndRules.GetRules() {
			if !grpcPermission(t, sub, c) {
				return false
			}
		}
		return true
	case *rbacconfigv3.Permission_OrRules:
		for _, sub := range r.OrRules.GetRules() {
			if grpcPermission(t, sub, c) {
				return true
			}
		}
		return false
	case *rbacconfigv3.Permission_NotRule:
		return !grpcPermission(t, r.NotRule, c)
	case *rbacconfigv3.Permission_UrlPath:
		return grpcString(t, r.UrlPath.GetPath(), c.path)
	case *rbacconfigv3.Permission_Header:
		return grpcHeader(t, r.Header, c)
	default:
		t.Fatalf("unexpected permission rule %T", r)
		return false
	}
}

func grpcString(t *testing.T, m *matcherv3.StringMatcher, s string) bool {
	switch {
	case m.GetIgnoreCase():
		t.Fatalf("ignore_case emitted: %v", m)
	case m.GetExact() != "":
		return s == m.GetExact()
	case m.GetPrefix() != "":
		return strings.HasPrefix(s, m.GetPrefix())
	case m.GetSafeRegex() != nil:
		return fullMatch(m.GetSafeRegex().GetRegex(), s)
	}
	t.Fatalf("unexpected string matcher %v", m)
	return false
}

func grpcHeader(t *testing.T, h *routev3.HeaderMatcher, c l7Call) bool {
	v, ok := c.headers[h.GetName()]
	if _, isPresent := h.GetHeaderMatchSpecifier().(*routev3.HeaderMatcher_PresentMatch); isPresent {
		return (ok && v != "") == (h.GetPresentMatch() != h.GetInvertMatch())
	}
	if !ok {
		return false
	}
	var m bool
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_ExactMatch:
		m = v == s.ExactMatch
	case *routev3.HeaderMatcher_PrefixMatch:
		m = strings.HasPrefix(v, s.PrefixMatch)
	case *routev3.HeaderMatcher_SuffixMatch:
		m = strings.HasSuffix(v, s.SuffixMatch)
	case *routev3.HeaderMatcher_ContainsMatch:
		m = strings.Contains(v, s.ContainsMatch)
	case *routev3.HeaderMatcher_SafeRegexMatch:
		m = fullMatch(s.SafeRegexMatch.GetRegex(), v)
	default:
		t.Fatalf("unexpected header matcher %T (C-core 1.51 reads only the older fields)", s)
	}
	return m != h.GetInvertMatch()
}

// grpcAllows evaluates the ALLOW rules for a call from id.
func grpcAllows(t *testing.T, rules *rbacconfigv3.RBAC, id string, c l7Call) bool {
	if rules.GetAction() != rbacconfigv3.RBAC_ALLOW {
		t.Fatalf("action %v, want ALLOW", rules.GetAction())
	}
	for _, p := range rules.GetPolicies() {
		pm := false
		for _, pr := range p.GetPrincipals() {
			pm = pm || principalMatches(pr, id)
		}
		if !pm {
			continue
		}
		for _, pe := range p.GetPermissions() {
			if grpcPermission(t, pe, c) {
				return true
			}
		}
	}
	return false
}

var (
	l7Paths   = []string{"/echo.Echo/Say", "/echo.Echo/Delete", "/admin.Admin/Reset", "/admin.Admin/", "/other.O/M"}
	l7Values  = []string{"", "admin", "Admin", "ADMIN-x", "x-admin", "guest", "v12", "V1"}
	l7Headers = []string{"x-role", "x-tag"}
)

func randomPermission(r *rand.Rand) model.IntentionPermission {
	p := model.IntentionPermission{Action: model.IntentionAction(r.IntN(2))}
	if r.IntN(6) == 0 {
		return p // no HTTP match: every call
	}
	h := &model.IntentionHTTPMatch{}
	switch r.IntN(4) {
	case 0:
		h.PathExact = l7Paths[r.IntN(len(l7Paths))]
	case 1:
		h.PathPrefix = []string{"/echo.Echo/", "/admin.", "/"}[r.IntN(3)]
	case 2:
		h.PathRegex = []string{"/echo[.]Echo/.*", "/(admin|other)[.].*/.+", ".*Say"}[r.IntN(3)]
	}
	switch r.IntN(8) {
	case 0:
		h.Methods = []string{"GET"}
	case 1:
		h.Methods = []string{"GET", "POST"}
	}
	for range r.IntN(3) {
		hd := model.IntentionHeaderMatch{Name: l7Headers[r.IntN(len(l7Headers))], Invert: r.IntN(3) == 0, IgnoreCase: r.IntN(2) == 0}
		v := []string{"admin", "ADMIN", "x-", "v[0-9]+", "min"}[r.IntN(5)]
		switch r.IntN(6) {
		case 0:
			hd.Present = true
		case 1:
			hd.Exact = v
		case 2:
			hd.Prefix = v
		case 3:
			hd.Suffix = v
		case 4:
			hd.Contains = v
		case 5:
			hd.Regex = []string{"v[0-9]+", "(?i)admin.*", ".*"}[r.IntN(3)]
		}
		h.Headers = append(h.Headers, hd)
	}
	p.HTTP = h
	return p
}

func randomCall(r *rand.Rand) l7Call {
	c := l7Call{path: l7Paths[r.IntN(len(l7Paths))], headers: map[string]string{}}
	for _, name := range l7Headers {
		if r.IntN(3) != 0 {
			c.headers[name] = l7Values[r.IntN(len(l7Values))]
		}
	}
	return c
}

// TestL7IntentionsAsConsulDecides: for random L7 permission lists (paths
// exact, prefix and regex; every header operator, inverted and
// case-insensitive; methods with and without POST), under both defaults,
// the RBAC served to the destination's servers allows exactly the calls
// Consul's semantics allow, for the intention's source, for a source
// decided by the default and for a source of another trust domain.
func TestL7IntentionsAsConsulDecides(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("trellis.test")
	id := func(svc string) string {
		return spiffeid.RequireFromSegments(td, "ns", "default", "dc", "dc1", "svc", svc).String()
	}
	foreign := spiffeid.RequireFromSegments(spiffeid.RequireTrustDomainFromString("other.test"), "ns", "default", "dc", "dc1", "svc", "web").String()
	r := rand.New(rand.NewPCG(11, 7))
	snap := model.NewSnapshot([]*model.Service{{Name: "api", Instances: []model.Instance{
		{ID: "api-1", Node: "n", Address: "10.0.0.1", Port: 8080, Datacenter: "dc1", Weights: model.Weights{Passing: 1, Warning: 1}},
	}}})
	checked := map[bool]int{}
	for i := range 400 {
		var perms []model.IntentionPermission
		for range 1 + r.IntN(4) {
			perms = append(perms, randomPermission(r))
		}
		defaultDeny := r.IntN(2) == 0
		wildcard := r.IntN(3) == 0 // the permissions on "*" rather than on web
		src := "web"
		if wildcard {
			src = model.Wildcard
		}
		sec := &Security{TrustDomain: td, MTLS: true, DefaultDeny: defaultDeny, Intentions: model.NewIntentions([]model.Intention{
			{Source: src, Destination: "api", Action: model.IntentionDeny, Precedence: consulPrecedence(src, "api"), Permissions: perms},
		})}
		res := Translate(Input{Catalog: snap, Security: sec}, Options{})
		lis := res.Resources.Listeners[ServerListenerName("10.0.0.1:8080")]
		if lis == nil {
			t.Fatalf("case %d: no server listener; skipped: %v", i, res.Skipped)
		}
		if err := lis.ValidateAll(); err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		rules := rbacRules(t, lis)
		for range 25 {
			c := randomCall(r)
			want := consulL7Allows(perms, !defaultDeny, c)
			if got := grpcAllows(t, rules, id("web"), c); got != want {
				t.Fatalf("case %d (source %q, default deny %t): call %+v from web: RBAC allows %t, Consul %t\npermissions: %s\nrules: %v",
					i, src, defaultDeny, c, got, want, describe(perms), rules)
			}
			checked[want]++
			wantOther := !defaultDeny
			if wildcard {
				wantOther = want // "*" decides for every source
			}
			if got := grpcAllows(t, rules, id("batch"), c); got != wantOther {
				t.Fatalf("case %d: call %+v from batch: RBAC allows %t, want %t\nrules: %v", i, c, got, wantOther, rules)
			}
			if grpcAllows(t, rules, foreign, c) {
				t.Fatalf("case %d: a caller of another trust domain is allowed", i)
			}
		}
	}
	if checked[true] < 100 || checked[false] < 100 {
		t.Errorf("calls allowed/denied: %v; the random cases do not cover both", checked)
	}
}

func describe(perms []model.IntentionPermission) string {
	var parts []string
	for _, p := range perms {
		if p.HTTP == nil {
			parts = append(parts, fmt.Sprintf("{%s any}", p.Action))
			continue
		}
		parts = append(parts, fmt.Sprintf("{%s %+v}", p.Action, *p.HTTP))
	}
	return strings.Join(parts, " ")
}
