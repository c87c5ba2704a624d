package translate

import (
	"testing"

	"github.com/trellis-mesh/trellis/internal/clients"
	"github.com/trellis-mesh/trellis/internal/model"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// TestLoadReporting checks that every Cluster, subsets included, names the
// control plane itself as its LRS server for every client profile, and
// none does with Options.DisableLoadReporting.
func TestLoadReporting(t *testing.T) {
	in := Input{
		Catalog: model.NewSnapshot([]*model.Service{{Name: "echo", Instances: []model.Instance{
			{ID: "e1", Node: "n", Address: "10.0.0.1", Port: 80, Tags: []string{"blue"}, Weights: model.Weights{Passing: 1, Warning: 1}},
		}}}),
		Policies: map[string]*policyv1.ServicePolicy{"echo": {Service: "echo", Subsets: []*policyv1.Subset{{Name: "blue", Tags: []string{"blue"}}}}},
	}
	for _, c := range []struct {
		name string
		opts Options
		want bool
	}{
		{name: "default", opts: Options{}, want: true},
		{name: "disabled", opts: Options{DisableLoadReporting: true}, want: false},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := TranslateProfiles(in, c.opts, clients.Profiles())
			for profile, r := range res.Resources {
				if len(r.Clusters) != 2 {
					t.Fatalf("%s: clusters %v, want echo and echo/blue", profile, r.Clusters)
				}
				for name, cl := range r.Clusters {
					lrs := cl.GetLrsServer()
					if got := lrs.GetSelf() != nil; got != c.want {
						t.Errorf("%s: cluster %s lrs_server %v, want self: %t", profile, name, lrs, c.want)
					}
					if err := cl.ValidateAll(); err != nil {
						t.Errorf("%s: cluster %s: %v", profile, name, err)
					}
				}
			}
			for _, s := range res.Skipped {
				t.Errorf("unexpected skip: %s", s)
			}
		})
	}
}
