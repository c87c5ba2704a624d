package catalog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"sort"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/trellis-mesh/trellis/internal/consulwatch"
	"github.com/trellis-mesh/trellis/internal/model"
)

// Remote datacenters (datacenter failover).
//
// A service whose policy lists failover datacenters needs the instances
// of those datacenters too. Remote reads exactly those: one blocking
// /v1/health/service/:name?dc=<dc> query per (service, datacenter) target,
// through the local agent, which forwards it over the WAN to the other
// datacenter's servers. The change detectors of the local Watcher cannot
// serve here: Consul's /v1/catalog/services and /v1/health/state/any are
// per datacenter, and watching another datacenter's whole catalog to
// follow a handful of services would cost WAN traffic proportional to
// that catalog. The number of targets is bounded by the policies (at most
// eight datacenters per policy, validated by internal/policy), and a
// target costs one connection only while its service's policy asks for
// it; a typical mesh fails over a few critical services, far below
// Consul's per-client connection limit. Queries run through
// consulwatch.Run, with every safeguard of the local watches (index
// rules, backoff, content comparison), and are cancelled as soon as no
// policy asks for their target any more.
//
// Remote joins what it reads with the local catalog: each published
// snapshot is the latest local snapshot with every target's instances
// added to its service (their Datacenter set to the remote datacenter,
// every instance whatever its health: which may receive calls is the
// translator's decision, as for local ones). A service keeps its
// *model.Service pointer while neither its local value nor its remote
// instances change. A target whose datacenter is the local one is
// ignored. While a target has not been read (or its datacenter is
// unreachable), its service has no remote instances, or keeps the last
// ones read.

// Target is one service to read in another datacenter.
type Target struct {
	Service, Datacenter string
}

// RemoteConfig configures a Remote.
type RemoteConfig struct {
	// Client is the Consul API client of the local agent. Required.
	Client *api.Client
	// Catalogs are the local catalog's snapshots (Watcher.Snapshots).
	// Required.
	Catalogs <-chan *model.Snapshot
	// Targets delivers the complete list of targets after every change.
	// Required.
	Targets <-chan []Target
	// LocalDatacenter is the local agent's datacenter, whose targets are
	// ignored. Default: the datacenter of the local catalog's instances
	// (targets wait until a local snapshot names it).
	LocalDatacenter string
	// ZoneMetaKeys are Config.ZoneMetaKeys. Default: "zone".
	ZoneMetaKeys []string
	// Logger receives what the reads report. Default: discarded.
	Logger *slog.Logger
	// WaitTime, MinInterval and MaxBackoff are the queries'
	// (consulwatch.Query). Defaults: 1m, 50ms, 5s.
	WaitTime, MinInterval, MaxBackoff time.Duration
}

// Remote publishes the local catalog joined with the instances of the
// failover targets. Create it with NewRemote, run it with Run, and read
// Snapshots.
type Remote struct {
	cfg       RemoteConfig
	logger    *slog.Logger
	snapshots *consulwatch.Latest[*model.Snapshot]
}

// NewRemote checks cfg.
func NewRemote(cfg RemoteConfig) (*Remote, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("catalog: RemoteConfig.Client is required")
	case cfg.Catalogs == nil:
		return nil, errors.New("catalog: RemoteConfig.Catalogs is required")
	case cfg.Targets == nil:
		return nil, errors.New("catalog: RemoteConfig.Targets is required")
	}
	if len(cfg.ZoneMetaKeys) == 0 {
		cfg.ZoneMetaKeys = []string{"zone"}
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Remote{cfg: cfg, logger: logger, snapshots: consulwatch.NewLatest[*model.Snapshot]()}, nil
}

// Snapshots delivers the joined snapshots, the latest only.
func (r *Remote) Snapshots() <-chan *model.Snapshot { return r.snapshots.C() }

// remoteRead is one target's changed instances.
type remoteRead struct {
	target    Target
	instances []model.Instance
}

