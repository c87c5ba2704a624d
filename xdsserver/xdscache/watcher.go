package xdscache

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
)

// ConfigWatcher returns the cache.Cache to give go-control-plane's server.
// It routes each request to the LinearCache of its type URL (through a
// cache.MuxCache) and answers requests for a type URL it does not serve with
// an error.
//
// Listener aliases: a gRPC client dialing xds:///name:8080 asks for the
// Listener "name:8080", while Listeners are emitted under "name" only. When
// a state-of-the-world LDS request names host:port (split at the last colon,
// port a decimal in 1..65535) that is not itself a Listener and host is one,
// the alias is materialized, before the watch is created, as a copy of
// Listener host named host:port. Every Apply keeps aliases in step with
// their base and removes them when the base disappears (they come back if
// the base does and they are still requested).
//
// Aliases are bounded in two ways: an alias that no open watch names is
// dropped once it has stayed unreferenced across two consecutive Applies
// (not immediately, because the server cancels a watch just before creating
// its successor on every ACK); and at most Config.MaxAliases aliases exist
// at once: when the limit is reached, unreferenced aliases are dropped
// first, and a request beyond it gets no alias (the client reports the
// Listener as missing) and a warning is logged.
//
// NACKs: a rejected response is not sent again; the watch created for a
// NACK fires on the next change of the resources it names.
//
// Delta requests are routed but get no aliases.
func (c *Cache) ConfigWatcher() cache.Cache { return watcher{c: c} }

type watcher struct{ c *Cache }

var _ cache.Cache = watcher{}

// CreateWatch implements cache.ConfigWatcher.
func (w watcher) CreateWatch(req *cache.Request, sub cache.Subscription, ch chan cache.Response) (func(), error) {
	mux := w.c.mux.Load()
	if _, ok := mux.Caches[req.GetTypeUrl()]; !ok {
		return nil, fmt.Errorf("xdscache: type %q is not served", req.GetTypeUrl())
	}
	if req.GetErrorDetail() != nil && !strings.HasPrefix(req.GetVersionInfo(), w.c.prefix) {
		// A NACK from a client that has accepted nothing from this cache
		// yet carries an empty (or foreign) version, which makes the
		// LinearCache answer at once with the resources just rejected, and
		// the client rejects them again, in a tight loop. Presenting the
		// request as one at a version of this cache makes the watch wait
		// for a change instead.
		req = proto.CloneOf(req)
		req.VersionInfo = w.c.prefix
	}
	var release func()
	if req.GetTypeUrl() == resource.ListenerType {
		release = w.c.acquireAliases(sub.SubscribedResources())
	}
	cancel, err := mux.CreateWatch(req, sub, ch)
	if err != nil {
		if release != nil {
			release()
		}
		return nil, fmt.Errorf("xdscache: %w", err)
	}
	if release == nil {
		return cancel, nil
	}
	var once sync.Once
	return func() {
		if cancel != nil {
			cancel()
		}
		once.Do(release)
	}, nil
}

// CreateDeltaWatch implements cache.ConfigWatcher.
func (w watcher) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, ch chan cache.DeltaResponse) (func(), error) {
	mux := w.c.mux.Load()
	if _, ok := mux.Caches[req.GetTypeUrl()]; !ok {
		return nil, fmt.Errorf("xdscache: type %q is not served", req.GetTypeUrl())
	}
	cancel, err := mux.CreateDeltaWatch(req, sub, ch)
	if err != nil {
		return nil, fmt.Errorf("xdscache: %w", err)
	}
	return cancel, nil
}

// Fetch implements cache.ConfigFetcher. LinearCache does not support
// fetching, so neither does the Cache.
func (w watcher) Fetch(ctx context.Context, req *cache.Request) (cache.Response, error) {
	resp, err := w.c.mux.Load().Fetch(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("xdscache: %w", err)
	}
	return resp, nil
}

// acquireAliases records one more watch naming each host:port name in
// names and materializes the aliases that can be (see addAliasLocked). It
// returns the function that releases the references, nil when no name
// looks like host:port.
func (c *Cache) acquireAliases(names map[string]struct{}) func() {
	c.mu.Lock()
	defer c.mu.Unlock()

	var held []string
	var add map[string]types.Resource
	var evicted []string
	listeners := c.served[resource.ListenerType]
	for _, name := range slices.Sorted(maps.Keys(names)) {
		if _, ok := splitHostPort(name); !ok {
			continue
		}
		held = append(held, name)
		c.aliasRefs[name]++
		delete(c.aliasIdle, name)
		if listeners == nil {
			continue // materialized by Apply if the base appears
		}
		added, ev := c.addAliasLocked(listeners, name)
		for _, e := range ev {
			delete(add, e)
		}
		evicted = append(evicted, ev...)
		if added {
			if add == nil {
				add = make(map[string]types.Resource)
			}
			add[name] = listeners[name].res
		}
	}
	if len(add) > 0 || len(evicted) > 0 {
		c.logger.Debug("listener aliases changed", "added", slices.Sorted(maps.Keys(add)), "dropped", evicted)
		if err := c.linearLocked(resource.ListenerType).UpdateResources(add, evicted); err != nil {
			c.logger.Error("notify watches", "type", resource.ListenerType, "error", err)
		}
	}
	if len(held) == 0 {
		return nil
	}
	return func() { c.releaseAliases(held) }
}

// releaseAliases drops one reference to each name.
func (c *Cache) releaseAliases(names []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, name := range names {
		if c.aliasRefs[name] <= 1 {
			delete(c.aliasRefs, name)
			continue
		}
		c.aliasRefs[name]--
	}
}
