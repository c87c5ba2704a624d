// Package model holds the immutable view of the service catalog that the rest
// of Trellis consumes: services, their instances and each instance's health.
//
// The catalog package builds snapshots from Consul; the translator turns them
// into xDS resources. Nothing in this package knows about Consul's API or about
// xDS, and it must import neither. Values are never mutated once published:
// producers build a new Snapshot for every change.
package model

import (
	"slices"
	"sort"
	"time"
)

// Health is the aggregated health of one service instance: the worst status of
// its node checks and service checks, as Consul aggregates them.
type Health int

// Health values, from best to worst.
const (
	HealthPassing Health = iota
	HealthWarning
	HealthCritical
	// HealthMaintenance marks an instance (or its node) in maintenance mode.
	HealthMaintenance
)

// String returns Consul's name for the status.
func (h Health) String() string {
	switch h {
	case HealthPassing:
		return "passing"
	case HealthWarning:
		return "warning"
	case HealthCritical:
		return "critical"
	case HealthMaintenance:
		return "maintenance"
	default:
		return "unknown"
	}
}

// Weights are the relative load-balancing weights of an instance, chosen by
// its health (Consul's service Weights).
type Weights struct {
	// Passing is used while the instance is passing. Default: 1.
	Passing int
	// Warning is used while the instance is warning. Default: 1.
	Warning int
}

// Instance is one registered instance of a service.
type Instance struct {
	// ID is the service instance ID, unique on its node.
	ID string
	// Node is the name of the Consul node the instance is registered on.
	Node string
	// Address is the IP address calls are sent to: the service address, or
	// the node address when the service has none.
	Address string
	// Port is the service port.
	Port int
	// Health is the aggregated check status.
	Health Health
	// Weights are the instance's load-balancing weights.
	Weights Weights
	// Datacenter is the Consul datacenter the instance lives in.
	Datacenter string
	// Zone is the instance's zone, read from service or node metadata.
	// Empty when unknown.
	Zone string
	// Tags are the service tags, sorted.
	Tags []string
	// Meta is the service metadata.
	Meta map[string]string
	// ServiceAddress is the address registered with the service, empty
	// when it has none (Address is then NodeAddress).
	ServiceAddress string
	// NodeAddress is the address of the instance's node.
	NodeAddress string
	// NodeMeta is the metadata of the instance's node.
	NodeMeta map[string]string
}

// Key identifies an instance uniquely within a service.
func (i Instance) Key() string { return i.Node + "/" + i.ID }

// Service is one named service and all of its registered instances,
// whatever their health.
type Service struct {
	// Name is the Consul service name, which is also the name clients dial
	// (xds:///Name).
	Name string
	// Instances are sorted by Key.
	Instances []Instance
}

// Snapshot is an immutable, complete view of the catalog at one moment.
//
// A snapshot made with Next also knows which services differ from the
// snapshots before it (ChangedSince), so that a consumer following a
// catalog of 10,000 services can look at the one that changed rather than
// compare all of them.
type Snapshot struct {
	// Services by name.
	Services map[string]*Service
	// ObservedAt is when the source first saw a change this snapshot
	// holds and its predecessor did not (for the catalog: when Consul's
	// answer carrying it arrived); zero when unknown. It measures how long
	// a change takes to reach clients.
	ObservedAt time.Time

	// lineage is shared by the snapshots made from one another with Next;
	// nil for a snapshot made otherwise.
	lineage *lineage
	// gen counts the Next calls since the first snapshot of the lineage.
	gen uint64
	// recent holds, oldest first, the names changed by each of the last
	// len(recent) Next calls that led to this snapshot.
	recent [][]string
}

// lineage identifies a chain of snapshots. It is not zero-sized, so that
// every lineage has an address of its own.
type lineage struct{ _ byte }

// MaxChangeHistory is how many generations back ChangedSince can answer.
const MaxChangeHistory = 64

// Next returns the snapshot that follows s: services is its complete
// content, and changed names the services added, changed or removed since
// s (every other service must be the same *Service as in s). s may be nil:
// the snapshot then starts a lineage of its own.
func (s *Snapshot) Next(services map[string]*Service, changed []string) *Snapshot {
	if s == nil || s.lineage == nil {
		return &Snapshot{Services: services, lineage: &lineage{}}
	}
	recent := s.recent
	if len(recent) >= MaxChangeHistory {
		recent = recent[len(recent)-MaxChangeHistory+1:]
	}
	return &Snapshot{Services: services, lineage: s.lineage, gen: s.gen + 1,
		recent: append(slices.Clip(recent), slices.Clone(changed))}
}

// ChangedSince returns the names of the services that may differ between
// prev and s (added, changed or removed), when s was made from prev by at
// most MaxChangeHistory calls of Next; ok is false otherwise, and every
// service must be compared. A name may be listed more than once.
func (s *Snapshot) ChangedSince(prev *Snapshot) (names []string, ok bool) {
	if s == nil || prev == nil || s.lineage == nil || s.lineage != prev.lineage || prev.gen > s.gen {
		return nil, false
	}
	n := s.gen - prev.gen
	if n > uint64(len(s.recent)) {
		return nil, false
	}
	for _, changed := range s.recent[uint64(len(s.recent))-n:] {
		names = append(names, changed...)
	}
	return names, true
}

// NewSnapshot builds a snapshot from services, sorting every instance list and
// tag list so that equal catalogs always produce equal snapshots.
func NewSnapshot(services []*Service) *Snapshot {
	byName := make(map[string]*Service, len(services))
	for _, s := range services {
		SortInstances(s.Instances)
		byName[s.Name] = s
	}
	return &Snapshot{Services: byName}
}

// SortInstances orders instances by Key and sorts each instance's tags.
func SortInstances(instances []Instance) {
	for i := range instances {
		sort.Strings(instances[i].Tags)
	}
	sort.Slice(instances, func(a, b int) bool { return instances[a].Key() < instances[b].Key() })
}

// ServiceNames returns the snapshot's service names in sorted order.
func (s *Snapshot) ServiceNames() []string {
	names := make([]string, 0, len(s.Services))
	for name := range s.Services {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}
