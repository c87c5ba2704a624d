package consulwatch

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

// lastContactAge returns trellis_consul_last_contact_age_seconds of
// component as reg exports it, and whether it is there.
func lastContactAge(t *testing.T, reg *prometheus.Registry, component string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "trellis_consul_last_contact_age_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "component" && l.GetValue() == component {
					return m.GetGauge().GetValue(), true
				}
			}
		}
	}
	return 0, false
}

// TestLastContactAge runs a watch and the probe against a real Consul: the
// age of the last contact stays below the probe interval's order while
// Consul answers, grows while it is paused, and falls again once it is
// resumed. Before Consul first answers, the age counts from the Tracker's
// creation.
func TestLastContactAge(t *testing.T) {
	consul := consultest.Start(t, consultest.Options{})
	client := consul.Client(t)
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	// A Tracker nothing runs: its age counts from its creation.
	if _, err := NewTracker(TrackerConfig{Component: "idle", Metrics: m}); err != nil {
		t.Fatal(err)
	}
	tr, err := NewTracker(TrackerConfig{Client: client, Component: "test", Metrics: m, ProbeInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { tr.Run(ctx) })
	wg.Go(func() {
		Run(ctx, tr, Query[map[string][]string]{
			Name: "services",
			Fetch: func(opts *api.QueryOptions) (map[string][]string, *api.QueryMeta, error) {
				return client.Catalog().Services(opts)
			},
			Changed: func(map[string][]string, *api.QueryMeta) bool { return true },
		})
	})

	waitFor(t, func() bool { return tr.Status().Reachable })
	if age, ok := lastContactAge(t, reg, "test"); !ok || age > 5 {
		t.Fatalf("age while Consul answers = %v (exported %v), want at most a few probe intervals", age, ok)
	}

	consul.Pause(t)
	resumed := false
	defer func() {
		if !resumed {
			consul.Resume(t)
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		age, _ := lastContactAge(t, reg, "test")
		if age >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("age %v after 30s of a paused Consul, want it to grow past 2s", age)
		}
		time.Sleep(100 * time.Millisecond)
	}
	idle, ok := lastContactAge(t, reg, "idle")
	if !ok || idle < 2 {
		t.Errorf("age of a Tracker that never reached Consul = %v (exported %v), want the time since its creation (> 2s)", idle, ok)
	}

	consul.Resume(t)
	resumed = true
	waitFor10s(t, func() bool {
		age, _ := lastContactAge(t, reg, "test")
		return age < 2
	})
}

func waitFor10s(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
