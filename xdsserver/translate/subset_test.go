package translate

import (
	"slices"
	"testing"

	"github.com/trellis-mesh/trellis/internal/model"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// TestSubsetFilterAndOnlyPassing: a subset's filter is evaluated over the
// fields Consul's resolver filters see (service tags and meta, node meta,
// node name, ...), together with tags and meta; only_passing turns a
// warning instance critical within the subset.
func TestSubsetFilterAndOnlyPassing(t *testing.T) {
	svc := &model.Service{Name: "echo", Instances: []model.Instance{
		{ID: "a", Node: "n1", Address: "10.0.0.1", Port: 80, Tags: []string{"canary"}, Meta: map[string]string{"version": "v2"}, NodeMeta: map[string]string{"rack": "r1"}},
		{ID: "b", Node: "n2", Address: "10.0.0.2", Port: 80, Meta: map[string]string{"version": "v2"}, NodeMeta: map[string]string{"rack": "r2"}, Health: model.HealthWarning},
		{ID: "c", Node: "n3", Address: "10.0.0.3", Port: 8080, Meta: map[string]string{"version": "v1"}, Health: model.HealthWarning},
	}}
	tests := []struct {
		name   string
		subset *policyv1.Subset
		want   []string
		// critical lists the instances whose health must be critical.
		critical []string
	}{
		{"service meta", &policyv1.Subset{Name: "s", Filter: "Service.Meta.version == v2"}, []string{"a", "b"}, nil},
		{"tag in", &policyv1.Subset{Name: "s", Filter: `"canary" in Service.Tags`}, []string{"a"}, nil},
		{"node meta", &policyv1.Subset{Name: "s", Filter: "Node.Meta.rack != r1"}, []string{"b", "c"}, nil},
		{"node name and port", &policyv1.Subset{Name: "s", Filter: `Node.Node == n3 and Service.Port == 8080`}, []string{"c"}, nil},
		{"service name", &policyv1.Subset{Name: "s", Filter: `Service.Service == echo and Service.ID matches "^[ab]$"`}, []string{"a", "b"}, nil},
		{"filter and meta", &policyv1.Subset{Name: "s", Filter: "Node.Meta.rack == r2", Meta: map[string]string{"version": "v2"}}, []string{"b"}, nil},
		{"only passing", &policyv1.Subset{Name: "s", OnlyPassing: true}, []string{"a", "b", "c"}, []string{"b", "c"}},
		{"unparsable filter selects none", &policyv1.Subset{Name: "s", Filter: "Service.Meta.version =="}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := subsetInstances(svc, tt.subset)
			var ids []string
			for _, inst := range got.Instances {
				ids = append(ids, inst.ID)
				if crit := slices.Contains(tt.critical, inst.ID); crit != (inst.Health == model.HealthCritical) {
					t.Errorf("instance %s health %s, want critical: %t", inst.ID, inst.Health, crit)
				}
			}
			if !slices.Equal(ids, tt.want) {
				t.Errorf("subset holds %v, want %v", ids, tt.want)
			}
		})
	}
	if svc.Instances[1].Health != model.HealthWarning {
		t.Error("only_passing changed the service's own instance")
	}
}
