package consulconfig_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/consulconfig"
	"github.com/trellis-mesh/trellis/internal/testutil/consultest"
)

func write(t *testing.T, client *api.Client, entry api.ConfigEntry) {
	t.Helper()
	if _, _, err := client.ConfigEntries().Set(entry, nil); err != nil {
		t.Fatalf("write %s/%s: %v", entry.GetKind(), entry.GetName(), err)
	}
}

// waitSnapshot waits for a snapshot that check accepts.
func waitSnapshot(t *testing.T, w *consulconfig.Watcher, what string, check func(*consulconfig.Snapshot) error) *consulconfig.Snapshot {
	t.Helper()
	timeout := time.After(30 * time.Second)
	var last error
	for {
		select {
		case s := <-w.Snapshots():
			if last = check(s); last == nil {
				return s
			}
		case <-timeout:
			t.Fatalf("timed out waiting for %s: %v", what, last)
		}
	}
}

// TestWatcherReadsOnlyChainsOfServicesWithEntries: with 100 registered
// services and no entries, nothing but the five lists is queried; an entry
// for one service reads that service's chain (and the chains naming it),
// and a change to it arrives as a new snapshot.
func TestWatcherReadsOnlyChainsOfServicesWithEntries(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	client := testClient(t, agent)
	for i := range 100 {
		reg := &api.AgentServiceRegistration{ID: fmt.Sprintf("svc-%d", i), Name: fmt.Sprintf("svc-%d", i), Address: "127.0.0.1", Port: 10000 + i}
		if err := client.Agent().ServiceRegister(reg); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	w, err := consulconfig.New(consulconfig.Config{Client: client, Registerer: reg, WaitTime: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	waitSnapshot(t, w, "the first snapshot", func(s *consulconfig.Snapshot) error {
		if len(s.Chains) != 0 {
			return fmt.Errorf("chains %v, want none", s.Chains)
		}
		return nil
	})
	if got := readsOf(t, reg); got != 0 {
		t.Errorf("%v chain reads without any entry, want 0", got)
	}

	write(t, client, &api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "svc-1", Protocol: "grpc"})
	write(t, client, &api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "svc-1", DefaultSubset: "v1",
		Subsets: map[string]api.ServiceResolverSubset{"v1": {Filter: "Service.Meta.version == v1"}}})
	waitSnapshot(t, w, "svc-1's resolver", func(s *consulconfig.Snapshot) error {
		c := s.Converted["svc-1"]
		if c == nil || c.Policy == nil || len(c.Policy.Subsets) != 1 || c.Policy.Subsets[0].GetFilter() != "Service.Meta.version == v1" {
			return fmt.Errorf("converted %v", c)
		}
		if len(s.Entries["svc-1"]) != 2 {
			return fmt.Errorf("entries of svc-1: %v, want both", s.Entries["svc-1"])
		}
		return nil
	})
	if got := w.Status(); !got.Synced || got.Chains != 1 {
		t.Errorf("status %+v, want synced with 1 chain", got)
	}
	// Only svc-1's chain was ever read, whatever the catalog holds: at
	// most once per change of its entries (two writes).
	if got := readsOf(t, reg); got < 1 || got > 2 {
		t.Errorf("%v chain reads, want 1 or 2 (one per change of svc-1's entries)", got)
	}
	// A redirect of svc-2 to svc-3 is read; svc-1's chain does not
	// depend on it and is not read again.
	before := readsOf(t, reg)
	write(t, client, &api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "svc-2", Redirect: &api.ServiceResolverRedirect{Service: "svc-3"}})
	waitSnapshot(t, w, "svc-2's redirect", func(s *consulconfig.Snapshot) error {
		c := s.Converted["svc-2"]
		if c == nil || c.Policy == nil || len(c.Policy.Routes) != 1 || c.Policy.Routes[0].GetDestination().GetService() != "svc-3" {
			return fmt.Errorf("converted %v", c)
		}
		return nil
	})
	if got := readsOf(t, reg) - before; got != 1 {
		t.Errorf("%v chain reads for svc-2's new entry, want 1", got)
	}
}

func readsOf(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "trellis_consulconfig_chain_reads_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("no trellis_consulconfig_chain_reads_total")
	return 0
}

// TestReadReportsSidecarDefaults: service-defaults fields that configure
// Envoy sidecars (upstream limits, passive health checks) are reported by
// entry and field, not dropped.
func TestReadReportsSidecarDefaults(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	client := testClient(t, agent)
	write(t, client, &api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "shop", Protocol: "grpc",
		UpstreamConfig: &api.UpstreamConfiguration{Defaults: &api.UpstreamConfig{
			Limits:             &api.UpstreamLimits{MaxConcurrentRequests: intPtr(10)},
			PassiveHealthCheck: &api.PassiveHealthCheck{Interval: 10 * time.Second, MaxFailures: 3},
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	snap, err := consulconfig.Read(ctx, client)
	if err != nil {
		t.Fatal(err)
	}
	m := consulconfig.Merge(nil, snap.Converted, nil)
	var got []string
	for _, u := range m.Unsupported {
		got = append(got, u.Entry+" "+u.Field)
	}
	if len(got) != 1 || got[0] != "service-defaults/shop UpstreamConfig" {
		t.Errorf("unsupported %q, want service-defaults/shop UpstreamConfig", got)
	}
	if len(m.Policies) != 0 {
		t.Errorf("policies %v, want none (service-defaults alone asks for nothing)", m.Policies)
	}
}

func intPtr(i int) *int { return &i }
