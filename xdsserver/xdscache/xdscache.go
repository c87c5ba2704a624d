// Package xdscache holds the xDS resources the control plane serves and hands
// them to go-control-plane's state-of-the-world server.
//
// It owns resource versioning: every resource is versioned by a hash of its
// deterministic encoding (Any payloads included), and Apply forwards to the per-type
// go-control-plane LinearCache only the resources whose hash changed plus the
// deletions, so an unchanged resource is never pushed to a client again.
// ApplyDelta takes only what changed (a translate.Delta, as the pipeline
// hands it over), so that an update costs what it holds, not what the
// cache serves; LinearCache notifies only the watches of the names it
// touches.
// Resources are immutable once applied: a resource applied again as the
// same value is neither encoded nor hashed again, and the LinearCache
// encodes each version once, lazily, for every stream it is sent on. It
// also owns Listener aliases for dial targets that carry a port (see
// ConfigWatcher).
//
// It serves what it is given and knows nothing of where resources come from:
// it must not import the catalog, the model, the translator or identity.
package xdscache

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/trellis-mesh/trellis/internal/cplog"
)

// Resources is a complete xDS state: type URL (resource.ListenerType,
// resource.RouteType, resource.ClusterType, resource.EndpointType or any
// other type URL) -> resource name -> resource.
type Resources map[string]map[string]types.Resource

// DefaultMaxAliases is the default bound on materialized Listener aliases.
const DefaultMaxAliases = 4096

// Config configures a Cache.
type Config struct {
	// Logger receives the cache's logs. Default: logs are discarded.
	Logger *slog.Logger
	// VersionPrefix starts every version the cache sends, so that a client
	// reconnecting with a version from another control plane instance (or
	// an earlier process) is always answered. Default: random per Cache.
	VersionPrefix string
	// MaxAliases bounds the number of Listener aliases (see ConfigWatcher)
	// held at once. Default: DefaultMaxAliases.
	MaxAliases int
}

// entry is one served resource with its content version.
type entry struct {
	res     types.Resource
	version string
	// aliasOf is the Listener this entry was cloned from, "" when the
	// entry is not an alias.
	aliasOf string
	// base is the resource of Listener aliasOf the alias was cloned from.
	base types.Resource
}

// Cache holds the current xDS resources. It is safe for concurrent use.
type Cache struct {
	logger     *slog.Logger
	prefix     string
	maxAliases int

	// mux is replaced (copy on write) when Apply brings a new type URL, so
	// that CreateWatch can read it without locking.
	mux atomic.Pointer[cache.MuxCache]

	mu sync.Mutex
	// linear holds one LinearCache per type URL. Guarded by mu.
	linear map[string]*cache.LinearCache
	// served is exactly what the LinearCaches hold: the applied resources
	// plus the materialized Listener aliases. Guarded by mu.
	served map[string]map[string]entry
	// aliasRefs counts, per Listener name of the form host:port, the open
	// LDS watches that name it. Guarded by mu.
	aliasRefs map[string]int
	// aliases are the names of the materialized Listener aliases.
	// Guarded by mu.
	aliases map[string]struct{}
	// aliasIdle marks materialized aliases found unreferenced by the last
	// Apply; an alias still unreferenced at the next Apply is dropped.
	// Guarded by mu.
	aliasIdle map[string]bool
}

// wellKnownTypes get a LinearCache up front so that a client asking for
// them before the first Apply gets a watch, not an error.
var wellKnownTypes = []string{
	resource.ListenerType,
	resource.RouteType,
	resource.ClusterType,
	resource.EndpointType,
	resource.ScopedRouteType,
	resource.VirtualHostType,
	resource.SecretType,
	resource.RuntimeType,
	resource.ExtensionConfigType,
}

// New returns an empty Cache.
func New(cfg Config) *Cache {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	prefix := cfg.VersionPrefix
	if prefix == "" {
		prefix = randomPrefix()
	}
	maxAliases := cfg.MaxAliases
	if maxAliases <= 0 {
		maxAliases = DefaultMaxAliases
	}
	c := &Cache{
		logger:     logger,
		prefix:     prefix,
		maxAliases: maxAliases,
		linear:     make(map[string]*cache.LinearCache),
		served:     make(map[string]map[string]entry),
		aliasRefs:  make(map[string]int),
		aliasIdle:  make(map[string]bool),
		aliases:    make(map[string]struct{}),
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range wellKnownTypes {
		c.linearLocked(t)
	}
	return c
}

// randomPrefix returns 8 random hex digits and a dot.
func randomPrefix() string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never returns an error.
	return hex.EncodeToString(b[:]) + "."
}

