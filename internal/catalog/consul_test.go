package catalog

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/consulwatch"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
	"github.com/trellis-mesh/trellis/internal/testutil/pemca"
)

// waitCatalog polls the agent's catalog until it lists every service in
// want with the given number of instances, so that a watcher started next
// sees all of them in its first sync.
func waitCatalog(t *testing.T, c *api.Client, want map[string]int) {
	t.Helper()
	consultest.WaitFor(t, 20*time.Second, func() error {
		for name, n := range want {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			entries, _, err := c.Health().Service(name, "", false, (&api.QueryOptions{}).WithContext(ctx))
			cancel()
			if err != nil {
				return err
			}
			if len(entries) != n {
				return fmt.Errorf("service %s has %d instances in the catalog, want %d", name, len(entries), n)
			}
		}
		return nil
	})
}

// instanceIs returns a snapshot check that wants one instance to satisfy
// check.
func instanceIs(service, id string, check func(model.Instance) error) func(*model.Snapshot) error {
	return func(s *model.Snapshot) error {
		inst, err := instance(s, service, id)
		if err != nil {
			return err
		}
		if err := check(inst); err != nil {
			return fmt.Errorf("%s/%s: %w", service, id, err)
		}
		return nil
	}
}

func healthIs(want model.Health) func(model.Instance) error {
	return func(inst model.Instance) error {
		if inst.Health != want {
			return fmt.Errorf("health %v, want %v", inst.Health, want)
		}
		return nil
	}
}

// How testWatchConsulAgent watches Consul.
const (
	viaReads   = "reads"   // detectors, reads, sweeps one probe at a time
	viaBatches = "batches" // the same, sweeps through a consulwatch.IndexProber
	viaWatches = "watches" // every service watched on its own, over HTTP/2
)

func TestWatchConsulAgent(t *testing.T) { testWatchConsulAgent(t, viaReads) }

// TestWatchConsulAgentBatchedProbes: the same, with sweeps through a
// consulwatch.IndexProber, which the registration edits need.
func TestWatchConsulAgentBatchedProbes(t *testing.T) { testWatchConsulAgent(t, viaBatches) }

// TestWatchConsulAgentServiceWatches: the same over Consul's HTTPS API,
// every service watched on its own through a multiplexed client: every
// change, registration edits included, is found without a probe.
func TestWatchConsulAgentServiceWatches(t *testing.T) { testWatchConsulAgent(t, viaWatches) }

// countingProber counts the batches of an IndexProber.
type countingProber struct {
	next    IndexProber
	batches atomic.Int64
}

func (p *countingProber) ServiceIndexes(ctx context.Context, names []string, tag string) ([]uint64, error) {
	p.batches.Add(1)
	return p.next.ServiceIndexes(ctx, names, tag)
}