// targetWatch is one running target query.
type targetWatch struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// joined is the memo of one service's joined value.
type joined struct {
	local  *model.Service
	gen    uint64
	merged *model.Service
}

// Run joins and publishes until ctx is done, then stops every query and
// waits for them. It returns nil.
func (r *Remote) Run(ctx context.Context) error {
	local := r.cfg.LocalDatacenter
	reads := make(chan remoteRead)
	watches := map[Target]*targetWatch{}
	defer func() {
		for _, w := range watches {
			w.cancel()
		}
		for _, w := range watches {
			<-w.done
		}
	}()
	var (
		snap    *model.Snapshot
		targets []Target
		remote  = map[Target][]model.Instance{}
		gens    = map[string]uint64{} // per service, bumped on every remote change
		memo    = map[string]joined{}
		changed bool
		// published is the last snapshot published; observed is when the
		// first change not published yet arrived.
		published *model.Snapshot
		observed  time.Time
	)
	for {
		retarget := false
		select {
		case <-ctx.Done():
			return nil
		case s := <-r.cfg.Catalogs:
			snap, changed = s, true
			observed = s.ObservedAt
			if local == "" {
				local, retarget = localDatacenter(s), true
			}
		case targets = <-r.cfg.Targets:
			retarget = true
		case rd := <-reads:
			if watches[rd.target] == nil {
				continue // a read of a target dropped meanwhile
			}
			remote[rd.target] = rd.instances
			gens[rd.target.Service]++
			if !changed {
				observed = time.Now()
			}
			changed = true
		}
		if retarget && local != "" {
			if r.retarget(ctx, local, targets, watches, reads, remote, gens) {
				changed = true
			}
		}
		if snap == nil || !changed {
			continue
		}
		changed = false
		published = follow(published, join(snap, remote, gens, memo), observed)
		r.snapshots.Publish(published)
	}
}

// follow returns the snapshot after prev holding next's services, naming
// the services that differ (model.Snapshot.Next): what Remote publishes
// is a lineage of its own, joined or not, so that a consumer comparing
// with the snapshot before is never told too little.
func follow(prev, next *model.Snapshot, observed time.Time) *model.Snapshot {
	var changed []string
	if prev != nil {
		for name, svc := range next.Services {
			if prev.Services[name] != svc {
				changed = append(changed, name)
			}
		}
		for name := range prev.Services {
			if _, ok := next.Services[name]; !ok {
				changed = append(changed, name)
			}
		}
	}
	out := prev.Next(next.Services, changed)
	out.ObservedAt = observed
	return out
}

// retarget starts the queries of the targets not running yet and stops
// those no longer wanted, dropping their instances; it reports whether
// instances were dropped.
func (r *Remote) retarget(ctx context.Context, local string, targets []Target, watches map[Target]*targetWatch, reads chan<- remoteRead, remote map[Target][]model.Instance, gens map[string]uint64) bool {
	want := map[Target]bool{}
	for _, t := range targets {
		if t.Service == "" || t.Datacenter == "" {
			continue
		}
		if t.Datacenter == local {
			r.logger.Warn("a failover datacenter is the local datacenter; ignored", "service", t.Service, "datacenter", t.Datacenter)
			continue
		}
		want[t] = true
	}
	dropped := false
	for t, w := range watches {
		if want[t] {
			continue
		}
		w.cancel()
		<-w.done
		delete(watches, t)
		if _, ok := remote[t]; ok {
			delete(remote, t)
			gens[t.Service]++
			dropped = true
		}
	}
	for t := range want {
		if watches[t] != nil {
			continue
		}
		wctx, cancel := context.WithCancel(ctx)
		w := &targetWatch{cancel: cancel, done: make(chan struct{})}
		watches[t] = w
		go func() {
			defer close(w.done)
			r.watch(wctx, t, reads)
		}()
	}
	return dropped
}