// linearLocked returns the LinearCache for typeURL, creating it (and
// publishing a new MuxCache) when needed. c.mu must be held.
func (c *Cache) linearLocked(typeURL string) *cache.LinearCache {
	if lc, ok := c.linear[typeURL]; ok {
		return lc
	}
	lc := cache.NewLinearCache(typeURL,
		cache.WithVersionPrefix(c.prefix),
		cache.WithLogger(cplog.New(c.logger.With("type", typeURL))))
	c.linear[typeURL] = lc
	caches := make(map[string]cache.Cache, len(c.linear))
	for t, l := range c.linear {
		caches[t] = l
	}
	c.mux.Store(&cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        caches,
	})
	return lc
}

// TypeChange counts what one Apply changed for one type URL.
type TypeChange struct {
	// Updated counts resources sent to the LinearCache: new or changed.
	Updated int `json:"updated"`
	// Deleted counts resources removed.
	Deleted int `json:"deleted"`
	// Total is the number of resources of the type after the Apply,
	// Listener aliases included.
	Total int `json:"total"`
}

// ApplyResult reports what an Apply changed.
type ApplyResult struct {
	// Types holds one entry per type URL present before or after the
	// Apply.
	Types map[string]TypeChange
	// Err lists the resources that could not be taken (nil, named
	// differently from their key, or not encodable). Each keeps its
	// previous version, if it had one, and is left out otherwise.
	Err error
}

// Changed reports whether any resource was updated or deleted.
func (r ApplyResult) Changed() bool {
	for _, tc := range r.Types {
		if tc.Updated > 0 || tc.Deleted > 0 {
			return true
		}
	}
	return false
}

// LogValue renders the result compactly for slog.
func (r ApplyResult) LogValue() slog.Value {
	attrs := make([]slog.Attr, 0, len(r.Types)+1)
	for _, t := range slices.Sorted(maps.Keys(r.Types)) {
		tc := r.Types[t]
		attrs = append(attrs, slog.String(shortType(t),
			fmt.Sprintf("updated=%d deleted=%d total=%d", tc.Updated, tc.Deleted, tc.Total)))
	}
	if r.Err != nil {
		attrs = append(attrs, slog.String("error", r.Err.Error()))
	}
	return slog.GroupValue(attrs...)
}

// shortType returns the message name of a type URL.
func shortType(typeURL string) string {
	if i := strings.LastIndexByte(typeURL, '/'); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}