func testWatchConsulAgent(t *testing.T, via string) {
	opts := consultest.Options{NodeMeta: map[string]string{"zone": "z-node"}}
	var ca *pemca.CA
	if via == viaWatches {
		var err error
		if ca, err = pemca.New(t.TempDir()); err != nil {
			t.Fatal(err)
		}
		cert, key, err := ca.Issue("server.dc1.consul", 2)
		if err != nil {
			t.Fatal(err)
		}
		opts.HTTPS = true
		opts.HCL = []string{fmt.Sprintf(`tls { defaults { ca_file = %q cert_file = %q key_file = %q } }`, ca.CertFile(), cert, key)}
	}
	agent := consultest.Start(t, opts)
	c := agent.Client(t)

	// Many services before the watcher starts: its first snapshot must hold
	// all of them.
	want := map[string]int{"alpha": 2}
	for i := range 15 {
		name := fmt.Sprintf("svc-%02d", i)
		agent.RegisterService(t, &api.AgentServiceRegistration{Name: name, Port: 8000 + i})
		want[name] = 1
	}
	alpha1 := agent.RegisterService(t, &api.AgentServiceRegistration{
		Name: "alpha", ID: "alpha-1", Address: "127.0.0.2", Port: 9001,
		Tags:    []string{"b", "a"},
		Meta:    map[string]string{"zone": "z-svc", "version": "v1"},
		Weights: &api.AgentWeights{Passing: 5, Warning: 2},
	})
	agent.RegisterService(t, &api.AgentServiceRegistration{Name: "alpha", ID: "alpha-2", Port: 9002})
	waitCatalog(t, c, want)

	cfg := Config{Client: newTestClient(t, agent.HTTPAddr()), ProbeInterval: 500 * time.Millisecond}
	var prober *countingProber
	if via != viaReads {
		apiCfg := api.DefaultConfig()
		apiCfg.Address = agent.HTTPAddr()
		client, p, err := consulwatch.NewClientAndProber(consulwatch.ClientConfig{API: apiCfg, MaxConns: 12})
		if err != nil {
			t.Fatal(err)
		}
		prober = &countingProber{next: p}
		cfg.Client, cfg.Prober = client, prober
	}
	if via == viaWatches {
		apiCfg := api.DefaultConfig()
		apiCfg.Address = "https://" + agent.HTTPSAddr()
		apiCfg.TLSConfig.CAFile = ca.CertFile()
		watch, err := consulwatch.NewMultiplexedClient(consulwatch.ClientConfig{API: apiCfg}, 100)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Watches, cfg.WatchClient = 100, watch
	}
	w := startWatcher(t, cfg)

	var first *model.Snapshot
	select {
	case first = <-w.Snapshots():
	case <-time.After(20 * time.Second):
		t.Fatal("no first snapshot within 20s")
	}
	for name, n := range want {
		if got := len(instancesOf(first, name)); got != n {
			t.Errorf("first snapshot: service %s has %d instances, want %d", name, got, n)
		}
	}
	if _, ok := first.Services["consul"]; !ok {
		t.Errorf("first snapshot lacks the consul service: %v", first.ServiceNames())
	}
	// The agent's node meta: its own, and what Consul adds.
	agentNodeMeta := map[string]string{"zone": "z-node", "consul-network-segment": "", "consul-version": "1.16.1"}
	wantAlpha := []model.Instance{
		{
			ID: "alpha-1", Node: "node-1", Address: "127.0.0.2", Port: 9001,
			Health: model.HealthPassing, Weights: model.Weights{Passing: 5, Warning: 2},
			Datacenter: "dc1", Zone: "z-svc", Tags: []string{"a", "b"},
			Meta:           map[string]string{"zone": "z-svc", "version": "v1"},
			ServiceAddress: "127.0.0.2", NodeAddress: "127.0.0.1", NodeMeta: agentNodeMeta,
		},
		{
			ID: "alpha-2", Node: "node-1", Address: "127.0.0.1", Port: 9002,
			Health: model.HealthPassing, Weights: model.Weights{Passing: 1, Warning: 1},
			Datacenter: "dc1", Zone: "z-node",
			NodeAddress: "127.0.0.1", NodeMeta: agentNodeMeta,
		},
	}
	if diff := cmp.Diff(wantAlpha, instancesOf(first, "alpha")); diff != "" {
		t.Errorf("alpha in the first snapshot (-want +got):\n%s", diff)
	}
	if st := w.Status(); !st.Synced || !st.Reachable || st.Services != len(first.Services) || st.LastContact.IsZero() {
		t.Errorf("status after the first snapshot = %+v", st)
	}

	steps := []struct {
		name string
		do   func(t *testing.T)
		want func(*model.Snapshot) error
	}{
		{
			name: "check warning",
			do:   func(t *testing.T) { agent.SetTTL(t, alpha1, api.HealthWarning) },
			want: instanceIs("alpha", "alpha-1", healthIs(model.HealthWarning)),
		},
		{
			name: "check critical",
			do:   func(t *testing.T) { agent.SetTTL(t, alpha1, api.HealthCritical) },
			want: instanceIs("alpha", "alpha-1", healthIs(model.HealthCritical)),
		},
		{
			name: "check passing again",
			do:   func(t *testing.T) { agent.SetTTL(t, alpha1, api.HealthPassing) },
			want: instanceIs("alpha", "alpha-1", healthIs(model.HealthPassing)),
		},
		{
			name: "service maintenance",
			do: func(t *testing.T) {
				if err := c.Agent().EnableServiceMaintenance("alpha-2", "test"); err != nil {
					t.Fatal(err)
				}
			},
			want: instanceIs("alpha", "alpha-2", healthIs(model.HealthMaintenance)),
		},
		{
			name: "service maintenance off",
			do: func(t *testing.T) {
				if err := c.Agent().DisableServiceMaintenance("alpha-2"); err != nil {
					t.Fatal(err)
				}
			},
			want: instanceIs("alpha", "alpha-2", healthIs(model.HealthPassing)),
		},
		{
			name: "weights and zone change",
			do: func(t *testing.T) {
				agent.RegisterService(t, &api.AgentServiceRegistration{
					Name: "alpha", ID: "alpha-2", Port: 9002,
					Meta:    map[string]string{"zone": "z-other"},
					Weights: &api.AgentWeights{Passing: 3, Warning: 1},
				})
			},
			want: instanceIs("alpha", "alpha-2", func(inst model.Instance) error {
				if inst.Weights != (model.Weights{Passing: 3, Warning: 1}) || inst.Zone != "z-other" {
					return fmt.Errorf("weights %+v zone %q, want 3/1 and z-other", inst.Weights, inst.Zone)
				}
				return nil
			}),
		},
		{
			name: "external node: service address falls back to the node's",
			do: func(t *testing.T) {
				_, err := c.Catalog().Register(&api.CatalogRegistration{
					Node: "ext-1", Address: "10.1.2.3",
					NodeMeta: map[string]string{"zone": "z-ext"},
					Service:  &api.AgentService{ID: "beta-1", Service: "beta", Port: 7000},
				}, nil)
				if err != nil {
					t.Fatal(err)
				}
			},
			want: func(s *model.Snapshot) error {
				got := instancesOf(s, "beta")
				want := []model.Instance{{
					ID: "beta-1", Node: "ext-1", Address: "10.1.2.3", Port: 7000,
					Health: model.HealthPassing, Weights: model.Weights{Passing: 1, Warning: 1},
					Datacenter: "dc1", Zone: "z-ext",
					NodeAddress: "10.1.2.3", NodeMeta: map[string]string{"zone": "z-ext"},
				}}
				if diff := cmp.Diff(want, got); diff != "" {
					return fmt.Errorf("beta (-want +got):\n%s", diff)
				}
				return nil
			},
		},
		{
			name: "node check critical",
			do: func(t *testing.T) {
				_, err := c.Catalog().Register(&api.CatalogRegistration{
					Node: "ext-1", Address: "10.1.2.3",
					NodeMeta: map[string]string{"zone": "z-ext"},
					Check:    &api.AgentCheck{Node: "ext-1", CheckID: "node-alive", Name: "node alive", Status: api.HealthCritical},
				}, nil)
				if err != nil {
					t.Fatal(err)
				}
			},
			want: instanceIs("beta", "beta-1", healthIs(model.HealthCritical)),
		},
		{
			name: "instance deregistered",
			do:   func(t *testing.T) { agent.DeregisterService(t, "alpha-2") },
			want: func(s *model.Snapshot) error {
				if got := ports(s, "alpha"); !slices.Equal(got, []int{9001}) {
					return fmt.Errorf("alpha ports %v, want [9001]", got)
				}
				return nil
			},
		},
		{
			name: "service removed",
			do: func(t *testing.T) {
				if _, err := c.Catalog().Deregister(&api.CatalogDeregistration{Node: "ext-1"}, nil); err != nil {
					t.Fatal(err)
				}
			},
			want: func(s *model.Snapshot) error {
				if _, ok := s.Services["beta"]; ok {
					return fmt.Errorf("beta still in the snapshot")
				}
				if _, ok := s.Services["alpha"]; !ok {
					return fmt.Errorf("alpha missing")
				}
				return nil
			},
		},
	}
	var last *model.Snapshot
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			var before int64
			if prober != nil {
				before = prober.batches.Load()
			}
			step.do(t)
			last = nextSnapshot(t, w, 10*time.Second, step.want)
			switch {
			case via == viaBatches && strings.HasPrefix(step.name, "weights") && prober.batches.Load() == before:
				t.Error("a registration edit no detector names was found without a probe batch")
			case via == viaWatches && prober.batches.Load() != before:
				t.Errorf("%d probe batches for a change to a watched service, want 0", prober.batches.Load()-before)
			}
			if via == viaWatches {
				if st := w.Status(); st.Watches != len(last.Services) {
					t.Errorf("%d services watched, want every one of the %d", st.Watches, len(last.Services))
				}
			}
		})
	}
	// Nothing changes any more: the status counts the last snapshot's
	// services.
	if st := w.Status(); last != nil && len(w.Snapshots()) == 0 && st.Services != len(last.Services) {
		t.Errorf("Status().Services = %d, want %d", st.Services, len(last.Services))
	}
}

