package consulconfig

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/consulwatch"
)

// Kinds are the config entry kinds whose lists are watched: the four that
// shape a service's chain, and proxy-defaults, which sets every chain's
// default protocol.
var Kinds = []string{api.ServiceRouter, api.ServiceSplitter, api.ServiceResolver, api.ServiceDefaults, api.ProxyDefaults}

// Config configures a Watcher.
type Config struct {
	// Client is the Consul API client (consulwatch.NewClient). Required.
	Client *api.Client
	// Logger receives a line per unsupported field when it appears and
	// when it goes. Default: discard.
	Logger *slog.Logger
	// Registerer receives the watcher's metrics. Default: nil (kept, not
	// registered).
	Registerer prometheus.Registerer
	// ConsulMetrics counts failed Consul requests by kind. Default: nil.
	ConsulMetrics *consulwatch.Metrics
	// ACL receives what the token hides: entry lists filtered by ACLs, or
	// 403s. A filtered list is never taken for the whole: the last
	// complete read stays in effect (nothing is published before one).
	// Default: nil, not reported.
	ACL *consulwatch.ACL
	// WaitTime is how long one blocking query waits. Default: 1m.
	WaitTime time.Duration
	// MinInterval separates two queries of one list (plus jitter).
	// Default: 50ms.
	MinInterval time.Duration
	// RetryInterval is the wait before reading a chain again after a
	// failed read. Default: 1s.
	RetryInterval time.Duration
}

// Snapshot is the converted chains at one point. Immutable.
type Snapshot struct {
	// Chains are the chains read, by service: those of the services
	// that have at least one config entry.
	Chains map[string]*Chain
	// Converted are the chains' policies before merging, by service.
	Converted map[string]*Converted
	// Entries lists, by service, the kinds of config entries it has.
	Entries map[string][]string
	// entryUnsupported is what the service-defaults entries set that is
	// not sent, by service.
	entryUnsupported map[string][]Unsupported
}

// Status describes the watcher.
type Status struct {
	// Synced is true once every list was read and every chain of a
	// service with entries was read once.
	Synced bool
	// Reachable is false while Consul's answers fail.
	Reachable bool
	// LastError is the last failure, empty once Consul answers again.
	LastError string
	// Chains is the number of chains read.
	Chains int
	// Pending lists the services whose chain could not be read yet.
	Pending []string
}

// Watcher follows the config entries and the chains they compile into,
// and publishes a Snapshot after the first complete read and after every
// change.
type Watcher struct {
	cfg     Config
	logger  *slog.Logger
	tracker *consulwatch.Tracker
	running atomic.Bool
	latest  *consulwatch.Latest[*Snapshot]

	chainsGauge prometheus.Gauge
	reads       prometheus.Counter

	mu     sync.Mutex
	status Status
}

// New returns a Watcher; Run starts it.
func New(cfg Config) (*Watcher, error) {
	if cfg.Client == nil {
		return nil, errors.New("consulconfig: Config.Client is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = time.Second
	}
	w := &Watcher{
		cfg:    cfg,
		logger: cfg.Logger,
		latest: consulwatch.NewLatest[*Snapshot](),
		chainsGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_consulconfig_chains",
			Help: "Discovery chains read: one per service with a config entry.",
		}),
		reads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_consulconfig_chain_reads_total",
			Help: "Discovery chain reads, each caused by a change of a config entry the chain depends on.",
		}),
	}
	tracker, err := consulwatch.NewTracker(consulwatch.TrackerConfig{
		Client:    cfg.Client,
		Component: "consulconfig",
		Logger:    cfg.Logger,
		Metrics:   cfg.ConsulMetrics,
		Keeping:   "keeping the last chains read",
	})
	if err != nil {
		return nil, fmt.Errorf("consulconfig: %w", err)
	}
	w.tracker = tracker
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{w.chainsGauge, w.reads} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("consulconfig: register metrics: %w", err)
			}
		}
	}
	return w, nil
}

// Snapshots returns the latest-value channel of snapshots.
func (w *Watcher) Snapshots() <-chan *Snapshot { return w.latest.C() }

// Latest returns the last published snapshot, nil before the first.
func (w *Watcher) Latest() *Snapshot {
	s, _ := w.latest.Load()
	return s
}

// Status returns the watcher's state.
func (w *Watcher) Status() Status {
	w.mu.Lock()
	st := w.status
	st.Pending = slices.Clone(w.status.Pending)
	w.mu.Unlock()
	reach := w.tracker.Status()
	st.Reachable, st.LastError = reach.Reachable || reach.LastError == "", reach.LastError
	return st
}

// listUpdate is one changed list of entries of one kind.
type listUpdate struct {
	kind string
	listed
}

// listed is one read of a list.
type listed struct {
	// versions maps entry name to ModifyIndex.
	versions map[string]uint64
	// unsupported is what the entries themselves (not their chains) set
	// that is not sent: service-defaults fields for sidecar proxies.
	unsupported map[string][]Unsupported
}

