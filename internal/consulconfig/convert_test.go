package consulconfig_test

import (
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/consulconfig"
)

// chainTo is a chain of svc whose start node is one resolver of target.
func chainTo(svc string, target consulconfig.Target, failover bool) *consulconfig.Chain {
	r := &consulconfig.Resolver{Target: target.ID}
	targets := map[string]*consulconfig.Target{target.ID: &target}
	if failover {
		remote := target
		remote.ID, remote.Datacenter = target.Service+".default.default.dc2", "dc2"
		r.Failover = &consulconfig.Failover{Targets: []string{"missing", remote.ID}}
		targets[remote.ID] = &remote
	}
	return &consulconfig.Chain{
		ServiceName: svc, Namespace: "default", Partition: "default", Datacenter: "dc1",
		StartNode: "resolver:" + target.ID,
		Nodes:     map[string]*consulconfig.Node{"resolver:" + target.ID: {Type: "resolver", Name: target.ID, Resolver: r}},
		Targets:   targets,
	}
}

// TestTargetsClientsCannotReach: a redirect to another datacenter, a
// cluster peer or a terminating gateway is reported and nothing is sent
// for the service (its calls go to its own instances, as without
// entries); a failover target the chain does not hold is reported, and
// the other datacenter still failed over to.
func TestTargetsClientsCannotReach(t *testing.T) {
	tests := []struct {
		name       string
		target     consulconfig.Target
		failover   bool
		wantReason string
		wantPolicy bool
	}{
		{"other datacenter", consulconfig.Target{ID: "web.default.default.dc2", Service: "web", Datacenter: "dc2"}, false, "is in datacenter dc2", false},
		{"cluster peer", consulconfig.Target{ID: "web.default.default.external-peer", Service: "web", Peer: "east"}, false, `cluster peer "east"`, false},
		{"terminating gateway", consulconfig.Target{ID: "ext.default.default.dc1", Service: "ext", Datacenter: "dc1", External: true}, false, "terminating gateway", false},
		{"failover", consulconfig.Target{ID: "web.default.default.dc1", Service: "web", Datacenter: "dc1"}, true, `failover target "missing" is not in the chain`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conv := consulconfig.Convert(map[string]*consulconfig.Chain{"web": chainTo("web", tt.target, tt.failover)})
			m := consulconfig.Merge(nil, conv, nil)
			if _, ok := m.Policies["web"]; ok != tt.wantPolicy {
				t.Errorf("policy for web: %v, want one: %t", m.Policies["web"], tt.wantPolicy)
			}
			if got := m.Policies["web"].GetFailover().GetDatacenters(); tt.failover && (len(got) != 1 || got[0] != "dc2") {
				t.Errorf("failover datacenters %v, want [dc2]", got)
			}
			var found bool
			for _, u := range m.Unsupported {
				if u.Service == "web" && strings.Contains(u.Reason, tt.wantReason) {
					found = true
				}
			}
			if !found {
				t.Errorf("no report containing %q: %v", tt.wantReason, m.Unsupported)
			}
		})
	}
}
