package main

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/policy/store"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

func failoverPolicy(service string, dcs ...string) *policyv1.ServicePolicy {
	return &policyv1.ServicePolicy{Service: service, Failover: &policyv1.Failover{Datacenters: dcs}}
}

// TestPolicyTee: every policy snapshot reaches the pipeline side; the
// failover targets are handed on first, and again only when they change.
func TestPolicyTee(t *testing.T) {
	in := make(chan *store.Snapshot)
	tee := newPolicyTee(in)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	done := make(chan error, 1)
	go func() { done <- tee.run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	recv := func(what string, ch <-chan []catalog.Target) []catalog.Target {
		t.Helper()
		select {
		case v := <-ch:
			return v
		case <-ctx.Done():
			t.Fatalf("no %s", what)
			return nil
		}
	}
	send := func(s *store.Snapshot) {
		t.Helper()
		in <- s
		select {
		case got := <-tee.policies.C():
			if got != s {
				t.Fatalf("policies: another snapshot than the one sent")
			}
		case <-ctx.Done():
			t.Fatal("policy snapshot not handed on")
		}
	}

	send(&store.Snapshot{})
	if got := recv("first targets", tee.targets.C()); len(got) != 0 {
		t.Errorf("no policy: targets %v, want none", got)
	}
	send(&store.Snapshot{Policies: map[string]*policyv1.ServicePolicy{
		"web": failoverPolicy("web", "dc3", "dc2"), "api": failoverPolicy("api", "dc2"), "db": {Service: "db"},
	}})
	want := []catalog.Target{{Service: "api", Datacenter: "dc2"}, {Service: "web", Datacenter: "dc2"}, {Service: "web", Datacenter: "dc3"}}
	if diff := cmp.Diff(want, recv("targets", tee.targets.C())); diff != "" {
		t.Errorf("targets (-want +got):\n%s", diff)
	}
	// Same targets, other policies: nothing new for the catalog.
	send(&store.Snapshot{Policies: map[string]*policyv1.ServicePolicy{
		"web": failoverPolicy("web", "dc2", "dc3"), "api": failoverPolicy("api", "dc2"),
	}})
	select {
	case got := <-tee.targets.C():
		t.Errorf("unchanged targets handed on again: %v", got)
	default:
	}
}
