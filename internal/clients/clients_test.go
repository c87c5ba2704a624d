package clients

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

func TestClassify(t *testing.T) {
	rbac, err := structpb.NewStruct(map[string]any{RBACMetadataKey: "true"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		node *corev3.Node
		want string
	}{
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
	if _, ok := ProfileByName("nope"); ok {
		t.Error("ProfileByName found an unknown profile")
	}
}
