package statusapi_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/encoding/prototext"

	"github.com/trellis-mesh/trellis/internal/clients"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/policy"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
	statusv1 "github.com/trellis-mesh/trellis/proto/trellis/status/v1"
	"github.com/trellis-mesh/trellis/xdsserver"
	"github.com/trellis-mesh/trellis/xdsserver/statusapi"
	"github.com/trellis-mesh/trellis/xdsserver/translate"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// The tests translate a catalog with the real translation, apply it to real
// profile caches, and explain what those serve, as trellis server does.

// inputs is a fixed statusapi.Inputs.
type inputs struct {
	catalog   *model.Snapshot
	policies  map[string]*policyv1.ServicePolicy
	revisions map[string]uint64
	security  statusapi.Security
	skips     []statusapi.Skip
	synced    bool
}

func (in *inputs) Catalog() *model.Snapshot { return in.catalog }
func (in *inputs) Policy(s string) (*policyv1.ServicePolicy, uint64) {
	return in.policies[s], in.revisions[s]
}
func (in *inputs) Security() statusapi.Security { return in.security }
func (in *inputs) Skips() []statusapi.Skip      { return in.skips }
func (in *inputs) Synced() bool                 { return in.synced }

func instance(id, addr string, port int, h model.Health) model.Instance {
	return model.Instance{ID: id, Node: "n1", Address: addr, Port: port, Health: h, Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1", Zone: "z1"}
}

func mustPolicies(t *testing.T, yaml string) map[string]*policyv1.ServicePolicy {
	t.Helper()
	docs, err := policy.ParseDocuments(strings.NewReader(yaml))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*policyv1.ServicePolicy{}
	for _, p := range docs {
		if _, err := policy.Validate(p, policy.Env{}); err != nil {
			t.Fatal(err)
		}
		out[p.GetService()] = policy.Normalize(p)
	}
	return out
}

// mesh translates catalog and policies for every profile into real caches
// and returns a status server over them.
func mesh(t *testing.T, catalog *model.Snapshot, policies map[string]*policyv1.ServicePolicy, streams []xdsserver.StreamStatus) (*statusapi.Server, *xdsserver.ProfileCaches) {
	t.Helper()
	return meshWith(t, catalog, policies, streams, nil)
}

// meshWith is mesh with a security input.
func meshWith(t *testing.T, catalog *model.Snapshot, policies map[string]*policyv1.ServicePolicy, streams []xdsserver.StreamStatus, sec *translate.Security) (*statusapi.Server, *xdsserver.ProfileCaches) {
	t.Helper()
	caches, err := xdsserver.NewProfileCaches(xdsserver.ProfileCachesConfig{})
	if err != nil {
		t.Fatal(err)
	}
	in := &inputs{catalog: catalog, policies: policies, revisions: map[string]uint64{}, synced: true}
	if sec != nil {
		in.security = statusapi.Security{TrustDomain: sec.TrustDomain.Name(), MTLS: sec.MTLS, DefaultDeny: sec.DefaultDeny, Intentions: sec.Intentions}
	}
	next := map[string]xdscache.Change{}
	for _, p := range caches.Profiles() {
		res := translate.Translate(translate.Input{Catalog: catalog, Policies: policies, Security: sec}, translate.Options{Client: &p})
		next[p.Name] = xdscache.Change{Full: res.Resources.ByTypeURL()}
		for _, s := range res.Skipped {
			if p.Name != caches.Profiles()[0].Name && s.Profile == "" {
				continue
			}
			in.skips = append(in.skips, statusapi.Skip{Warning: s.Kind == translate.SkipWarning, Service: s.Service, Instance: s.Instance, Route: s.Route, Profile: s.Profile, Reason: s.Reason})
		}
	}
	for name, r := range caches.Apply(next) {
		if r.Err != nil {
			t.Fatalf("apply %s: %v", name, r.Err)
		}
	}
	for s := range policies {
		in.revisions[s] = 42
	}
	srv, err := statusapi.New(statusapi.Config{
		Streams:  func() []xdsserver.StreamStatus { return streams },
		Versions: caches, Served: caches, Inputs: in, Replica: "r1",
	})
	if err != nil {
		t.Fatal(err)
	}
	return srv, caches
}

func TestExplainInstancesAndRoutes(t *testing.T) {
	catalog := model.NewSnapshot([]*model.Service{{Name: "echo", Instances: []model.Instance{
		instance("echo-1", "10.0.0.1", 8080, model.HealthPassing),
		instance("echo-2", "10.0.0.2", 8080, model.HealthCritical),
		instance("echo-3", "10.0.0.3", 8080, model.HealthMaintenance),
		instance("echo-4", "not-an-ip", 8080, model.HealthPassing),
	}}})
	policies := mustPolicies(t, `
service: echo
load_balancing: {least_request: {}}
defaults: {timeout: 2s}
routes:
  - name: fast
    match: {method_exact: /trellis.echo.v1.Echo/Echo}
    settings: {timeout: 250ms}
`)
	srv, caches := mesh(t, catalog, policies, nil)
	e, err := srv.Explain(context.Background(), &statusv1.ExplainRequest{Target: "xds:///echo", Profile: clients.NodeName})
	if err != nil {
		t.Fatal(err)
	}
	if len(e.GetProblems()) != 0 {
		t.Errorf("problems: %v", e.GetProblems())
	}
	if e.GetProfile() != clients.NodeName || e.GetProfileSource() != "requested" || e.GetService() != "echo" || e.GetListener() != "echo" {
		t.Errorf("profile %s (%s), service %s, listener %s", e.GetProfile(), e.GetProfileSource(), e.GetService(), e.GetListener())
	}
	var types []string
	for _, r := range e.GetResources() {
		types = append(types, r.GetTypeUrl())
		if !r.GetServed() || r.GetContentVersion() == "" {
			t.Errorf("%s %s not served", r.GetTypeUrl(), r.GetName())
		}
		cache := caches.Cache(clients.NodeName)
		if _, v, _ := cache.Resource(r.GetTypeUrl(), r.GetName()); v != r.GetContentVersion() {
			t.Errorf("%s: version %s, the cache serves %s", r.GetTypeUrl(), r.GetContentVersion(), v)
		}
	}
	if want := []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType}; strings.Join(types, " ") != strings.Join(want, " ") {
		t.Errorf("resource types %v, want %v", types, want)
	}
	if len(e.GetClusters()) != 1 {
		t.Fatalf("clusters %v", e.GetClusters())
	}
	c := e.GetClusters()[0]
	if c.GetLoadBalancing() != "round robin" || c.GetMtls() || c.GetPanicRouting() {
		t.Errorf("cluster for grpc-node: lb %q, mtls %t, panic %t", c.GetLoadBalancing(), c.GetMtls(), c.GetPanicRouting())
	}
	reasons := map[string]string{}
	for _, in := range c.GetInstances() {
		if in.GetIncluded() {
			reasons[in.GetKey()] = "in"
			continue
		}
		reasons[in.GetKey()] = in.GetReason()
	}
	for key, want := range map[string]string{
		"n1/echo-1": "in", "n1/echo-2": "critical", "n1/echo-3": "maintenance", "n1/echo-4": "not an IP address",
	} {
		if !strings.Contains(reasons[key], want) {
			t.Errorf("%s: %q, want %q", key, reasons[key], want)
		}
	}
	routes := e.GetPolicy().GetRoutes()
	if !e.GetPolicy().GetPresent() || e.GetPolicy().GetRevision() != 42 || len(routes) != 2 {
		t.Fatalf("policy %v", e.GetPolicy())
	}
	if routes[0].GetMatch() != "path /trellis.echo.v1.Echo/Echo" || routes[0].GetAction() != "cluster echo" || strings.Join(routes[0].GetSettings(), ",") != "timeout 250ms" {
		t.Errorf("first route %v", routes[0])
	}
	if routes[1].GetMatch() != "every call" || strings.Join(routes[1].GetSettings(), ",") != "timeout 2s" {
		t.Errorf("default route %v", routes[1])
	}
	if subs := strings.Join(e.GetSubstitutions(), "\n"); !strings.Contains(subs, "least") {
		t.Errorf("substitutions for grpc-node %q, want the least request substitute", subs)
	}
	if gaps := strings.Join(e.GetPolicy().GetGaps(), "\n"); !strings.Contains(gaps, "load_balancing.least_request") {
		t.Errorf("gaps %q", gaps)
	}

	// grpc-go clients get least request, and no substitution.
	e, err = srv.Explain(context.Background(), &statusv1.ExplainRequest{Target: "echo", Profile: clients.GoName})
	if err != nil {
		t.Fatal(err)
	}
	if lb := e.GetClusters()[0].GetLoadBalancing(); lb != "least request" {
		t.Errorf("grpc-go load balancing %q", lb)
	}
	if len(e.GetSubstitutions()) != 0 {
		t.Errorf("grpc-go substitutions %v", e.GetSubstitutions())
	}
}

