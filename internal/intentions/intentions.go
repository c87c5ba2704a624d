// Package intentions follows Consul's service intentions and publishes them
// as immutable model.Intentions snapshots, for the translator to turn into
// authorization rules of mTLS services.
//
// Intentions are read as config entries of kind "service-intentions" (one
// entry per destination, listing its sources) with blocking queries, which
// Consul supports for that endpoint: an unchanged index or unchanged content
// publishes nothing, an index that went backwards restarts from 0, calls are
// spaced by a minimum delay plus jitter, and errors back off exponentially
// with jitter. When Consul is unreachable the last snapshot stays in effect.
//
// Each intention gets Consul's precedence (exact names above "*", the
// destination above the source: 9, 8, 6, 5 in the default namespace).
// Intentions that cannot concern a workload Trellis serves are left out and
// counted: sources in cluster peers, sameness groups, other partitions or
// namespaces, destinations in other partitions or namespaces. Intentions
// with L7 (HTTP) permissions keep them, in order, as Permissions, which
// the translator turns into RBAC permissions where gRPC can express them
// (their Action is deny, so that a reader ignoring them denies); JWT
// requirements and unknown actions are kept as Conditions, which make the
// whole intention a deny. Intentions that name
// a service not in the catalog are kept and logged at debug level: the
// service may appear later, and callers are often not registered at all.
//
// This package owns reading intentions from Consul. It imports
// internal/model and must not import the xDS packages (xdsserver/...),
// identity or cmd.
package intentions

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/consulwatch"
	"github.com/trellis-mesh/trellis/internal/model"
)

// Kind is the Consul config entry kind that holds intentions.
const Kind = api.ServiceIntentions

// Defaults of the Config fields.
const (
	DefaultWaitTime   = time.Minute
	DefaultMinDelay   = 100 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
)

// Conditions an intention can carry (model.Intention.Conditions).
const (
	ConditionJWT     = "JWT requirements"
	conditionUnknown = "unknown action"
)

// Config configures a Watcher.
type Config struct {
	// Client is the Consul API client. Required.
	Client *api.Client
	// ConsulMetrics counts failed Consul requests by kind. Default: nil.
	ConsulMetrics *consulwatch.Metrics
	// ACL receives what the token hides: config entries filtered by ACLs,
	// or 403s. A filtered read is never taken for the whole, so that no
	// hidden deny is missed: the last complete read stays in effect (none
	// before one). Default: nil, not reported.
	ACL *consulwatch.ACL
	// Logger receives the watcher's logs; pass one tagged with a component
	// attribute. Default: logs are discarded.
	Logger *slog.Logger
	// Registerer receives the trellis_intentions_* metrics.
	// Default: nil, no metrics are registered.
	Registerer prometheus.Registerer
	// KnownService tells whether a service is in the catalog; an intention
	// naming an unknown service is logged at debug level.
	// Default: every service is known.
	KnownService func(service string) bool
	// WaitTime is how long one blocking query waits for a change. A query
	// that has not returned after WaitTime + WaitTime/16 + 5s is abandoned
	// as failed. Default: 1m.
	WaitTime time.Duration
	// MinDelay is the least time between two queries, to which a random
	// jitter of up to MinDelay is added. Default: 100ms.
	MinDelay time.Duration
	// MaxBackoff caps the wait after consecutive failed queries, which
	// starts at 250ms and doubles. Default: 30s.
	MaxBackoff time.Duration
}

// Ignored is an intention left out of the snapshots.
type Ignored struct {
	// Source and Destination name the intention as Consul shows it.
	Source, Destination string
	// Reason says why it cannot concern a workload Trellis serves.
	Reason string
}

// Status describes the watcher, for readiness and debugging.
type Status struct {
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
	// Intentions is the number of intentions in the last snapshot.
	Intentions int
	// Ignored lists the intentions left out of the last snapshot.
	Ignored []Ignored
}