// localDatacenter is the datacenter of the local catalog's instances
// (every snapshot holds Consul's own "consul" service), "" when it holds
// none.
func localDatacenter(s *model.Snapshot) string {
	for _, name := range s.ServiceNames() {
		for _, inst := range s.Services[name].Instances {
			if inst.Datacenter != "" {
				return inst.Datacenter
			}
		}
	}
	return ""
}

// join returns snap with the remote instances added, reusing memo's
// values for the services whose inputs did not change; memo is updated.
func join(snap *model.Snapshot, remote map[Target][]model.Instance, gens map[string]uint64, memo map[string]joined) *model.Snapshot {
	if len(remote) == 0 {
		clear(memo)
		return snap
	}
	byService := map[string][]Target{}
	for t := range remote {
		byService[t.Service] = append(byService[t.Service], t)
	}
	services := make(map[string]*model.Service, len(snap.Services)+len(byService))
	for name, svc := range snap.Services {
		services[name] = svc
	}
	for name, targets := range byService {
		local := snap.Services[name]
		if m, ok := memo[name]; ok && m.local == local && m.gen == gens[name] {
			services[name] = m.merged
			continue
		}
		merged := &model.Service{Name: name}
		if local != nil {
			merged.Instances = append(merged.Instances, local.Instances...)
		}
		sort.Slice(targets, func(a, b int) bool { return targets[a].Datacenter < targets[b].Datacenter })
		for _, t := range targets {
			merged.Instances = append(merged.Instances, remote[t]...)
		}
		model.SortInstances(merged.Instances)
		memo[name] = joined{local: local, gen: gens[name], merged: merged}
		services[name] = merged
	}
	for name := range memo {
		if _, ok := byService[name]; !ok {
			delete(memo, name)
		}
	}
	return &model.Snapshot{Services: services}
}

// watch reads one target until ctx is done, sending every change on out.
func (r *Remote) watch(ctx context.Context, t Target, out chan<- remoteRead) {
	name := fmt.Sprintf("service %q in datacenter %q", t.Service, t.Datacenter)
	failing := false // Failed and Succeeded run on this goroutine
	consulwatch.Run(ctx, nil, consulwatch.Query[[]model.Instance]{
		Name: name,
		Fetch: func(opts *api.QueryOptions) ([]model.Instance, *api.QueryMeta, error) {
			opts.Datacenter = t.Datacenter
			entries, meta, err := r.cfg.Client.Health().Service(t.Service, "", false, opts)
			if err != nil {
				return nil, nil, err
			}
			svc := buildService(t.Service, entries, r.cfg.ZoneMetaKeys)
			for i := range svc.Instances {
				svc.Instances[i].Datacenter = t.Datacenter
				// Remote instances are told apart from local ones of the
				// same node and ID by their datacenter.
				svc.Instances[i].Node = t.Datacenter + "/" + svc.Instances[i].Node
			}
			return svc.Instances, meta, nil
		},
		Equal: func(a, b []model.Instance) bool { return reflect.DeepEqual(a, b) },
		Changed: func(instances []model.Instance, _ *api.QueryMeta) bool {
			select {
			case out <- remoteRead{target: t, instances: slices.Clone(instances)}:
				return true
			case <-ctx.Done():
				return false
			}
		},
		// Logged when reads start failing and when they recover, not on
		// every retry: a datacenter Consul does not know fails forever.
		Failed: func(err *consulwatch.Error, retryIn time.Duration) {
			if !failing {
				failing = true
				r.logger.Warn("cannot read a failover datacenter; its instances last read (if any) are kept until it answers", "service", t.Service, "datacenter", t.Datacenter, "error", err, "retry_in", retryIn)
			}
		},
		Succeeded: func(*api.QueryMeta) {
			if failing {
				failing = false
				r.logger.Info("failover datacenter read again", "service", t.Service, "datacenter", t.Datacenter)
			}
		},
		SkipFiltered: true,
		WaitTime:     r.cfg.WaitTime,
		MinInterval:  r.cfg.MinInterval,
		MaxBackoff:   r.cfg.MaxBackoff,
	})
}