// instancesOf returns a service's instances, or nil when the snapshot lacks
// the service.
func instancesOf(s *model.Snapshot, name string) []model.Instance {
	if svc, ok := s.Services[name]; ok {
		return svc.Instances
	}
	return nil
}

// watchWithAlpha starts an agent with one instance of alpha, and a watcher
// on it, and returns both once the first snapshot holds alpha.
func watchWithAlpha(t *testing.T, opts consultest.Options, cfg Config) (*consultest.Agent, *Watcher, string) {
	t.Helper()
	agent := consultest.Start(t, opts)
	check := agent.RegisterService(t, &api.AgentServiceRegistration{Name: "alpha", ID: "alpha-1", Port: 9001})
	waitCatalog(t, agent.Client(t), map[string]int{"alpha": 1})
	cfg.Client = newTestClient(t, agent.HTTPAddr())
	w := startWatcher(t, cfg)
	nextSnapshot(t, w, 20*time.Second, instanceIs("alpha", "alpha-1", healthIs(model.HealthPassing)))
	return agent, w, check
}

// noSnapshotWithout fails the test if a snapshot lacking alpha is waiting.
func noSnapshotWithout(t *testing.T, w *Watcher) {
	t.Helper()
	select {
	case snap := <-w.Snapshots():
		if _, ok := snap.Services["alpha"]; !ok {
			t.Errorf("published a snapshot without alpha: %v", snap.ServiceNames())
		}
	default:
	}
}