// list reads one kind's entries.
func list(entries *api.ConfigEntries, kind string, opts *api.QueryOptions) (listed, *api.QueryMeta, error) {
	es, meta, err := entries.List(kind, opts)
	if err != nil {
		return listed{}, meta, err
	}
	out := listed{versions: make(map[string]uint64, len(es)), unsupported: map[string][]Unsupported{}}
	for _, e := range es {
		out.versions[e.GetName()] = e.GetModifyIndex()
		if sd, ok := e.(*api.ServiceConfigEntry); ok {
			if u := defaultsUnsupported(sd); len(u) > 0 {
				out.unsupported[sd.Name] = u
			}
		}
	}
	return out, meta, nil
}

// defaultsUnsupported lists the service-defaults fields that configure
// Envoy sidecars and have no counterpart in a policy.
func defaultsUnsupported(e *api.ServiceConfigEntry) []Unsupported {
	var out []Unsupported
	add := func(field, reason string) {
		out = append(out, Unsupported{Service: e.Name, Entry: api.ServiceDefaults + "/" + e.Name, Field: field, Reason: reason})
	}
	if e.UpstreamConfig != nil {
		add("UpstreamConfig", "limits and PassiveHealthCheck apply to this service's calls to its upstreams (per caller), while a Trellis policy applies to every caller of its service, and PassiveHealthCheck counts consecutive errors, which gRPC's outlier detection cannot express: not sent (set circuit_breaker or outlier_detection in the upstream's Trellis policy)")
	}
	if e.RateLimits != nil {
		add("RateLimits", "gRPC servers have no xDS rate limiting: not sent")
	}
	if len(e.EnvoyExtensions) > 0 {
		add("EnvoyExtensions", "there is no Envoy: not sent")
	}
	if e.MaxInboundConnections != 0 || e.LocalConnectTimeoutMs != 0 || e.LocalRequestTimeoutMs != 0 || e.BalanceInboundConnections != "" {
		add("MaxInboundConnections, LocalConnectTimeoutMs, LocalRequestTimeoutMs, BalanceInboundConnections", "configure a sidecar's inbound listener, which a proxyless server does not have: not sent")
	}
	return out
}

// Run follows the entries until ctx is done, then returns nil.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("consulconfig: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { w.tracker.Run(ctx) })
	updates := make(chan listUpdate)
	for _, kind := range Kinds {
		wg.Go(func() { w.watchList(ctx, kind, updates) })
	}
	w.manage(ctx, updates)
	cancel()
	return nil
}

// watchList runs one blocking list query and hands each change on.
func (w *Watcher) watchList(ctx context.Context, kind string, updates chan<- listUpdate) {
	entries := w.cfg.Client.ConfigEntries()
	consulwatch.Run(ctx, w.tracker, consulwatch.Query[listed]{
		Name: kind + " config entries",
		Fetch: func(opts *api.QueryOptions) (listed, *api.QueryMeta, error) {
			return list(entries, kind, opts)
		},
		Equal: func(a, b listed) bool { return maps.Equal(a.versions, b.versions) },
		Succeeded: func(meta *api.QueryMeta) {
			w.cfg.ACL.Answered("consulconfig", kind+" config entries", meta.ResultsFilteredByACLs, consulwatch.PermServiceRead,
				"consulconfig: "+kind+" config entries are filtered by ACLs; the last complete read stays in effect (none before one)")
		},
		Failed: func(err *consulwatch.Error, _ time.Duration) {
			w.cfg.ACL.Failed("consulconfig", kind+" config entries", err)
		},
		Changed: func(v listed, _ *api.QueryMeta) bool {
			select {
			case updates <- listUpdate{kind: kind, listed: v}:
				return true
			case <-ctx.Done():
				return false
			}
		},
		WaitTime:     w.cfg.WaitTime,
		MinInterval:  w.cfg.MinInterval,
		SkipFiltered: true,
	})
}