func TestExplainPanicRouting(t *testing.T) {
	catalog := model.NewSnapshot([]*model.Service{{Name: "echo", Instances: []model.Instance{
		instance("echo-1", "10.0.0.1", 8080, model.HealthCritical),
		instance("echo-2", "10.0.0.2", 8080, model.HealthCritical),
	}}})
	srv, _ := mesh(t, catalog, nil, nil)
	e, err := srv.Explain(context.Background(), &statusv1.ExplainRequest{Target: "xds:///echo:8080"})
	if err != nil {
		t.Fatal(err)
	}
	if e.GetService() != "echo" || e.GetListener() != "echo:8080" {
		t.Errorf("service %q listener %q", e.GetService(), e.GetListener())
	}
	// The alias echo:8080 exists once a client asks for it.
	if len(e.GetProblems()) != 1 || !strings.Contains(e.GetProblems()[0], "creates it (from Listener echo) when a client asks") {
		t.Fatalf("problems %v", e.GetProblems())
	}
	e, err = srv.Explain(context.Background(), &statusv1.ExplainRequest{Target: "xds:///echo"})
	if err != nil {
		t.Fatal(err)
	}
	c := e.GetClusters()[0]
	if !c.GetPanicRouting() || len(e.GetProblems()) != 1 || !strings.Contains(e.GetProblems()[0], "panic routing") {
		t.Fatalf("panic %t, problems %v", c.GetPanicRouting(), e.GetProblems())
	}
	for _, in := range c.GetInstances() {
		if !in.GetIncluded() {
			t.Errorf("%s left out under panic routing: %s", in.GetKey(), in.GetReason())
		}
	}
}

