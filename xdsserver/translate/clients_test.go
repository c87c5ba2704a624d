package translate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/clients"
)

// TestClientsGolden translates every testdata/clients-<case>.yaml once per
// client profile and compares the result with
// testdata/clients-<case>.<profile>.<type>.golden.json. Every resource also
// passes the envoy protos' validation, and server Listeners grpc-go's
// rules. Run with -update to rewrite the golden files.
func TestClientsGolden(t *testing.T) {
	inputs, err := filepath.Glob(filepath.Join("testdata", "clients-*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(inputs) == 0 {
		t.Fatal("no client golden inputs in testdata")
	}
	for _, path := range inputs {
		name := strings.TrimSuffix(filepath.Base(path), ".yaml")
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range clients.Profiles() {
			t.Run(name+"/"+p.Name, func(t *testing.T) {
				var in securityGolden
				if err := yaml.UnmarshalStrict(raw, &in); err != nil {
					t.Fatalf("parse %s: %v", path, err)
				}
				opts := in.Options
				opts.Client = &p
				res := Translate(Input{Catalog: in.snapshot(t), Policies: in.policies(t), Security: in.Security.security(t)}, opts)
				compareResult(t, name+"."+p.Name, res) // served to grpc-go by TestGoldenAcceptedByGRPC
			})
		}
	}
}

// TestClientProfilesNeverGetWhatTheyCannotHonour checks every profile's
// translation of the matrix case against its capabilities: no load
// balancing policy outside them, no RBAC filter without ServerRBAC, and
// a server Listener withheld never replaced by one without RBAC.
func TestClientProfilesNeverGetWhatTheyCannotHonour(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "clients-matrix.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var in securityGolden
	if err := yaml.UnmarshalStrict(raw, &in); err != nil {
		t.Fatal(err)
	}
	full := Translate(Input{Catalog: in.snapshot(t), Policies: in.policies(t), Security: in.Security.security(t)}, Options{})
	for _, p := range clients.Profiles() {
		t.Run(p.Name, func(t *testing.T) {
			res := Translate(Input{Catalog: in.snapshot(t), Policies: in.policies(t), Security: in.Security.security(t)}, Options{Client: &p})
			for name, c := range res.Resources.Clusters {
				if c.GetLbPolicy() == clusterv3.Cluster_LEAST_REQUEST && !p.Caps.LeastRequest {
					t.Errorf("cluster %q: least request sent to %s", name, p.Name)
				}
				if lbp := c.GetLoadBalancingPolicy(); lbp != nil {
					ext := lbp.GetPolicies()[0].GetTypedExtensionConfig().GetName()
					if (ext == pickFirstPolicyName && !p.Caps.PickFirstConfig) || (ext == wrrLocalityPolicyName && !p.Caps.WeightedRoundRobin) {
						t.Errorf("cluster %q: %s sent to %s", name, ext, p.Name)
					}
				}
			}
			servers := 0
			for name, l := range res.Resources.Listeners {
				if l.GetApiListener() != nil {
					if !proto.Equal(l, full.Resources.Listeners[name]) {
						t.Errorf("client Listener %q differs from grpc-go's", name)
					}
					continue
				}
				servers++
				if !hasHTTPFilter(l, RBACFilterName) {
					t.Errorf("server Listener %q has no RBAC filter under mTLS", name)
				}
				if !p.Caps.ServerRBAC {
					t.Errorf("server Listener %q sent to %s, which does not honour RBAC", name, p.Name)
				}
			}
			if p.Caps.ServerRBAC && servers == 0 {
				t.Errorf("no server Listener for %s, which honours RBAC", p.Name)
			}
			withheld := 0
			for _, s := range res.Skipped {
				if s.Profile == p.Name && strings.HasPrefix(s.Route, "server Listener") {
					withheld++
				}
			}
			if !p.Caps.ServerRBAC && withheld == 0 {
				t.Errorf("server Listeners withheld from %s without a report", p.Name)
			}
		})
	}
}