// Apply replaces the whole state with next. Only resources whose content
// changed, and deletions, reach the clients; Listener aliases follow their
// base Listener.
//
// Resources handed to Apply are immutable: neither next nor any resource
// in it may be modified afterwards, by anyone. The cache relies on it: a
// resource identical (the same pointer) to the one applied under the same
// name before keeps its version without being encoded or hashed again, so
// an Apply costs one map lookup per unchanged resource. A Translator hands
// back the same pointers for what did not change.
//
// Content is compared by a canonical encoding: deterministic, with the
// payload of each embedded Any of a type linked into the binary re-encoded
// deterministically, so Any values built without deterministic marshaling
// do not make an unchanged resource look changed.
func (c *Cache) Apply(next Resources) ApplyResult {
	c.mu.Lock()
	defer c.mu.Unlock()

	// c.served is brought up to date in place: copying it would cost as
	// much as the catalog is large.
	var errs []error
	updated := make(map[string]map[string]types.Resource)
	deleted := make(map[string][]string)
	update := func(typeURL, name string, res types.Resource) {
		if updated[typeURL] == nil {
			updated[typeURL] = make(map[string]types.Resource)
		}
		updated[typeURL][name] = res
	}
	for typeURL, byName := range next {
		m := c.served[typeURL]
		if m == nil {
			m = make(map[string]entry, len(byName))
			c.served[typeURL] = m
		}
		prevReal := len(m) - c.aliasCountLocked(typeURL)
		found := 0 // names of byName served before, not as aliases
		for name, res := range byName {
			had, changed, err := upsert(m, name, res)
			if had {
				found++
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("xdscache: %s %q: %w", shortType(typeURL), name, err))
			} else if changed {
				update(typeURL, name, res)
			}
		}
		// Resources no longer applied; aliases are settled below.
		if found != prevReal {
			for name, p := range m {
				if _, ok := byName[name]; !ok && p.aliasOf == "" {
					delete(m, name)
					deleted[typeURL] = append(deleted[typeURL], name)
				}
			}
		}
	}
	for typeURL, m := range c.served {
		if _, ok := next[typeURL]; ok {
			continue
		}
		for name, p := range m {
			if p.aliasOf == "" {
				delete(m, name)
				deleted[typeURL] = append(deleted[typeURL], name)
			}
		}
	}
	if listeners := c.served[resource.ListenerType]; listeners != nil || len(c.aliasRefs) > 0 {
		if listeners == nil {
			listeners = make(map[string]entry)
			c.served[resource.ListenerType] = listeners
		}
		aliasUpdated, aliasDeleted := c.aliasesLocked(listeners)
		for name, res := range aliasUpdated {
			update(resource.ListenerType, name, res)
		}
		// A Listener gone whose name an alias now takes is an update.
		deleted[resource.ListenerType] = slices.DeleteFunc(deleted[resource.ListenerType], func(name string) bool {
			_, ok := aliasUpdated[name]
			return ok
		})
		deleted[resource.ListenerType] = append(deleted[resource.ListenerType], aliasDeleted...)
	}

	return c.publishLocked(updated, deleted, errs)
}

// upsert serves res under name in m (the served resources of one type),
// unless the very same value is served there already. It reports whether
// a resource (not an alias) of that name was served before, and whether
// its content changed. A resource that cannot be taken leaves m as it was,
// except that it replaces an alias of that name.
func upsert(m map[string]entry, name string, res types.Resource) (had, changed bool, err error) {
	p, had := m[name]
	had = had && p.aliasOf == ""
	if had && p.res == res {
		return true, false, nil // the very resource applied before
	}
	e, err := newEntry(name, res)
	if err != nil {
		if !had {
			delete(m, name) // an alias of that name, if any
		}
		return had, false, err
	}
	m[name] = e
	return had, !had || p.version != e.version, nil
}

// Change is a new state for a Cache: whole, or as what changed since the
// previous one.
type Change struct {
	// Full, when not nil, is the whole new state (see Apply).
	Full Resources
	// Updated and Deleted, when Full is nil, are what changed (see
	// ApplyDelta).
	Updated Resources
	Deleted map[string][]string
}

// ApplyChange applies ch with Apply or ApplyDelta.
func (c *Cache) ApplyChange(ch Change) ApplyResult {
	if ch.Full != nil {
		return c.Apply(ch.Full)
	}
	return c.ApplyDelta(ch.Updated, ch.Deleted)
}

// ApplyDelta brings the state up to date with what changed since the
// previous Apply or ApplyDelta: updated holds the resources added or
// changed, by type URL and name, deleted the names removed (a name both
// deleted and updated is updated). It costs what changed, not what is
// served. The same rules as Apply's hold for what reaches clients and for
// the resources handed over, which must not be modified afterwards.
//
// Listener aliases follow the base Listeners the delta changes, and an
// alias requested by a watch is materialized when its base appears;
// aliases no watch names are dropped by Apply, or evicted at the limit.
func (c *Cache) ApplyDelta(updated Resources, deleted map[string][]string) ApplyResult {
	c.mu.Lock()
	defer c.mu.Unlock()

	var errs []error
	up := make(map[string]map[string]types.Resource)
	del := make(map[string][]string)
	var changedListeners []string
	for typeURL, byName := range updated {
		m := c.served[typeURL]
		if m == nil {
			m = make(map[string]entry, len(byName))
			c.served[typeURL] = m
		}
		for name, res := range byName {
			_, changed, err := upsert(m, name, res)
			if err != nil {
				errs = append(errs, fmt.Errorf("xdscache: %s %q: %w", shortType(typeURL), name, err))
				continue
			}
			if typeURL == resource.ListenerType {
				changedListeners = append(changedListeners, name)
			}
			if changed {
				if up[typeURL] == nil {
					up[typeURL] = make(map[string]types.Resource)
				}
				up[typeURL][name] = res
			}
		}
	}
	for typeURL, names := range deleted {
		m := c.served[typeURL]
		for _, name := range names {
			if _, again := updated[typeURL][name]; again {
				continue
			}
			if p, ok := m[name]; ok && p.aliasOf == "" {
				delete(m, name)
				del[typeURL] = append(del[typeURL], name)
				if typeURL == resource.ListenerType {
					changedListeners = append(changedListeners, name)
				}
			}
		}
	}
	if len(changedListeners) > 0 {
		aliasUpdated, aliasDeleted := c.aliasesOfLocked(changedListeners)
		for name, res := range aliasUpdated {
			if up[resource.ListenerType] == nil {
				up[resource.ListenerType] = make(map[string]types.Resource)
			}
			up[resource.ListenerType][name] = res
		}
		del[resource.ListenerType] = slices.DeleteFunc(del[resource.ListenerType], func(name string) bool {
			_, ok := aliasUpdated[name]
			return ok
		})
		del[resource.ListenerType] = append(del[resource.ListenerType], aliasDeleted...)
	}
	return c.publishLocked(up, del, errs)
}

