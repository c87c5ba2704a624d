package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/consulwatch"
	"github.com/trellis-mesh/trellis/internal/policy"
	policyv1 "github.com/trellis-mesh/trellis/proto/trellis/policy/v1"
)

// WatcherConfig configures a Watcher.
type WatcherConfig struct {
	// Client is the Consul API client. Required.
	Client *consulapi.Client
	// Prefix is the key prefix policies are stored under, as in Config.
	// Default: "trellis/policies/".
	Prefix string
	// Logger receives a warning for every invalid value and a line when it
	// is fixed or removed. Default: discard.
	Logger *slog.Logger
	// Registerer receives the watcher's metrics. Default: nil (the metrics
	// are kept but not registered).
	Registerer prometheus.Registerer
	// ConsulMetrics counts failed Consul requests by kind. Default: nil.
	ConsulMetrics *consulwatch.Metrics
	// ACL receives what the token hides: a key list filtered by ACLs, or
	// 403s. A filtered read is never taken for the whole: the last
	// complete read stays in effect (none before one). Default: nil, not
	// reported.
	ACL *consulwatch.ACL
	// KnownService tells whether a service is in the catalog; it only
	// affects validation warnings, which the watcher logs at debug level.
	// Default: every service is known.
	KnownService func(service string) bool
	// WaitTime is how long one blocking query waits for a change. A query
	// that has not returned after WaitTime + WaitTime/16 (Consul's jitter)
	// + 5s is abandoned as failed, so that a Consul that stops answering
	// is noticed. Default: 1m.
	WaitTime time.Duration
	// MinDelay is the least time between two queries, to which a random
	// jitter of up to MinDelay is added. Default: 100ms.
	MinDelay time.Duration
	// MaxBackoff caps the wait after consecutive failed queries, which
	// starts at 250ms and doubles. Default: 30s.
	MaxBackoff time.Duration
}

// Snapshot is the set of valid policies at one point, in canonical form
// (policy.Normalize). It is immutable: neither the maps nor the policies may
// be modified.
type Snapshot struct {
	// Policies are the policies in effect, by service.
	Policies map[string]*policyv1.ServicePolicy
	// Revisions are the revisions of Policies, by service.
	Revisions map[string]uint64
	// Index is the Consul index of the read the snapshot comes from.
	Index uint64
}

// InvalidKey is a key under the prefix whose value is ignored.
type InvalidKey struct {
	// Key is the full Consul key.
	Key string
	// Revision is the key's ModifyIndex.
	Revision uint64
	// Reason says what is wrong with the value.
	Reason string
	// KeptRevision is the revision of the last good policy still applied
	// for the key's service, 0 when there is none.
	KeptRevision uint64
}

// WatchStatus describes the watcher, for readiness and debugging.
type WatchStatus struct {
	// Synced is true once the first complete read was published.
	Synced bool
	// Reachable is false while queries to Consul fail.
	Reachable bool
	// LastContact is when Consul last answered.
	LastContact time.Time
	// LastError is the last failed query's error, empty once one succeeds.
	LastError string
	// Index is the Consul index of the last processed read.
	Index uint64
	// Policies is the number of policies in effect.
	Policies int
	// Invalid lists the ignored keys, sorted by key.
	Invalid []InvalidKey
}

// Watcher follows the policies under a prefix and publishes a Snapshot
// after the first complete read and after every change of the policies in
// effect. A value that cannot be decoded, is stored under a key that does
// not name its service, or fails validation is ignored and reported (log,
// metrics, Status); its service keeps its last good policy until the key is
// fixed or deleted.
type Watcher struct {
	kv       *consulapi.KV
	prefix   string
	cfg      WatcherConfig
	logger   *slog.Logger
	running  atomic.Bool
	snapshot chan *Snapshot
	latest   atomic.Pointer[Snapshot]

	invalidGauge  prometheus.Gauge
	policiesGauge prometheus.Gauge
	errors        *prometheus.CounterVec
	snapshots     prometheus.Counter

	// Owned by Run.
	decoded   map[string]decodedValue
	good      map[string]*Stored
	published map[string]uint64

	// tracker follows Consul's reachability for the watch.
	tracker *consulwatch.Tracker

	mu     sync.Mutex // guards status
	status WatchStatus
}

type decodedValue struct {
	modifyIndex uint64
	policy      *policyv1.ServicePolicy
	err         error
}

// Error kinds counted by trellis_policy_errors_total.
const (
	errKindDecode     = "decode"
	errKindKey        = "key"
	errKindValidation = "validation"
	errKindConsul     = "consul"
)

