package xdsserver

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/trellis-mesh/trellis/internal/clients"
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// ProfileCachesConfig configures ProfileCaches.
type ProfileCachesConfig struct {
	// Profiles are the client profiles served, each from its own cache.
	// The first is the fallback for a node whose profile is not listed,
	// and the base whose resources the others share when equal.
	// Default: clients.Profiles() (Widest first).
	Profiles []clients.Profile
	// Logger receives the caches' logs. Default: logs are discarded.
	Logger *slog.Logger
	// MaxAliases is xdscache.Config.MaxAliases of every cache.
	// Default: xdscache.DefaultMaxAliases.
	MaxAliases int
}

// ProfileCaches serves each client profile (package clients) its own
// translation: one xdscache.Cache per profile, and a cache.Cache that
// routes every ADS request to the cache of its node's profile
// (clients.Classify of the node's user agent). go-control-plane fills the
// node of the stream's first request into every later one, so a stream
// stays with one cache.
//
// A resource equal (proto.Equal) to the first profile's resource of the
// same name is stored as that very value, so profiles that do not differ
// share memory, and only the resources that do differ exist twice.
//
// A profile other than the first is active once a client of it has
// connected (Active, Activated): the caller need translate only for active
// profiles, so that a mesh whose clients are all of one implementation
// holds and updates two translations (the fallback's and its own), not
// one per known implementation. A stream of a profile not yet served
// waits, as for any resource not there yet, until the profile's first
// Apply.
type ProfileCaches struct {
	profiles []clients.Profile
	caches   map[string]*xdscache.Cache
	logger   *slog.Logger

	// activeMu guards active and applied.
	activeMu sync.Mutex
	active   map[string]bool
	// applied has, per profile, a channel closed by its first Apply.
	applied map[string]chan struct{}
	// activated is signalled (capacity 1) when a profile becomes active.
	activated chan struct{}

	// mu serializes Apply and guards shared.
	mu sync.Mutex
	// shared memoises share: per non-base profile, type URL and name, the
	// profile's resource and the base's that it was compared with, and
	// the value that came out. An unchanged pair costs a pointer
	// comparison, not a proto.Equal.
	shared map[string]map[string]map[string]sharedEntry
}

// sharedEntry is one memoised share decision.
type sharedEntry struct{ in, base, out types.Resource }

// NewProfileCaches returns empty caches for cfg.Profiles.
func NewProfileCaches(cfg ProfileCachesConfig) (*ProfileCaches, error) {
	profiles := cfg.Profiles
	if len(profiles) == 0 {
		profiles = clients.Profiles()
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	p := &ProfileCaches{profiles: profiles, caches: make(map[string]*xdscache.Cache, len(profiles)), logger: logger,
		shared:    map[string]map[string]map[string]sharedEntry{},
		active:    map[string]bool{profiles[0].Name: true},
		applied:   map[string]chan struct{}{},
		activated: make(chan struct{}, 1)}
	for _, pr := range profiles {
		if pr.Name == "" {
			return nil, fmt.Errorf("xdsserver: ProfileCachesConfig.Profiles: a profile has no name")
		}
		if _, dup := p.caches[pr.Name]; dup {
			return nil, fmt.Errorf("xdsserver: ProfileCachesConfig.Profiles: profile %q listed twice", pr.Name)
		}
		p.applied[pr.Name] = make(chan struct{})
		p.caches[pr.Name] = xdscache.New(xdscache.Config{
			Logger:     logger.With("profile", pr.Name),
			MaxAliases: cfg.MaxAliases,
		})
	}
	return p, nil
}

// Profiles returns the profiles served, the fallback first.
func (p *ProfileCaches) Profiles() []clients.Profile {
	return append([]clients.Profile(nil), p.profiles...)
}

// Cache returns the cache of the named profile, nil when it is not served.
func (p *ProfileCaches) Cache(profile string) *xdscache.Cache { return p.caches[profile] }

// ProfileOf returns the profile whose cache serves node.
func (p *ProfileCaches) ProfileOf(node *corev3.Node) clients.Profile {
	pr := clients.Classify(clients.FromNode(node))
	if _, ok := p.caches[pr.Name]; ok {
		return pr
	}
	return p.profiles[0]
}

// Active reports whether the named profile is active: the first always
// is, another once a client of it has connected.
func (p *ProfileCaches) Active(profile string) bool {
	p.activeMu.Lock()
	defer p.activeMu.Unlock()
	return p.active[profile]
}

// Activated receives a value after a profile becomes active (signals may
// merge: read Active for each profile).
func (p *ProfileCaches) Activated() <-chan struct{} { return p.activated }

// Prepare activates the named profile, as a client of it connecting does,
// and waits until its translation is served (its first Apply), or ctx is
// done: what the status API answers about a profile is then what its
// clients would get.
func (p *ProfileCaches) Prepare(ctx context.Context, profile string) error {
	p.activeMu.Lock()
	applied, ok := p.applied[profile]
	p.activeMu.Unlock()
	if !ok {
		return fmt.Errorf("xdsserver: profile %q is not served", profile)
	}
	p.activate(profile)
	select {
	case <-applied:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("xdsserver: the translation for profile %q is not served yet: %w", profile, ctx.Err())
	}
}

// activate marks the named profile active.
func (p *ProfileCaches) activate(profile string) {
	p.activeMu.Lock()
	defer p.activeMu.Unlock()
	if p.active[profile] {
		return
	}
	p.active[profile] = true
	p.logger.Info("first client of a profile: serving its translation", "profile", profile)
	select {
	case p.activated <- struct{}{}:
	default:
	}
}

// Apply brings each profile's state up to date with its entry of next (by
// profile name); a profile missing from next keeps its state. The maps and
// resources in next are not modified, and must not be afterwards. Resources
// equal to the first profile's current ones are stored as the first
// profile's values.
func (p *ProfileCaches) Apply(next map[string]xdscache.Change) map[string]xdscache.ApplyResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]xdscache.ApplyResult, len(next))
	baseName := p.profiles[0].Name
	for _, pr := range p.profiles {
		ch, ok := next[pr.Name]
		if !ok {
			continue
		}
		if pr.Name != baseName {
			ch = p.share(pr.Name, p.caches[baseName], ch)
		}
		out[pr.Name] = p.caches[pr.Name].ApplyChange(ch)
		p.markApplied(pr.Name)
	}
	return out
}

