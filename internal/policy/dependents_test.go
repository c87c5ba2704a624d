package policy_test

import (
	"fmt"
	"testing"

	"github.com/trellis-mesh/trellis/internal/policy"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

func dependentsFixture() map[string]*policyv1.ServicePolicy {
	dest := func(service, subset string) *policyv1.Destination {
		return &policyv1.Destination{Service: service, Subset: subset}
	}
	return map[string]*policyv1.ServicePolicy{
		"dep": {Service: "dep", Subsets: []*policyv1.Subset{{Name: "s1", Tags: []string{"a"}}, {Name: "s2", Tags: []string{"b"}}}},
		"src": {Service: "src", Routes: []*policyv1.Route{
			{Name: "canary", Action: &policyv1.Route_Destination{Destination: dest("dep", "s1")}},
			{Action: &policyv1.Route_Split{Split: &policyv1.WeightedSplit{Destinations: []*policyv1.WeightedDestination{
				{Destination: dest("dep", ""), Weight: 1},
				{Destination: dest("dep", "s2"), Weight: 1},
				{Destination: dest("other", "x"), Weight: 1},
			}}}},
		}},
		"whole": {Service: "whole", Routes: []*policyv1.Route{{Action: &policyv1.Route_Destination{Destination: dest("dep", "")}}}},
	}
}

func TestBrokenBy(t *testing.T) {
	policies := dependentsFixture()
	tests := []struct {
		name string
		next *policyv1.ServicePolicy
		want string
	}{
		{name: "same subsets", next: policies["dep"], want: "[]"},
		{name: "s1 removed", next: &policyv1.ServicePolicy{Service: "dep", Subsets: []*policyv1.Subset{{Name: "s2"}}},
			want: `[service "src" routes[0] (canary): subset "s1" of service "dep" is not defined]`},
		{name: "deleted", next: nil,
			want: `[service "src" routes[0] (canary): subset "s1" of service "dep" is not defined service "src" routes[1].split.destinations[1]: subset "s2" of service "dep" is not defined]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fmt.Sprint(policy.BrokenBy(policies, "dep", tt.next)); got != tt.want {
				t.Errorf("BrokenBy = %s\nwant %s", got, tt.want)
			}
		})
	}
	// A service nobody routes to breaks nothing.
	if got := policy.BrokenBy(policies, "whole", nil); len(got) != 0 {
		t.Errorf("BrokenBy(whole deleted) = %v, want none", got)
	}
	b := policy.BrokenBy(policies, "dep", nil)[0]
	if b.Service != "src" || b.Route != "routes[0] (canary)" || b.DestinationService != "dep" || b.DestinationSubset != "s1" {
		t.Errorf("BrokenBy()[0] = %+v", b)
	}
}

func TestMissingDestinations(t *testing.T) {
	policies := dependentsFixture()
	want := `[service "src" routes[1].split.destinations[2]: subset "x" of service "other" is not defined]`
	if got := fmt.Sprint(policy.MissingDestinations(policies)); got != want {
		t.Errorf("MissingDestinations = %s\nwant %s", got, want)
	}
	delete(policies, "dep")
	if got := policy.MissingDestinations(policies); len(got) != 3 {
		t.Errorf("MissingDestinations without dep's policy = %v, want the 3 subset destinations", got)
	}
}
