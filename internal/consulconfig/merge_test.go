package consulconfig_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/trellis-mesh/trellis/internal/consulconfig"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

func loadChains(t *testing.T, name string) map[string]*consulconfig.Chain {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name+".chains.json"))
	if err != nil {
		t.Fatal(err)
	}
	var chains map[string]*consulconfig.Chain
	if err := json.Unmarshal(raw, &chains); err != nil {
		t.Fatal(err)
	}
	return chains
}

// TestTrellisPolicyReplacesChain: a Trellis policy for a service is served
// as it is, in place of the service's chain, and the override is listed.
func TestTrellisPolicyReplacesChain(t *testing.T) {
	converted := consulconfig.Convert(loadChains(t, "routes"))
	own := &policyv1.ServicePolicy{Service: "echo", Routes: []*policyv1.Route{{Name: "all"}}}
	m := consulconfig.Merge(map[string]*policyv1.ServicePolicy{"echo": own}, converted, nil)
	if !proto.Equal(m.Policies["echo"], own) {
		t.Errorf("policy of echo = %v, want the Trellis policy", m.Policies["echo"])
	}
	if !slices.Equal(m.Overridden, []string{"echo"}) || slices.Contains(m.FromChains, "echo") {
		t.Errorf("Overridden %v, FromChains %v; want echo overridden, not from its chain", m.Overridden, m.FromChains)
	}
	for _, u := range m.Unsupported {
		if u.Service == "echo" {
			t.Errorf("an overridden chain is reported: %s", u)
		}
	}
}

// TestRouteToSubsetMissingFromTrellisPolicy: web's chain splits to api's
// subsets; when a Trellis policy for api defines none of them, the split
// is left out and reported against web's entry, and what is served stays
// valid.
func TestRouteToSubsetMissingFromTrellisPolicy(t *testing.T) {
	converted := consulconfig.Convert(loadChains(t, "services"))
	api := &policyv1.ServicePolicy{Service: "api", Subsets: []*policyv1.Subset{{Name: "other", Tags: []string{"x"}}}}
	m := consulconfig.Merge(map[string]*policyv1.ServicePolicy{"api": api}, converted, nil)
	if _, ok := m.Policies["web"]; ok {
		t.Errorf("web is served %v; its only route splits to subsets api does not define", m.Policies["web"])
	}
	var found bool
	for _, u := range m.Unsupported {
		if u.Service == "web" && u.Entry == "service-splitter/web" && strings.Contains(u.Reason, `subset "v1" is not defined in the policy of service "api"`) {
			found = true
		}
	}
	if !found {
		t.Errorf("the refused split of web is not reported; got %v", m.Unsupported)
	}
}

// TestWeightsKeepHundredths: Consul's 0.01 steps survive as integers.
func TestWeightsKeepHundredths(t *testing.T) {
	m := consulconfig.Merge(nil, consulconfig.Convert(loadChains(t, "services")), nil)
	split := m.Policies["web"].GetRoutes()[0].GetSplit()
	got := map[string]uint32{}
	for _, d := range split.GetDestinations() {
		got[d.GetDestination().GetService()+"/"+d.GetDestination().GetSubset()] = d.GetWeight()
	}
	// Consul flattens web's 50% to billing (a third each to api v1, v2,
	// rack1, rounded to 16.67) with 49.99% to legacy (a redirect to api
	// v1) and 0.01% to api v2.
	want := map[string]uint32{"api/v1": 1667 + 4999, "api/v2": 1667 + 1, "api/rack1": 1667}
	if len(got) != len(want) {
		t.Fatalf("split %v, want %v", got, want)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("weight of %s = %d, want %d (all: %v)", k, got[k], w, got)
		}
	}
}
