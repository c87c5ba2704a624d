package xdsserver

import (
	"context"
	"log/slog"
	"maps"
	"sort"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// DefaultMaxZones is the default of ZoneCachesConfig.MaxZones.
const DefaultMaxZones = 64

// ZoneCachesConfig configures ZoneCaches.
type ZoneCachesConfig struct {
	// Logger receives the caches' logs. Default: logs are discarded.
	Logger *slog.Logger
	// MaxZones bounds the zones given a cache of their own; the clients
	// of any further zone are served the shared assignments, and the
	// excess is logged. Zones come from the catalog's metadata, so the
	// bound keeps a mistaken meta value from growing the server without
	// limit. Default: DefaultMaxZones (64).
	MaxZones int
}

// ZoneCaches serves per-zone variants of ClusterLoadAssignments: the
// clients of zone Z (their node.locality.zone, from the bootstrap) are
// served EDS from Z's cache, every other resource type, and every EDS
// request of a node without a zone or of a zone without a cache, from the
// wrapped cache.Cache (the profile dispatcher). A zone cache holds the
// complete EDS state: the shared assignments, with the zone's variants in
// place of the clusters that have one. All clients of one zone thus share
// one cache and one version of each assignment, as all clients of one
// profile share theirs; since assignments do not differ between client
// profiles, the zone caches serve every profile.
//
// A zone's cache is created the first time the zone has a variant and is
// kept afterwards (serving the shared assignments while the zone has no
// variant), so that its clients' streams never move between caches for a
// transient change. Which cache a stream is served from is decided on each
// request; go-control-plane fills the node of a stream's first request
// into every later one.
type ZoneCaches struct {
	logger   *slog.Logger
	maxZones int

	mu sync.RWMutex
	// caches by zone; guarded by mu.
	caches map[string]*xdscache.Cache
	// watchers are the caches' ConfigWatchers; guarded by mu.
	watchers map[string]cache.Cache
	// refused are the zones left without a cache (MaxZones); guarded by
	// mu.
	refused map[string]bool
	// applied is, per zone, the EDS state last applied to its cache;
	// guarded by mu.
	applied map[string]map[string]types.Resource
}

// NewZoneCaches returns ZoneCaches without any zone.
func NewZoneCaches(cfg ZoneCachesConfig) *ZoneCaches {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxZones <= 0 {
		cfg.MaxZones = DefaultMaxZones
	}
	return &ZoneCaches{logger: logger, maxZones: cfg.MaxZones, caches: map[string]*xdscache.Cache{},
		watchers: map[string]cache.Cache{}, refused: map[string]bool{}, applied: map[string]map[string]types.Resource{}}
}

// Apply gives every zone's cache its EDS state: base (the shared
// assignments, by cluster name) with the zone's variants (variants[zone],
// by cluster name) in their place. Zones in variants that have no cache
// yet get one. Each cache is handed only what changed for it (compared by
// value identity with what it was last given), so an apply costs a
// pointer comparison per assignment and zone, plus what changed. base and
// variants are read only and not kept.
func (z *ZoneCaches) Apply(base map[string]types.Resource, variants map[string]map[string]types.Resource) map[string]xdscache.ApplyResult {
	z.mu.Lock()
	defer z.mu.Unlock()
	zones := make([]string, 0, len(variants))
	for zone := range variants {
		zones = append(zones, zone)
	}
	sort.Strings(zones)
	for _, zone := range zones {
		if zone == "" || z.caches[zone] != nil || z.refused[zone] {
			continue
		}
		if len(z.caches) >= z.maxZones {
			z.refused[zone] = true
			z.logger.Warn("too many zones: the clients of this zone are served the shared assignments", "zone", zone, "max_zones", z.maxZones)
			continue
		}
		c := xdscache.New(xdscache.Config{Logger: z.logger.With("zone", zone)})
		z.caches[zone], z.watchers[zone] = c, c.ConfigWatcher()
	}
	out := make(map[string]xdscache.ApplyResult, len(z.caches))
	for zone, c := range z.caches {
		v := variants[zone]
		last, ok := z.applied[zone]
		if !ok {
			full := make(map[string]types.Resource, len(base))
			for name, r := range base {
				if vr, ok := v[name]; ok {
					r = vr
				}
				full[name] = r
			}
			z.applied[zone] = full
			out[zone] = c.Apply(xdscache.Resources{resource.EndpointType: maps.Clone(full)})
			continue
		}
		updated := map[string]types.Resource{}
		for name, r := range base {
			if vr, ok := v[name]; ok {
				r = vr
			}
			if last[name] != r {
				updated[name], last[name] = r, r
			}
		}
		var deleted []string
		if len(last) > len(base) {
			for name := range last {
				if _, ok := base[name]; !ok {
					deleted = append(deleted, name)
					delete(last, name)
				}
			}
		}
		if len(updated) == 0 && len(deleted) == 0 {
			continue
		}
		sort.Strings(deleted)
		out[zone] = c.ApplyDelta(xdscache.Resources{resource.EndpointType: updated}, map[string][]string{resource.EndpointType: deleted})
	}
	return out
}

// Zones returns the zones that have a cache, sorted.
func (z *ZoneCaches) Zones() []string {
	z.mu.RLock()
	defer z.mu.RUnlock()
	out := make([]string, 0, len(z.caches))
	for zone := range z.caches {
		out = append(out, zone)
	}
	sort.Strings(out)
	return out
}

// Cache returns the named zone's cache, nil when it has none.
func (z *ZoneCaches) Cache(zone string) *xdscache.Cache {
	z.mu.RLock()
	defer z.mu.RUnlock()
	return z.caches[zone]
}

// Wrap returns the cache.Cache to give go-control-plane's server: EDS
// requests of a node whose zone has a cache go to that cache, everything
// else to next.
func (z *ZoneCaches) Wrap(next cache.Cache) cache.Cache {
	return zoneDispatcher{z: z, next: next}
}

type zoneDispatcher struct {
	z    *ZoneCaches
	next cache.Cache
}

var _ cache.Cache = zoneDispatcher{}

func (d zoneDispatcher) watcher(typeURL string, node *corev3.Node) cache.Cache {
	if typeURL != resource.EndpointType {
		return d.next
	}
	zone := node.GetLocality().GetZone()
	if zone == "" {
		return d.next
	}
	d.z.mu.RLock()
	w := d.z.watchers[zone]
	d.z.mu.RUnlock()
	if w == nil {
		return d.next
	}
	return w
}

// CreateWatch implements cache.ConfigWatcher.
func (d zoneDispatcher) CreateWatch(req *cache.Request, sub cache.Subscription, ch chan cache.Response) (func(), error) {
	return d.watcher(req.GetTypeUrl(), req.GetNode()).CreateWatch(req, sub, ch)
}

// CreateDeltaWatch implements cache.ConfigWatcher.
func (d zoneDispatcher) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, ch chan cache.DeltaResponse) (func(), error) {
	return d.watcher(req.GetTypeUrl(), req.GetNode()).CreateDeltaWatch(req, sub, ch)
}

// Fetch implements cache.ConfigFetcher.
func (d zoneDispatcher) Fetch(ctx context.Context, req *cache.Request) (cache.Response, error) {
	return d.watcher(req.GetTypeUrl(), req.GetNode()).Fetch(ctx, req)
}