// aliasesOfLocked brings up to date the Listener aliases whose base is one
// of the named Listeners, changed or deleted by a delta, and materializes
// the requested aliases of those that appeared (see syncAliasesLocked).
// c.mu must be held.
func (c *Cache) aliasesOfLocked(bases []string) (map[string]types.Resource, []string) {
	listeners := c.served[resource.ListenerType]
	if listeners == nil || (len(c.aliases) == 0 && len(c.aliasRefs) == 0) {
		return nil, nil
	}
	isBase := make(map[string]bool, len(bases))
	for _, b := range bases {
		isBase[b] = true
	}
	return c.syncAliasesLocked(listeners, func(base string) bool { return isBase[base] }, false)
}

// publishLocked hands what changed to the LinearCaches, in make-before-break
// order, and reports it. c.mu must be held.
func (c *Cache) publishLocked(updated map[string]map[string]types.Resource, deleted map[string][]string, errs []error) ApplyResult {
	slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	result := ApplyResult{Types: make(map[string]TypeChange, len(c.served)), Err: errors.Join(errs...)}
	// Clients are told in make-before-break order: Clusters and their
	// endpoints before the Listeners and routes that may name them, so a
	// route never reaches a client before the cluster it sends calls to.
	for _, typeURL := range pushOrder(c.served) {
		m := c.served[typeURL]
		up, del := updated[typeURL], deleted[typeURL]
		result.Types[typeURL] = TypeChange{Updated: len(up), Deleted: len(del), Total: len(m)}
		if len(m) == 0 {
			delete(c.served, typeURL)
		}
		if len(up) == 0 && len(del) == 0 {
			continue
		}
		if err := c.linearLocked(typeURL).UpdateResources(up, del); err != nil {
			// The LinearCache has taken the resources; only notifying a
			// watch failed. Clients get them on their next request.
			c.logger.Error("notify watches", "type", typeURL, "error", err)
		}
	}
	return result
}

// pushOrder returns the type URLs of served: Cluster, ClusterLoadAssignment,
// Listener, RouteConfiguration, then any other in name order.
func pushOrder(served map[string]map[string]entry) []string {
	rank := func(t string) int {
		switch t {
		case resource.ClusterType:
			return 0
		case resource.EndpointType:
			return 1
		case resource.ListenerType:
			return 2
		case resource.RouteType:
			return 3
		default:
			return 4
		}
	}
	out := slices.Collect(maps.Keys(served))
	slices.SortFunc(out, func(a, b string) int {
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra - rb
		}
		return strings.Compare(a, b)
	})
	return out
}

// aliasCountLocked counts the materialized aliases of typeURL. c.mu must
// be held.
func (c *Cache) aliasCountLocked(typeURL string) int {
	if typeURL != resource.ListenerType {
		return 0
	}
	return len(c.aliases)
}

