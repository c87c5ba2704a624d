package translate

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/bootstrap"
	"github.com/trellis-mesh/trellis/internal/clients"
)

// TestHandshakeAuthorizes: only the exact "any workload of the trust
// domain" rule, for a profile declaring the own-trust-domain instance,
// lets the handshake replace the RBAC filter.
func TestHandshakeAuthorizes(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("trellis.test")
	ss := &serviceSecurity{sec: &Security{TrustDomain: td}, mtls: true}
	edit := func(f func(*rbacconfigv3.RBAC)) *rbacv3.RBAC {
		r := trustDomainRBAC(td)
		f(r.Rules)
		return r
	}
	anyPermission := []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_Any{Any: true}}}
	ownTD, goProfile := clients.GoOwnTD, clients.Go
	tests := []struct {
		name    string
		rbac    *rbacv3.RBAC
		profile *clients.Profile
		want    bool
	}{
		{name: "any workload of the trust domain", rbac: trustDomainRBAC(td), profile: &ownTD, want: true},
		{name: "profile without the instance", rbac: trustDomainRBAC(td), profile: &goProfile},
		{name: "no profile", rbac: trustDomainRBAC(td)},
		{name: "another trust domain", rbac: trustDomainRBAC(spiffeid.RequireTrustDomainFromString("other.test")), profile: &ownTD},
		{name: "a second trust domain allowed too", profile: &ownTD, rbac: edit(func(r *rbacconfigv3.RBAC) {
			r.Policies["source:foreign"] = &rbacconfigv3.Policy{Permissions: anyPermission, Principals: []*rbacconfigv3.Principal{principalPrefix("spiffe://other.test/")}}
		})},
		{name: "prefix without the slash", profile: &ownTD, rbac: edit(func(r *rbacconfigv3.RBAC) {
			r.Policies["source:*"].Principals = []*rbacconfigv3.Principal{principalPrefix(td.IDString())}
		})},
		{name: "a source excluded", profile: &ownTD, rbac: edit(func(r *rbacconfigv3.RBAC) {
			r.Policies["source:*"].Principals = []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_AndIds{AndIds: &rbacconfigv3.Principal_Set{Ids: []*rbacconfigv3.Principal{
				principalPrefix(td.IDString() + "/"), {Identifier: &rbacconfigv3.Principal_NotId{NotId: principalExact(td.IDString() + "/ns/default/dc/dc1/svc/batch")}},
			}}}}}
		})},
		{name: "permissions narrowed", profile: &ownTD, rbac: edit(func(r *rbacconfigv3.RBAC) {
			r.Policies["source:*"].Permissions = []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_NotRule{NotRule: anyPermission[0]}}}
		})},
		{name: "a deny rule set", profile: &ownTD, rbac: edit(func(r *rbacconfigv3.RBAC) { r.Action = rbacconfigv3.RBAC_DENY })},
		{name: "no policy (every call denied)", profile: &ownTD, rbac: &rbacv3.RBAC{Rules: &rbacconfigv3.RBAC{Action: rbacconfigv3.RBAC_ALLOW, Policies: map[string]*rbacconfigv3.Policy{}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ss.handshakeAuthorizes(tt.rbac, tt.profile); got != tt.want {
				t.Errorf("handshakeAuthorizes = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestOwnTrustDomainListeners checks every profile's server Listeners in
// the client golden cases: only the own-trust-domain profile gets
// Listeners naming its instance, each exactly the grpc-go Listener without
// the RBAC filter, where that filter was the "any workload of the trust
// domain" rule; every other Listener, of every profile, names the trellis
// instance and keeps its RBAC.
func TestOwnTrustDomainListeners(t *testing.T) {
	inputs, err := filepath.Glob(filepath.Join("testdata", "clients-*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	wantLighter := map[string]int{"clients-matrix": 0, "clients-own-trust-domain": 3}
	for _, path := range inputs {
		name := strings.TrimSuffix(filepath.Base(path), ".yaml")
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var in securityGolden
		if err := yaml.UnmarshalStrict(raw, &in); err != nil {
			t.Fatal(err)
		}
		td := spiffeid.RequireTrustDomainFromString(in.Security.TrustDomain)
		translate := func(p clients.Profile) *Result {
			return Translate(Input{Catalog: in.snapshot(t), Policies: in.policies(t), Security: in.Security.security(t)}, Options{Client: &p})
		}
		goRes := translate(clients.Go)
		for _, p := range clients.Profiles() {
			t.Run(name+"/"+p.Name, func(t *testing.T) {
				lighter := 0
				for lname, l := range translate(p).Resources.Listeners {
					if l.GetApiListener() != nil {
						continue
					}
					instance, mtls := downstreamInstance(t, l)
					if !mtls {
						if hasHTTPFilter(l, RBACFilterName) {
							t.Errorf("plaintext server Listener %q has RBAC", lname)
						}
						continue
					}
					if instance != bootstrap.OwnTrustDomainProviderInstance {
						if instance != bootstrap.CertificateProviderInstance {
							t.Errorf("server Listener %q names instance %q", lname, instance)
						}
						if !hasHTTPFilter(l, RBACFilterName) {
							t.Errorf("server Listener %q verifies callers against every trust domain and has no RBAC filter", lname)
						}
						continue
					}
					lighter++
					if !p.Caps.OwnTrustDomainRoots {
						t.Errorf("server Listener %q names %s for %s, whose bootstrap lacks it", lname, instance, p.Name)
					}
					if hasHTTPFilter(l, RBACFilterName) {
						t.Errorf("server Listener %q names %s and keeps RBAC", lname, instance)
					}
					full := goRes.Resources.Listeners[lname]
					if rbac := serverRBAC(t, full); !proto.Equal(rbac, trustDomainRBAC(td)) {
						t.Errorf("server Listener %q: lighter, but grpc-go's RBAC is not the trust domain rule: %v", lname, rbac)
					}
					if !proto.Equal(l, withHandshakeAuthorization(t, full)) {
						t.Errorf("server Listener %q is not grpc-go's without RBAC and with %s", lname, instance)
					}
				}
				want := 0
				if p.Caps.OwnTrustDomainRoots {
					want = wantLighter[name]
				}
				if lighter != want {
					t.Errorf("%d server Listeners authorized by the handshake, want %d", lighter, want)
				}
			})
		}
	}
}

// downstreamInstance returns the certificate provider instance of a server
// Listener's DownstreamTlsContext (identity and roots, which must agree),
// and whether it has one.
func downstreamInstance(t *testing.T, l *listenerv3.Listener) (string, bool) {
	t.Helper()
	ts := l.GetFilterChains()[0].GetTransportSocket()
	if ts == nil {
		return "", false
	}
	ctx := &tlsv3.DownstreamTlsContext{}
	if err := ts.GetTypedConfig().UnmarshalTo(ctx); err != nil {
		t.Fatal(err)
	}
	id := ctx.GetCommonTlsContext().GetTlsCertificateProviderInstance().GetInstanceName()
	roots := ctx.GetCommonTlsContext().GetValidationContext().GetCaCertificateProviderInstance().GetInstanceName()
	if id != roots || !ctx.GetRequireClientCertificate().GetValue() {
		t.Errorf("server Listener %q: identity %q, roots %q, client certificate required %v", l.GetName(), id, roots, ctx.GetRequireClientCertificate().GetValue())
	}
	return id, true
}

// serverHCM returns the HttpConnectionManager of a server Listener.
func serverHCM(t *testing.T, l *listenerv3.Listener) *hcmv3.HttpConnectionManager {
	t.Helper()
	hcm := &hcmv3.HttpConnectionManager{}
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	return hcm
}

// serverRBAC returns the RBAC filter config of a server Listener, nil when
// it has none.
func serverRBAC(t *testing.T, l *listenerv3.Listener) *rbacv3.RBAC {
	t.Helper()
	for _, f := range serverHCM(t, l).GetHttpFilters() {
		if f.GetName() == RBACFilterName {
			r := &rbacv3.RBAC{}
			if err := f.GetTypedConfig().UnmarshalTo(r); err != nil {
				t.Fatal(err)
			}
			return r
		}
	}
	return nil
}

// withHandshakeAuthorization is an mTLS server Listener without its RBAC
// filter and with the own-trust-domain instance for identity and roots.
func withHandshakeAuthorization(t *testing.T, l *listenerv3.Listener) *listenerv3.Listener {
	t.Helper()
	out := proto.CloneOf(l)
	chain := out.GetFilterChains()[0]
	hcm := serverHCM(t, out)
	hcm.HttpFilters = slices.DeleteFunc(hcm.HttpFilters, func(f *hcmv3.HttpFilter) bool { return f.GetName() == RBACFilterName })
	a, err := anypb.New(hcm)
	if err != nil {
		t.Fatal(err)
	}
	chain.GetFilters()[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
	ctx := &tlsv3.DownstreamTlsContext{}
	if err := chain.GetTransportSocket().GetTypedConfig().UnmarshalTo(ctx); err != nil {
		t.Fatal(err)
	}
	ctx.GetCommonTlsContext().GetTlsCertificateProviderInstance().InstanceName = bootstrap.OwnTrustDomainProviderInstance
	ctx.GetCommonTlsContext().GetValidationContext().GetCaCertificateProviderInstance().InstanceName = bootstrap.OwnTrustDomainProviderInstance
	if a, err = anypb.New(ctx); err != nil {
		t.Fatal(err)
	}
	chain.GetTransportSocket().ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: a}
	return out
}
