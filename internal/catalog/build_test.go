package catalog

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/model"
)

func TestAggregateHealth(t *testing.T) {
	check := func(id, status string) *api.HealthCheck {
		return &api.HealthCheck{CheckID: id, Status: status}
	}
	tests := []struct {
		name   string
		checks api.HealthChecks
		want   model.Health
	}{
		{name: "no checks", checks: nil, want: model.HealthPassing},
		{name: "all passing", checks: api.HealthChecks{check("serfHealth", "passing"), check("service:a", "passing")}, want: model.HealthPassing},
		{name: "one warning", checks: api.HealthChecks{check("serfHealth", "passing"), check("service:a", "warning")}, want: model.HealthWarning},
		{name: "critical beats warning", checks: api.HealthChecks{check("serfHealth", "warning"), check("service:a", "critical")}, want: model.HealthCritical},
		{name: "node check critical", checks: api.HealthChecks{check("serfHealth", "critical"), check("service:a", "passing")}, want: model.HealthCritical},
		{name: "unknown status is critical", checks: api.HealthChecks{check("service:a", "bogus")}, want: model.HealthCritical},
		{name: "node maintenance", checks: api.HealthChecks{check("serfHealth", "passing"), check(api.NodeMaint, "critical")}, want: model.HealthMaintenance},
		{name: "service maintenance beats critical", checks: api.HealthChecks{check("service:a", "critical"), check(api.ServiceMaintPrefix+"a", "critical")}, want: model.HealthMaintenance},
		{name: "maintenance status", checks: api.HealthChecks{check("x", api.HealthMaint)}, want: model.HealthMaintenance},
		{name: "nil check ignored", checks: api.HealthChecks{nil, check("service:a", "warning")}, want: model.HealthWarning},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := aggregateHealth(tt.checks); got != tt.want {
				t.Errorf("aggregateHealth() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBuildService(t *testing.T) {
	node := func(name, addr string, meta map[string]string) *api.Node {
		return &api.Node{Node: name, Address: addr, Datacenter: "dc1", Meta: meta}
	}
	passing := api.HealthChecks{{CheckID: "serfHealth", Status: api.HealthPassing}}
	tests := []struct {
		name     string
		zoneKeys []string
		entries  []*api.ServiceEntry
		want     []model.Instance
	}{
		{
			name:     "address falls back to the node address; the node address is kept apart",
			zoneKeys: []string{"zone"},
			entries: []*api.ServiceEntry{
				{Node: node("n1", "10.0.0.1", nil), Service: &api.AgentService{ID: "a1", Port: 80}, Checks: passing},
				{Node: node("n2", "10.0.0.2", nil), Service: &api.AgentService{ID: "a2", Address: "192.168.1.9", Port: 81}, Checks: passing},
			},
			want: []model.Instance{
				{ID: "a1", Node: "n1", Address: "10.0.0.1", Port: 80, Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1", NodeAddress: "10.0.0.1"},
				{ID: "a2", Node: "n2", Address: "192.168.1.9", Port: 81, Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1", ServiceAddress: "192.168.1.9", NodeAddress: "10.0.0.2"},
			},
		},
		{
			name:     "weights, tags and meta are copied; tags sorted; instances sorted by key",
			zoneKeys: []string{"zone"},
			entries: []*api.ServiceEntry{
				{Node: node("n2", "10.0.0.2", nil), Service: &api.AgentService{ID: "b", Port: 1, Tags: []string{"z", "a"}, Meta: map[string]string{"v": "2"}, Weights: api.AgentWeights{Passing: 10, Warning: 0}}, Checks: passing},
				{Node: node("n1", "10.0.0.1", nil), Service: &api.AgentService{ID: "c", Port: 2, Tags: []string{}, Meta: map[string]string{}}, Checks: api.HealthChecks{{CheckID: "service:c", Status: api.HealthWarning}}},
			},
			want: []model.Instance{
				{ID: "c", Node: "n1", Address: "10.0.0.1", Port: 2, Health: model.HealthWarning, Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1", NodeAddress: "10.0.0.1"},
				{ID: "b", Node: "n2", Address: "10.0.0.2", Port: 1, Weights: model.Weights{Passing: 10, Warning: 0}, Datacenter: "dc1", Tags: []string{"a", "z"}, Meta: map[string]string{"v": "2"}, NodeAddress: "10.0.0.2"},
			},
		},
		{
			name:     "zone from service meta before node meta, keys in order",
			zoneKeys: []string{"rack", "zone"},
			entries: []*api.ServiceEntry{
				{Node: node("n1", "10.0.0.1", map[string]string{"rack": "node-rack"}), Service: &api.AgentService{ID: "s-zone", Meta: map[string]string{"zone": "svc-zone"}}},
				{Node: node("n1", "10.0.0.1", map[string]string{"rack": "node-rack"}), Service: &api.AgentService{ID: "s-none"}},
				{Node: node("n1", "10.0.0.1", map[string]string{"zone": "node-zone"}), Service: &api.AgentService{ID: "s-rack", Meta: map[string]string{"rack": "svc-rack", "zone": "svc-zone"}}},
				{Node: node("n1", "10.0.0.1", map[string]string{"zone": ""}), Service: &api.AgentService{ID: "s-empty", Meta: map[string]string{"rack": ""}}},
			},
			want: []model.Instance{
				{ID: "s-empty", Node: "n1", Address: "10.0.0.1", Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1", Meta: map[string]string{"rack": ""}, NodeAddress: "10.0.0.1", NodeMeta: map[string]string{"zone": ""}},
				{ID: "s-none", Node: "n1", Address: "10.0.0.1", Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1", Zone: "node-rack", NodeAddress: "10.0.0.1", NodeMeta: map[string]string{"rack": "node-rack"}},
				{ID: "s-rack", Node: "n1", Address: "10.0.0.1", Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1", Zone: "svc-rack", Meta: map[string]string{"rack": "svc-rack", "zone": "svc-zone"}, NodeAddress: "10.0.0.1", NodeMeta: map[string]string{"zone": "node-zone"}},
				{ID: "s-zone", Node: "n1", Address: "10.0.0.1", Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1", Zone: "svc-zone", Meta: map[string]string{"zone": "svc-zone"}, NodeAddress: "10.0.0.1", NodeMeta: map[string]string{"rack": "node-rack"}},
			},
		},
		{
			name:     "nothing is filtered: port 0, odd IDs, duplicate addresses, no address at all",
			zoneKeys: []string{"zone"},
			entries: []*api.ServiceEntry{
				{Node: node("n1", "10.0.0.1", nil), Service: &api.AgentService{ID: "odd id/!", Port: 0}},
				{Node: node("n1", "10.0.0.1", nil), Service: &api.AgentService{ID: "dup", Port: 0}},
				{Node: node("n3", "", nil), Service: &api.AgentService{ID: "noaddr", Port: 70000}},
			},
			want: []model.Instance{
				{ID: "dup", Node: "n1", Address: "10.0.0.1", Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1", NodeAddress: "10.0.0.1"},
				{ID: "odd id/!", Node: "n1", Address: "10.0.0.1", Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1", NodeAddress: "10.0.0.1"},
				{ID: "noaddr", Node: "n3", Port: 70000, Weights: model.Weights{Passing: 1, Warning: 1}, Datacenter: "dc1"},
			},
		},
		{
			name:     "entries without a service are dropped, without a node kept",
			zoneKeys: []string{"zone"},
			entries: []*api.ServiceEntry{
				nil,
				{Node: node("n1", "10.0.0.1", nil)},
				{Service: &api.AgentService{ID: "x", Address: "10.9.9.9", Port: 5}},
			},
			want: []model.Instance{
				{ID: "x", Address: "10.9.9.9", Port: 5, Weights: model.Weights{Passing: 1, Warning: 1}, ServiceAddress: "10.9.9.9"},
			},
		},
		{
			name:    "no instances",
			entries: nil,
			want:    []model.Instance{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := buildService("svc", tt.entries, tt.zoneKeys)
			if got.Name != "svc" {
				t.Errorf("Name = %q, want svc", got.Name)
			}
			if diff := cmp.Diff(tt.want, got.Instances); diff != "" {
				t.Errorf("instances (-want +got):\n%s", diff)
			}
		})
	}
}

// TestBuildServiceCopies checks that a built service shares no memory with
// Consul's response, so that snapshots stay immutable.
func TestBuildServiceCopies(t *testing.T) {
	tags := []string{"b", "a"}
	meta := map[string]string{"k": "v"}
	entries := []*api.ServiceEntry{{
		Node:    &api.Node{Node: "n1", Address: "10.0.0.1"},
		Service: &api.AgentService{ID: "s", Tags: tags, Meta: meta},
	}}
	svc := buildService("svc", entries, []string{"zone"})
	if tags[0] != "b" {
		t.Errorf("buildService sorted the response's tags in place: %v", tags)
	}
	tags[1] = "changed"
	meta["k"] = "changed"
	inst := svc.Instances[0]
	if diff := cmp.Diff([]string{"a", "b"}, inst.Tags); diff != "" {
		t.Errorf("tags changed with the response (-want +got):\n%s", diff)
	}
	if inst.Meta["k"] != "v" {
		t.Errorf("meta changed with the response: %v", inst.Meta)
	}
}

func TestNewConfig(t *testing.T) {
	client, err := api.NewClient(&api.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "no client", cfg: Config{}, wantErr: "catalog: Config.Client is required"},
		{name: "negative duration", cfg: Config{Client: client, Coalesce: -time.Second}, wantErr: "catalog: Config.Coalesce is -1s; accepted: a positive duration, or 0 for the default (50ms)"},
		{name: "negative probe batches", cfg: Config{Client: client, ProbeBatches: -1}, wantErr: "catalog: Config.ProbeBatches is -1; accepted: a positive number, or 0 for the default (2)"},
		{name: "watches without a client", cfg: Config{Client: client, Watches: 3}, wantErr: "catalog: Config.Watches is 3 without a Config.WatchClient; accepted: a client for that many concurrent blocking queries (consulwatch.NewMultiplexedClient)"},
		{name: "defaults", cfg: Config{Client: client}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := New(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("New() error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New() error = %v", err)
			}
			want := Config{
				Client:          client,
				ZoneMetaKeys:    []string{"zone"},
				WaitTime:        time.Minute,
				MinInterval:     50 * time.Millisecond,
				Coalesce:        50 * time.Millisecond,
				ProbeInterval:   2 * time.Second,
				MaxBackoff:      5 * time.Second,
				ReadConcurrency: 8,
				SweepInterval:   2 * time.Minute,
				ProbeBatches:    2,
				WatchWaitTime:   10 * time.Minute,
			}
			got := w.cfg
			got.Logger = nil
			if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b *api.Client) bool { return a == b })); diff != "" {
				t.Errorf("config with defaults (-want +got):\n%s", diff)
			}
			if w.cfg.Logger == nil {
				t.Error("Logger default is nil")
			}
		})
	}
}
