package main

import (
	"context"
	"slices"
	"sort"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/consulwatch"
	"github.com/trellis-mesh/trellis/internal/policy/store"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// failoverTargets lists, sorted, the (service, datacenter) pairs that the
// policies' failover settings ask the catalog to read in other
// datacenters.
func failoverTargets(policies map[string]*policyv1.ServicePolicy) []catalog.Target {
	var out []catalog.Target
	for name, p := range policies {
		for _, dc := range p.GetFailover().GetDatacenters() {
			out = append(out, catalog.Target{Service: name, Datacenter: dc})
		}
	}
	sort.Slice(out, func(a, b int) bool {
		if out[a].Service != out[b].Service {
			return out[a].Service < out[b].Service
		}
		return out[a].Datacenter < out[b].Datacenter
	})
	return out
}

// policyTee hands every policy snapshot of in on to policies (for the
// pipeline) and, when they changed, the failover targets to targets (for
// catalog.Remote), until ctx is done.
type policyTee struct {
	in       <-chan *store.Snapshot
	policies *consulwatch.Latest[*store.Snapshot]
	targets  *consulwatch.Latest[[]catalog.Target]
}

func newPolicyTee(in <-chan *store.Snapshot) *policyTee {
	return &policyTee{in: in, policies: consulwatch.NewLatest[*store.Snapshot](), targets: consulwatch.NewLatest[[]catalog.Target]()}
}

func (t *policyTee) run(ctx context.Context) error {
	var last []catalog.Target
	first := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case s := <-t.in:
			// Targets first: the catalog starts reading the failover
			// datacenters while the pipeline translates the policy.
			if next := failoverTargets(s.Policies); first || !slices.Equal(next, last) {
				t.targets.Publish(next)
				last, first = next, false
			}
			t.policies.Publish(s)
		}
	}
}