// manage keeps the lists, reads the chains a change can affect, and
// publishes.
func (w *Watcher) manage(ctx context.Context, updates <-chan listUpdate) {
	lists := map[string]map[string]uint64{}
	unsupported := map[string][]Unsupported{}
	chains := map[string]*Chain{}
	pending := map[string]bool{}
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-updates:
			prev := lists[u.kind]
			lists[u.kind] = u.versions
			if u.kind == api.ServiceDefaults {
				unsupported = u.unsupported
			}
			changed := map[string]bool{}
			for name, v := range u.versions {
				if pv, ok := prev[name]; !ok || pv != v {
					changed[name] = true
				}
			}
			for name := range prev {
				if _, ok := u.versions[name]; !ok {
					changed[name] = true
				}
			}
			all := u.kind == api.ProxyDefaults
			for svc := range withEntries(lists) {
				if _, ok := chains[svc]; !ok || all || changed[svc] || references(chains[svc], changed) {
					pending[svc] = true
				}
			}
			for svc := range chains {
				if !withEntries(lists)[svc] {
					delete(chains, svc)
				}
			}
			for svc := range pending {
				if !withEntries(lists)[svc] {
					delete(pending, svc)
				}
			}
		case <-retry:
			retry = nil
		}
		for _, svc := range sortedKeys(pending) {
			w.reads.Inc()
			ch, err := readChain(ctx, w.cfg.Client, svc)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				w.tracker.Failure("discovery chain of "+svc, err)
				w.logger.Debug("discovery chain read failed", "service", svc, "error", err)
				continue
			}
			chains[svc] = ch
			delete(pending, svc)
		}
		if len(pending) > 0 && retry == nil {
			retry = time.After(w.cfg.RetryInterval)
		}
		synced := len(lists) == len(Kinds) && len(pending) == 0
		w.mu.Lock()
		w.status.Chains = len(chains)
		w.status.Pending = sortedKeys(pending)
		if synced {
			w.status.Synced = true
		}
		publish := w.status.Synced
		w.mu.Unlock()
		w.chainsGauge.Set(float64(len(chains)))
		if publish {
			w.publish(lists, chains, unsupported)
		}
	}
}

// withEntries is the set of services with at least one service-scoped
// entry (proxy-defaults is global).
func withEntries(lists map[string]map[string]uint64) map[string]bool {
	out := map[string]bool{}
	for kind, names := range lists {
		if kind == api.ProxyDefaults {
			continue
		}
		for name := range names {
			out[name] = true
		}
	}
	return out
}

// references reports whether a chain depends on an entry of one of the
// services: a chain holds a node or target for every service whose
// entries Consul compiled into it.
func references(ch *Chain, services map[string]bool) bool {
	if ch == nil || len(services) == 0 {
		return false
	}
	for _, t := range ch.Targets {
		if services[t.Service] {
			return true
		}
	}
	for _, n := range ch.Nodes {
		if services[nodeService(n.Name)] {
			return true
		}
	}
	return false
}

// readChain reads one compiled chain.
func readChain(ctx context.Context, client *api.Client, svc string) (*Chain, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var resp chainResponse
	if _, err := client.Raw().Query("/v1/discovery-chain/"+url.PathEscape(svc), &resp, (&api.QueryOptions{}).WithContext(rctx)); err != nil {
		return nil, fmt.Errorf("consulconfig: discovery chain of %q: %w", svc, err)
	}
	if resp.Chain == nil {
		return nil, fmt.Errorf("consulconfig: discovery chain of %q: no chain in the answer", svc)
	}
	return resp.Chain, nil
}

func (w *Watcher) publish(lists map[string]map[string]uint64, chains map[string]*Chain, unsupported map[string][]Unsupported) {
	snap := &Snapshot{Chains: maps.Clone(chains), Entries: map[string][]string{}, entryUnsupported: unsupported}
	for _, kind := range Kinds {
		if kind == api.ProxyDefaults {
			continue
		}
		for name := range lists[kind] {
			snap.Entries[name] = append(snap.Entries[name], kind)
		}
	}
	if last := w.Latest(); last != nil && reflect.DeepEqual(last.Chains, snap.Chains) && reflect.DeepEqual(last.Entries, snap.Entries) &&
		reflect.DeepEqual(last.entryUnsupported, snap.entryUnsupported) {
		return // a change no chain shows (an entry rewritten as it was)
	}
	snap.Converted = convertWith(snap.Chains, unsupported)
	w.latest.Publish(snap)
}

// Read reads every config entry list and the chains of the services with
// entries once, for one-off checks (trellis policy validate --consul).
func Read(ctx context.Context, client *api.Client) (*Snapshot, error) {
	lists := map[string]map[string]uint64{}
	var unsupported map[string][]Unsupported
	for _, kind := range Kinds {
		l, _, err := list(client.ConfigEntries(), kind, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("consulconfig: list %s config entries: %w", kind, err)
		}
		lists[kind] = l.versions
		if kind == api.ServiceDefaults {
			unsupported = l.unsupported
		}
	}
	chains := map[string]*Chain{}
	for _, svc := range sortedKeys(withEntries(lists)) {
		ch, err := readChain(ctx, client, svc)
		if err != nil {
			return nil, err
		}
		chains[svc] = ch
	}
	snap := &Snapshot{Chains: chains, Entries: map[string][]string{}, Converted: convertWith(chains, unsupported), entryUnsupported: unsupported}
	for _, kind := range Kinds {
		if kind == api.ProxyDefaults {
			continue
		}
		for _, name := range sortedKeys(lists[kind]) {
			snap.Entries[name] = append(snap.Entries[name], kind)
		}
	}
	return snap, nil
}