func TestExplainUnknownService(t *testing.T) {
	catalog := model.NewSnapshot([]*model.Service{
		{Name: "echo", Instances: []model.Instance{instance("echo-1", "10.0.0.1", 8080, model.HealthPassing)}},
		{Name: "billing", Instances: []model.Instance{instance("b-1", "10.0.0.9", 8080, model.HealthPassing)}},
	})
	streams := []xdsserver.StreamStatus{{ID: 7, NodeID: "web-1", UserAgent: "gRPC Go 1.85.0", Profile: clients.GoName, OpenedAt: time.Now(),
		Types: []xdsserver.TypeStatus{{TypeURL: resource.ListenerType, ResourceNames: []string{"ecoh"}}}}}
	srv, _ := mesh(t, catalog, nil, streams)
	e, err := srv.Explain(context.Background(), &statusv1.ExplainRequest{Client: "web-1", Target: "xds:///ecoh"})
	if err != nil {
		t.Fatal(err)
	}
	if e.GetProfile() != clients.GoName || e.GetProfileSource() != "stream" || e.GetUserAgent() != "gRPC Go 1.85.0" {
		t.Errorf("profile %s from %s, user agent %s", e.GetProfile(), e.GetProfileSource(), e.GetUserAgent())
	}
	if len(e.GetProblems()) != 1 || !strings.Contains(e.GetProblems()[0], `service "ecoh" is not in the Consul catalog`) || !strings.Contains(e.GetProblems()[0], "did you mean echo?") {
		t.Errorf("problems %v", e.GetProblems())
	}
	if strings.Join(e.GetNearMatches(), ",") != "echo" {
		t.Errorf("near matches %v", e.GetNearMatches())
	}
	if r := e.GetResources(); len(r) != 1 || r[0].GetServed() || !strings.Contains(r[0].GetClientReason(), "waits") {
		t.Errorf("resources %v", r)
	}

	// A client that asks for something else.
	e, err = srv.Explain(context.Background(), &statusv1.ExplainRequest{Client: "web-1", Target: "xds:///echo"})
	if err != nil {
		t.Fatal(err)
	}
	if len(e.GetProblems()) != 1 || !strings.Contains(e.GetProblems()[0], `does not ask for Listener echo`) || !strings.Contains(e.GetProblems()[0], "it asks for ecoh") {
		t.Errorf("problems %v", e.GetProblems())
	}

	// A client with no stream.
	e, err = srv.Explain(context.Background(), &statusv1.ExplainRequest{Client: "gone", Target: "xds:///echo"})
	if err != nil {
		t.Fatal(err)
	}
	if e.GetProfileSource() != "fallback" || len(e.GetProblems()) != 1 || !strings.Contains(e.GetProblems()[0], "no open xDS stream") {
		t.Errorf("profile source %s, problems %v", e.GetProfileSource(), e.GetProblems())
	}
}

