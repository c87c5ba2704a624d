package main

import (
	"fmt"
	"slices"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/consulwatch"
	"github.com/trellis-mesh/trellis/internal/policy/store"
	"github.com/trellis-mesh/trellis/xdsserver/dashboard"
	"github.com/trellis-mesh/trellis/xdsserver/statusapi"
)

// newDashboard builds the dashboard served under /ui/ on the admin
// listener from the catalog and policy watchers, the ACL checker and the
// status API, with the service graph from LRS reports (nil when load
// reporting is off).
func newDashboard(watcher *catalog.Watcher, policies *store.Watcher, acl *consulwatch.ACL, status *statusapi.Server, graph func() []dashboard.Edge) (*dashboard.Handler, error) {
	return dashboard.New(dashboard.Config{
		Services: func() []dashboard.Service { return dashboardServices(watcher, policies) },
		Clients:  status.ListClients,
		Client:   status.GetClient,
		Graph:    graph,
		Consul: func() dashboard.Consul {
			st := watcher.Status()
			c := dashboard.Consul{Reachable: st.Reachable, Synced: st.Synced, LastContact: st.LastContact, LastError: st.LastError}
			if info := acl.Token(); info.Error != "" {
				c.Problems = append(c.Problems, "ACL token check: "+info.Error)
			}
			for _, p := range acl.Problems() {
				c.Problems = append(c.Problems, fmt.Sprintf("ACL: %s", p))
			}
			if len(st.Hidden) > 0 {
				c.Problems = append(c.Problems, fmt.Sprintf("the ACL token hides the instances of: %v", st.Hidden))
			}
			return c
		},
	})
}

func dashboardServices(watcher *catalog.Watcher, policies *store.Watcher) []dashboard.Service {
	snap := watcher.Latest()
	if snap == nil {
		return nil
	}
	pol := policies.Latest()
	names := make([]string, 0, len(snap.Services))
	for name := range snap.Services {
		names = append(names, name)
	}
	slices.Sort(names)
	out := make([]dashboard.Service, 0, len(names))
	for _, name := range names {
		svc := snap.Services[name]
		ds := dashboard.Service{Name: name, Instances: make([]dashboard.Instance, 0, len(svc.Instances))}
		for _, in := range svc.Instances {
			ds.Instances = append(ds.Instances, dashboard.Instance{ID: in.ID, Address: in.Address, Port: in.Port, Health: in.Health.String(), Zone: in.Zone})
		}
		if pol != nil {
			if p := pol.Policies[name]; p != nil {
				ds.Policy = &dashboard.Policy{Revision: pol.Revisions[name], Routes: len(p.GetRoutes())}
				for _, sub := range p.GetSubsets() {
					ds.Subsets = append(ds.Subsets, sub.GetName())
				}
			}
		}
		out = append(out, ds)
	}
	return out
}