// Watcher follows the intentions in Consul. It publishes a snapshot after
// the first complete read and after every change.
type Watcher struct {
	entries  *api.ConfigEntries
	cfg      Config
	logger   *slog.Logger
	running  atomic.Bool
	snapshot chan *model.Intentions
	latest   atomic.Pointer[model.Intentions]

	intentionsGauge prometheus.Gauge
	ignoredGauge    prometheus.Gauge
	errors          prometheus.Counter
	snapshots       prometheus.Counter

	// Owned by Run.
	published   *model.Intentions
	lastIgnored map[Ignored]bool
	lastUnknown map[string]bool

	// tracker follows Consul's reachability for the watch.
	tracker *consulwatch.Tracker

	mu     sync.Mutex // guards status
	status Status
}

// New returns a Watcher; Run starts it.
func New(cfg Config) (*Watcher, error) {
	if cfg.Client == nil {
		return nil, errors.New("intentions: Config.Client is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.KnownService == nil {
		cfg.KnownService = func(string) bool { return true }
	}
	if cfg.WaitTime <= 0 {
		cfg.WaitTime = DefaultWaitTime
	}
	if cfg.MinDelay <= 0 {
		cfg.MinDelay = DefaultMinDelay
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	w := &Watcher{
		entries:  cfg.Client.ConfigEntries(),
		cfg:      cfg,
		logger:   cfg.Logger,
		snapshot: make(chan *model.Intentions, 1),
		intentionsGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_intentions_intentions",
			Help: "Service intentions in effect.",
		}),
		ignoredGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_intentions_ignored",
			Help: "Service intentions left out because they cannot concern a workload Trellis serves (peers, sameness groups, other partitions or namespaces).",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_intentions_errors_total",
			Help: "Failed Consul queries for service intentions.",
		}),
		snapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_intentions_snapshots_total",
			Help: "Intention snapshots published.",
		}),
		lastIgnored: map[Ignored]bool{},
		lastUnknown: map[string]bool{},
		status:      Status{Reachable: true},
	}
	tracker, err := consulwatch.NewTracker(consulwatch.TrackerConfig{
		Client:    cfg.Client,
		Component: "intentions",
		Logger:    cfg.Logger,
		Metrics:   cfg.ConsulMetrics,
		Errors:    w.errors,
		Keeping:   "keeping the last intentions read",
	})
	if err != nil {
		return nil, fmt.Errorf("intentions: %w", err)
	}
	w.tracker = tracker
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{w.intentionsGauge, w.ignoredGauge, w.errors, w.snapshots} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("intentions: register metrics: %w", err)
			}
		}
	}
	return w, nil
}

// Snapshots returns the latest-value channel of snapshots: it holds at most
// one snapshot, the newest not yet received; older unreceived ones are
// dropped. It is never closed.
func (w *Watcher) Snapshots() <-chan *model.Intentions { return w.snapshot }

// Latest returns the last published snapshot, nil before the first.
func (w *Watcher) Latest() *model.Intentions { return w.latest.Load() }

// Status returns the watcher's current status.
func (w *Watcher) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.status
	st.Ignored = append([]Ignored(nil), w.status.Ignored...)
	reach := w.tracker.Status()
	st.Reachable, st.LastError, st.LastContact = reach.Reachable || reach.LastError == "", reach.LastError, reach.LastContact
	return st
}

