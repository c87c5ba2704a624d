package catalog

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/consulwatch"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	"github.com/trellis-mesh/trellis/internal/testutil/runtest"
)

// nextJoined reads r's snapshots until check accepts one.
func nextJoined(t *testing.T, r *Remote, timeout time.Duration, check func(*model.Snapshot) error) *model.Snapshot {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	lastErr := fmt.Errorf("no snapshot published")
	for {
		select {
		case snap := <-r.Snapshots():
			if lastErr = check(snap); lastErr == nil {
				return snap
			}
		case <-deadline.C:
			t.Fatalf("no matching joined snapshot within %s: %v", timeout, lastErr)
			return nil
		}
	}
}

// datacentersOf lists, per instance key, the datacenter of service's
// instances in s.
func datacentersOf(s *model.Snapshot, service string) map[string]string {
	out := map[string]string{}
	if svc := s.Services[service]; svc != nil {
		for _, inst := range svc.Instances {
			out[inst.Key()] = inst.Datacenter + "/" + inst.Zone + "/" + inst.Health.String()
		}
	}
	return out
}

func wantInstances(service string, want map[string]string) func(*model.Snapshot) error {
	return func(s *model.Snapshot) error {
		got := datacentersOf(s, service)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("%s: %v, want %v", service, got, want)
		}
		return nil
	}
}

// TestRemoteJoinsFailoverDatacenter: with two WAN-joined datacenters, the
// instances of the targeted service in dc2 (every one, with its health and
// zone) join the local catalog's; a health change in dc2 arrives; an
// untargeted service of dc2 is never read; a target of the local
// datacenter is ignored, one of an unknown datacenter only logged; dropping the target drops the instances.
func TestRemoteJoinsFailoverDatacenter(t *testing.T) {
	dc1 := consultest.Start(t, consultest.Options{})
	dc2 := consultest.Start(t, consultest.Options{Datacenter: "dc2", NodeName: "node-1", JoinWAN: dc1})
	dc1.RegisterService(t, &api.AgentServiceRegistration{Name: "echo", ID: "echo-1", Address: "127.0.0.1", Port: 9001})
	check := dc2.RegisterService(t, &api.AgentServiceRegistration{Name: "echo", ID: "echo-1", Address: "127.0.0.2", Port: 9001, Meta: map[string]string{"zone": "z2"}})
	dc2.RegisterService(t, &api.AgentServiceRegistration{Name: "other", ID: "other-1", Address: "127.0.0.2", Port: 9002})
	client := newTestClient(t, dc1.HTTPAddr())
	waitCatalog(t, client, map[string]int{"echo": 1})

	local := startWatcher(t, Config{Client: client})
	targets := consulwatch.NewLatest[[]Target]()
	r, err := NewRemote(RemoteConfig{Client: client, Catalogs: local.Snapshots(), Targets: targets.C(),
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)), MinInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runtest.Run(t, 10*time.Second, r.Run)

	onlyLocal := map[string]string{"node-1/echo-1": "dc1//passing"}
	first := nextJoined(t, r, 20*time.Second, wantInstances("echo", onlyLocal))
	// dc9 does not exist: its reads fail, the others are served.
	targets.Publish([]Target{{Service: "echo", Datacenter: "dc2"}, {Service: "echo", Datacenter: "dc1"}, {Service: "echo", Datacenter: "dc9"}})
	joined := nextJoined(t, r, 20*time.Second, wantInstances("echo", map[string]string{
		"node-1/echo-1": "dc1//passing", "dc2/node-1/echo-1": "dc2/z2/passing"}))
	if joined.Services["consul"] != first.Services["consul"] {
		t.Errorf("the untouched service consul got a new value in the joined snapshot")
	}
	if _, ok := joined.Services["other"]; ok {
		t.Errorf("dc2's service other, which no target names, is in the joined snapshot")
	}

	dc2.SetTTL(t, check, api.HealthCritical)
	nextJoined(t, r, 20*time.Second, wantInstances("echo", map[string]string{
		"node-1/echo-1": "dc1//passing", "dc2/node-1/echo-1": "dc2/z2/critical"}))

	targets.Publish(nil)
	nextJoined(t, r, 20*time.Second, wantInstances("echo", onlyLocal))
}

// TestJoinKeepsValues: an unchanged service keeps its joined value, and a
// snapshot without remote instances is the local one itself.
func TestJoinKeepsValues(t *testing.T) {
	svc := &model.Service{Name: "echo", Instances: []model.Instance{{ID: "echo-1", Node: "n", Datacenter: "dc1"}}}
	snap := model.NewSnapshot([]*model.Service{svc})
	memo := map[string]joined{}
	if got := join(snap, nil, nil, memo); got != snap {
		t.Fatalf("no remote instances: a new snapshot, want the local one")
	}
	t2 := Target{Service: "echo", Datacenter: "dc2"}
	remote := map[Target][]model.Instance{t2: {{ID: "echo-1", Node: "dc2/n", Datacenter: "dc2"}}}
	gens := map[string]uint64{"echo": 1}
	a := join(snap, remote, gens, memo)
	b := join(snap, remote, gens, memo)
	if a.Services["echo"] != b.Services["echo"] || len(a.Services["echo"].Instances) != 2 {
		t.Fatalf("unchanged inputs: %p then %p (%d instances), want one value of 2 instances", a.Services["echo"], b.Services["echo"], len(a.Services["echo"].Instances))
	}
	gens["echo"]++
	if c := join(snap, remote, gens, memo); c.Services["echo"] == a.Services["echo"] {
		t.Errorf("remote change: the joined value was reused")
	}
	if len(svc.Instances) != 1 {
		t.Errorf("join modified the local service: %d instances", len(svc.Instances))
	}
}
