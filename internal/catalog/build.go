package catalog

import (
	"maps"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/model"
)

// buildService turns a health query's result into a model.Service. It
// copies everything it keeps, so the result shares no memory with entries,
// and it filters nothing: deciding what can be served is the translator's
// job. Instances are sorted by key and their tags sorted.
func buildService(name string, entries []*api.ServiceEntry, zoneKeys []string) *model.Service {
	instances := make([]model.Instance, 0, len(entries))
	for _, e := range entries {
		if e == nil || e.Service == nil {
			continue
		}
		node := e.Node
		if node == nil {
			node = &api.Node{}
		}
		inst := model.Instance{
			ID:         e.Service.ID,
			Node:       node.Node,
			Address:    e.Service.Address,
			Port:       e.Service.Port,
			Health:     aggregateHealth(e.Checks),
			Weights:    weights(e.Service.Weights),
			Datacenter: node.Datacenter,
			Zone:       zone(zoneKeys, e.Service.Meta, node.Meta),
			Tags:       copyTags(e.Service.Tags),
			Meta:       copyMeta(e.Service.Meta),

			ServiceAddress: e.Service.Address,
			NodeAddress:    node.Address,
			NodeMeta:       copyMeta(node.Meta),
		}
		if inst.Address == "" {
			inst.Address = node.Address
		}
		instances = append(instances, inst)
	}
	model.SortInstances(instances)
	return &model.Service{Name: name, Instances: instances}
}

// aggregateHealth returns the worst status among an instance's node and
// service checks, maintenance being worse than critical. A status Consul
// does not define counts as critical.
func aggregateHealth(checks api.HealthChecks) model.Health {
	var warning, critical bool
	for _, c := range checks {
		if c == nil {
			continue
		}
		if c.CheckID == api.NodeMaint || strings.HasPrefix(c.CheckID, api.ServiceMaintPrefix) || c.Status == api.HealthMaint {
			return model.HealthMaintenance
		}
		switch c.Status {
		case api.HealthPassing:
		case api.HealthWarning:
			warning = true
		default:
			critical = true
		}
	}
	switch {
	case critical:
		return model.HealthCritical
	case warning:
		return model.HealthWarning
	default:
		return model.HealthPassing
	}
}

// weights returns the instance's weights; Consul's zero value (no weights
// registered) means 1 and 1.
func weights(w api.AgentWeights) model.Weights {
	if w == (api.AgentWeights{}) {
		return model.Weights{Passing: 1, Warning: 1}
	}
	return model.Weights{Passing: w.Passing, Warning: w.Warning}
}

// zone returns the first non-empty value of keys in the service's metadata,
// then in the node's.
func zone(keys []string, serviceMeta, nodeMeta map[string]string) string {
	for _, meta := range []map[string]string{serviceMeta, nodeMeta} {
		for _, k := range keys {
			if v := meta[k]; v != "" {
				return v
			}
		}
	}
	return ""
}

// copyTags copies tags; no tags is nil, so that equal catalogs give
// deeply equal instances whether Consul sent null or [].
func copyTags(tags []string) []string {
	if len(tags) == 0 {
		return nil
	}
	return append([]string(nil), tags...)
}

// copyMeta copies meta; no metadata is nil.
func copyMeta(meta map[string]string) map[string]string {
	if len(meta) == 0 {
		return nil
	}
	return maps.Clone(meta)
}