func TestExplainClientSync(t *testing.T) {
	catalog := model.NewSnapshot([]*model.Service{{Name: "echo", Instances: []model.Instance{instance("echo-1", "10.0.0.1", 8080, model.HealthPassing)}}})
	srv, caches := mesh(t, catalog, nil, nil)
	_, lv, _ := caches.Cache(clients.GoName).Resource(resource.ListenerType, "echo")
	_, rv, _ := caches.Cache(clients.GoName).Resource(resource.RouteType, "echo")
	sent := time.Now().Add(-time.Minute)
	streams := []xdsserver.StreamStatus{{ID: 1, NodeID: "c1", Profile: clients.GoName, OpenedAt: sent, Types: []xdsserver.TypeStatus{
		{TypeURL: resource.ListenerType, ResourceNames: []string{"echo"}, SentVersion: "2", SentAt: sent, AckedVersion: "2", ACKs: 1, SentContent: map[string]string{"echo": lv}},
		{TypeURL: resource.RouteType, ResourceNames: []string{"echo"}, SentVersion: "3", SentAt: sent, AckedVersion: "2", NACKs: 1,
			LastNACKVersion: "3", LastNACKError: "route echo: bad matcher", SentContent: map[string]string{"echo": rv}},
		{TypeURL: resource.ClusterType, ResourceNames: []string{"echo"}, SentVersion: "2", SentAt: sent, AckedVersion: "2", ACKs: 1, SentContent: map[string]string{"echo": "old"}},
	}}}
	srv2, err := statusapi.New(statusapi.Config{Streams: func() []xdsserver.StreamStatus { return streams }, Versions: caches, Served: caches,
		Inputs: &inputs{catalog: catalog, synced: true}})
	if err != nil {
		t.Fatal(err)
	}
	_ = srv
	e, err := srv2.Explain(context.Background(), &statusv1.ExplainRequest{Client: "c1", Target: "xds:///echo"})
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]statusv1.SyncState{}
	for _, r := range e.GetResources() {
		states[r.GetTypeUrl()] = r.GetClientState()
	}
	for typeURL, want := range map[string]statusv1.SyncState{
		resource.ListenerType: statusv1.SyncState_SYNC_STATE_SYNCED,
		resource.RouteType:    statusv1.SyncState_SYNC_STATE_NACKED,
		resource.ClusterType:  statusv1.SyncState_SYNC_STATE_STALE,
		resource.EndpointType: statusv1.SyncState_SYNC_STATE_UNSPECIFIED,
	} {
		if states[typeURL] != want {
			t.Errorf("%s: %s, want %s", typeURL, states[typeURL], want)
		}
	}
	problems := strings.Join(e.GetProblems(), "\n")
	if !strings.Contains(problems, "rejected (NACKed) RouteConfiguration echo: route echo: bad matcher") || !strings.Contains(problems, "has not applied the current Cluster echo") {
		t.Errorf("problems:\n%s", problems)
	}
}