// markApplied records the first Apply of the named profile.
func (p *ProfileCaches) markApplied(profile string) {
	p.activeMu.Lock()
	defer p.activeMu.Unlock()
	select {
	case <-p.applied[profile]:
	default:
		close(p.applied[profile])
	}
}

// share returns ch with every resource equal to base's current resource of
// the same type and name replaced by base's, in copies of ch's maps.
// Decisions are memoised per profile: a pair of values seen before is not
// compared again, so sharing costs what the change holds. p.mu must be held.
func (p *ProfileCaches) share(profile string, base *xdscache.Cache, ch xdscache.Change) xdscache.Change {
	memo := p.shared[profile]
	if ch.Full != nil || memo == nil {
		// A whole state: decisions about names it no longer holds go.
		memo = map[string]map[string]sharedEntry{}
		p.shared[profile] = memo
	}
	shareAll := func(res xdscache.Resources) xdscache.Resources {
		out := make(xdscache.Resources, len(res))
		for typeURL, byName := range res {
			mm := memo[typeURL]
			if mm == nil {
				mm = make(map[string]sharedEntry, len(byName))
				memo[typeURL] = mm
			}
			shared := make(map[string]types.Resource, len(byName))
			for name, r := range byName {
				b, _, _ := base.Resource(typeURL, name)
				if e, ok := mm[name]; ok && e.in == r && e.base == b {
					shared[name] = e.out
					continue
				}
				v := r
				if b != nil && b != r && proto.Equal(b, r) {
					v = b
				}
				shared[name], mm[name] = v, sharedEntry{in: r, base: b, out: v}
			}
			out[typeURL] = shared
		}
		return out
	}
	if ch.Full != nil {
		return xdscache.Change{Full: shareAll(ch.Full)}
	}
	for typeURL, names := range ch.Deleted {
		for _, name := range names {
			delete(memo[typeURL], name)
		}
	}
	return xdscache.Change{Updated: shareAll(ch.Updated), Deleted: ch.Deleted}
}

// Versions returns, per profile, what xdscache.Cache.Versions returns.
func (p *ProfileCaches) Versions() map[string]map[string]map[string]string {
	out := make(map[string]map[string]map[string]string, len(p.caches))
	for name, c := range p.caches {
		out[name] = c.Versions()
	}
	return out
}

// ConfigWatcher returns the cache.Cache to give go-control-plane's server:
// it hands each request to the ConfigWatcher of its node's profile cache.
func (p *ProfileCaches) ConfigWatcher() cache.Cache {
	w := dispatcher{p: p, watchers: make(map[string]cache.Cache, len(p.caches))}
	for name, c := range p.caches {
		w.watchers[name] = c.ConfigWatcher()
	}
	return w
}

type dispatcher struct {
	p        *ProfileCaches
	watchers map[string]cache.Cache
}

var _ cache.Cache = dispatcher{}

// firstApplyWait bounds how long a stream of a profile not translated yet
// waits for its first translation before it is served the fallback's.
const firstApplyWait = 5 * time.Second

func (d dispatcher) watcher(node *corev3.Node) cache.Cache {
	name := d.p.ProfileOf(node).Name
	d.p.activate(name)
	if !d.p.servable(name) {
		// Served the fallback's translation, which every client takes,
		// rather than an empty cache: an empty Listener or Cluster answer
		// tells a client its resources were removed.
		return d.watchers[d.p.profiles[0].Name]
	}
	return d.watchers[name]
}

// servable reports whether the named profile's cache can answer: it had
// its first Apply, or nothing is served yet at all (the fallback has had
// none either). A profile activated while the fallback is served is
// waited for, up to firstApplyWait.
func (p *ProfileCaches) servable(profile string) bool {
	p.activeMu.Lock()
	own, fallback := p.applied[profile], p.applied[p.profiles[0].Name]
	p.activeMu.Unlock()
	select {
	case <-own:
		return true
	default:
	}
	select {
	case <-fallback:
	default:
		return true // nothing served yet: the profile's cache waits like any other
	}
	timer := time.NewTimer(firstApplyWait)
	defer timer.Stop()
	select {
	case <-own:
		return true
	case <-timer.C:
		p.logger.Warn("a profile's first translation did not arrive in time; serving the fallback's", "profile", profile, "waited", firstApplyWait)
		return false
	}
}

// CreateWatch implements cache.ConfigWatcher.
func (d dispatcher) CreateWatch(req *cache.Request, sub cache.Subscription, ch chan cache.Response) (func(), error) {
	return d.watcher(req.GetNode()).CreateWatch(req, sub, ch)
}

// CreateDeltaWatch implements cache.ConfigWatcher.
func (d dispatcher) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, ch chan cache.DeltaResponse) (func(), error) {
	return d.watcher(req.GetNode()).CreateDeltaWatch(req, sub, ch)
}

// Fetch implements cache.ConfigFetcher.
func (d dispatcher) Fetch(ctx context.Context, req *cache.Request) (cache.Response, error) {
	return d.watcher(req.GetNode()).Fetch(ctx, req)
}