func TestConsulPausedAndResumed(t *testing.T) {
	const probeInterval = time.Second
	agent, w, check := watchWithAlpha(t, consultest.Options{}, Config{ProbeInterval: probeInterval})
	published := metricValue(t, w, "trellis_catalog_snapshots_total")

	agent.Pause(t)
	paused := time.Now()
	waitStatus(t, w, 10*time.Second, func(s Status) error {
		if s.Reachable {
			return fmt.Errorf("still reachable")
		}
		return nil
	})
	// The probe runs every interval and times out after 1s; allow for a
	// loaded machine.
	if d := time.Since(paused); d > probeInterval+time.Second+2*time.Second {
		t.Errorf("a paused Consul was noticed after %s, want about %s", d, probeInterval+time.Second)
	}
	if got := metricValue(t, w, "trellis_catalog_consul_reachable"); got != 0 {
		t.Errorf("trellis_catalog_consul_reachable = %v while paused, want 0", got)
	}
	time.Sleep(2 * time.Second) // stay paused through a few probes
	noSnapshotWithout(t, w)
	if got := metricValue(t, w, "trellis_catalog_snapshots_total"); got != published {
		t.Errorf("%v snapshots published while Consul was paused, want 0", got-published)
	}

	agent.Resume(t)
	resumed := time.Now()
	agent.SetTTL(t, check, api.HealthCritical)
	nextSnapshot(t, w, 10*time.Second, instanceIs("alpha", "alpha-1", healthIs(model.HealthCritical)))
	if d := time.Since(resumed); d > 5*time.Second {
		t.Errorf("a change made right after Consul resumed was published after %s, want a few seconds", d)
	}
	waitStatus(t, w, 10*time.Second, func(s Status) error {
		if !s.Reachable || s.LastError != "" {
			return fmt.Errorf("want reachable without error")
		}
		return nil
	})
	if got := metricValue(t, w, "trellis_catalog_consul_reachable"); got != 1 {
		t.Errorf("trellis_catalog_consul_reachable = %v after Resume, want 1", got)
	}
}

func TestConsulStoppedAndRestarted(t *testing.T) {
	agent, w, check := watchWithAlpha(t, consultest.Options{Persistent: true}, Config{ProbeInterval: 500 * time.Millisecond})
	published := metricValue(t, w, "trellis_catalog_snapshots_total")

	agent.Stop(t)
	waitStatus(t, w, 10*time.Second, func(s Status) error {
		if s.Reachable || s.LastError == "" {
			return fmt.Errorf("want unreachable with an error")
		}
		return nil
	})
	time.Sleep(3 * time.Second) // let the retries back off
	noSnapshotWithout(t, w)
	if got := metricValue(t, w, "trellis_catalog_snapshots_total"); got != published {
		t.Errorf("%v snapshots published while Consul was down, want 0", got-published)
	}
	if st := w.Status(); !st.Synced || st.Services != 2 {
		t.Errorf("status while Consul is down = %+v, want synced with 2 services", st)
	}

	agent.Restart(t)
	restarted := time.Now()
	agent.SetTTL(t, check, api.HealthWarning)
	nextSnapshot(t, w, 15*time.Second, func(s *model.Snapshot) error {
		if n := len(instancesOf(s, "alpha")); n != 1 {
			t.Errorf("published a snapshot with %d instances of alpha after the restart: %v", n, s.ServiceNames())
		}
		return instanceIs("alpha", "alpha-1", healthIs(model.HealthWarning))(s)
	})
	if d := time.Since(restarted); d > 5*time.Second {
		t.Errorf("a change made right after Consul restarted was published after %s, want a few seconds", d)
	}
	waitStatus(t, w, 10*time.Second, func(s Status) error {
		if !s.Reachable {
			return fmt.Errorf("want reachable")
		}
		return nil
	})
}