// NewWatcher returns a Watcher; Run starts it.
func NewWatcher(cfg WatcherConfig) (*Watcher, error) {
	if cfg.Client == nil {
		return nil, errors.New("store: WatcherConfig.Client is required")
	}
	prefix, err := normalizePrefix(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.KnownService == nil {
		cfg.KnownService = func(string) bool { return true }
	}
	if cfg.WaitTime <= 0 {
		cfg.WaitTime = time.Minute
	}
	if cfg.MinDelay <= 0 {
		cfg.MinDelay = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	w := &Watcher{
		kv:       cfg.Client.KV(),
		prefix:   prefix,
		cfg:      cfg,
		logger:   cfg.Logger,
		snapshot: make(chan *Snapshot, 1),
		invalidGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_policy_invalid",
			Help: "Policy keys in Consul whose value is currently ignored because it is invalid.",
		}),
		policiesGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_policy_policies",
			Help: "Service policies in effect.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_policy_errors_total",
			Help: "Invalid policy values seen (kind decode, key or validation, counted once per key revision) and failed Consul queries (kind consul).",
		}, []string{"kind"}),
		snapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_policy_snapshots_total",
			Help: "Policy snapshots published.",
		}),
		decoded:   map[string]decodedValue{},
		good:      map[string]*Stored{},
		published: nil,
		status:    WatchStatus{Reachable: true},
	}
	tracker, err := consulwatch.NewTracker(consulwatch.TrackerConfig{
		Client:    cfg.Client,
		Component: "policy",
		Logger:    cfg.Logger.With("prefix", prefix),
		Metrics:   cfg.ConsulMetrics,
		Errors:    w.errors.WithLabelValues(errKindConsul),
		Keeping:   "keeping the last good policies",
	})
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	w.tracker = tracker
	for _, kind := range []string{errKindDecode, errKindKey, errKindValidation, errKindConsul} {
		w.errors.WithLabelValues(kind)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{w.invalidGauge, w.policiesGauge, w.errors, w.snapshots} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("store: register metrics: %w", err)
			}
		}
	}
	return w, nil
}

// Snapshots returns the latest-value channel of snapshots: it holds at most
// one snapshot, the newest not yet received; older unreceived ones are
// dropped. It is never closed.
func (w *Watcher) Snapshots() <-chan *Snapshot { return w.snapshot }

// Latest returns the last published snapshot, nil before the first.
func (w *Watcher) Latest() *Snapshot { return w.latest.Load() }

// Status returns the watcher's current status.
func (w *Watcher) Status() WatchStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.status
	st.Invalid = append([]InvalidKey(nil), w.status.Invalid...)
	reach := w.tracker.Status()
	st.Reachable, st.LastError, st.LastContact = reach.Reachable || reach.LastError == "", reach.LastError, reach.LastContact
	return st
}

// Run follows the prefix until ctx is done, then returns nil. Failed
// queries are retried with backoff; Run only returns an error when called
// twice.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("store: watcher: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { w.tracker.Run(ctx) })
	// A read filtered by ACLs is skipped (SkipFiltered): the last complete
	// read stays in effect.
	permission := consulwatch.KeyPermission("read", w.prefix)
	consulwatch.Run(ctx, w.tracker, consulwatch.Query[consulapi.KVPairs]{
		Name: "policies under " + w.prefix,
		Fetch: func(opts *consulapi.QueryOptions) (consulapi.KVPairs, *consulapi.QueryMeta, error) {
			pairs, meta, err := w.kv.List(w.prefix, opts)
			return pairs, meta, err
		},
		Succeeded: func(meta *consulapi.QueryMeta) {
			w.cfg.ACL.Answered("policy", "policies", meta.ResultsFilteredByACLs, permission,
				"policies under "+w.prefix+": the key list is filtered by ACLs; the last complete read stays in effect (none before one)")
		},
		Failed: func(err *consulwatch.Error, _ time.Duration) { w.cfg.ACL.Failed("policy", "policies", err) },
		Changed: func(pairs consulapi.KVPairs, meta *consulapi.QueryMeta) bool {
			w.process(pairs, meta.LastIndex)
			return true
		},
		WaitTime:     w.cfg.WaitTime,
		MinInterval:  w.cfg.MinDelay,
		MaxBackoff:   w.cfg.MaxBackoff,
		SkipFiltered: true,
	})
	cancel()
	return nil
}

// candidate is a value that decoded and sits under its service's key.
type candidate struct {
	key    string
	stored *Stored
}