// Run follows the intentions until ctx is done, then returns nil. Failed
// queries are retried with backoff; Run only returns an error when called
// twice.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("intentions: watcher: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { w.tracker.Run(ctx) })
	// A read filtered by ACLs is skipped (SkipFiltered): the last complete
	// read stays in effect.
	consulwatch.Run(ctx, w.tracker, consulwatch.Query[[]api.ConfigEntry]{
		Name: "service-intentions config entries",
		Fetch: func(opts *api.QueryOptions) ([]api.ConfigEntry, *api.QueryMeta, error) {
			entries, meta, err := w.entries.List(Kind, opts)
			return entries, meta, err
		},
		Succeeded: func(meta *api.QueryMeta) {
			w.cfg.ACL.Answered("intentions", "intentions", meta.ResultsFilteredByACLs, consulwatch.PermIntentionRead,
				"intentions: the service-intentions config entries are filtered by ACLs; the last complete read stays in effect (none before one), so that no hidden deny is missed")
		},
		Failed: func(err *consulwatch.Error, _ time.Duration) { w.cfg.ACL.Failed("intentions", "intentions", err) },
		Changed: func(entries []api.ConfigEntry, meta *api.QueryMeta) bool {
			w.process(entries, meta.LastIndex)
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

// process turns one complete read into a snapshot, logs what changed in
// what was left out, and publishes the snapshot when the intentions changed
// (or on the first read).
func (w *Watcher) process(entries []api.ConfigEntry, index uint64) {
	list, ignored := Convert(entries)
	next := model.NewIntentions(list)

	nowIgnored := make(map[Ignored]bool, len(ignored))
	for _, ig := range ignored {
		nowIgnored[ig] = true
		if !w.lastIgnored[ig] {
			w.logger.Info("intention ignored", "source", ig.Source, "destination", ig.Destination, "reason", ig.Reason)
		}
	}
	w.lastIgnored = nowIgnored
	nowUnknown := map[string]bool{}
	for _, in := range next.All() {
		for _, name := range []string{in.Source, in.Destination} {
			if name == model.Wildcard || w.cfg.KnownService(name) {
				continue
			}
			nowUnknown[name] = true
			if !w.lastUnknown[name] {
				w.logger.Debug("an intention names a service not in the catalog", "service", name, "source", in.Source, "destination", in.Destination)
			}
		}
	}
	w.lastUnknown = nowUnknown

	w.intentionsGauge.Set(float64(next.Len()))
	w.ignoredGauge.Set(float64(len(ignored)))
	w.mu.Lock()
	w.status.Index = index
	w.status.Intentions = next.Len()
	w.status.Ignored = ignored
	w.mu.Unlock()

	if w.published != nil && w.published.Equal(next) {
		return
	}
	w.published = next
	// The counter and the status are updated before the snapshot can be
	// received, so whoever holds it sees them count it.
	w.snapshots.Inc()
	w.mu.Lock()
	w.status.Synced = true
	w.mu.Unlock()
	w.latest.Store(next)
	select {
	case <-w.snapshot:
	default:
	}
	w.snapshot <- next // never blocks: Run is the only sender
	w.logger.Debug("intentions published", "intentions", next.Len(), "ignored", len(ignored), "index", index)
}

// Convert turns service-intentions config entries into intentions, and
// lists those left out. It is pure.
func Convert(entries []api.ConfigEntry) ([]model.Intention, []Ignored) {
	var (
		out     []model.Intention
		ignored []Ignored
	)
	for _, e := range entries {
		entry, ok := e.(*api.ServiceIntentionsConfigEntry)
		if !ok {
			continue // List asks for one kind only
		}
		dst := entry.Name
		if reason := foreignPlace("destination", entry.Namespace, entry.Partition); reason != "" {
			for _, src := range entry.Sources {
				ignored = append(ignored, Ignored{Source: src.Name, Destination: dst, Reason: reason})
			}
			continue
		}
		dstExact := exactness(entry.Namespace, dst)
		for _, src := range entry.Sources {
			if src == nil {
				continue
			}
			if reason := foreignSource(src); reason != "" {
				ignored = append(ignored, Ignored{Source: src.Name, Destination: dst, Reason: reason})
				continue
			}
			in := model.Intention{
				Source:      src.Name,
				Destination: dst,
				Precedence:  precedence(dstExact, exactness(src.Namespace, src.Name)),
			}
			switch {
			case len(src.Permissions) > 0:
				// Deny for any reader that ignores the permissions.
				in.Action = model.IntentionDeny
				in.Permissions, in.Conditions = permissions(src.Permissions)
			case src.Action == api.IntentionActionAllow:
				in.Action = model.IntentionAllow
			case src.Action == api.IntentionActionDeny:
				in.Action = model.IntentionDeny
			default:
				in.Action = model.IntentionDeny
				in.Conditions = append(in.Conditions, fmt.Sprintf("%s %q", conditionUnknown, src.Action))
			}
			if entry.JWT != nil && !contains(in.Conditions, ConditionJWT) {
				in.Conditions = append(in.Conditions, ConditionJWT)
			}
			out = append(out, in)
		}
	}
	sort.Slice(ignored, func(i, j int) bool {
		a, b := ignored[i], ignored[j]
		if a.Destination != b.Destination {
			return a.Destination < b.Destination
		}
		if a.Source != b.Source {
			return a.Source < b.Source
		}
		return a.Reason < b.Reason
	})
	return out, ignored
}

// permissions converts an intention's L7 permissions, and lists the
// conditions among them that Trellis does not enforce (JWT requirements,
// unknown actions), which make the whole intention deny.
func permissions(in []*api.IntentionPermission) ([]model.IntentionPermission, []string) {
	var (
		out        []model.IntentionPermission
		conditions []string
	)
	for _, p := range in {
		if p == nil {
			continue
		}
		mp := model.IntentionPermission{}
		switch p.Action {
		case api.IntentionActionAllow:
			mp.Action = model.IntentionAllow
		case api.IntentionActionDeny:
			mp.Action = model.IntentionDeny
		default:
			if c := fmt.Sprintf("permission with %s %q", conditionUnknown, p.Action); !contains(conditions, c) {
				conditions = append(conditions, c)
			}
		}
		if p.JWT != nil && !contains(conditions, ConditionJWT) {
			conditions = append(conditions, ConditionJWT)
		}
		if h := p.HTTP; h != nil {
			m := &model.IntentionHTTPMatch{PathExact: h.PathExact, PathPrefix: h.PathPrefix, PathRegex: h.PathRegex}
			for _, method := range h.Methods {
				m.Methods = append(m.Methods, strings.ToUpper(method))
			}
			for _, hd := range h.Header {
				m.Headers = append(m.Headers, model.IntentionHeaderMatch{
					Name: strings.ToLower(hd.Name), Present: hd.Present, Exact: hd.Exact, Prefix: hd.Prefix, Suffix: hd.Suffix,
					Contains: hd.Contains, Regex: hd.Regex, Invert: hd.Invert, IgnoreCase: hd.IgnoreCase,
				})
			}
			mp.HTTP = m
		}
		out = append(out, mp)
	}
	return out, conditions
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// foreignSource says why a source cannot be a workload Trellis serves, or
// "" when it can.
func foreignSource(src *api.SourceIntention) string {
	switch {
	case src.Peer != "":
		return fmt.Sprintf("source in cluster peer %q: Trellis identifies callers of its own trust domain only", src.Peer)
	case src.SamenessGroup != "":
		return fmt.Sprintf("source in sameness group %q: Trellis identifies callers of its own trust domain only", src.SamenessGroup)
	case src.Type != "" && src.Type != api.IntentionSourceConsul:
		return fmt.Sprintf("source type %q: accepted: %q", src.Type, api.IntentionSourceConsul)
	}
	return foreignPlace("source", src.Namespace, src.Partition)
}

// foreignPlace says why a namespace and partition are not the default ones
// Trellis serves, or "" when they are. A wildcard namespace includes the
// default one.
func foreignPlace(what, namespace, partition string) string {
	if partition != "" && partition != "default" {
		return fmt.Sprintf("%s in partition %q: only the default partition is served", what, partition)
	}
	if namespace != "" && namespace != "default" && namespace != model.Wildcard {
		return fmt.Sprintf("%s in namespace %q: only the default namespace is served", what, namespace)
	}
	return ""
}

// exactness counts the exact parts of a (namespace, name) pair, as Consul
// does: 2 for an exact name in an exact namespace, 1 for any name in an
// exact namespace, 0 for any namespace.
func exactness(namespace, name string) int {
	switch {
	case namespace == model.Wildcard:
		return 0
	case name == model.Wildcard:
		return 1
	default:
		return 2
	}
}

// precedence is Consul's intention precedence (structs.Intention
// UpdatePrecedence): the destination's exactness sets the maximum (9, 6
// or 3), from which the source's missing exact parts are subtracted.
func precedence(dstExact, srcExact int) int {
	top := 3 + 3*dstExact
	return top - (2 - srcExact)
}