// newEntry validates res and computes its content version.
func newEntry(name string, res types.Resource) (entry, error) {
	if res == nil || !res.ProtoReflect().IsValid() {
		return entry{}, errors.New("nil resource")
	}
	if own := cache.GetResourceName(res); own != "" && own != name {
		return entry{}, fmt.Errorf("resource names itself %q", own)
	}
	v, err := contentVersion(res)
	if err != nil {
		return entry{}, err
	}
	return entry{res: res, version: v}, nil
}

// contentVersion hashes the canonical encoding of res: deterministic, with
// the payload of every Any of a known type re-encoded deterministically too,
// so that equal content always gets the same version.
func contentVersion(res types.Resource) (string, error) {
	canon := proto.Clone(res)
	if err := canonicalizeAnys(canon.ProtoReflect()); err != nil {
		return "", err
	}
	b, err := deterministic.Marshal(canon)
	if err != nil {
		return "", fmt.Errorf("encode: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8]), nil
}

var deterministic = proto.MarshalOptions{Deterministic: true}

// canonicalizeAnys re-encodes, in place and depth first, the payload of
// every Any in m whose type is linked into the binary. Payloads of unknown
// types are left as they are.
func canonicalizeAnys(m protoreflect.Message) error {
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				return true
			}
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				err = canonicalizeAnys(mv.Message())
				return err == nil
			})
		case fd.Message() == nil:
			return true
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = canonicalizeAnys(l.Get(i).Message())
			}
		default:
			err = canonicalizeAnys(v.Message())
		}
		return err == nil
	})
	if err != nil {
		return err
	}
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		return nil
	}
	inner, uerr := a.UnmarshalNew()
	if uerr != nil {
		return nil // a type this binary does not know: compared as bytes
	}
	if err := canonicalizeAnys(inner.ProtoReflect()); err != nil {
		return err
	}
	b, err := deterministic.Marshal(inner)
	if err != nil {
		return fmt.Errorf("encode %s: %w", a.GetTypeUrl(), err)
	}
	a.Value = b
	return nil
}

// aliasesLocked brings the Listener aliases in listeners (the next served
// Listeners, holding the aliases served so far) up to date: an alias
// follows its base Listener, is dropped when the base is gone or when it
// stayed unreferenced across two Applies, and a requested alias whose base
// appeared is materialized (within the limit, see addAliasLocked). It
// returns the aliases to send and the ones to delete. c.mu must be held.
func (c *Cache) aliasesLocked(listeners map[string]entry) (map[string]types.Resource, []string) {
	return c.syncAliasesLocked(listeners, nil, true)
}

// syncAliasesLocked does the work of aliasesLocked and aliasesOfLocked:
// it looks only at the aliases whose base Listener isBase accepts (every
// one when nil), and drops idle aliases only when dropIdle is set (an
// Apply; a delta leaves them to the next Apply or to eviction). c.mu must
// be held.
func (c *Cache) syncAliasesLocked(listeners map[string]entry, isBase func(string) bool, dropIdle bool) (map[string]types.Resource, []string) {
	var (
		updated map[string]types.Resource
		deleted []string
	)
	drop := func(name string) {
		delete(listeners, name)
		delete(c.aliases, name)
		delete(c.aliasIdle, name)
		deleted = append(deleted, name)
	}
	for _, name := range slices.Sorted(maps.Keys(c.aliases)) {
		e, ok := listeners[name]
		if !ok {
			drop(name) // left out with a resource of that name that was refused
			continue
		}
		if e.aliasOf == "" {
			// Replaced by a Listener of that name: no longer an alias.
			delete(c.aliases, name)
			delete(c.aliasIdle, name)
			continue
		}
		if isBase != nil && !isBase(e.aliasOf) {
			continue
		}
		if dropIdle {
			if c.aliasRefs[name] == 0 {
				if c.aliasIdle[name] {
					drop(name)
					continue
				}
				c.aliasIdle[name] = true
			} else {
				delete(c.aliasIdle, name)
			}
		}
		base, ok := listeners[e.aliasOf]
		if !ok || base.aliasOf != "" {
			drop(name)
			continue
		}
		if base.res == e.base {
			continue
		}
		fresh, err := aliasEntry(name, base)
		if err != nil {
			c.logger.Error("listener alias", "listener", name, "error", err)
			drop(name)
			continue
		}
		listeners[name] = fresh
		if fresh.version != e.version {
			if updated == nil {
				updated = make(map[string]types.Resource)
			}
			updated[name] = fresh.res
		}
	}
	for _, name := range slices.Sorted(maps.Keys(c.aliasRefs)) {
		if host, ok := splitHostPort(name); isBase != nil && (!ok || !isBase(host)) {
			continue
		}
		added, evicted := c.addAliasLocked(listeners, name)
		for _, ev := range evicted {
			if updated != nil {
				delete(updated, ev)
			}
			deleted = append(deleted, ev)
		}
		if added {
			if updated == nil {
				updated = make(map[string]types.Resource)
			}
			updated[name] = listeners[name].res
		}
	}
	return updated, deleted
}