// process turns one complete read of the prefix into the policies in
// effect, reports invalid keys and publishes a snapshot when the policies in
// effect changed (or on the first read).
func (w *Watcher) process(pairs consulapi.KVPairs, index uint64) {
	decoded := make(map[string]decodedValue, len(pairs))
	candidates := map[string]candidate{}
	invalid := map[string]InvalidKey{}
	kinds := map[string]string{}
	present := map[string]bool{} // services whose key exists

	for _, pair := range pairs {
		service := strings.TrimPrefix(pair.Key, w.prefix)
		if service == "" || strings.HasSuffix(service, "/") {
			// The prefix itself or a "folder" key, as Consul's UI
			// creates them.
			continue
		}
		if strings.Contains(service, "/") {
			invalid[pair.Key] = InvalidKey{Key: pair.Key, Revision: pair.ModifyIndex,
				Reason: fmt.Sprintf("nested key: a policy is stored as %s<service>", w.prefix)}
			kinds[pair.Key] = errKindKey
			continue
		}
		present[service] = true
		d, ok := w.decoded[pair.Key]
		if !ok || d.modifyIndex != pair.ModifyIndex {
			p, err := decode(pair.Value)
			d = decodedValue{modifyIndex: pair.ModifyIndex, policy: policy.Normalize(p), err: err}
		}
		decoded[pair.Key] = d
		switch {
		case d.err != nil:
			invalid[pair.Key] = InvalidKey{Key: pair.Key, Revision: pair.ModifyIndex, Reason: d.err.Error()}
			kinds[pair.Key] = errKindDecode
		case d.policy.GetService() != service:
			invalid[pair.Key] = InvalidKey{Key: pair.Key, Revision: pair.ModifyIndex,
				Reason: fmt.Sprintf("the key names service %q but the policy is for service %q", service, d.policy.GetService())}
			kinds[pair.Key] = errKindKey
		default:
			candidates[service] = candidate{key: pair.Key, stored: &Stored{Policy: d.policy, Revision: pair.ModifyIndex}}
		}
	}
	w.decoded = decoded

	// Policies are checked against the policies of the services they route
	// to, as they will be in effect: a policy that is valid on its own, or
	// else the last good policy of its service.
	selfValid := make(map[string]bool, len(candidates))
	for service, c := range candidates {
		_, err := policy.Validate(c.stored.Policy, policy.Env{})
		selfValid[service] = err == nil
	}
	env := policy.Env{
		KnownService: w.cfg.KnownService,
		PolicyOf: func(service string) *policyv1.ServicePolicy {
			if c, ok := candidates[service]; ok && selfValid[service] {
				return c.stored.Policy
			}
			if g, ok := w.good[service]; ok && present[service] {
				return g.Policy
			}
			return nil
		},
	}
	next := make(map[string]*Stored, len(candidates))
	for service, c := range candidates {
		warnings, err := policy.Validate(c.stored.Policy, env)
		if err != nil {
			invalid[c.key] = InvalidKey{Key: c.key, Revision: c.stored.Revision, Reason: err.Error()}
			kinds[c.key] = errKindValidation
			continue
		}
		for _, warning := range warnings {
			w.logger.Debug("policy warning", "service", service, "revision", c.stored.Revision, "warning", warning)
		}
		next[service] = c.stored
	}
	// An invalid value leaves its service's last good policy in effect,
	// as long as the key exists.
	for key, inv := range invalid {
		service := strings.TrimPrefix(key, w.prefix)
		if _, ok := next[service]; ok || !present[service] {
			continue
		}
		if g, ok := w.good[service]; ok {
			next[service] = g
			inv.KeptRevision = g.Revision
			invalid[key] = inv
		}
	}

	w.report(invalid, kinds)
	w.good = next

	revisions := make(map[string]uint64, len(next))
	policies := make(map[string]*policyv1.ServicePolicy, len(next))
	for service, s := range next {
		revisions[service] = s.Revision
		policies[service] = s.Policy
	}
	w.policiesGauge.Set(float64(len(next)))
	w.mu.Lock()
	w.status.Index = index
	w.status.Policies = len(next)
	w.mu.Unlock()

	if w.published != nil && maps.Equal(w.published, revisions) {
		return
	}
	w.published = revisions
	snap := &Snapshot{Policies: policies, Revisions: maps.Clone(revisions), Index: index}
	// The counter and the status are updated before the snapshot can be
	// received, so whoever holds it sees them count it.
	w.snapshots.Inc()
	w.mu.Lock()
	w.status.Synced = true
	w.mu.Unlock()
	w.latest.Store(snap)
	select {
	case <-w.snapshot:
	default:
	}
	w.snapshot <- snap // never blocks: Run is the only sender
	w.logger.Debug("policies published", "policies", len(policies), "index", index)
}

// report logs and counts the invalid keys that are new or changed since the
// previous read, logs the ones that were fixed or removed, and updates the
// gauge and the status.
func (w *Watcher) report(invalid map[string]InvalidKey, kinds map[string]string) {
	w.mu.Lock()
	previous := make(map[string]InvalidKey, len(w.status.Invalid))
	for _, inv := range w.status.Invalid {
		previous[inv.Key] = inv
	}
	list := make([]InvalidKey, 0, len(invalid))
	for _, inv := range invalid {
		list = append(list, inv)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Key < list[j].Key })
	w.status.Invalid = list
	w.mu.Unlock()

	for _, inv := range list {
		if prev, ok := previous[inv.Key]; ok && prev.Revision == inv.Revision && prev.Reason == inv.Reason {
			continue
		}
		w.errors.WithLabelValues(kinds[inv.Key]).Inc()
		attrs := []any{"key", inv.Key, "revision", inv.Revision, "reason", inv.Reason}
		if inv.KeptRevision != 0 {
			attrs = append(attrs, "kept_revision", inv.KeptRevision)
			w.logger.Warn("ignoring invalid policy; keeping the last good one", attrs...)
		} else {
			w.logger.Warn("ignoring invalid policy; the service has no policy", attrs...)
		}
	}
	for key := range previous {
		if _, ok := invalid[key]; ok {
			continue
		}
		w.logger.Info("policy key no longer invalid", "key", key)
	}
	w.invalidGauge.Set(float64(len(list)))
}