func TestExplainRequests(t *testing.T) {
	srv, _ := mesh(t, model.NewSnapshot(nil), nil, nil)
	for _, tc := range []struct {
		req  *statusv1.ExplainRequest
		want string
	}{
		{&statusv1.ExplainRequest{}, "target"},
		{&statusv1.ExplainRequest{Target: "dns:///echo"}, "not an xds target"},
		{&statusv1.ExplainRequest{Target: "xds://authority/echo"}, "authority"},
		{&statusv1.ExplainRequest{Target: "echo", Profile: "grpc-rust"}, "profile"},
	} {
		_, err := srv.Explain(context.Background(), tc.req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Explain(%v): %v, want InvalidArgument about %s", tc.req, err, tc.want)
		}
	}
	notSynced, err := statusapi.New(statusapi.Config{Streams: func() []xdsserver.StreamStatus { return nil }, Served: mustCaches(t), Inputs: &inputs{}})
	if err != nil {
		t.Fatal(err)
	}
	e, err := notSynced.Explain(context.Background(), &statusv1.ExplainRequest{Target: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	if p := strings.Join(e.GetProblems(), "\n"); !strings.Contains(p, "first Consul sync") || !strings.Contains(p, "no catalog snapshot yet") {
		t.Errorf("problems before the first sync:\n%s", p)
	}
	bare, err := statusapi.New(statusapi.Config{Streams: func() []xdsserver.StreamStatus { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bare.Explain(context.Background(), &statusv1.ExplainRequest{Target: "echo"}); status.Code(err) != codes.Unimplemented {
		t.Errorf("Explain without inputs: %v", err)
	}
}

func mustCaches(t *testing.T) *xdsserver.ProfileCaches {
	t.Helper()
	c, err := xdsserver.NewProfileCaches(xdsserver.ProfileCachesConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestGetResources(t *testing.T) {
	catalog := model.NewSnapshot([]*model.Service{{Name: "echo", Instances: []model.Instance{instance("echo-1", "10.0.0.1", 8080, model.HealthPassing)}}})
	streams := []xdsserver.StreamStatus{{ID: 1, NodeID: "node-js", Profile: clients.NodeName}}
	srv, caches := mesh(t, catalog, mustPolicies(t, "service: echo\nload_balancing: {least_request: {}}\n"), streams)
	refs := []*statusv1.ResourceRef{{TypeUrl: resource.ListenerType, Name: "echo"}, {TypeUrl: resource.ClusterType, Name: "echo"}, {TypeUrl: resource.ListenerType, Name: "nope"}}
	for _, tc := range []struct {
		name         string
		req          *statusv1.GetResourcesRequest
		profile      string
		source       string
		leastRequest bool
	}{
		{"by stream", &statusv1.GetResourcesRequest{NodeId: "node-js", UserAgentName: "gRPC Go"}, clients.NodeName, "stream", false},
		{"by user agent", &statusv1.GetResourcesRequest{NodeId: "other", UserAgentName: "gRPC Go", UserAgentVersion: "1.85.0"}, clients.GoName, "user agent", true},
		{"by user agent declaring own-trust-domain roots", &statusv1.GetResourcesRequest{NodeId: "other", UserAgentName: "gRPC Go", OwnTrustDomainRootsDeclared: true}, clients.GoOwnTDName, "user agent", true},
		{"requested", &statusv1.GetResourcesRequest{Profile: clients.CoreName}, clients.CoreName, "requested", false},
		{"fallback", &statusv1.GetResourcesRequest{}, clients.WidestName, "fallback", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.Resources = refs
			resp, err := srv.GetResources(context.Background(), tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetProfile() != tc.profile || resp.GetProfileSource() != tc.source || len(resp.GetResources()) != 3 {
				t.Fatalf("profile %s from %s, %d resources", resp.GetProfile(), resp.GetProfileSource(), len(resp.GetResources()))
			}
			lis := resp.GetResources()[0]
			l := &listenerv3.Listener{}
			if !lis.GetServed() || lis.GetResource().UnmarshalTo(l) != nil || l.GetName() != "echo" {
				t.Errorf("listener: %v", lis)
			}
			if _, v, _ := caches.Cache(tc.profile).Resource(resource.ClusterType, "echo"); resp.GetResources()[1].GetContentVersion() != v {
				t.Errorf("cluster version %s, cache %s", resp.GetResources()[1].GetContentVersion(), v)
			}
			if gone := resp.GetResources()[2]; gone.GetServed() || gone.GetResource() != nil || gone.GetName() != "nope" {
				t.Errorf("unserved resource: %v", gone)
			}
			c := &clusterv3.Cluster{}
			if err := resp.GetResources()[1].GetResource().UnmarshalTo(c); err != nil {
				t.Fatal(err)
			}
			text := prototext.Format(c)
			if lr := strings.Contains(text, "LEAST_REQUEST") || strings.Contains(text, "least_request"); lr != tc.leastRequest {
				t.Errorf("least request in the cluster: %t, want %t", lr, tc.leastRequest)
			}
		})
	}
	for _, tc := range []struct {
		req  *statusv1.GetResourcesRequest
		want string
	}{
		{&statusv1.GetResourcesRequest{}, "resources: empty"},
		{&statusv1.GetResourcesRequest{Resources: []*statusv1.ResourceRef{{TypeUrl: "x", Name: "echo"}}}, "resources[0].type_url"},
		{&statusv1.GetResourcesRequest{Resources: []*statusv1.ResourceRef{{TypeUrl: resource.ListenerType}}}, "resources[0].name"},
		{&statusv1.GetResourcesRequest{Profile: "nope", Resources: refs}, "profile"},
	} {
		if _, err := srv.GetResources(context.Background(), tc.req); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("GetResources(%v): %v, want InvalidArgument about %s", tc.req, err, tc.want)
		}
	}
}

func TestExplainSecurity(t *testing.T) {
	catalog := model.NewSnapshot([]*model.Service{
		{Name: "echo", Instances: []model.Instance{instance("echo-1", "10.0.0.1", 8080, model.HealthPassing)}},
		{Name: "web", Instances: []model.Instance{instance("web-1", "10.0.0.2", 8080, model.HealthPassing)}},
	})
	sec := &translate.Security{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), MTLS: true, DefaultDeny: true,
		Intentions: model.NewIntentions([]model.Intention{
			{Source: "web", Destination: "echo", Action: model.IntentionAllow, Precedence: 9},
			{Source: "*", Destination: "*", Action: model.IntentionDeny, Precedence: 5},
			{Source: "echo", Destination: "web", Action: model.IntentionAllow, Precedence: 9},
		})}
	srv, _ := meshWith(t, catalog, nil, nil, sec)
	e, err := srv.Explain(context.Background(), &statusv1.ExplainRequest{Target: "xds:///echo", Profile: clients.GoName})
	if err != nil {
		t.Fatal(err)
	}
	c := e.GetClusters()[0]
	if !c.GetMtls() || strings.Join(c.GetServerSpiffeIds(), ",") != "spiffe://example.org/ns/default/dc/dc1/svc/echo" {
		t.Errorf("cluster mTLS %t, server IDs %v", c.GetMtls(), c.GetServerSpiffeIds())
	}
	s := e.GetSecurity()
	if !s.GetMtls() || !s.GetDefaultDeny() || s.GetTrustDomain() != "example.org" || !strings.Contains(s.GetEnforcement(), "check each caller's SPIFFE ID") {
		t.Errorf("security %v", s)
	}
	var got []string
	for _, in := range s.GetIntentions() {
		got = append(got, in.GetSource()+"->"+in.GetDestination()+":"+in.GetAction())
	}
	if strings.Join(got, " ") != "web->echo:allow *->*:deny" {
		t.Errorf("intentions %v, want the two that apply to echo, highest precedence first", got)
	}
}

func TestExplainLoadBalancing(t *testing.T) {
	catalog := model.NewSnapshot([]*model.Service{{Name: "echo", Instances: []model.Instance{instance("echo-1", "10.0.0.1", 8080, model.HealthPassing)}}})
	for _, tc := range []struct {
		name, lb, profile, want string
	}{
		{"default", "", clients.GoName, "round robin"},
		{"ring hash", "ring_hash: {}", clients.GoName, "ring hash"},
		{"ring hash on C-core", "ring_hash: {}", clients.CoreName, "round robin"},
		{"pick first", "pick_first: {}", clients.GoName, "pick first"},
		{"weighted round robin", "weighted_round_robin: {}", clients.GoName, "client side weighted round robin in each locality"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var policies map[string]*policyv1.ServicePolicy
			if tc.lb != "" {
				policies = mustPolicies(t, "service: echo\nload_balancing: {"+tc.lb+"}\n")
			}
			srv, _ := mesh(t, catalog, policies, nil)
			e, err := srv.Explain(context.Background(), &statusv1.ExplainRequest{Target: "echo", Profile: tc.profile})
			if err != nil {
				t.Fatal(err)
			}
			if got := e.GetClusters()[0].GetLoadBalancing(); got != tc.want {
				t.Errorf("load balancing %q, want %q", got, tc.want)
			}
		})
	}
}

func TestExplainSplitOverSubsets(t *testing.T) {
	v1 := instance("echo-1", "10.0.0.1", 8080, model.HealthPassing)
	v1.Meta = map[string]string{"version": "v1"}
	v2 := instance("echo-2", "10.0.0.2", 8080, model.HealthPassing)
	v2.Meta = map[string]string{"version": "v2"}
	catalog := model.NewSnapshot([]*model.Service{{Name: "echo", Instances: []model.Instance{v1, v2}}})
	policies := mustPolicies(t, `
service: echo
subsets:
  - {name: v1, meta: {version: v1}}
  - {name: v2, meta: {version: v2}}
routes:
  - name: split
    split:
      destinations:
        - {destination: {subset: v1}, weight: 90}
        - {destination: {subset: v2}, weight: 10}
`)
	srv, _ := mesh(t, catalog, policies, nil)
	e, err := srv.Explain(context.Background(), &statusv1.ExplainRequest{Target: "xds:///echo", Profile: clients.GoName})
	if err != nil {
		t.Fatal(err)
	}
	if len(e.GetProblems()) != 0 {
		t.Errorf("problems %v", e.GetProblems())
	}
	if r := e.GetPolicy().GetRoutes(); len(r) == 0 || r[0].GetAction() != "split: echo/v1 90%, echo/v2 10%" {
		t.Fatalf("routes %v", r)
	}
	in := map[string][]string{}
	for _, c := range e.GetClusters() {
		for _, i := range c.GetInstances() {
			if i.GetIncluded() {
				in[c.GetName()] = append(in[c.GetName()], i.GetKey())
			} else if !strings.Contains(i.GetReason(), "not in subset") {
				t.Errorf("%s %s: %s", c.GetName(), i.GetKey(), i.GetReason())
			}
		}
	}
	if strings.Join(in["echo/v1"], ",") != "n1/echo-1" || strings.Join(in["echo/v2"], ",") != "n1/echo-2" {
		t.Errorf("instances by cluster %v", in)
	}
}
