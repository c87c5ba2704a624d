package clients

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

func TestClassify(t *testing.T) {
	rbac, err := structpb.NewStruct(map[string]any{RBACMetadataKey: "true"})
	if err != nil {
		t.Fatal(err)
	}
	ownTD, err := structpb.NewStruct(map[string]any{OwnTrustDomainRootsMetadataKey: "true"})
	if err != nil {
		t.Fatal(err)
	}
	ownTDBool, err := structpb.NewStruct(map[string]any{OwnTrustDomainRootsMetadataKey: true})
	if err != nil {
		t.Fatal(err)
	}
	ownTDOff, err := structpb.NewStruct(map[string]any{OwnTrustDomainRootsMetadataKey: "false"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		node *corev3.Node
		want string
	}{
		{name: "grpc-go declaring own-trust-domain roots", node: &corev3.Node{UserAgentName: "gRPC Go", Metadata: ownTD}, want: GoOwnTDName},
		{name: "grpc-go declaring own-trust-domain roots as a bool", node: &corev3.Node{UserAgentName: "gRPC Go", Metadata: ownTDBool}, want: GoOwnTDName},
		{name: "grpc-go with own-trust-domain roots false", node: &corev3.Node{UserAgentName: "gRPC Go", Metadata: ownTDOff}, want: GoName},
		{name: "grpc-js declaring own-trust-domain roots is still grpc-js", node: &corev3.Node{UserAgentName: "gRPC Node Pure JS", Metadata: ownTD}, want: NodeName},
		{name: "C-core declaring own-trust-domain roots is still C-core", node: &corev3.Node{UserAgentName: "gRPC Python", Metadata: ownTD}, want: CoreName},
		{name: "grpc-go", node: &corev3.Node{UserAgentName: "gRPC Go", UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: "1.85.0"}}, want: GoName},
		{name: "grpc-js", node: &corev3.Node{UserAgentName: "gRPC Node Pure JS", UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: "1.14.1"}}, want: NodeName},
		{name: "grpc-js declaring RBAC", node: &corev3.Node{UserAgentName: "gRPC Node Pure JS", Metadata: rbac}, want: NodeRBACName},
		{name: "grpc-go declaring RBAC is still grpc-go", node: &corev3.Node{UserAgentName: "gRPC Go", Metadata: rbac}, want: GoName},
		{name: "C-core", node: &corev3.Node{UserAgentName: "gRPC C-core linux", UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: "28.0.0"}}, want: CoreName},
		{name: "Python", node: &corev3.Node{UserAgentName: "gRPC Python", UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: "1.51.1"}}, want: CoreName},
		{name: "unknown", node: &corev3.Node{UserAgentName: "gRPC Elixir", UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: "0.1"}}, want: WidestName},
		{name: "no user agent", node: &corev3.Node{Id: "n"}, want: WidestName},
		{name: "nil node", node: nil, want: WidestName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(FromNode(tt.node)).Name; got != tt.want {
				t.Errorf("Classify(%v) = %q, want %q", tt.node, got, tt.want)
			}
		})
	}
}

func TestProfiles(t *testing.T) {
	ps := Profiles()
	if ps[0].Name != WidestName || ps[0].Caps != (Capabilities{}) {
		t.Fatalf("first profile is %+v, want Widest with no capabilities", ps[0])
	}
	seen := map[string]bool{}
	for _, p := range ps {
		if seen[p.Name] {
			t.Errorf("profile %q listed twice", p.Name)
		}
		seen[p.Name] = true
		if got, ok := ProfileByName(p.Name); !ok || got != p {
			t.Errorf("ProfileByName(%q) = %+v, %v", p.Name, got, ok)
		}
	}
	for _, p := range ps {
		if p.Caps.OwnTrustDomainRoots && p.Name != GoOwnTDName {
			t.Errorf("profile %q assumes the own-trust-domain certificate provider, which only grpc-go workloads declaring it have", p.Name)
		}
	}
	want := Go.Caps
	want.OwnTrustDomainRoots = true
	if GoOwnTD.Caps != want {
		t.Errorf("GoOwnTD capabilities %+v, want Go's plus OwnTrustDomainRoots: %+v", GoOwnTD.Caps, want)
	}
	if _, ok := ProfileByName("nope"); ok {
		t.Error("ProfileByName found an unknown profile")
	}
}

func TestPolicyGaps(t *testing.T) {
	tests := []struct {
		name   string
		policy *policyv1.ServicePolicy
		want   []string
	}{
		{name: "round robin", policy: &policyv1.ServicePolicy{Service: "s"}},
		{name: "least request", policy: &policyv1.ServicePolicy{LoadBalancing: &policyv1.LoadBalancing{Policy: &policyv1.LoadBalancing_LeastRequest{LeastRequest: &policyv1.LeastRequest{}}}},
			want: []string{"load_balancing.least_request: grpc-js-xds 1.14 clients get round robin instead", "load_balancing.least_request: gRPC C-core 1.51 (Python, C++, Ruby, PHP) clients get round robin instead"}},
		{name: "fault on a route", policy: &policyv1.ServicePolicy{Routes: []*policyv1.Route{{}, {Settings: &policyv1.RouteSettings{Fault: &policyv1.FaultInjection{}}}}},
			want: []string{"routes[1].settings.fault: grpc-js-xds 1.14 clients get it only on channels that first see the service after the policy: connected channels may keep their routes without the fault until they reconnect (grpc-js-xds compares route updates one way)"}},
		{name: "ring hash", policy: &policyv1.ServicePolicy{LoadBalancing: &policyv1.LoadBalancing{Policy: &policyv1.LoadBalancing_RingHash{RingHash: &policyv1.RingHash{}}}},
			want: []string{"load_balancing.ring_hash: gRPC C-core 1.51 (Python, C++, Ruby, PHP) clients get round robin instead, without affinity (Debian's C-core 1.51 crashes on ring hash)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, g := range PolicyGaps(tt.policy) {
				got = append(got, g.String())
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("gaps:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}