// addAliasLocked materializes in listeners the alias name (host:port) of
// the Listener host, when name is not itself served and host is a served
// Listener (not an alias). At most c.maxAliases aliases exist: at the
// limit, the aliases no watch names are evicted first (removed from
// listeners and returned); when every alias is in use, none is added and a
// warning is logged. This is the one place aliases are created, for
// requests and Applies alike. c.mu must be held.
func (c *Cache) addAliasLocked(listeners map[string]entry, name string) (added bool, evicted []string) {
	if _, ok := listeners[name]; ok {
		return false, nil // a Listener of that name, or an alias, already exists
	}
	host, ok := splitHostPort(name)
	if !ok {
		return false, nil
	}
	base, ok := listeners[host]
	if !ok || base.aliasOf != "" {
		return false, nil // materialized by Apply if host appears
	}
	if len(c.aliases) >= c.maxAliases {
		for _, alias := range slices.Sorted(maps.Keys(c.aliases)) {
			if c.aliasRefs[alias] == 0 {
				delete(listeners, alias)
				delete(c.aliases, alias)
				delete(c.aliasIdle, alias)
				evicted = append(evicted, alias)
			}
		}
		if len(c.aliases) >= c.maxAliases {
			c.logger.Warn("listener alias limit reached; alias not served", "listener", name, "max", c.maxAliases)
			return false, evicted
		}
	}
	e, err := aliasEntry(name, base)
	if err != nil {
		c.logger.Error("listener alias", "listener", name, "error", err)
		return false, evicted
	}
	listeners[name] = e
	c.aliases[name] = struct{}{}
	return true, evicted
}

// aliasEntry clones the base Listener under the alias name.
func aliasEntry(name string, base entry) (entry, error) {
	l, ok := base.res.(*listenerv3.Listener)
	if !ok {
		return entry{}, fmt.Errorf("base is a %T, not a Listener", base.res)
	}
	clone := proto.Clone(l).(*listenerv3.Listener)
	clone.Name = name
	v, err := contentVersion(clone)
	if err != nil {
		return entry{}, err
	}
	return entry{res: clone, version: v, aliasOf: l.GetName(), base: base.res}, nil
}

// splitHostPort splits a Listener name host:port at its last colon; the
// port must be a decimal number in 1..65535 and the host non-empty.
func splitHostPort(name string) (string, bool) {
	i := strings.LastIndexByte(name, ':')
	if i <= 0 || i == len(name)-1 {
		return "", false
	}
	port := name[i+1:]
	for _, r := range port {
		if r < '0' || r > '9' {
			return "", false
		}
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return "", false
	}
	return name[:i], true
}

// Resource returns the resource served under typeURL and name (Listener
// aliases included) with its content version. The resource is shared and
// must not be modified.
func (c *Cache) Resource(typeURL, name string) (types.Resource, string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.served[typeURL][name]
	if !ok {
		return nil, "", false
	}
	return e.res, e.version, true
}

// Names returns the sorted names of the resources served under typeURL,
// Listener aliases included.
func (c *Cache) Names(typeURL string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.served[typeURL]))
}

// Len returns the number of resources served under typeURL, Listener
// aliases included: len(Names(typeURL)) without copying or sorting them.
func (c *Cache) Len(typeURL string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.served[typeURL])
}

// Versions returns, per type URL, every served resource name with its
// content version. The result is a copy, safe to encode as JSON.
func (c *Cache) Versions() map[string]map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]map[string]string, len(c.served))
	for typeURL, m := range c.served {
		v := make(map[string]string, len(m))
		for name, e := range m {
			v[name] = e.version
		}
		out[typeURL] = v
	}
	return out
}
